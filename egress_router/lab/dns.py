"""dnsmasq in the lab's server namespace, serving a hosts file with 1 s TTLs that can be changed at will."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from egress_router.lab.netns import socket_in
from egress_router.lab.topology import Lab, LabError, Process

DNS = "203.0.113.53"


class DnsServer:
    def __init__(self, lab: Lab, folder: Path, hosts: str) -> None:
        self.lab = lab
        lab.ip("server", "addr", "add", f"{DNS}/24", "dev", "eth0")
        self.hosts = folder / "hosts"
        self.hosts.write_text(hosts)
        folder.chmod(0o755)
        self.hosts.chmod(0o644)
        self.proc: Process | None = None

    def start(self) -> None:
        self.proc = self.lab.start_in(
            "server",
            ["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", f"--addn-hosts={self.hosts}", "--local-ttl=1", "--conf-file=/dev/null",
             f"--listen-address={DNS}", "--bind-interfaces", "--pid-file=", "--user=root", "--log-facility=-"],
        )
        deadline = time.monotonic() + 10
        while True:
            with socket_in(self.lab.ns("server")) as sock:
                try:
                    sock.connect((DNS, 53))
                    return
                except OSError:
                    if time.monotonic() > deadline:
                        raise LabError(f"dnsmasq did not start: {self.proc.stderr()[-300:]}") from None
            time.sleep(0.05)

    def set(self, text: str) -> None:
        """New records; dnsmasq re-reads its hosts file on SIGHUP."""
        self.hosts.write_text(text)
        assert self.proc is not None
        os.kill(self.proc.popen.pid, signal.SIGHUP)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.popen.terminate()
        self.proc.popen.wait(5)
