#!/bin/sh
# Builds the local container image builder/debian:12 from Debian's archive alone: debootstrap a
# minimal bookworm root file system, then import it (no registry is needed). Running it again when
# the image exists does nothing.
#
# Usage: debian/build-base-image.sh [IMAGE]        (default builder/debian:12)
# Environment:
#   BUILDER_ENGINE   docker (default) or podman: which image store receives the image
#   BUILDER_MIRROR   Debian mirror (default http://deb.debian.org/debian)
#   BUILDER_CACHE    where the root file system tarball is kept between runs, so a second engine
#                    imports it without running debootstrap again (default /var/cache/builder)
#   BUILDER_INCLUDE  extra packages, comma-separated (default: what the job templates use)
set -eu

image=${1:-builder/debian:12}
engine=${BUILDER_ENGINE:-docker}
mirror=${BUILDER_MIRROR:-http://deb.debian.org/debian}
cache=${BUILDER_CACHE:-/var/cache/builder}
# git and ca-certificates for the git-build template; adduser for packages' maintainer scripts.
include=${BUILDER_INCLUDE:-ca-certificates,git,adduser}
tarball="$cache/debian-12-rootfs.tar"

fail() {
  echo "build-base-image: $*" >&2
  exit 1
}

case $engine in
  docker | podman) ;;
  *) fail "BUILDER_ENGINE must be docker or podman, not '$engine'" ;;
esac
command -v "$engine" >/dev/null 2>&1 || fail "$engine is not installed (apt-get install -y $engine)"
"$engine" info >/dev/null 2>&1 || fail "$engine cannot reach its daemon; is it running? ($engine info says why)"

if "$engine" image inspect "$image" >/dev/null 2>&1; then
  echo "build-base-image: $image already exists in $engine; nothing to do"
  exit 0
fi

if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null 2>&1 || fail "debootstrap is not installed (apt-get install -y debootstrap)"
  [ "$(id -u)" = 0 ] || fail "debootstrap needs root"
  mkdir -p "$cache"
  rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
  # Whatever happens, the half-built root file system does not stay behind.
  trap 'rm -rf "$rootfs" "$tarball.part"' EXIT
  trap 'exit 130' INT TERM
  echo "build-base-image: debootstrap bookworm from $mirror (a few minutes)"
  debootstrap --variant=minbase --include="$include" bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -n 20 "$rootfs.log" >&2; rm -f "$rootfs.log"; fail "debootstrap failed (last lines above)"; }
  rm -f "$rootfs.log"
  # Smaller image: package lists and caches are not needed at run time.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  tar --numeric-owner -C "$rootfs" -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
fi

echo "build-base-image: importing $tarball into $engine as $image"
"$engine" import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' "$tarball" "$image" >/dev/null
echo "build-base-image: $image is ready"
