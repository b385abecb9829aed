/**
 * The FreeBSD deployment (freebsd/): every script passes `shellcheck -s sh`; load.sh, run by /bin/sh
 * with fake zfs, jail, jls, mount, umount and ifconfig first on PATH, makes exactly the calls it
 * should (clone, jail, unmount, destroy), cleans up after a failing or interrupted jail and after an
 * earlier crash, keeps concurrent slots apart, refuses bad slot names before touching anything and
 * honours its settings; jail.conf, read the way jail(8) reads it, gives every slot the root,
 * address and worker command load.sh and the rc.d scripts expect.
 *
 * The fakes keep a little state (datasets, mounts, running jails, interfaces) in files and behave
 * like the real commands do for what load.sh asks: a jail without `persist` dies with its worker
 * and leaves its devfs mounted, `jail -r` unmounts it, `zfs destroy` of a clone with a mount below
 * it fails as busy, and so on. Each call is logged as one line: the command's name and arguments.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { ROOT, tempDir, waitFor } from './harness.js';

const FREEBSD = path.join(ROOT, 'freebsd');
const LOAD = path.join(FREEBSD, 'load.sh');
const JAIL_CONF = path.join(FREEBSD, 'jail.conf');
const RC_SCRIPTS = ['builder', 'builder_worker'].map((name) => path.join(FREEBSD, 'rc.d', name));
const FAKES = ['zfs', 'jail', 'jls', 'mount', 'umount', 'ifconfig'];

const hasShellcheck = spawnSync('shellcheck', ['--version'], { stdio: 'ignore' }).status === 0;

// One script for every fake; it knows which one it is by its name. No `${` in it: this is a JS
// template string.
const FAKE = String.raw`#!/bin/sh
set -eu
me=$(basename "$0")
printf '%s\n' "$me $*" >>"$FAKE_LOG"
S=$FAKE_STATE
enc() { printf '%s' "$1" | tr / %; }
mounted() { printf '%s\t%s\t%s\trw\t0 0\n' "$1" "$2" "$3" >"$S/mounts/$(enc "$2")"; }
unexpected() { echo "fake $me: unexpected arguments: $*" >&2; exit 99; }
case $me in
zfs)
	case "$1 $2" in
	'list -H')
		[ "$3 $4 $#" = "-o name 5" ] || unexpected "$@"
		if [ -f "$S/datasets/$(enc "$5")" ]; then echo "$5"; exit 0; fi
		echo "cannot open '$5': dataset does not exist" >&2; exit 1 ;;
	'clone -o')
		[ $# = 5 ] || unexpected "$@"
		mp=$(printf '%s' "$3" | sed 's/^mountpoint=//')
		[ -f "$S/datasets/$(enc "$4")" ] || { echo "cannot open '$4': dataset does not exist" >&2; exit 1; }
		[ ! -f "$S/datasets/$(enc "$5")" ] || { echo "cannot create '$5': dataset already exists" >&2; exit 1; }
		echo "$mp" >"$S/datasets/$(enc "$5")"
		mkdir -p "$mp"
		mounted "$5" "$mp" zfs ;;
	'destroy -f')
		[ $# = 3 ] || unexpected "$@"
		f=$S/datasets/$(enc "$3")
		[ -f "$f" ] || { echo "cannot open '$3': dataset does not exist" >&2; exit 1; }
		mp=$(cat "$f")
		# Another slot's fake may remove a mount meanwhile: a vanished file is no mount.
		for m in "$S"/mounts/*; do
			case $(cut -f2 "$m" 2>/dev/null) in "$mp"/*) echo "cannot unmount '$mp': pool or dataset is busy" >&2; exit 1 ;; esac
		done
		rm -f "$f" "$S/mounts/$(enc "$mp")"
		rm -rf "$mp" ;;
	*) unexpected "$@" ;;
	esac ;;
jail)
	[ $# = 4 ] && [ "$1" = -f ] || unexpected "$@"
	name=$4
	root=$(sed -n 's/^[$]root = "\(.*\)";$/\1/p' "$2")
	path=$root/$name
	case $3 in
	-c)
		if [ "$FAKE_JAIL_EXIT" != 0 ]; then echo "jail: $name: mount.devfs: failed" >&2; exit "$FAKE_JAIL_EXIT"; fi
		[ -d "$path" ] || { echo "jail: $name: path $path: No such file or directory" >&2; exit 1; }
		[ ! -f "$S/jails/$name" ] || { echo "jail: $name: already exists" >&2; exit 1; }
		mounted devfs "$path/dev" devfs
		echo "$name: created"
		# The worker. Killing jail(8) leaves the jail (persist is on while it is being created).
		trap 'kill "$!"; exit 143' TERM
		sleep "$FAKE_WORKER_SLEEP" &
		echo "$$" >"$S/jails/$name"
		wait "$!"
		mkdir -p "$path/var/run"
		echo "$FAKE_WORKER_EXIT" >"$path/var/run/builder-worker.status"
		# Without persist the jail dies with its last process, and its devfs stays mounted.
		[ "$FAKE_JAIL_LINGERS" = 1 ] || rm "$S/jails/$name" ;;
	-r)
		[ -f "$S/jails/$name" ] || { echo "jail: \"$name\" not found" >&2; exit 1; }
		rm -f "$S/mounts/$(enc "$path/dev")" "$S/jails/$name"
		echo "$name: removed" ;;
	*) unexpected "$@" ;;
	esac ;;
jls)
	[ $# = 3 ] && [ "$1 $3" = "-j jid" ] || unexpected "$@"
	if [ -f "$S/jails/$2" ]; then echo 7; exit 0; fi
	echo "jls: jail \"$2\" not found" >&2; exit 1 ;;
mount)
	[ "$*" = -p ] || unexpected "$@"
	for m in "$S"/mounts/*; do cat "$m" 2>/dev/null || :; done ;;
umount)
	[ $# = 2 ] && [ "$1" = -f ] || unexpected "$@"
	f=$S/mounts/$(enc "$2")
	[ -f "$f" ] || { echo "umount: $2: not a file system root directory" >&2; exit 1; }
	rm "$f" ;;
ifconfig)
	f=$S/ifaces/$1
	if [ $# = 1 ]; then
		[ -f "$f" ] || { echo "ifconfig: interface $1 does not exist" >&2; exit 1; }
		echo "$1: flags=8049<UP,LOOPBACK,RUNNING,MULTICAST> metric 0 mtu 16384"
		while read -r a; do printf '\tinet %s netmask 0xffffffff\n' "$a"; done <"$f"
		exit 0
	fi
	case "$2 $#" in
	'create 2') [ ! -f "$f" ] || { echo "ifconfig: SIOCIFCREATE2 ($1): File exists" >&2; exit 1; }; : >"$f" ;;
	'destroy 2') [ -f "$f" ] || { echo "ifconfig: interface $1 does not exist" >&2; exit 1; }; rm "$f" ;;
	'inet 4')
		[ -f "$f" ] && [ "$4" = alias ] || unexpected "$@"
		printf '%s\n' "$3" | sed 's|/32$||' >>"$f" ;;
	*) unexpected "$@" ;;
	esac ;;
esac
`;

const cleanup: string[] = [];
afterAll(() => {
  for (const dir of cleanup) fs.rmSync(dir, { recursive: true, force: true });
});

interface Sandbox {
  dir: string;
  bin: string;
  log: string;
  state: string;
  jailRoot: string;
  jailConf: string;
}

/** A fresh set of fakes and their state; the base snapshot zroot/builder/base@clean exists. */
function sandbox(): Sandbox {
  const dir = tempDir('builder-freebsd-');
  cleanup.push(dir);
  const bin = path.join(dir, 'bin');
  const state = path.join(dir, 'state');
  for (const sub of ['datasets', 'mounts', 'jails', 'ifaces']) fs.mkdirSync(path.join(state, sub), { recursive: true });
  fs.mkdirSync(bin);
  fs.writeFileSync(path.join(bin, 'fake'), FAKE, { mode: 0o755 });
  for (const name of FAKES) fs.symlinkSync('fake', path.join(bin, name));
  const jailRoot = path.join(dir, 'jails');
  fs.mkdirSync(jailRoot);
  // The shipped jail.conf with its $root moved into the sandbox, as a site would set it.
  const shipped = fs.readFileSync(JAIL_CONF, 'utf8');
  const line = '$root = "/usr/jails/builder";';
  expect(shipped).toContain(line);
  const jailConf = path.join(dir, 'jail.conf');
  fs.writeFileSync(jailConf, shipped.replace(line, `$root = "${jailRoot}";`));
  const sb = { dir, bin, log: path.join(dir, 'calls.log'), state, jailRoot, jailConf };
  addDataset(sb, 'zroot/builder/base@clean', '-');
  return sb;
}

const enc = (p: string): string => p.replaceAll('/', '%');

function addDataset(sb: Sandbox, name: string, mountpoint: string): void {
  fs.writeFileSync(path.join(sb.state, 'datasets', enc(name)), `${mountpoint}\n`);
}

function addMount(sb: Sandbox, special: string, where: string, type: string): void {
  fs.writeFileSync(path.join(sb.state, 'mounts', enc(where)), `${special}\t${where}\t${type}\trw\t0 0\n`);
}

/** What the fakes hold now: datasets (the base snapshot left out), mount points, running jails, interfaces. */
function fakeState(sb: Sandbox): { datasets: string[]; mounts: string[]; jails: string[]; ifaces: Record<string, string[]> } {
  const list = (sub: string) => fs.readdirSync(path.join(sb.state, sub)).sort();
  const ifaces: Record<string, string[]> = {};
  for (const name of list('ifaces')) ifaces[name] = fs.readFileSync(path.join(sb.state, 'ifaces', name), 'utf8').split('\n').filter(Boolean);
  return {
    datasets: list('datasets').map((d) => d.replaceAll('%', '/')).filter((d) => d !== 'zroot/builder/base@clean'),
    mounts: list('mounts').map((m) => m.replaceAll('%', '/')),
    jails: list('jails'),
    ifaces,
  };
}

const EMPTY = { datasets: [], mounts: [], jails: [], ifaces: {} };

function calls(sb: Sandbox): string[] {
  return fs.existsSync(sb.log) ? fs.readFileSync(sb.log, 'utf8').split('\n').filter(Boolean) : [];
}

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

interface Options {
  env?: Record<string, string | undefined>;
  workerExit?: number;
  workerSleep?: number;
  jailExit?: number;
  jailLingers?: boolean;
}

function start(sb: Sandbox, args: string[], opts: Options = {}): { child: ChildProcess; done: Promise<Run> } {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PATH: `${sb.bin}:${process.env.PATH ?? '/usr/bin:/bin'}`,
    // Hermetic: no site settings from this machine.
    BUILDER_LOAD_CONF: path.join(sb.dir, 'no-load.conf'),
    BUILDER_POOL: undefined,
    BUILDER_SNAPSHOT: undefined,
    BUILDER_DATASETS: undefined,
    BUILDER_INTERFACE: undefined,
    BUILDER_JAIL_CONF: sb.jailConf,
    BUILDER_JAIL_ROOT: sb.jailRoot,
    FAKE_LOG: sb.log,
    FAKE_STATE: sb.state,
    FAKE_WORKER_EXIT: String(opts.workerExit ?? 0),
    FAKE_WORKER_SLEEP: String(opts.workerSleep ?? 0),
    FAKE_JAIL_EXIT: String(opts.jailExit ?? 0),
    FAKE_JAIL_LINGERS: opts.jailLingers ? '1' : '0',
    ...opts.env,
  };
  for (const [key, value] of Object.entries(env)) if (value === undefined) delete env[key];
  const child = spawn('/bin/sh', [LOAD, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
  child.stderr?.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
  const done = new Promise<Run>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
  return { child, done };
}

const run = (sb: Sandbox, args: string[], opts: Options = {}): Promise<Run> => start(sb, args, opts).done;

/** The calls of a clean `build SLOT` in the sandbox, from the leftover check to the destroy. */
function buildCalls(sb: Sandbox, slot: string): { before: string[]; after: string[] } {
  const jail = `builder-${slot}`;
  const dataset = `zroot/builder/jails/${slot}`;
  const root = path.join(sb.jailRoot, jail);
  return {
    before: [
      `jls -j ${jail} jid`,
      'mount -p',
      `zfs list -H -o name ${dataset}`,
      `zfs clone -o mountpoint=${root} zroot/builder/base@clean ${dataset}`,
      `jail -f ${sb.jailConf} -c ${jail}`,
    ],
    after: [`jls -j ${jail} jid`, 'mount -p', `umount -f ${root}/dev`, `zfs list -H -o name ${dataset}`, `zfs destroy -f ${dataset}`],
  };
}

describe('shellcheck', () => {
  it('passes load.sh and the rc.d scripts with -s sh', (ctx) => {
    if (!hasShellcheck) {
      if (process.env.CI === 'true') throw new Error('shellcheck is not installed, and CI=true requires it: apt-get install shellcheck');
      ctx.skip();
    }
    const result = spawnSync('shellcheck', ['-s', 'sh', LOAD, ...RC_SCRIPTS], { encoding: 'utf8' });
    expect(result.stdout + result.stderr).toBe('');
    expect(result.status).toBe(0);
  });

  it('finds the scripts executable, with a #!/bin/sh line', () => {
    for (const file of [LOAD, ...RC_SCRIPTS]) {
      expect(fs.readFileSync(file, 'utf8').startsWith('#!/bin/sh\n'), file).toBe(true);
      expect(fs.statSync(file).mode & 0o111, file).toBe(0o111);
    }
  });
});

describe('load.sh build', () => {
  let sb: Sandbox;
  beforeEach(() => { sb = sandbox(); });

  it('clones, runs the jail, unmounts its devfs and destroys the clone, in that order', async () => {
    const result = await run(sb, ['build', 'slot0']);
    const { before, after } = buildCalls(sb, 'slot0');
    expect(calls(sb)).toEqual([...before, ...after]);
    expect(result.stderr).toBe('');
    expect(result.stdout).toBe('builder-slot0: created\n');
    expect(result.code).toBe(0);
    expect(fakeState(sb)).toEqual(EMPTY);
    expect(fs.readdirSync(sb.jailRoot)).toEqual([]);
  });

  for (const status of [1, 2, 3]) {
    it(`exits ${status} when the worker does, after the same clean-up`, async () => {
      const result = await run(sb, ['build', 'slot0'], { workerExit: status });
      const { before, after } = buildCalls(sb, 'slot0');
      expect(calls(sb)).toEqual([...before, ...after]);
      expect(result.stderr).toBe('');
      expect(result.code).toBe(status);
      expect(fakeState(sb)).toEqual(EMPTY);
    });
  }

  it('removes a jail the job left processes in before unmounting and destroying', async () => {
    const result = await run(sb, ['build', 'slot0'], { workerExit: 3, jailLingers: true });
    const { before } = buildCalls(sb, 'slot0');
    expect(calls(sb)).toEqual([
      ...before,
      'jls -j builder-slot0 jid',
      `jail -f ${sb.jailConf} -r builder-slot0`,
      'mount -p',
      'zfs list -H -o name zroot/builder/jails/slot0',
      'zfs destroy -f zroot/builder/jails/slot0',
    ]);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(3);
    expect(fakeState(sb)).toEqual(EMPTY);
  });

  it('cleans up and fails with one clear line when jail -c fails', async () => {
    const result = await run(sb, ['build', 'slot0'], { jailExit: 1 });
    const { before } = buildCalls(sb, 'slot0');
    // The fake fails before it mounts anything, so there is nothing to unmount.
    expect(calls(sb)).toEqual([
      ...before,
      'jls -j builder-slot0 jid',
      'mount -p',
      'zfs list -H -o name zroot/builder/jails/slot0',
      'zfs destroy -f zroot/builder/jails/slot0',
    ]);
    expect(result.stderr).toBe([
      'jail: builder-slot0: mount.devfs: failed',
      'load.sh: slot0: jail builder-slot0 recorded no worker exit status (jail -c exited 1)',
      '',
    ].join('\n'));
    expect(result.code).toBe(1);
    expect(fakeState(sb)).toEqual(EMPTY);
  });

  it('destroys nothing and says why when the clone fails', async () => {
    fs.rmSync(path.join(sb.state, 'datasets', enc('zroot/builder/base@clean')));
    const result = await run(sb, ['build', 'slot0']);
    expect(calls(sb)).toEqual([
      'jls -j builder-slot0 jid',
      'mount -p',
      'zfs list -H -o name zroot/builder/jails/slot0',
      `zfs clone -o mountpoint=${sb.jailRoot}/builder-slot0 zroot/builder/base@clean zroot/builder/jails/slot0`,
      'jls -j builder-slot0 jid',
      'mount -p',
      'zfs list -H -o name zroot/builder/jails/slot0',
    ]);
    expect(result.stderr).toBe([
      "cannot open 'zroot/builder/base@clean': dataset does not exist",
      'load.sh: slot0: cannot clone zroot/builder/base@clean to zroot/builder/jails/slot0 (BUILDER_POOL, BUILDER_SNAPSHOT)',
      '',
    ].join('\n'));
    expect(result.code).toBe(1);
    expect(fakeState(sb).datasets).toEqual([]);
  });

  it('removes the jail and the clone when stopped with SIGTERM while the job runs', async () => {
    const { child, done } = start(sb, ['build', 'slot0'], { workerSleep: 20 });
    await waitFor('the jail to run', () => fakeState(sb).jails.includes('builder-slot0'), 10_000);
    const sent = Date.now();
    child.kill('SIGTERM');
    const result = await done;
    // Promptly: load.sh does not wait for the job, and no fake's sleep keeps the pipes open.
    expect(Date.now() - sent).toBeLessThan(5_000);
    const { before } = buildCalls(sb, 'slot0');
    expect(calls(sb)).toEqual([
      ...before,
      'jls -j builder-slot0 jid',
      `jail -f ${sb.jailConf} -r builder-slot0`,
      'mount -p',
      'zfs list -H -o name zroot/builder/jails/slot0',
      'zfs destroy -f zroot/builder/jails/slot0',
    ]);
    expect(result.stderr).toBe('load.sh: slot0: SIGTERM: removing jail builder-slot0 and zroot/builder/jails/slot0\n');
    expect(result.stdout).toBe('builder-slot0: created\nbuilder-slot0: removed\n');
    expect(result.code).toBe(143);
    expect(fakeState(sb)).toEqual(EMPTY);
  });

  it('removes what an earlier, killed run left before it starts, and says so', async () => {
    const root = `${sb.jailRoot}/builder-slot0`;
    addDataset(sb, 'zroot/builder/jails/slot0', root);
    fs.mkdirSync(root);
    addMount(sb, 'zroot/builder/jails/slot0', root, 'zfs');
    addMount(sb, 'devfs', `${root}/dev`, 'devfs');
    fs.writeFileSync(path.join(sb.state, 'jails', 'builder-slot0'), '99999\n');
    const result = await run(sb, ['build', 'slot0']);
    const { before, after } = buildCalls(sb, 'slot0');
    expect(calls(sb)).toEqual([
      'jls -j builder-slot0 jid',
      `jail -f ${sb.jailConf} -r builder-slot0`,
      'mount -p',
      'zfs list -H -o name zroot/builder/jails/slot0',
      'zfs destroy -f zroot/builder/jails/slot0',
      ...before.slice(3),
      ...after,
    ]);
    expect(result.stderr).toBe([
      'load.sh: slot0: left over from an earlier run: removing jail builder-slot0',
      'load.sh: slot0: left over from an earlier run: destroying zroot/builder/jails/slot0',
      '',
    ].join('\n'));
    expect(result.code).toBe(0);
    expect(fakeState(sb)).toEqual(EMPTY);
  });

  it('runs two slots at once on two datasets, two roots and two jails, and destroys both', async () => {
    const runs = [start(sb, ['build', 'slot0'], { workerSleep: 3 }), start(sb, ['build', 'slot1'], { workerSleep: 3 })];
    const during = await waitFor('both jails to run', () => {
      const state = fakeState(sb);
      return state.jails.length === 2 ? state : null;
    }, 10_000);
    expect(during.jails).toEqual(['builder-slot0', 'builder-slot1']);
    expect(during.datasets).toEqual(['zroot/builder/jails/slot0', 'zroot/builder/jails/slot1']);
    const results = await Promise.all(runs.map((r) => r.done));
    for (const result of results) {
      expect(result.stderr).toBe('');
      expect(result.code).toBe(0);
    }
    const log = calls(sb);
    for (const [slot, other] of [['slot0', 'slot1'], ['slot1', 'slot0']]) {
      const { before, after } = buildCalls(sb, slot);
      // Each slot's calls name only its own jail, dataset and root.
      expect(log.filter((line) => line.includes(slot))).toEqual([...before, ...after].filter((line) => line !== 'mount -p'));
      expect(log.filter((line) => line.includes(slot) && line.includes(other))).toEqual([]);
    }
    expect(log.filter((line) => line === 'mount -p')).toHaveLength(4);
    expect(fakeState(sb)).toEqual(EMPTY);
  });

  for (const slot of ['../x', '', 'a/b', 'slot 0', '-x', 'slot0;true', '*', 'slot0\n']) {
    it(`refuses the slot name ${JSON.stringify(slot)} before running anything`, async () => {
      const result = await run(sb, ['build', slot]);
      expect(calls(sb)).toEqual([]);
      expect(result.stderr).toBe(`load.sh: invalid slot name '${slot}': use letters, digits and _ (e.g. slot0)\n`);
      expect(result.code).toBe(1);
    });
  }

  it('refuses a slot jail.conf does not define, before running anything', async () => {
    const result = await run(sb, ['build', 'slot7']);
    expect(calls(sb)).toEqual([]);
    expect(result.stderr).toBe(`load.sh: ${sb.jailConf} defines no jail builder-slot7\n`);
    expect(result.code).toBe(1);
  });

  it('honours BUILDER_POOL, BUILDER_SNAPSHOT, BUILDER_DATASETS, BUILDER_JAIL_CONF and BUILDER_JAIL_ROOT', async () => {
    const otherRoot = path.join(sb.dir, 'elsewhere');
    fs.mkdirSync(otherRoot);
    const otherConf = path.join(sb.dir, 'other-jail.conf');
    fs.writeFileSync(otherConf, fs.readFileSync(sb.jailConf, 'utf8').replace(`$root = "${sb.jailRoot}";`, `$root = "${otherRoot}";`));
    addDataset(sb, 'tank/images/freebsd@v2', '-');
    const result = await run(sb, ['build', 'slot1'], {
      env: {
        BUILDER_POOL: 'tank', BUILDER_SNAPSHOT: 'images/freebsd@v2', BUILDER_DATASETS: 'ci/slots',
        BUILDER_JAIL_CONF: otherConf, BUILDER_JAIL_ROOT: otherRoot,
      },
    });
    expect(calls(sb)).toEqual([
      'jls -j builder-slot1 jid',
      'mount -p',
      'zfs list -H -o name tank/ci/slots/slot1',
      `zfs clone -o mountpoint=${otherRoot}/builder-slot1 tank/images/freebsd@v2 tank/ci/slots/slot1`,
      `jail -f ${otherConf} -c builder-slot1`,
      'jls -j builder-slot1 jid',
      'mount -p',
      `umount -f ${otherRoot}/builder-slot1/dev`,
      'zfs list -H -o name tank/ci/slots/slot1',
      'zfs destroy -f tank/ci/slots/slot1',
    ]);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
  });

  it('reads BUILDER_LOAD_CONF after the environment', async () => {
    const loadConf = path.join(sb.dir, 'load.conf');
    fs.writeFileSync(loadConf, '# site settings\nBUILDER_POOL=tank\nBUILDER_SNAPSHOT=base@today\n');
    addDataset(sb, 'tank/base@today', '-');
    const result = await run(sb, ['build', 'slot0'], { env: { BUILDER_LOAD_CONF: loadConf, BUILDER_POOL: 'ignored' } });
    expect(calls(sb)).toContain(`zfs clone -o mountpoint=${sb.jailRoot}/builder-slot0 tank/base@today tank/builder/jails/slot0`);
    expect(calls(sb)).toContain('zfs destroy -f tank/builder/jails/slot0');
    expect(result.code).toBe(0);
  });

  it('uses /usr/local/etc/builder/jail.conf by default, and says when it cannot read it', async () => {
    expect(fs.existsSync('/usr/local/etc/builder/jail.conf')).toBe(false);
    const result = await run(sb, ['build', 'slot0'], { env: { BUILDER_JAIL_CONF: undefined } });
    expect(calls(sb)).toEqual([]);
    expect(result.stderr).toBe('load.sh: cannot read /usr/local/etc/builder/jail.conf (BUILDER_JAIL_CONF)\n');
    expect(result.code).toBe(1);
  });

  it('mounts the clone at the path the shipped jail.conf gives the jail, with every default', async () => {
    // No snapshot, so the clone fails and nothing is created below /usr/jails on this machine.
    fs.rmSync(path.join(sb.state, 'datasets', enc('zroot/builder/base@clean')));
    const result = await run(sb, ['build', 'slot0'], { env: { BUILDER_JAIL_CONF: JAIL_CONF, BUILDER_JAIL_ROOT: undefined } });
    const jailPath = jailParams(parseJailConf(fs.readFileSync(JAIL_CONF, 'utf8')), 'builder-slot0').path;
    expect(jailPath).toBe('/usr/jails/builder/builder-slot0');
    expect(calls(sb)[3]).toBe(`zfs clone -o mountpoint=${jailPath} zroot/builder/base@clean zroot/builder/jails/slot0`);
    expect(result.code).toBe(1);
  });
});

describe('load.sh clean', () => {
  it('removes a slot\'s leftover mounts and clone and says what it removed', async () => {
    const sb = sandbox();
    const root = `${sb.jailRoot}/builder-slot1`;
    addDataset(sb, 'zroot/builder/jails/slot1', root);
    addMount(sb, 'zroot/builder/jails/slot1', root, 'zfs');
    addMount(sb, 'devfs', `${root}/dev`, 'devfs');
    addMount(sb, 'fdescfs', `${root}/dev/fd`, 'fdescfs');
    const result = await run(sb, ['clean', 'slot1']);
    expect(calls(sb)).toEqual([
      'jls -j builder-slot1 jid',
      'mount -p',
      `umount -f ${root}/dev/fd`,
      `umount -f ${root}/dev`,
      'zfs list -H -o name zroot/builder/jails/slot1',
      'zfs destroy -f zroot/builder/jails/slot1',
    ]);
    expect(result.stderr).toBe([
      `load.sh: slot1: cleaning up: unmounting ${root}/dev/fd`,
      `load.sh: slot1: cleaning up: unmounting ${root}/dev`,
      'load.sh: slot1: cleaning up: destroying zroot/builder/jails/slot1',
      '',
    ].join('\n'));
    expect(result.code).toBe(0);
    expect(fakeState(sb)).toEqual(EMPTY);
    // Nothing left: a second clean only looks.
    fs.rmSync(sb.log);
    expect((await run(sb, ['clean', 'slot1'])).code).toBe(0);
    expect(calls(sb)).toEqual(['jls -j builder-slot1 jid', 'mount -p', 'zfs list -H -o name zroot/builder/jails/slot1']);
  });
});

describe('load.sh network_start and network_stop', () => {
  const addresses = (() => {
    const conf = parseJailConf(fs.readFileSync(JAIL_CONF, 'utf8'));
    const server = jailParams(conf, conf.jails[0]).$server.split(':')[0];
    return [server, ...conf.jails.map((jail) => jailParams(conf, jail).ip4_addr)];
  })();

  it('takes the server\'s and every slot\'s address from jail.conf', () => {
    expect(addresses).toEqual(['127.0.1.1', '127.0.1.10', '127.0.1.11']);
  });

  it('creates lo1 with those addresses, and a second run changes nothing', async () => {
    const sb = sandbox();
    const first = await run(sb, ['network_start']);
    expect(calls(sb)).toEqual(['ifconfig lo1', 'ifconfig lo1 create', ...addresses.map((a) => `ifconfig lo1 inet ${a}/32 alias`)]);
    expect(first.stderr).toBe('');
    expect(first.code).toBe(0);
    expect(fakeState(sb).ifaces).toEqual({ lo1: addresses });
    fs.rmSync(sb.log);
    const second = await run(sb, ['network_start']);
    expect(calls(sb)).toEqual(['ifconfig lo1']);
    expect(second.code).toBe(0);
    expect(fakeState(sb).ifaces).toEqual({ lo1: addresses });
  });

  it('adds only the addresses lo1 lacks', async () => {
    const sb = sandbox();
    fs.writeFileSync(path.join(sb.state, 'ifaces', 'lo1'), '127.0.1.10\n');
    const result = await run(sb, ['network_start']);
    expect(calls(sb)).toEqual(['ifconfig lo1', 'ifconfig lo1 inet 127.0.1.1/32 alias', 'ifconfig lo1 inet 127.0.1.11/32 alias']);
    expect(result.code).toBe(0);
  });

  it('destroys lo1, and a second run does nothing', async () => {
    const sb = sandbox();
    fs.writeFileSync(path.join(sb.state, 'ifaces', 'lo1'), addresses.join('\n') + '\n');
    const first = await run(sb, ['network_stop']);
    expect(calls(sb)).toEqual(['ifconfig lo1', 'ifconfig lo1 destroy']);
    expect(first.code).toBe(0);
    expect(fakeState(sb).ifaces).toEqual({});
    fs.rmSync(sb.log);
    const second = await run(sb, ['network_stop']);
    expect(calls(sb)).toEqual(['ifconfig lo1']);
    expect(second.stderr).toBe('');
    expect(second.code).toBe(0);
  });

  it('honours BUILDER_INTERFACE', async () => {
    const sb = sandbox();
    expect((await run(sb, ['network_start'], { env: { BUILDER_INTERFACE: 'lo7' } })).code).toBe(0);
    expect(calls(sb)).toEqual(['ifconfig lo7', 'ifconfig lo7 create', ...addresses.map((a) => `ifconfig lo7 inet ${a}/32 alias`)]);
  });
});

describe('load.sh usage', () => {
  for (const args of [[], ['help'], ['build'], ['build', 'slot0', 'slot1'], ['network_start', 'now'], ['clean']]) {
    it(`prints its usage and exits 64 for: ${JSON.stringify(args)}`, async () => {
      const sb = sandbox();
      const result = await run(sb, args);
      expect(calls(sb)).toEqual([]);
      expect(result.stderr).toBe('usage: load.sh network_start | network_stop | build SLOT | clean SLOT\n');
      expect(result.stdout).toBe('');
      expect(result.code).toBe(64);
    });
  }
});

// jail.conf, read the way jail(8) reads it (jaillex.l, jailparse.y): tokens, quoted strings with
// backslash escapes, $var and ${var} substituted in unquoted tokens and double-quoted strings,
// adjacent pieces concatenated, comments in #, // and /* */ form.

type Piece = { text: string } | { variable: string };
interface Statement { name: string; values: Piece[][] }
interface JailConf { globals: Statement[]; blocks: Map<string, Statement[]>; jails: string[] }

function parseJailConf(text: string): JailConf {
  type Token = { kind: 'punct'; value: string } | { kind: 'word'; pieces: Piece[] };
  const tokens: Token[] = [];
  let i = 0;
  const unescape = (c: string): string => ({ n: '\n', t: '\t', r: '\r' } as Record<string, string>)[c] ?? c;
  while (i < text.length) {
    const c = text[i];
    if (/\s/.test(c)) { i++; continue; }
    if (c === '#' || text.startsWith('//', i)) { i = text.indexOf('\n', i); if (i < 0) break; continue; }
    if (text.startsWith('/*', i)) { const end = text.indexOf('*/', i + 2); if (end < 0) throw new Error('unterminated comment'); i = end + 2; continue; }
    if (text.startsWith('+=', i)) { tokens.push({ kind: 'punct', value: '+=' }); i += 2; continue; }
    if (',;={}'.includes(c)) { tokens.push({ kind: 'punct', value: c }); i++; continue; }
    // A word: quoted and unquoted pieces with no whitespace or punctuation between them.
    const pieces: Piece[] = [];
    const variable = (): void => {
      const m = /^\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z_0-9]*))/.exec(text.slice(i));
      if (!m) throw new Error(`bad variable at ${text.slice(i, i + 20)}`);
      pieces.push({ variable: m[1] ?? m[2] });
      i += m[0].length;
    };
    while (i < text.length && !/[\s,;={}#]/.test(text[i]) && !text.startsWith('+=', i)) {
      const q = text[i];
      if (q === '"' || q === "'") {
        i++;
        let literal = '';
        while (text[i] !== q) {
          if (i >= text.length) throw new Error('unterminated string');
          if (text[i] === '\\') { literal += unescape(text[i + 1]); i += 2; continue; }
          if (q === '"' && text[i] === '$') { pieces.push({ text: literal }); literal = ''; variable(); continue; }
          literal += text[i++];
        }
        pieces.push({ text: literal });
        i++;
      } else if (q === '$' && text[i + 1] !== undefined && /[A-Za-z_{]/.test(text[i + 1])) {
        variable();
      } else if (q === '\\') {
        pieces.push({ text: unescape(text[i + 1]) });
        i += 2;
      } else {
        pieces.push({ text: q });
        i++;
      }
    }
    tokens.push({ kind: 'word', pieces });
  }

  let t = 0;
  const word = (): Piece[] => {
    const token = tokens[t++];
    if (token?.kind !== 'word') throw new Error(`expected a word, got ${JSON.stringify(token)}`);
    return token.pieces;
  };
  const plain = (pieces: Piece[]): string => pieces.map((p) => ('text' in p ? p.text : `$${p.variable}`)).join('');
  const punct = (value: string): boolean => {
    const token = tokens[t];
    if (token?.kind === 'punct' && token.value === value) { t++; return true; }
    return false;
  };
  const statements = (inBlock: boolean): Statement[] => {
    const list: Statement[] = [];
    while (t < tokens.length && !(inBlock && tokens[t].kind === 'punct' && (tokens[t] as { value: string }).value === '}')) {
      const name = plain(word());
      if (punct('{')) {
        if (inBlock) throw new Error('nested jail blocks');
        const body = statements(true);
        if (!punct('}')) throw new Error(`unterminated block ${name}`);
        const existing = blocks.get(name);
        if (existing) existing.push(...body); else { blocks.set(name, body); jails.push(name); }
        continue;
      }
      const values: Piece[][] = [];
      if (punct('=') || punct('+=')) {
        do values.push(word()); while (punct(','));
      }
      if (!punct(';')) throw new Error(`statement ${name} does not end with ;`);
      list.push({ name, values });
    }
    return list;
  };
  const blocks = new Map<string, Statement[]>();
  const jails: string[] = [];
  const globals = statements(false);
  // The parser skips nothing: every token was consumed.
  expect(t).toBe(tokens.length);
  return { globals, blocks, jails };
}

/** A jail's parameters and variables after substitution; ip4.addr as ip4_addr for convenience. */
function jailParams(conf: JailConf, jail: string): Record<string, string> & { path: string; ip4_addr: string } {
  const raw = new Map<string, Piece[][]>([['name', [[{ text: jail }]]]]);
  for (const s of [...conf.globals, ...(conf.blocks.get(jail) ?? [])]) raw.set(s.name, s.values);
  const resolve = (key: string, depth = 0): string => {
    const values = raw.get(key) ?? raw.get(`$${key}`);
    if (!values) throw new Error(`${jail}: unknown variable ${key}`);
    if (depth > 10) throw new Error(`${jail}: ${key} refers to itself`);
    return values.map((pieces) => pieces.map((p) => ('text' in p ? p.text : resolve(p.variable, depth + 1))).join('')).join(',');
  };
  const out: Record<string, string> = {};
  for (const key of raw.keys()) out[key] = resolve(key);
  return { ...out, path: out.path, ip4_addr: out['ip4.addr'] } as Record<string, string> & { path: string; ip4_addr: string };
}

describe('jail.conf', () => {
  const text = fs.readFileSync(JAIL_CONF, 'utf8');
  const conf = parseJailConf(text);
  const global = (name: string) => conf.globals.find((s) => s.name === name);
  const root = jailParams(conf, conf.jails[0]).$root;

  it('defines builder-slot0 and builder-slot1, names load.sh accepts', () => {
    expect(conf.jails).toEqual(['builder-slot0', 'builder-slot1']);
    for (const jail of conf.jails) expect(jail).toMatch(/^builder-[A-Za-z0-9_]+$/);
  });

  it('defines every slot rc.d/builder_worker runs by default', () => {
    const rc = fs.readFileSync(RC_SCRIPTS[1], 'utf8');
    const slots = /^: "\$\{builder_worker_slots:=([^}]*)\}"$/m.exec(rc)?.[1];
    expect(slots).toBe('slot0 slot1');
    for (const slot of slots!.split(' ')) expect(conf.jails).toContain(`builder-${slot}`);
  });

  it('roots each jail at $root/NAME, $root being load.sh\'s default BUILDER_JAIL_ROOT', () => {
    const load = fs.readFileSync(LOAD, 'utf8');
    expect(load).toContain('jail_root=${BUILDER_JAIL_ROOT:-/usr/jails/builder}');
    expect(load).toContain('root=$jail_root/$jail');
    expect(root).toBe('/usr/jails/builder');
    for (const jail of conf.jails) expect(jailParams(conf, jail).path).toBe(`/usr/jails/builder/${jail}`);
  });

  it('gives each jail its own loopback address, apart from the server\'s', () => {
    const server = jailParams(conf, conf.jails[0]).$server;
    expect(server).toBe('127.0.1.1:1234');
    const addresses = conf.jails.map((jail) => jailParams(conf, jail).ip4_addr);
    expect(addresses).toEqual(['127.0.1.10', '127.0.1.11']);
    expect(new Set([...addresses, server.split(':')[0]]).size).toBe(addresses.length + 1);
    for (const jail of conf.jails) {
      const params = jailParams(conf, jail);
      expect(params.ip6).toBe('disable');
      // load.sh network_start owns the addresses; jail(8) must not add or remove them.
      expect(params.interface).toBeUndefined();
      expect(params.ip4_addr).not.toContain('|');
      expect(params['vnet']).toBeUndefined();
    }
  });

  it('listens where rc.d/builder makes the server listen', () => {
    const rc = fs.readFileSync(RC_SCRIPTS[0], 'utf8');
    expect(/^: "\$\{builder_listen:=([^}]*)\}"$/m.exec(rc)?.[1]).toBe(jailParams(conf, conf.jails[0]).$server);
  });

  it('runs one worker per jail for a platform the templates know, recording its status where load.sh reads it', () => {
    const platforms = fs.readdirSync(path.join(ROOT, 'templates', 'shell')).map((f) => f.replace(/\.sh\.hbs$/, ''));
    for (const jail of conf.jails) {
      const params = jailParams(conf, jail);
      expect(platforms).toContain(params.$platform);
      expect(params['exec.start']).toBe(`/usr/local/bin/builder-worker freebsd-14 --remote 127.0.1.1:1234; echo $? >/var/run/builder-worker.status`);
      // No persist (the jail ends with the worker), no --loop (one job per jail).
      expect(params.persist).toBeUndefined();
      expect(params['exec.start']).not.toContain('--loop');
      expect(params['mount.devfs']).toBe('');
      expect(params.devfs_ruleset).toBe('4');
      expect(params['allow.noraw_sockets']).toBe('');
      expect(params['exec.clean']).toBe('');
    }
    expect(fs.readFileSync(LOAD, 'utf8')).toContain('file=$root/var/run/builder-worker.status');
  });

  it('has an exec.start that really records the worker\'s exit status', () => {
    const dir = tempDir('builder-freebsd-exec-');
    cleanup.push(dir);
    const worker = path.join(dir, 'builder-worker');
    fs.writeFileSync(worker, `#!/bin/sh\nprintf '%s\\n' "$@" >"${dir}/args"\nexit 3\n`, { mode: 0o755 });
    const command = jailParams(conf, 'builder-slot1')['exec.start']
      .replace('/usr/local/bin/builder-worker', worker)
      .replace('/var/run/', `${dir}/`);
    // jail(8) hands a command with shell characters to /bin/sh -c.
    const result = spawnSync('/bin/sh', ['-c', command], { encoding: 'utf8' });
    expect(result.status).toBe(0);
    expect(fs.readFileSync(path.join(dir, 'args'), 'utf8')).toBe('freebsd-14\n--remote\n127.0.1.1:1234\n');
    expect(fs.readFileSync(path.join(dir, 'builder-worker.status'), 'utf8')).toBe('3\n');
  });

  it('parses as jail(8) would: every statement ends, every variable is defined', () => {
    expect(global('path')).toBeDefined();
    for (const jail of conf.jails) expect(() => jailParams(conf, jail)).not.toThrow();
    expect(() => parseJailConf('a { path = "/x" }')).toThrow(/does not end with ;/);
    expect(() => jailParams(parseJailConf('path = "$nowhere/$name";\na { ip4.addr = 1.2.3.4; }'), 'a')).toThrow(/unknown variable nowhere/);
  });
});
