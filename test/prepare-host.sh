#!/bin/sh
# Prepares a Debian 12 machine to run the whole test suite (as root, or with sudo): the packages
# the tests use, a running Docker daemon, and the local base image builder/debian:12 in both
# docker's and podman's image stores. Safe to run again: whatever is already there is kept.
set -eu

if [ "$(id -u)" != 0 ]; then
  exec sudo sh "$0" "$@"
fi

# python3 make g++: better-sqlite3 compiles from source. git: the git-build template tests.
# ShellCheck: every shell script is linted. docker.io, podman (+ catatonit, its init): container
# sandboxes. debootstrap: the base image. dpkg-dev debhelper systemd: the Debian package and
# `systemd-analyze verify` on its units. chromium: the web view's browser test.
apt-get update -qq
DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq \
  python3 make g++ git shellcheck \
  docker.io podman catatonit debootstrap \
  dpkg-dev debhelper systemd adduser ca-certificates chromium >/dev/null

# A Docker daemon: the one systemd started, else our own. Where no bridge can be made (containers
# here use host networking or none), it runs without one and without touching iptables.
if ! docker info >/dev/null 2>&1; then
  echo "prepare-host: starting dockerd (log: /var/log/builder-test-dockerd.log)"
  nohup dockerd --bridge=none --iptables=false --ip6tables=false >/var/log/builder-test-dockerd.log 2>&1 &
  tries=0
  until docker info >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -gt 60 ]; then
      tail -n 20 /var/log/builder-test-dockerd.log >&2
      echo "prepare-host: dockerd did not come up within 30 s (its log above)" >&2
      exit 1
    fi
    sleep 0.5
  done
fi

here=$(dirname "$0")
BUILDER_ENGINE=docker sh "$here/../debian/build-base-image.sh"
BUILDER_ENGINE=podman sh "$here/../debian/build-base-image.sh"
