#!/bin/sh
# Builds the worker image for one OS from this checkout: builder/worker:debian-12 (from
# debian/Containerfile on builder/debian:12) or builder/worker:ubuntu-24.04 (ubuntu/Containerfile).
# The build context is staged here: the Node binary that runs this script (the image's Node) and
# the built project with its production dependencies only. Nothing is downloaded.
#
# Usage: debian/build-worker-image.sh [debian|ubuntu]
# Environment:
#   BUILDER_ENGINE  docker (default) or podman
#   BUILDER_BASE    base image (default: builder/debian:12, or ubuntu:24.04)
#   BUILDER_TAG     image name (default: builder/worker:debian-12, or builder/worker:ubuntu-24.04)
set -eu

os=${1:-debian}
engine=${BUILDER_ENGINE:-docker}
case $os in
  debian) base=${BUILDER_BASE:-builder/debian:12}; tag=${BUILDER_TAG:-builder/worker:debian-12} ;;
  ubuntu) base=${BUILDER_BASE:-ubuntu:24.04}; tag=${BUILDER_TAG:-builder/worker:ubuntu-24.04} ;;
  *) echo "build-worker-image: unknown OS '$os': use debian or ubuntu" >&2; exit 1 ;;
esac

cd "$(dirname "$0")/.."
[ -d node_modules ] || { echo "build-worker-image: no node_modules: run npm ci first" >&2; exit 1; }
node=$(command -v node) || { echo "build-worker-image: node is not on PATH" >&2; exit 1; }

context=$(mktemp -d "${TMPDIR:-/tmp}/builder-image.XXXXXX")
trap 'rm -rf "$context"' EXIT
trap 'exit 130' INT TERM

npm run build --silent -- --outDir "$context/app/dist"
cp "$(readlink -f "$node")" "$context/node"
cp package.json package-lock.json "$context/app/"
rm -rf "$context/app/dist/bench" "$context/app/dist/bin/builder-dev.js"
cp -a node_modules "$context/app/"
(cd "$context/app" && npm prune --omit=dev --ignore-scripts --offline --no-audit --no-fund >/dev/null)

echo "build-worker-image: building $tag from $base with $engine"
# The classic builder: it needs nothing beyond the daemon (no buildx plugin, no registry).
DOCKER_BUILDKIT=0 "$engine" build --quiet --build-arg "BASE=$base" -f "$os/Containerfile" -t "$tag" "$context" >/dev/null
echo "build-worker-image: $tag is ready"
