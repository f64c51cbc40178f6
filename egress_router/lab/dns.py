"""dnsmasq in the lab: the cluster DNS (in a pod behind a Service address) and the site's DNS server
outside the cluster, each serving a hosts file with 1 s TTLs that can be changed at will."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from egress_router.lab.topology import Lab, Process

DNS = "203.0.113.53"  # the site's DNS server, reached from pods only through the egress interface or the node's NAT
DNS6 = "2001:db8:113::53"  # its IPv6 twin (topology.v6(DNS)), in a dual-stack lab: answers A and AAAA records alike


class DnsServer:
    def __init__(self, lab: Lab, hosts: str, *, role: str = "server", address: str = DNS, options: tuple[str, ...] = ()) -> None:
        self.lab = lab
        self.role = role
        self.address = address
        self.options = options
        self.hosts = os.path.join(lab.workdir(), f"hosts-{role}-{address}")
        self._write(hosts)
        self.proc: Process | None = None

    @classmethod
    def site(cls, lab: Lab, hosts: str, *, ipv6: bool = False) -> DnsServer:
        """The site's DNS server, on an address of its own in the server namespace (DNS6, `ipv6`: a dual-stack lab's,
        for pods whose resolv.conf names an IPv6 server). `hosts` may hold IPv6 addresses (AAAA records) either way."""
        if ipv6:
            lab.ip("server", "addr", "add", f"{DNS6}/64", "dev", "eth0", "nodad")
            return cls(lab, hosts, address=DNS6)
        lab.ip("server", "addr", "add", f"{DNS}/24", "dev", "eth0")
        return cls(lab, hosts)

    def _write(self, text: str) -> None:
        with open(self.hosts, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(self.hosts, 0o644)

    def start(self) -> DnsServer:
        argv = [
            "dnsmasq",
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            f"--addn-hosts={self.hosts}",
            "--local-ttl=1",
            "--conf-file=/dev/null",
            f"--listen-address={self.address}",
            "--bind-interfaces",
            "--pid-file=",
            "--user=root",
            "--log-facility=-",
            *self.options,
        ]
        self.proc = self.lab.start_in(self.role, argv)
        self.lab.wait_for_port(self.role, self.address, 53, process=self.proc)
        return self

    def set(self, text: str) -> None:
        """New records; dnsmasq re-reads its hosts file on SIGHUP."""
        assert self.proc is not None
        self._write(text)
        os.kill(self.proc.popen.pid, signal.SIGHUP)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.popen.terminate()
        self.proc.popen.wait(5)
