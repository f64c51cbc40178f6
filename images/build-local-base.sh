#!/usr/bin/env bash
# Build a stand-in for the public python:3.11-slim-bookworm base image on a machine without registry
# access (the project's CI machines), with debootstrap, and tag it with the name the Containerfiles use.
#   bash images/build-local-base.sh            -> docker.io/library/python:3.11-slim-bookworm
set -euo pipefail
name=${1:-docker.io/library/python:3.11-slim-bookworm}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(mktemp)}
printf '[containers]\ndefault_ulimits = []\n' > "$CONTAINERS_CONF"
podman() { command podman --runtime runc --cgroup-manager=cgroupfs "$@"; }
if podman image exists "$name"; then
  echo "$name already exists"
  exit 0
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,ca-certificates bookworm "$root" >/dev/null
ln -sf python3 "$root/usr/bin/python"
# as Debian's slim images are: no package caches or lists, documentation, manual pages or translations
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
  "$root"/usr/share/locale/* "$root"/usr/share/info/* "$root"/var/log/*.log "$root"/var/log/apt
mkdir -p "$root"/var/lib/apt/lists/partial "$root"/var/cache/apt/archives/partial
tar -C "$root" -c . | podman import - "$name" >/dev/null
echo "built $name"
