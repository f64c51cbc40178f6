"""A cluster in network namespaces, shaped like the blog posts' experiment (see README, "The lab").

    client pod (eth0 10.128.0.10/23) ─┐
    router pod (eth0 10.128.0.20/23) ─┴─ node: cbr0 10.128.0.1/23, forwards, masquerades the pods
                                         out of its eth0 192.168.12.11/24
    node eth0 ── lan (bridge) ── gateway (192.168.12.1 | 203.0.113.1) ── server (203.0.113.x)

The gateway is the site firewall: only the egress range 192.168.12.96/27 may reach the protected
servers; the public server 203.0.113.50 answers anyone. Everything lives in namespaces named
`<prefix>-<role>` and is removed by `close()`, including the processes started in them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from egress_router.lab.netns import socket_in

POD_PREFIX = 23
NODE_IP = "192.168.12.11"
GATEWAY_IP = "192.168.12.1"
EGRESS_RANGE = "192.168.12.96/27"
EGRESS_SOURCE = "192.168.12.99"
CLIENT_IP = "10.128.0.10"
ROUTER_IP = "10.128.0.20"
PROTECTED_SERVERS = ("203.0.113.25", "203.0.113.26", "203.0.113.27")
PUBLIC_SERVER = "203.0.113.50"
SERVER_PORTS = {"tcp": (53, 80, 443, 5432, 8080, 9000), "udp": (53, 5353)}

NODE_NFT = """
table ip lab {
  chain post {
    type nat hook postrouting priority 100
    ip saddr 10.128.0.0/23 oifname "eth0" masquerade
  }
}
"""
FIREWALL_NFT = f"""
table inet site {{
  chain forward {{
    type filter hook forward priority 0; policy accept
    ct state established,related accept
    ip daddr {PUBLIC_SERVER} accept
    ip saddr {EGRESS_RANGE} accept
    ip daddr 203.0.113.0/24 reject with icmpx type admin-prohibited
  }}
}}
"""


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

    # naming and running -------------------------------------------------------------------------

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def ip(self, role: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["ip", "-n", self.ns(role), *args], check=check)

    def exec_argv(self, role: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(role), *argv]

    def run_in(self, role: str, argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.exec_argv(role, argv), env=env, capture_output=True, text=True, timeout=timeout)

    def start_in(self, role: str, argv: list[str], *, ready_line: str | None = None, env: dict[str, str] | None = None) -> Process:
        """Start a process in a namespace (own process group, stopped by close()); its output goes to files."""
        if self.logdir is None:
            self.logdir = tempfile.mkdtemp(prefix=f"{self.prefix}-logs-")
        base = os.path.join(self.logdir, f"{role}-{len(self.processes)}")
        with open(base + ".out", "wb") as out, open(base + ".err", "wb") as err:
            popen = subprocess.Popen(self.exec_argv(role, argv), stdout=out, stderr=err, env=env, start_new_session=True)
        proc = Process(popen, base + ".out", base + ".err")
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

    def veth(self, role: str, name: str, peer_role: str, peer_name: str) -> None:
        self.ip(role, "link", "add", name, "type", "veth", "peer", "name", peer_name, "netns", self.ns(peer_role))

    def up(self, role: str, dev: str, *addresses: str) -> None:
        for address in addresses:
            self.ip(role, "addr", "add", address, "dev", dev, "nodad")
        self.ip(role, "link", "set", dev, "up")

    def add_pod(self, role: str, address: str) -> None:
        """A pod on the node's bridge: eth0 with `address`, default route via the node."""
        self.add_namespace(role)
        self.veth(role, "eth0", "node", role)
        self.ip("node", "link", "set", role, "master", "cbr0", "up")
        self.up(role, "eth0", f"{address}/{POD_PREFIX}")
        self.ip(role, "route", "add", "default", "via", "10.128.0.1")

    def add_router(self, role: str, address: str, env: dict[str, str]) -> None:
        """A router pod with a macvlan, set up by the real `egress-router init` with `env`."""
        self.add_pod(role, address)
        self.add_macvlan(role)
        environment = {k: v for k, v in os.environ.items() if not k.startswith("EGRESS_")}
        environment.update(env)
        done = self.run_in(role, [sys.executable, "-m", "egress_router", "init"], env=environment)
        if done.returncode != 0:
            raise LabError(f"egress-router init failed in {role}: {done.stderr.strip()}")

    def add_macvlan(self, role: str, name: str = "macvlan0", mode: str = "bridge") -> None:
        """What the SDN does for the assign-macvlan annotation: a macvlan on the node's eth0, moved into the pod."""
        temporary = "mv" + secrets.token_hex(4)
        self.ip("node", "link", "add", temporary, "link", "eth0", "type", "macvlan", "mode", mode)
        self.ip("node", "link", "set", temporary, "netns", self.ns(role))
        self.ip(role, "link", "set", temporary, "name", name)

    def build(self, *, router: bool = True, macvlan: bool = True) -> Lab:
        try:
            self._build(router=router, macvlan=macvlan)
        except BaseException:
            self.close()
            raise
        return self

    def _build(self, *, router: bool, macvlan: bool) -> None:
        for role in ("node", "lan", "gw", "server"):
            self.add_namespace(role)
        self.ip("lan", "link", "add", "br0", "type", "bridge")
        self.up("lan", "br0")
        self.veth("node", "eth0", "lan", "node")
        self.ip("lan", "link", "set", "node", "master", "br0", "up")
        self.ip("node", "link", "add", "cbr0", "type", "bridge")
        self.up("node", "cbr0", f"10.128.0.1/{POD_PREFIX}")
        self.up("node", "eth0", f"{NODE_IP}/24")
        self.ip("node", "route", "add", "default", "via", GATEWAY_IP)
        self.sysctl("node", "net.ipv4.ip_forward", "1")
        run(self.exec_argv("node", ["nft", "-f", "-"]), input=NODE_NFT)

        self.veth("gw", "eth0", "lan", "gw")
        self.ip("lan", "link", "set", "gw", "master", "br0", "up")
        self.up("gw", "eth0", f"{GATEWAY_IP}/24")
        self.veth("gw", "eth1", "server", "eth0")
        self.up("gw", "eth1", "203.0.113.1/24")
        self.sysctl("gw", "net.ipv4.ip_forward", "1")
        run(self.exec_argv("gw", ["nft", "-f", "-"]), input=FIREWALL_NFT)

        servers = (*PROTECTED_SERVERS, PUBLIC_SERVER)
        self.up("server", "eth0", *(f"{s}/24" for s in servers))
        self.ip("server", "route", "add", "default", "via", "203.0.113.1")
        specs = [f"{proto}:{s}:{port}" for s in servers for proto, ports in SERVER_PORTS.items() for port in ports]
        self.python_in("server", "egress_router.lab.whoami", *specs, ready_line="ready")

        self.add_pod("client", CLIENT_IP)
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

    def tcp(self, role: str, host: str, port: int, payload: bytes = b"", timeout: float = 3.0) -> Seen:
        """Connect from `role`, return what the server saw; raises OSError when it cannot connect."""
        with socket_in(self.ns(role)) as sock:
            sock.settimeout(timeout)
            sock.connect((host, port))
            reader = sock.makefile("rb")
            line = reader.readline()
            if not line:
                raise ConnectionAbortedError(f"{host}:{port} closed the connection without an answer")
            seen = Seen.parse(line)
            if payload:
                sock.sendall(payload)
            return seen

    def udp(self, role: str, host: str, port: int, timeout: float = 2.0, tries: int = 3) -> Seen:
        with socket_in(self.ns(role), kind=socket.SOCK_DGRAM) as sock:
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
        nat = run(self.exec_argv(role, ["iptables-legacy-save", "-t", "nat"]), check=False).stdout
        nat_rules = "\n".join(line for line in nat.splitlines() if not line.startswith("#"))
        forward = run(self.exec_argv(role, ["cat", "/proc/sys/net/ipv4/ip_forward"])).stdout.strip()
        return {
            "links": self.ip(role, "-br", "link").stdout,
            "addresses": self.ip(role, "-br", "addr").stdout,
            "routes": self.ip(role, "route", "show", "table", "all").stdout,
            "nat": nat_rules,
            "ip_forward": forward,
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
                try:
                    os.killpg(proc.popen.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
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
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

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
