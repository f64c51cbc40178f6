"""A two-node cluster in network namespaces (see README, "The lab").

    client pod (eth0 10.128.0.10/23) ─┐
    router pod (eth0 10.128.0.20/23) ─┴─ node: cbr0 10.128.0.1/23 (openshift-sdn-like: one flat bridge),
    routed pods (eth0 10.128.2.x/32) ──── node: one veth each, proxy ARP (Calico-like: only a default route)
    node  eth0 192.168.12.11 ─┐
    node2 eth0 192.168.12.12 ─┴─ lan (bridge) ── gateway (192.168.12.1 | 203.0.113.1) ── server (203.0.113.x)
    node2's routed pods: client2 10.128.4.10, the cluster DNS 10.128.4.53 behind Service 172.30.0.10

Each node routes the other's pods (10.128.0.0/22 and 10.128.4.0/22) through the lan without NAT,
DNATs Service addresses to their pods (as kube-proxy does) and masquerades only what leaves the
cluster network. The gateway is the site firewall: only the egress range 192.168.12.96/27 may reach
the protected servers; the public server 203.0.113.50 answers anyone; pod addresses never appear on
the site network (anti-spoofing), so a reply that leaves a pod by the wrong interface is lost, as in a
real cluster. Everything lives in namespaces named `<prefix>-<role>` and is removed by `close()`,
including the processes started in them.

`Lab(ipv6=True)` makes the same cluster dual-stack: every IPv4 address above also has the IPv6 address
`v6()` maps it to (pods fd00:10:128:<third octet>::<fourth>, the lan 2001:db8:12::<last>, the servers
2001:db8:113::<last>, Services fd00:10:96::<third>:<fourth>, a routed pod's next hop fe80::1), with the
same routes, masquerading, Service DNAT and site firewall (egress range 2001:db8:12::96 to ::127).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_network
from typing import Any

from egress_router.init import arp
from egress_router.lab import router_advert
from egress_router.lab.dns import DnsServer
from egress_router.lab.netns import entered, family_of, socket_in

POD_PREFIX = 23
NODE_IP = "192.168.12.11"
NODE2_IP = "192.168.12.12"
CLUSTER_NETWORK = "10.128.0.0/14"
NODE_PODS = "10.128.0.0/22"  # the bridge's 10.128.0.0/23 and routed pods in 10.128.2.0/23
NODE2_PODS = "10.128.4.0/22"
SERVICE_NETWORK = "172.30.0.0/16"
ROUTED_POD_GATEWAY = "169.254.1.1"  # Calico's: a next hop nobody has, answered by proxy ARP on the node
CLUSTER_DNS = "172.30.0.10"
CLUSTER_DNS_POD = "10.128.4.53"
CLIENT2_IP = "10.128.4.10"
CLUSTER_SEARCH = "default.svc.cluster.local svc.cluster.local cluster.local"
#: What Kubernetes writes into every pod's /etc/resolv.conf (dnsPolicy: ClusterFirst).
POD_RESOLV_CONF = f"search {CLUSTER_SEARCH}\nnameserver {CLUSTER_DNS}\noptions ndots:5\n"
#: Names only the cluster DNS knows (the site's DNS server does not).
CLUSTER_HOSTS = """203.0.113.25 api.partner.test
203.0.113.26 db.partner.test
"""
GATEWAY_IP = "192.168.12.1"
EGRESS_RANGE = "192.168.12.96/27"
EGRESS_SOURCE = "192.168.12.99"
CLIENT_IP = "10.128.0.10"
ROUTER_IP = "10.128.0.20"
PROTECTED_SERVERS = ("203.0.113.25", "203.0.113.26", "203.0.113.27")
PUBLIC_SERVER = "203.0.113.50"
SERVER_PORTS = {"tcp": (53, 80, 443, 5432, 8080, 9000), "udp": (53, 5353)}


def node_nat(table: str, family: str, cluster: str) -> str:
    """The node's NAT: Service chains (filled by Lab.add_service) and masquerade of pods leaving the cluster; `family`
    is nft's `ip` or `ip6`."""
    return f"""
table {family} {table} {{
  chain pre {{
    type nat hook prerouting priority -100
  }}
  chain out {{
    type nat hook output priority -100
  }}
  chain post {{
    type nat hook postrouting priority 100
    {family} saddr {cluster} {family} daddr != {cluster} oifname "eth0" masquerade
  }}
}}
"""


def site_firewall(table: str, family: str, cluster: str, server: str, egress: str, outside: str, first: str = "") -> str:
    """The site firewall: only the egress range (and replies) reach the outside, besides one public server."""
    return f"""
table inet {table} {{
  chain forward {{
    type filter hook forward priority 0; policy accept
{first}    {family} saddr {cluster} drop
    ct state established,related accept
    {family} daddr {server} accept
    {family} saddr {egress} accept
    {family} daddr {outside} reject with icmpx type admin-prohibited
  }}
}}
"""


NODE_NFT = node_nat("lab", "ip", CLUSTER_NETWORK)
FIREWALL_NFT = site_firewall("site", "ip", CLUSTER_NETWORK, PUBLIC_SERVER, EGRESS_RANGE, "203.0.113.0/24")


#: How long `init` probes for its address in the lab, unless a test says otherwise: answers cross the lab's bridges in
#: microseconds, and the default 1 s would add a second to every router pod the tests set up.
LAB_PROBE_TIME = "200ms"


# IPv6 (Lab(ipv6=True)) ------------------------------------------------------------------------
CLUSTER_NETWORK6 = "fd00:10:128::/48"
SERVICE_NETWORK6 = "fd00:10:96::/112"
#: The twin of EGRESS_RANGE, .96 to .127 as written (hex digits, so a range rather than a prefix).
EGRESS_RANGE6 = "2001:db8:12::96-2001:db8:12::127"
SERVER_NETWORK6 = "2001:db8:113::/64"


def v6(address: str) -> str:
    """The lab's IPv6 twin of one of its IPv4 addresses (or networks, `a.b.c.d/len`)."""
    text, slash, length = address.partition("/")
    a, b, c, d = text.split(".")
    if (a, b) == ("10", "128"):
        mapped = f"fd00:10:128:{c}::{d}"
    elif (a, b) == ("172", "30"):
        mapped = f"fd00:10:96::{c}:{d}"
    elif (a, b, c) == ("192", "168", "12"):
        mapped = f"2001:db8:12::{d}"
    elif (a, b, c) == ("203", "0", "113"):
        mapped = f"2001:db8:113::{d}"
    elif text == ROUTED_POD_GATEWAY:
        mapped = "fe80::1"
    else:
        raise ValueError(f"the lab has no IPv6 twin of {address}")
    return str(IPv6Address(mapped)) if not slash else str(ip_network(f"{mapped}/{NETWORK_LENGTHS6[address]}", strict=False))


#: The IPv6 prefix lengths of the lab's IPv4 networks (`v6()` of a network).
NETWORK_LENGTHS6 = {NODE_PODS: 62, NODE2_PODS: 62, f"10.128.0.0/{POD_PREFIX}": 64, CLUSTER_NETWORK: 48}

NODE_NFT6 = node_nat("lab6", "ip6", CLUSTER_NETWORK6)
FIREWALL_NFT6 = site_firewall(
    "site6", "ip6", CLUSTER_NETWORK6, v6(PUBLIC_SERVER), EGRESS_RANGE6, SERVER_NETWORK6, first="    meta nfproto ipv4 accept\n"
)


def environment(**overrides: str) -> dict[str, str]:
    """This process's environment without any EGRESS_* variable or HOSTNAME (so nothing leaks into a lab command), plus
    `overrides`. EGRESS_SHUTDOWN_DELAY is 0 unless given: nothing in the lab waits for Service rules to change.
    EGRESS_ROUTER_PROBE_TIME is the lab's (LAB_PROBE_TIME) unless given."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("EGRESS_") and k != "HOSTNAME"}
    return {**kept, "EGRESS_SHUTDOWN_DELAY": "0", "EGRESS_ROUTER_PROBE_TIME": LAB_PROBE_TIME, **overrides}


class LabError(RuntimeError):
    pass


def run(argv: list[str], *, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, input=input, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done


@dataclass
class Seen:
    """What the whoami server reported for one connection or datagram."""

    proto: str
    server: str
    port: int
    client: str

    @classmethod
    def parse(cls, line: bytes) -> Seen:
        data = json.loads(line)
        return cls(data["proto"], data["server"], data["port"], data["client"])


@dataclass
class Process:
    """A process started in the lab, with its output in files (never a pipe nobody reads)."""

    popen: subprocess.Popen[bytes]
    out_path: str
    err_path: str
    argv: list[str] = field(default_factory=list)  # as given to start_in (without the namespace)

    def stdout(self) -> str:
        with open(self.out_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stderr(self) -> str:
        with open(self.err_path, encoding="utf-8", errors="replace") as f:
            return f.read()


@dataclass
class Lab:
    prefix: str = field(default_factory=lambda: "er" + secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    logdir: str | None = None
    cluster_dns: DnsServer | None = None
    ipv6: bool = False  # dual-stack: every address also has its v6() twin
    cluster_dns6: DnsServer | None = None

    # naming and running -------------------------------------------------------------------------

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def ip(self, role: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["ip", "-n", self.ns(role), *args], check=check)

    def exec_argv(self, role: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(role), *argv]

    def run_in(
        self, role: str, argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.exec_argv(role, argv), env=env, capture_output=True, text=True, timeout=timeout)

    def workdir(self) -> str:
        """A folder for the lab's files (process output, hosts files), removed by close()."""
        if self.logdir is None:
            self.logdir = tempfile.mkdtemp(prefix=f"{self.prefix}-logs-")
            os.chmod(self.logdir, 0o755)  # dnsmasq reads its hosts file here after dropping privileges
        return self.logdir

    def start_in(self, role: str, argv: list[str], *, ready_line: str | None = None, env: dict[str, str] | None = None) -> Process:
        """Start a process in a namespace (own process group, stopped by close()); its output goes to files."""
        base = os.path.join(self.workdir(), f"{role}-{len(self.processes)}")
        with open(base + ".out", "wb") as out, open(base + ".err", "wb") as err:
            popen = subprocess.Popen(self.exec_argv(role, argv), stdout=out, stderr=err, env=env, start_new_session=True)
        proc = Process(popen, base + ".out", base + ".err", argv)
        self.processes.append(proc)
        if ready_line is not None:
            deadline = time.monotonic() + 15
            while ready_line not in proc.stdout():
                if popen.poll() is not None or time.monotonic() > deadline:
                    raise LabError(f"{' '.join(argv)} did not start: {proc.stderr().strip()[-500:]}")
                time.sleep(0.02)
        return proc

    def python_in(self, role: str, module: str, *args: str, **kwargs: Any) -> Process:
        return self.start_in(role, [sys.executable, "-m", module, *args], **kwargs)

    def sysctl(self, role: str, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        run(self.exec_argv(role, ["sh", "-c", f"echo {value} > {path}"]))

    # building ----------------------------------------------------------------------------------

    def add_namespace(self, role: str) -> None:
        self.namespaces.append(self.ns(role))  # first, so an interrupt right after the add still cleans it
        run(["ip", "netns", "add", self.ns(role)])
        self.ip(role, "link", "set", "lo", "up")
        # a new namespace copies the machine's IPv4 settings (net.core.devconf_inherit_init_net=0): start from the
        # kernel's default whatever this machine forwards, so what init sets is what the tests see
        self.sysctl(role, "net.ipv4.ip_forward", "0")

    def veth(self, role: str, name: str, peer_role: str, peer_name: str) -> None:
        self.ip(role, "link", "add", name, "type", "veth", "peer", "name", peer_name, "netns", self.ns(peer_role))

    def up(self, role: str, dev: str, *addresses: str) -> None:
        # no duplicate address detection, for the kernel's own link-local address either: its local route would
        # otherwise appear about a second after the link comes up, in the middle of a test's before/after snapshots
        self.sysctl(role, f"net.ipv6.conf.{dev}.accept_dad", "0")
        for address in addresses:
            self.ip(role, "addr", "add", address, "dev", dev, "nodad")
        self.ip(role, "link", "set", dev, "up")

    def forget_neighbours(self, address: str) -> None:
        """A pod address used again: every namespace forgets the MAC it cached for the pod that had it before (a fresh
        entry would keep sending to a MAC that is gone, for seconds)."""
        addresses = [address, v6(address)] if self.ipv6 else [address]
        for name in self.namespaces:
            for known in addresses:
                run(["ip", "-n", name, "neigh", "flush", "to", known], check=False)

    def add_pod(self, role: str, address: str) -> None:
        """A pod on the node's bridge: eth0 with `address`, default route via the node."""
        self.forget_neighbours(address)
        self.add_namespace(role)
        self.write_etc(role, "resolv.conf", POD_RESOLV_CONF)
        self.veth(role, "eth0", "node", role)
        self.ip("node", "link", "set", role, "master", "cbr0", "up")
        self.up(role, "eth0", f"{address}/{POD_PREFIX}", *([f"{v6(address)}/64"] if self.ipv6 else []))
        self.ip(role, "route", "add", "default", "via", "10.128.0.1")
        if self.ipv6:
            self.ip(role, "-6", "route", "add", "default", "via", v6("10.128.0.1"))

    def add_routed_pod(self, role: str, address: str, node: str = "node") -> None:
        """A pod as Calico (or Cilium) makes one: eth0 with a /32 and nothing but a default route, via a
        next hop that only the node's proxy ARP answers; the node routes the address to the pod's veth.
        Reverse-path filtering is strict, as on RHEL nodes."""
        self.forget_neighbours(address)
        self.add_namespace(role)
        self.write_etc(role, "resolv.conf", POD_RESOLV_CONF)
        host_side = f"v{role}"[:15]
        self.veth(role, "eth0", node, host_side)
        self.up(node, host_side)
        self.sysctl(node, f"net.ipv4.conf.{host_side}.proxy_arp", "1")
        self.ip(node, "route", "add", f"{address}/32", "dev", host_side)
        self.up(role, "eth0", f"{address}/32")
        self.ip(role, "route", "add", ROUTED_POD_GATEWAY, "dev", "eth0", "scope", "link")
        self.ip(role, "route", "add", "default", "via", ROUTED_POD_GATEWAY, "dev", "eth0")
        self.sysctl(role, "net.ipv4.conf.all.rp_filter", "1")
        if self.ipv6:  # Calico's IPv6 shape: a /128 and a default route via a link-local next hop the node's veth has
            self.ip(node, "addr", "add", f"{v6(ROUTED_POD_GATEWAY)}/64", "dev", host_side, "nodad")
            self.ip(node, "-6", "route", "add", f"{v6(address)}/128", "dev", host_side)
            self.ip(role, "addr", "add", f"{v6(address)}/128", "dev", "eth0", "nodad")
            self.ip(role, "-6", "route", "add", "default", "via", v6(ROUTED_POD_GATEWAY), "dev", "eth0")

    def add_service(self, address: str, backend: str) -> None:
        """A Service address: every node DNATs it to `backend` (all ports), as kube-proxy does; IPv4 or IPv6."""
        table, match = ("ip6 lab6", "ip6") if ":" in address else ("ip lab", "ip")
        for node in ("node", "node2"):
            for chain in ("pre", "out"):
                run(self.exec_argv(node, ["nft", "add", "rule", *table.split(), chain, match, "daddr", address, "dnat", "to", backend]))

    def add_router(self, role: str, address: str, env: dict[str, str], *, routed: bool = False) -> None:
        """A router pod with a macvlan, set up by the real `egress-router init` with `env`."""
        if routed:
            self.add_routed_pod(role, address)
        else:
            self.add_pod(role, address)
        self.add_macvlan(role)
        done = self.run_in(role, [sys.executable, "-m", "egress_router", "init"], env=environment(**env))
        if done.returncode != 0:
            raise LabError(f"egress-router init failed in {role}: {done.stderr.strip()}")

    def add_lan_host(self, role: str, address: str) -> str:
        """A host on the site network (the lan) with `address`/24, say one given an address that a router holds;
        returns its MAC. Like any Linux host it answers ARP for its address, but announces it only when told."""
        self.add_namespace(role)
        self.veth(role, "eth0", "lan", role)
        self.ip("lan", "link", "set", role, "master", "br0", "up")
        self.up(role, "eth0", f"{address}/24")
        return self.link_mac(role, "eth0")

    def announce(self, role: str, address: str, dev: str = "eth0") -> None:
        """A gratuitous ARP for `address` from `dev` of `role`, as a host that takes an address sends one."""
        with entered(self.ns(role)):
            arp.announce(dev, IPv4Address(address))

    def advertise_router(self, role: str, prefix: str, dev: str = "eth0", lifetime: int = 1800) -> None:
        """An IPv6 router advertisement from `dev` of `role` to all nodes on its link, as a site router sends them: itself
        as default router for `lifetime` seconds, and `prefix` (a /64) for SLAAC."""
        message = router_advert.advertisement(IPv6Network(prefix), lifetime, bytes.fromhex(self.link_mac(role, dev).replace(":", "")))
        with entered(self.ns(role)):
            router_advert.advertise(dev, message)

    def add_macvlan(self, role: str, name: str = "macvlan0", mode: str = "bridge", node: str = "node") -> None:
        """What the SDN does for the assign-macvlan annotation (or Multus for an attachment, with name net1):
        a macvlan on the node's eth0, moved into the pod."""
        temporary = "mv" + secrets.token_hex(4)
        self.ip(node, "link", "add", temporary, "link", "eth0", "type", "macvlan", "mode", mode)
        self.ip(node, "link", "set", temporary, "netns", self.ns(role))
        self.ip(role, "link", "set", temporary, "name", name)

    def build(self, *, router: bool = True, macvlan: bool = True) -> Lab:
        try:
            self._build(router=router, macvlan=macvlan)
        except BaseException:
            self.close()
            raise
        return self

    def add_node(self, role: str, address: str, other_pods: str, other_node: str) -> None:
        """A node on the lan: forwards, routes the other node's pods to it, masquerades what leaves the cluster."""
        self.add_namespace(role)
        self.veth(role, "eth0", "lan", role)
        self.ip("lan", "link", "set", role, "master", "br0", "up")
        self.up(role, "eth0", f"{address}/24", *([f"{v6(address)}/64"] if self.ipv6 else []))
        self.ip(role, "route", "add", "default", "via", GATEWAY_IP)
        self.ip(role, "route", "add", other_pods, "via", other_node)
        self.sysctl(role, "net.ipv4.ip_forward", "1")
        run(self.exec_argv(role, ["nft", "-f", "-"]), input=NODE_NFT)
        if self.ipv6:
            self.ip(role, "-6", "route", "add", "default", "via", v6(GATEWAY_IP))
            self.ip(role, "-6", "route", "add", v6(other_pods), "via", v6(other_node))
            self.sysctl(role, "net.ipv6.conf.all.forwarding", "1")
            run(self.exec_argv(role, ["nft", "-f", "-"]), input=NODE_NFT6)

    def _build(self, *, router: bool, macvlan: bool) -> None:
        for role in ("lan", "gw", "server"):
            self.add_namespace(role)
        self.ip("lan", "link", "add", "br0", "type", "bridge")
        self.up("lan", "br0")
        self.add_node("node", NODE_IP, NODE2_PODS, NODE2_IP)
        self.ip("node", "link", "add", "cbr0", "type", "bridge")
        self.up("node", "cbr0", f"10.128.0.1/{POD_PREFIX}", *([f"{v6('10.128.0.1')}/64"] if self.ipv6 else []))
        self.add_node("node2", NODE2_IP, NODE_PODS, NODE_IP)

        self.veth("gw", "eth0", "lan", "gw")
        self.ip("lan", "link", "set", "gw", "master", "br0", "up")
        self.up("gw", "eth0", f"{GATEWAY_IP}/24", *([f"{v6(GATEWAY_IP)}/64"] if self.ipv6 else []))
        self.veth("gw", "eth1", "server", "eth0")
        self.up("gw", "eth1", "203.0.113.1/24", *([f"{v6('203.0.113.1')}/64"] if self.ipv6 else []))
        self.sysctl("gw", "net.ipv4.ip_forward", "1")
        run(self.exec_argv("gw", ["nft", "-f", "-"]), input=FIREWALL_NFT)
        if self.ipv6:
            self.sysctl("gw", "net.ipv6.conf.all.forwarding", "1")
            run(self.exec_argv("gw", ["nft", "-f", "-"]), input=FIREWALL_NFT6)

        servers = (*PROTECTED_SERVERS, PUBLIC_SERVER)
        servers6 = tuple(v6(s) for s in servers) if self.ipv6 else ()
        self.up("server", "eth0", *(f"{s}/24" for s in servers), *(f"{s}/64" for s in servers6))
        self.ip("server", "route", "add", "default", "via", "203.0.113.1")
        if self.ipv6:
            self.ip("server", "-6", "route", "add", "default", "via", v6("203.0.113.1"))
        specs = [f"{proto}:{s}:{port}" for s in servers + servers6 for proto, ports in SERVER_PORTS.items() for port in ports]
        self.python_in("server", "egress_router.lab.whoami", *specs, ready_line="ready")

        self.add_pod("client", CLIENT_IP)
        self.add_routed_pod("client2", CLIENT2_IP, node="node2")
        self.add_routed_pod("coredns", CLUSTER_DNS_POD, node="node2")
        self.add_service(CLUSTER_DNS, CLUSTER_DNS_POD)
        # CoreDNS-like: names under cluster.local (and the lab's .test names it lacks) get NXDOMAIN, so the
        # search list of a pod's resolv.conf is walked as in a cluster
        self.cluster_dns = DnsServer(
            self, CLUSTER_HOSTS, role="coredns", address=CLUSTER_DNS_POD, options=("--local=/cluster.local/", "--local=/test/")
        )
        self.cluster_dns.start()
        if self.ipv6:  # the cluster DNS's IPv6 Service, for pods whose resolv.conf names it
            self.add_service(v6(CLUSTER_DNS), v6(CLUSTER_DNS_POD))
            self.cluster_dns6 = DnsServer(
                self, CLUSTER_HOSTS, role="coredns", address=v6(CLUSTER_DNS_POD), options=self.cluster_dns.options
            )
            self.cluster_dns6.start()
        if router:
            self.add_pod("router", ROUTER_IP)
            if macvlan:
                self.add_macvlan("router")

    def write_etc(self, role: str, name: str, text: str) -> None:
        """A file that `ip netns exec` shows as /etc/<name> inside the namespace (hosts, resolv.conf)."""
        folder = f"/etc/netns/{self.ns(role)}"
        os.makedirs(folder, exist_ok=True)
        with open(f"{folder}/{name}", "w", encoding="utf-8") as f:
            f.write(text)

    def remove_namespace(self, role: str) -> None:
        name = self.ns(role)
        self.kill_namespace_processes(name)
        run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)
        if name in self.namespaces:
            self.namespaces.remove(name)

    # probing -----------------------------------------------------------------------------------

    def tcp(self, role: str, host: str, port: int, payload: bytes = b"", timeout: float = 3.0, source: str | None = None) -> Seen:
        """Connect from `role` (from its address `source`, when given), return what the server saw;
        raises OSError when it cannot connect."""
        with socket_in(self.ns(role), family_of(host)) as sock:
            sock.settimeout(timeout)
            if source is not None:
                sock.bind((source, 0))
            sock.connect((host, port))
            reader = sock.makefile("rb")
            line = reader.readline()
            if not line:
                raise ConnectionAbortedError(f"{host}:{port} closed the connection without an answer")
            seen = Seen.parse(line)
            if payload:
                sock.sendall(payload)
            return seen

    def wait_for_port(self, role: str, host: str, port: int, *, timeout: float = 10.0, process: Process | None = None) -> None:
        """Return once a TCP connection from `role` to `host`:`port` is accepted (then closed). Raises LabError
        after `timeout` seconds, or as soon as `process` (the one meant to listen there, when given) has exited."""
        deadline = time.monotonic() + timeout
        while True:
            with socket_in(self.ns(role), family_of(host)) as sock:
                sock.settimeout(min(1.0, timeout))
                try:
                    sock.connect((host, port))
                    return
                except OSError as error:
                    last = error
            if process is not None and (code := process.popen.poll()) is not None:
                raise LabError(
                    f"{' '.join(process.argv)} exited with code {code} before {host}:{port} accepted a connection from "
                    f"{self.ns(role)}: {process.stderr().strip()[-500:]}"
                )
            if time.monotonic() > deadline:
                raise LabError(f"nothing accepted a connection to {host}:{port} from {self.ns(role)} within {timeout:g} s ({last})")
            time.sleep(0.05)

    def udp(self, role: str, host: str, port: int, timeout: float = 2.0, tries: int = 3) -> Seen:
        with socket_in(self.ns(role), family_of(host), socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout / tries)
            for attempt in range(tries):
                sock.sendto(b"who am i", (host, port))
                try:
                    return Seen.parse(sock.recv(4096))
                except TimeoutError:
                    if attempt == tries - 1:
                        raise
        raise AssertionError("unreachable")

    def snapshot(self, role: str) -> dict[str, str]:
        """Everything `init` may touch in a namespace, as comparable text."""

        def table(name: str, save: str = "iptables-legacy-save") -> str:
            saved = run(self.exec_argv(role, [save, "-t", name]), check=False).stdout
            lines = (re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in saved.splitlines() if not line.startswith("#"))
            return "\n".join(lines)  # packet counters of built-in chains move with any stray packet

        def sysctl(key: str) -> str:
            return run(self.exec_argv(role, ["cat", "/proc/sys/" + key.replace(".", "/")])).stdout.strip()

        def routes(*family: str) -> str:
            """The kernel's local (and, forwarding, anycast) routes of its own IPv6 link-local addresses appear when their
            DAD ends, a second or two after a link comes up (on links the lab did not bring up: the egress interface):
            not something init touches, so not compared."""
            shown = self.ip(role, *family, "route", "show", "table", "all").stdout.splitlines()
            return "\n".join(line for line in shown if not line.startswith(("local fe80:", "anycast fe80:")))

        ruleset = run(self.exec_argv(role, ["nft", "list", "ruleset"])).stdout
        return {
            "links": self.ip(role, "-br", "link").stdout,
            "addresses": self.ip(role, "-br", "addr").stdout,
            "routes": routes(),  # both families
            "rules": self.ip(role, "rule", "show").stdout,
            "nat": table("nat"),
            "mangle": table("mangle"),
            "nftables": re.sub(r"counter packets \d+ bytes \d+", "counter", ruleset),  # rule counters move with traffic
            "ip_forward": sysctl("net.ipv4.ip_forward"),
            "rp_filter": sysctl("net.ipv4.conf.eth0.rp_filter"),
            "routes6": routes("-6"),
            "rules6": self.ip(role, "-6", "rule", "show").stdout,
            "nat6": table("nat", "ip6tables-legacy-save"),
            "mangle6": table("mangle", "ip6tables-legacy-save"),
            "forwarding6": sysctl("net.ipv6.conf.all.forwarding"),
            # every interface's: whether router advertisements are taken (init turns them off on the egress interface)
            "accept_ra": run(self.exec_argv(role, ["sh", "-c", "cd /proc/sys/net/ipv6/conf && grep . */accept_ra */autoconf"])).stdout,
        }

    def neighbour_mac(self, role: str, address: str) -> str | None:
        for entry in json.loads(self.ip(role, "-j", "neigh", "show", address).stdout or "[]"):
            if entry.get("lladdr"):
                return str(entry["lladdr"])
        return None

    def link_mac(self, role: str, dev: str) -> str:
        return str(json.loads(self.ip(role, "-j", "link", "show", dev).stdout)[0]["address"])

    # teardown ----------------------------------------------------------------------------------

    def stop_processes(self) -> None:
        for proc in self.processes:
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        for proc in self.processes:
            try:
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()
        self.processes.clear()

    def kill_namespace_processes(self, name: str) -> None:
        """Processes we did not start ourselves (the ARP repeater, say) also keep a namespace busy."""
        pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)

    def close(self) -> None:
        self.stop_processes()
        if self.logdir is not None:
            shutil.rmtree(self.logdir, ignore_errors=True)
            self.logdir = None
        for name in list(reversed(self.namespaces)):
            self.remove_namespace(name.removeprefix(self.prefix + "-"))

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
