"""IPv6 for the lab, added on request: `add_ipv6(lab)` after `Lab.build()`, `add_pod_ipv6` per router pod.

Opt-in and additive: the IPv4 lab is the same with or without it. Each IPv4 address has an IPv6 twin that reads
alike, so a test says which is which at a glance:

    pods on the node's bridge  fd00:10:128::/64 (ULA)    node fd00:10:128::1, client fd00:10:128::10
    lan                        2001:db8:12::/64          gateway ::1, node ::11, node2 ::12
    egress sources             2001:db8:12::1:0/112      192.168.12.99 -> 2001:db8:12::1:99
    outside                    2001:db8:113::/64         gateway ::1, servers ::25 ::26 ::27 ::50 (203.0.113.x)

The site firewall applies the IPv4 policy to IPv6 in a table of its own (pod addresses dropped, only the egress
sources reach the protected servers, the public one answers anyone); the node masquerades pods leaving the cluster,
as it does for IPv4. Router pods get their IPv6 egress address from `add_pod_ipv6`, standing in for `init` until it
configures IPv6 itself (issue 10); the proxies only need the pod to have it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from egress_router.lab import topology as t

if TYPE_CHECKING:
    from egress_router.lab.topology import Lab, Process

POD_NETWORK6 = "fd00:10:128::/64"
NODE_POD_GATEWAY6 = "fd00:10:128::1"
CLUSTER_NETWORK6 = "fd00:10::/32"
GATEWAY6 = "2001:db8:12::1"
NODE6 = "2001:db8:12::11"
NODE2_6 = "2001:db8:12::12"
EGRESS_RANGE6 = "2001:db8:12::1:0/112"
OUTSIDE_GATEWAY6 = "2001:db8:113::1"
SITE_DNS6 = "2001:db8:113::53"


def twin(ipv4: str) -> str:
    """The IPv6 address that stands for a lab IPv4 address (its last number written after the matching prefix)."""
    last = ipv4.rsplit(".", 1)[1]
    if ipv4.startswith("203.0.113."):
        return f"2001:db8:113::{last}"
    if ipv4.startswith("192.168.12."):
        return f"2001:db8:12::{last}" if ipv4 in (t.GATEWAY_IP, t.NODE_IP, t.NODE2_IP) else f"2001:db8:12::1:{last}"
    if ipv4.startswith("10.128.0."):
        return f"fd00:10:128::{last}"
    raise ValueError(f"no IPv6 twin for {ipv4}")


PROTECTED_SERVERS6 = tuple(twin(a) for a in t.PROTECTED_SERVERS)
PUBLIC_SERVER6 = twin(t.PUBLIC_SERVER)
CLIENT6 = twin(t.CLIENT_IP)

NODE_NFT6 = f"""
table ip6 lab6 {{
  chain post {{
    type nat hook postrouting priority 100
    ip6 saddr {CLUSTER_NETWORK6} ip6 daddr != {CLUSTER_NETWORK6} oifname "eth0" masquerade
  }}
}}
"""
FIREWALL_NFT6 = f"""
table inet site6 {{
  chain forward {{
    type filter hook forward priority 0; policy accept
    ip6 saddr {CLUSTER_NETWORK6} drop
    ct state established,related accept
    ip6 daddr {PUBLIC_SERVER6} accept
    ip6 saddr {EGRESS_RANGE6} accept
    ip6 daddr 2001:db8:113::/64 reject with icmpx type admin-prohibited
  }}
}}
"""


def add_ipv6(lab: Lab) -> Process:
    """IPv6 on the lan, the outside, node, node2, the gateway (with its firewall) and the client pod; a whoami
    server on every IPv6 server address. Returns that server's process."""
    for role in ("gw", "node", "node2"):
        lab.sysctl(role, "net.ipv6.conf.all.forwarding", "1")
    lab.up("gw", "eth0", f"{GATEWAY6}/64")
    lab.up("gw", "eth1", f"{OUTSIDE_GATEWAY6}/64")
    t.run(lab.exec_argv("gw", ["nft", "-f", "-"]), input=FIREWALL_NFT6)
    for role, address in (("node", NODE6), ("node2", NODE2_6)):
        lab.up(role, "eth0", f"{address}/64")
        lab.ip(role, "-6", "route", "add", "default", "via", GATEWAY6)
    lab.up("node", "cbr0", f"{NODE_POD_GATEWAY6}/64")
    t.run(lab.exec_argv("node", ["nft", "-f", "-"]), input=NODE_NFT6)
    servers = (*PROTECTED_SERVERS6, PUBLIC_SERVER6)
    lab.up("server", "eth0", *(f"{s}/64" for s in servers))
    lab.ip("server", "-6", "route", "add", "default", "via", OUTSIDE_GATEWAY6)
    add_pod_ipv6(lab, "client", t.CLIENT_IP)
    specs = [f"{proto}:[{s}]:{port}" for s in servers for proto, ports in t.SERVER_PORTS.items() for port in ports]
    return lab.python_in("server", "egress_router.lab.whoami", *specs, ready_line="ready")


def add_pod_ipv6(lab: Lab, role: str, pod_ip: str, source: str | None = None, egress: str = "macvlan0") -> None:
    """A pod on the node's bridge gets the IPv6 twin of `pod_ip` on eth0. A router pod (`source` given) gets the twin
    of its egress source on `egress` and its IPv6 default route there, via the site's gateway; any other pod's goes
    through the node."""
    lab.up(role, "eth0", f"{twin(pod_ip)}/64")
    if source is None:
        lab.ip(role, "-6", "route", "add", "default", "via", NODE_POD_GATEWAY6)
        return
    lab.up(role, egress, f"{twin(source)}/64")
    lab.ip(role, "-6", "route", "replace", "default", "via", GATEWAY6, "dev", egress)
