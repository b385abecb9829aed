#!/bin/sh
# load.sh: runs builder workers in throw-away FreeBSD jails, one job per jail (see README.md).
#
#   load.sh network_start   create lo1 with the server's and every slot's address (idempotent)
#   load.sh network_stop    destroy lo1
#   load.sh build SLOT      clone the base snapshot for SLOT, run jail builder-SLOT (its worker
#                           serves one job), then remove the jail's mounts and the clone.
#                           Exits with the worker's status: 0 job done, 1 bad usage, 2 refused by
#                           the server, 3 server lost mid-job; 1 for a failure of load.sh itself.
#   load.sh clean SLOT      remove what a killed `build SLOT` left: jail, mounts, clone
#
# Settings (environment; /usr/local/etc/builder/load.conf, or $BUILDER_LOAD_CONF, is read with
# `.` after the environment, so what it assigns wins):
#   BUILDER_POOL       ZFS pool                                    (zroot)
#   BUILDER_SNAPSHOT   base snapshot, relative to the pool         (builder/base@clean)
#   BUILDER_DATASETS   parent of the slots' clones, in the pool    (builder/jails)
#   BUILDER_JAIL_CONF  jail.conf defining builder-SLOT             (/usr/local/etc/builder/jail.conf)
#   BUILDER_JAIL_ROOT  where clones are mounted: $root of jail.conf (/usr/jails/builder)
#   BUILDER_INTERFACE  loopback interface for the jails            (lo1)
set -eu
# No word here is a pattern: paths and names are split on spaces at most, never globbed.
set -f

prog=load.sh
load_conf=${BUILDER_LOAD_CONF:-/usr/local/etc/builder/load.conf}
if [ -f "$load_conf" ]; then
	# shellcheck source=/dev/null  # the site's settings, a file of VAR=value lines
	. "$load_conf"
fi
pool=${BUILDER_POOL:-zroot}
snapshot=${BUILDER_SNAPSHOT:-builder/base@clean}
datasets=${BUILDER_DATASETS:-builder/jails}
jail_conf=${BUILDER_JAIL_CONF:-/usr/local/etc/builder/jail.conf}
jail_root=${BUILDER_JAIL_ROOT:-/usr/jails/builder}
iface=${BUILDER_INTERFACE:-lo1}

fail() {
	echo "$prog: $*" >&2
	exit 1
}

usage() {
	echo "usage: $prog network_start | network_stop | build SLOT | clean SLOT" >&2
	exit 64
}

# The IPv4 addresses jail.conf uses: the server's ($server = "ADDR:PORT") and each slot's
# (ip4.addr = ADDR). Comment lines are skipped.
conf_addresses() {
	[ -r "$jail_conf" ] || fail "cannot read $jail_conf (BUILDER_JAIL_CONF)"
	sed -n -e '/^[[:space:]]*#/d' \
		-e 's/^[[:space:]]*[$]server[[:space:]]*=[[:space:]]*"\{0,1\}\([0-9.]*\):.*/\1/p' \
		-e 's/.*[[:space:]{]ip4\.addr[[:space:]]*=[[:space:]]*"\{0,1\}\([0-9.]*\).*/\1/p' "$jail_conf"
}

network_start() {
	addresses=$(conf_addresses)
	[ -n "$addresses" ] || fail "$jail_conf names no server or ip4.addr address"
	if ! present=$(ifconfig "$iface" 2>/dev/null); then
		ifconfig "$iface" create
		present=
	fi
	for address in $addresses; do
		# Adding an address twice is harmless on FreeBSD, but checking keeps reruns quiet.
		case $present in *"inet $address "*) continue ;; esac
		ifconfig "$iface" inet "$address/32" alias
	done
}

network_stop() {
	if ifconfig "$iface" >/dev/null 2>&1; then
		ifconfig "$iface" destroy
	fi
}

# Sets the names one slot uses. Every one derives from the slot, so slots never share anything.
set_slot() {
	slot=$1
	# The slot becomes part of a dataset name, a path and a jail name: letters, digits and _ only.
	case $slot in
	'' | *[!A-Za-z0-9_]*) fail "invalid slot name '$slot': use letters, digits and _ (e.g. slot0)" ;;
	esac
	jail=builder-$slot
	dataset=$pool/$datasets/$slot
	root=$jail_root/$jail
	[ -r "$jail_conf" ] || fail "cannot read $jail_conf (BUILDER_JAIL_CONF)"
	grep -q "^${jail}[[:space:]]*{" "$jail_conf" || fail "$jail_conf defines no jail $jail"
}

# Says what clean-up found, when there is a reason to mention it ($why not empty).
note() {
	if [ -n "$why" ]; then echo "$prog: $slot: $why: $*" >&2; fi
}

# Removes the slot's jail if it still exists: a job's leftover processes, an interrupted run,
# or a crash. jail -r also unmounts what jail.conf mounted.
stop_jail() {
	jls -j "$jail" jid >/dev/null 2>&1 || return 0
	note "removing jail $jail"
	jail -f "$jail_conf" -r "$jail" || {
		echo "$prog: $slot: cannot remove jail $jail" >&2
		return 1
	}
}

# Unmounts what is still mounted below the clone (devfs of a jail that ended by itself; deepest
# first), then destroys the clone.
remove_clone() {
	for mounted in $(mount -p | awk -v below="$root/" 'index($2, below) == 1 { print $2 }' | sort -r); do
		note "unmounting $mounted"
		umount -f "$mounted" || {
			echo "$prog: $slot: cannot unmount $mounted" >&2
			return 1
		}
	done
	zfs list -H -o name "$dataset" >/dev/null 2>&1 || return 0
	note "destroying $dataset"
	zfs destroy -f "$dataset" || {
		echo "$prog: $slot: cannot destroy $dataset; the next run of this slot tries again" >&2
		return 1
	}
}

# The worker's exit status as exec.start recorded it, or nothing. Read only once the jail is gone,
# and only a plain file holding a number: the job ran as root in there.
worker_status() {
	file=$root/var/run/builder-worker.status
	value=
	if [ -f "$file" ] && [ ! -L "$file" ]; then
		read -r value <"$file" || :
	fi
	case ${value:-x} in
	*[!0-9]* | ????*) ;;
	*) if [ "$value" -le 255 ]; then echo "$value"; fi ;;
	esac
}

# The EXIT trap of `build`: whatever happened, leave no jail, mount or clone behind.
finish() {
	status=$?
	trap '' HUP INT TERM
	why=
	if [ -n "$jail_pid" ]; then
		# Interrupted while jail(8) waits for the worker: end it, then remove the jail it leaves.
		kill -TERM "$jail_pid" 2>/dev/null || :
		wait "$jail_pid" || :
	fi
	stop_jail || status=1
	if [ -n "$jail_ended" ]; then
		status=$(worker_status)
		if [ -z "$status" ]; then
			echo "$prog: $slot: jail $jail recorded no worker exit status (jail -c exited $jail_status)" >&2
			status=1
		fi
	fi
	remove_clone || { [ "$status" -ne 0 ] || status=1; }
	exit "$status"
}

interrupted() {
	echo "$prog: $slot: $1: removing jail $jail and $dataset" >&2
	exit "$2"
}

build() {
	set_slot "$1"
	jail_pid=''
	jail_ended=''
	jail_status=''
	trap finish EXIT
	trap 'interrupted SIGHUP 129' HUP
	trap 'interrupted SIGINT 130' INT
	trap 'interrupted SIGTERM 143' TERM
	# A run killed outright (SIGKILL, power loss) leaves its jail and clone behind.
	why="left over from an earlier run"
	stop_jail
	remove_clone
	why=
	zfs clone -o "mountpoint=$root" "$pool/$snapshot" "$dataset" ||
		fail "$slot: cannot clone $pool/$snapshot to $dataset (BUILDER_POOL, BUILDER_SNAPSHOT)"
	# In the background so that a signal is handled at once, not when the job ends.
	jail -f "$jail_conf" -c "$jail" </dev/null &
	jail_pid=$!
	jail_status=0
	wait "$jail_pid" || jail_status=$?
	jail_pid=
	jail_ended=1
	# finish removes the jail and the clone and exits with the worker's status.
	exit 0
}

clean() {
	set_slot "$1"
	why="cleaning up"
	stop_jail
	remove_clone
}

[ $# -ge 1 ] || usage
case $1 in
network_start | network_stop) [ $# -eq 1 ] || usage; "$1" ;;
build | clean) [ $# -eq 2 ] || usage; "$1" "$2" ;;
*) usage ;;
esac
