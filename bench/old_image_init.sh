#!/usr/bin/env bash
# The baseline: what the retired bash egress router image did, one iptables command per rule.
# Reads EGRESS_SOURCE, EGRESS_GATEWAY, EGRESS_DESTINATION; IPTABLES picks the binary (default iptables-legacy).
set -euo pipefail
IPTABLES=${IPTABLES:-iptables-legacy}
ip addr add "${EGRESS_SOURCE}/32" dev macvlan0
ip link set up dev macvlan0
ip route add "${EGRESS_GATEWAY}/32" dev macvlan0
ip route del default
ip route add default via "${EGRESS_GATEWAY}" dev macvlan0
echo 1 > /proc/sys/net/ipv4/ip_forward
while read -r port proto dest dport; do
  [ -z "${port}" ] && continue
  case "${port}" in \#*) continue ;; esac
  if [ -z "${proto}" ]; then
    "${IPTABLES}" -t nat -A PREROUTING -i eth0 -j DNAT --to-destination "${port}"
  else
    "${IPTABLES}" -t nat -A PREROUTING -i eth0 -p "${proto}" --dport "${port}" -j DNAT --to-destination "${dest}${dport:+:${dport}}"
  fi
done <<< "${EGRESS_DESTINATION}"
"${IPTABLES}" -t nat -A POSTROUTING -o macvlan0 -j SNAT --to-source "${EGRESS_SOURCE}"
