#!/usr/bin/env bash
# What the benchmarks need beyond the tests: squid, haproxy, nginx, wrk, ab and valgrind, without letting Debian start squid or
# nginx as services in the root namespace (the benchmarks start their own, inside a lab namespace).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
missing=()
for pkg in squid haproxy nginx wrk apache2-utils valgrind; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
