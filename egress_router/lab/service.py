"""A Service in front of several router pods, for the lab: what kube-proxy's nftables mode, the kubelet's readiness
probes and the EndpointSlice controller do together, made small.

Every node DNATs each new connection to the Service address to the next *ready* endpoint in turn
(`dnat to numgen inc mod N map { 0 : A, 1 : B }`: kube-proxy's nftables mode picks with `numgen random` instead;
in turn makes the lab's counts exact); with none ready it rejects them, as kube-proxy does. A controller thread
probes each endpoint's `/readyz` from the node every `period` seconds, as the kubelet does (an endpoint that does
not answer, its pod gone or not started yet, is not ready), and rewrites the rules on every node in one nft
transaction when the ready set changes, `propagation` seconds later: in a cluster the kubelet reports to the API
server, the EndpointSlice controller writes the slice and every node's kube-proxy reads it and syncs, which takes a
second or more, where the lab alone would take milliseconds. Established connections keep their endpoint (conntrack
remembers the translation), as in a cluster.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field

from egress_router.lab.netns import socket_in
from egress_router.lab.topology import Lab, run

log = logging.getLogger(__name__)
NODES = ("node", "node2")


def nft_rules(table: str, address: str, ready: list[str]) -> str:
    """The whole table, replaced in one transaction (`add` makes the `delete` safe when it does not exist yet)."""
    if ready:
        targets = ", ".join(f"{i} : {endpoint}" for i, endpoint in enumerate(ready))
        translate = f"ip daddr {address} dnat to numgen inc mod {len(ready)} map {{ {targets} }}"
        refuse = ""
    else:
        translate = ""
        refuse = f"ip daddr {address} reject"
    return f"""add table ip {table}
delete table ip {table}
table ip {table} {{
  chain prerouting {{
    type nat hook prerouting priority -110
    {translate}
  }}
  chain output {{
    type nat hook output priority -110
    {translate}
  }}
  chain forward {{
    type filter hook forward priority 0
    {refuse}
  }}
  chain local {{
    type filter hook output priority 0
    {refuse}
  }}
}}
"""


def probe_ready(netns: str, address: str, port: int, timeout: float) -> bool:
    """The kubelet's readiness probe: GET /readyz from the node; ready only on 200."""
    try:
        with socket_in(netns) as sock:
            sock.settimeout(timeout)
            sock.connect((address, port))
            sock.sendall(f"GET /readyz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode())
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@dataclass
class Change:
    """When the nodes' rules sent new connections to `ready` (monotonic seconds), and when the probes had decided so."""

    at: float
    ready: tuple[str, ...]
    seen: float


@dataclass
class Service:
    """A ClusterIP `address` over `endpoints` (pod addresses), readiness probed on `probe_port`."""

    lab: Lab
    name: str
    address: str
    endpoints: list[str]
    probe_port: int = 9191
    period: float = 0.5  # the readiness probe's periodSeconds
    timeout: float = 0.5  # its timeoutSeconds; failureThreshold and successThreshold are 1
    propagation: float = 0.0  # from a probe's verdict to every node's rules
    changes: list[Change] = field(default_factory=list)
    _pending: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)  # (seen, ready) not programmed yet
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    @property
    def table(self) -> str:
        return f"svc_{self.name}".replace("-", "_")

    @property
    def ready(self) -> tuple[str, ...]:
        with self._lock:
            return self.changes[-1].ready if self.changes else ()

    def start(self) -> Service:
        self.program((), time.monotonic())
        self._thread = threading.Thread(target=self._control, name=f"service-{self.name}", daemon=True)
        self._thread.start()
        return self

    def set_endpoints(self, endpoints: list[str]) -> None:
        """The pods the Service selects (a new pod of the StatefulSet, one deleted); probed from the next round."""
        with self._lock:
            self.endpoints = list(endpoints)

    def program(self, ready: tuple[str, ...], seen: float) -> None:
        for node in NODES:
            run(self.lab.exec_argv(node, ["nft", "-f", "-"]), input=nft_rules(self.table, self.address, list(ready)))
        with self._lock:
            self.changes.append(Change(time.monotonic(), ready, seen))
        log.info("service %s: ready endpoints %s", self.name, ", ".join(ready) or "none")

    def _control(self) -> None:
        next_probe = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_probe:
                next_probe = now + self.period
                with self._lock:
                    endpoints = list(self.endpoints)
                ready = tuple(e for e in endpoints if probe_ready(self.lab.ns("node"), e, self.probe_port, self.timeout))
                latest = self._pending[-1][1] if self._pending else self.ready
                if ready != latest:
                    self._pending.append((time.monotonic(), ready))
            while self._pending and time.monotonic() >= self._pending[0][0] + self.propagation:
                seen, ready = self._pending.pop(0)
                self.program(ready, seen)
            due = [next_probe, *(seen + self.propagation for seen, _ in self._pending[:1])]
            self._stop.wait(max(0.0, min(due) - time.monotonic()))

    def wait_ready(self, endpoints: list[str], timeout: float = 15.0) -> None:
        """Until exactly `endpoints` are ready (in any order)."""
        deadline = time.monotonic() + timeout
        while sorted(self.ready) != sorted(endpoints):
            if time.monotonic() > deadline:
                raise TimeoutError(f"service {self.name}: ready {list(self.ready)}, not {endpoints}, after {timeout:g} s")
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for node in NODES:
            with contextlib.suppress(OSError):
                run(self.lab.exec_argv(node, ["nft", "delete", "table", "ip", self.table]), check=False)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
