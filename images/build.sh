#!/usr/bin/env bash
# Build the images with podman as root on this kind of machine (no Docker daemon):
#   bash images/build.sh            -> localhost/egress-router-init:latest, localhost/egress-router-proxy:latest
# Public builds need none of this: `podman build -f Containerfile.init -t egress-router-init .` (and .proxy)
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(mktemp)}
printf '[containers]\ndefault_ulimits = []\n' > "$CONTAINERS_CONF"
podman() { command podman --runtime runc --cgroup-manager=cgroupfs "$@"; }
bash images/build-local-base.sh
ca=/etc/ssl/certs/ca-certificates.crt
for image in init proxy; do
  podman build --pull=never --network host --volume "$ca:$ca:ro" -f "Containerfile.$image" -t "egress-router-$image" .
done
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '/egress-router-(init|proxy):latest '
