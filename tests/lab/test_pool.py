"""A pool of router pods behind one Service (issue 11): a StatefulSet's pods, each set up by the real `init` from one
EGRESS_SOURCE pool by its HOSTNAME ordinal and kept by the real `monitor`, behind the lab's Service stand-in (new
connections go to a ready router in turn). A client keeps opening new connections while routers stop, vanish or are
replaced; the figures of each case are printed (pytest -s shows them) and quoted in the README.
"""

from __future__ import annotations

import itertools
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from egress_router.lab import Lab
from egress_router.lab import topology as t
from egress_router.lab.service import Service
from egress_router.lab.topology import Process, environment

RULES = "80 tcp 203.0.113.25"
PERIOD = 0.5  # the readiness probes' period (periodSeconds; timeoutSeconds the same)
PROPAGATION = 1.0  # from a probe's verdict to every node's Service rules (API server, EndpointSlice, kube-proxy)
NOTICE = PERIOD + PERIOD + PROPAGATION  # the longest a router that stopped answering stays in the Service
DELAY = "3s"  # EGRESS_SHUTDOWN_DELAY: longer than that
_numbers = itertools.count(1)


@dataclass
class Router:
    """One pod of the StatefulSet `egress`: its name gives its ordinal, the ordinal its address in the pool."""

    name: str
    role: str
    ip: str
    monitor: Process


@dataclass
class StatefulSet:
    lab: Lab
    pool: str
    delay: str = DELAY
    pods: dict[int, Router] = field(default_factory=dict)

    def env(self, ordinal: int) -> dict[str, str]:
        return {"EGRESS_SOURCE": self.pool, "EGRESS_GATEWAY": t.GATEWAY_IP, "EGRESS_DESTINATION": RULES, "HOSTNAME": f"egress-{ordinal}"}

    def create(self, ordinal: int) -> Router:
        """A new pod for `ordinal` (a new pod address, as a recreated pod gets): init from the pool, then the monitor."""
        number = next(_numbers)
        role, ip = f"eg{number}", f"10.128.2.{100 + number}"
        self.lab.add_routed_pod(role, ip)
        self.lab.add_macvlan(role)
        env = self.env(ordinal)
        done = self.lab.run_in(role, [sys.executable, "-m", "egress_router", "init"], env=environment(**env, EGRESS_ROUTER_MODE="init"))
        assert done.returncode == 0, done.stderr
        argv = [sys.executable, "-m", "egress_router", "monitor"]
        monitor = self.lab.start_in(role, argv, env=environment(**env, EGRESS_SHUTDOWN_DELAY=self.delay))
        self.pods[ordinal] = Router(f"egress-{ordinal}", role, ip, monitor)
        return self.pods[ordinal]

    def terminate(self, ordinal: int) -> float:
        """What deleting the pod does: SIGTERM to its container's process (only that one, as the runtime sends it), then,
        once it has exited, the pod's network goes (the sandbox is torn down). Returns when the SIGTERM was sent."""
        router = self.pods.pop(ordinal)
        sent = time.monotonic()
        router.monitor.popen.send_signal(signal.SIGTERM)
        assert router.monitor.popen.wait(30) == 0, router.monitor.stderr()
        self.lab.remove_namespace(router.role)
        return sent

    def vanish(self, ordinal: int) -> float:
        """The pod is gone at once, with no SIGTERM and no time to leave the Service (say its process was killed and its
        network torn down). Returns when."""
        router = self.pods.pop(ordinal)
        gone = time.monotonic()
        self.lab.remove_namespace(router.role)
        return gone

    def addresses(self) -> list[str]:
        return [router.ip for _, router in sorted(self.pods.items())]

    def close(self) -> None:
        for router in self.pods.values():
            self.lab.remove_namespace(router.role)
        self.pods.clear()


@dataclass
class Attempt:
    at: float
    source: str | None  # what the server saw; None: the connection failed
    error: str = ""


class Client(threading.Thread):
    """The client pod opening a new connection to the Service every `every` seconds (each in a thread of its own, so
    one that hangs does not hold back the next), each given `timeout` to answer (generous: the machine may be busy,
    and a connection sent to a router that is gone is never answered)."""

    def __init__(self, lab: Lab, service: Service, every: float = 0.05, timeout: float = 3.0) -> None:
        super().__init__(daemon=True)
        self.lab, self.address, self.every, self.timeout = lab, service.address, every, timeout
        self.attempts: list[Attempt] = []
        self.threads: list[threading.Thread] = []
        self.done = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.done.is_set():
            attempt = threading.Thread(target=self.attempt, args=(next_at,), daemon=True)
            attempt.start()
            self.threads.append(attempt)
            next_at += self.every
            self.done.wait(max(0.0, next_at - time.monotonic()))

    def attempt(self, at: float) -> None:
        try:
            seen = self.lab.tcp("client", self.address, 80, timeout=self.timeout)
            self.attempts.append(Attempt(at, seen.client))
        except OSError as error:
            self.attempts.append(Attempt(at, None, f"{type(error).__name__}: {error}"))

    def stop(self) -> list[Attempt]:
        self.done.set()
        self.join(10)
        for attempt in self.threads:
            attempt.join(10)
        return sorted(self.attempts, key=lambda a: a.at)


def failures(attempts: list[Attempt]) -> list[Attempt]:
    return [a for a in attempts if a.source is None]


def report(case: str, since: float, attempts: list[Attempt]) -> tuple[int, float]:
    """How many new connections failed, and for how long after `since` they did (0 when none did); printed."""
    failed = failures(attempts)
    window = max(a.at + 0.0 for a in failed) - since if failed else 0.0
    after = [a for a in attempts if a.at >= since]
    errors = Counter(a.error.split(":")[0] for a in failed)
    started = ", ".join(f"{a.at - since:.2f}" for a in failed)
    print(f"\n{case}: {len(failed)} of {len(after)} new connections failed, the last {window:.2f} s after; {dict(errors)} [{started}]")
    return len(failed), window


@pytest.fixture
def service(lab: Lab) -> Iterator[Service]:
    """A new Service address for each test: a client's connection that failed leaves a conntrack entry (SYN_SENT,
    two minutes) that still points at the router it was sent to, and a later connection from the same client port to
    the same address would be sent there again, as in a cluster."""
    address = f"172.30.0.{20 + next(_numbers)}"
    with Service(lab, "egress", address, [], period=PERIOD, timeout=PERIOD, propagation=PROPAGATION) as started:
        yield started


def statefulset(lab: Lab, pool: str, service: Service, delay: str = DELAY) -> StatefulSet:
    """Two pods, egress-0 and egress-1 (created together: podManagementPolicy Parallel), both ready in the Service."""
    pods = StatefulSet(lab, pool, delay)
    for ordinal in (0, 1):
        pods.create(ordinal)
    service.set_endpoints(pods.addresses())
    service.wait_ready(pods.addresses())
    return pods


def test_each_pod_takes_its_address_and_the_server_sees_both(lab: Lab, service: Service) -> None:
    pods = statefulset(lab, "192.168.12.110-192.168.12.111/24", service)
    try:
        seen = [lab.tcp("client", service.address, 80) for _ in range(8)]
        assert {s.server for s in seen} == {"203.0.113.25"}
        assert Counter(s.client for s in seen) == {"192.168.12.110": 4, "192.168.12.111": 4}  # in turn
        for ordinal, address in ((0, "192.168.12.110/24"), (1, "192.168.12.111/24")):  # by ordinal, not by start order
            assert f"inet {address}" in lab.ip(pods.pods[ordinal].role, "addr", "show", "macvlan0").stdout
    finally:
        pods.close()


def test_a_router_stopped_by_sigterm_loses_no_new_connection(lab: Lab, service: Service) -> None:
    """Deleting a pod: its monitor turns unready at once and stays EGRESS_SHUTDOWN_DELAY (its NAT in the kernel still
    working) while the Service drops it; only then does it exit and the pod's network go."""
    pods = statefulset(lab, "192.168.12.112-192.168.12.113", service)
    client = Client(lab, service)
    try:
        client.start()
        time.sleep(0.5)
        leaving = pods.pods[1].ip
        sent = pods.terminate(1)
        time.sleep(0.5)
        attempts = client.stop()
        dropped = next(c.at for c in service.changes if c.at >= sent and leaving not in c.ready)
        failed, _ = report(f"SIGTERM, EGRESS_SHUTDOWN_DELAY={DELAY}", sent, attempts)
        print(f"the Service dropped the router {dropped - sent:.2f} s after SIGTERM; it exited after {DELAY}")
        assert failed == 0, failures(attempts)
        assert dropped - sent <= NOTICE + 0.5
        late = [a.source for a in attempts if a.at > dropped + 0.1]
        assert late and set(late) == {"192.168.12.112"}
    finally:
        client.stop()
        pods.close()


def test_without_the_delay_new_connections_fail_until_the_service_notices(lab: Lab, service: Service) -> None:
    """The same with EGRESS_SHUTDOWN_DELAY=0: the pod goes before the Service knows, and what it still sends there fails."""
    pods = statefulset(lab, "192.168.12.114-192.168.12.115", service, delay="0")
    client = Client(lab, service)
    try:
        client.start()
        time.sleep(0.5)
        sent = pods.terminate(1)
        time.sleep(NOTICE + 1.0)
        attempts = client.stop()
        failed, window = report("SIGTERM, EGRESS_SHUTDOWN_DELAY=0", sent, attempts)
        assert failed > 0 and window <= NOTICE + 0.5  # until the Service notices; nothing after
        assert all(a.source == "192.168.12.114" for a in attempts if a.at > sent + NOTICE + 0.5)
    finally:
        client.stop()
        pods.close()


def test_a_vanished_router_costs_new_connections_until_its_probe_fails(lab: Lab, service: Service) -> None:
    """A pod gone without warning (no SIGTERM: a crash, its node's network cut): until the probe fails, the Service
    still sends it every other new connection; then the other router takes them all."""
    pods = statefulset(lab, "192.168.12.116-192.168.12.117", service)
    client = Client(lab, service)
    try:
        client.start()
        time.sleep(0.5)
        gone = pods.vanish(1)
        time.sleep(NOTICE + 1.0)
        attempts = client.stop()
        failed, window = report("router vanished (no SIGTERM)", gone, attempts)
        assert failed > 0 and window <= NOTICE + 0.5
        assert all(a.source == "192.168.12.116" for a in attempts if a.at > gone + NOTICE + 0.5)
    finally:
        client.stop()
        pods.close()


class Holders(threading.Thread):
    """Samples, every 50 ms, which pods hold each address of the pool on their egress interface."""

    def __init__(self, lab: Lab, pods: StatefulSet, addresses: list[str]) -> None:
        super().__init__(daemon=True)
        self.lab, self.pods, self.addresses = lab, pods, addresses
        self.most = dict.fromkeys(addresses, 0)
        self.samples = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            held = Counter[str]()
            for role in [r.role for r in list(self.pods.pods.values())]:
                shown = self.lab.ip(role, "-br", "addr", "show", "macvlan0", check=False).stdout
                held.update(a for a in self.addresses if f" {a}" in f" {shown}".replace("/", " "))
            for address in self.addresses:
                self.most[address] = max(self.most[address], held[address])
            self.samples += 1
            self.done.wait(0.05)


def test_a_rolling_update_replaces_one_pod_at_a_time_never_two_on_one_address(lab: Lab, service: Service) -> None:
    """What a StatefulSet's RollingUpdate does: from the highest ordinal down, delete a pod, wait until it is gone,
    create its replacement with the same name (so the same address), wait until it is ready, then the next one."""
    addresses = ["192.168.12.118", "192.168.12.119"]
    pods = statefulset(lab, f"{addresses[0]}-{addresses[1]}", service)
    client = Client(lab, service)
    holders = Holders(lab, pods, addresses)
    try:
        client.start()
        holders.start()
        started = time.monotonic()
        for ordinal in (1, 0):
            pods.terminate(ordinal)
            service.set_endpoints(pods.addresses())
            service.wait_ready(pods.addresses())
            pods.create(ordinal)
            service.set_endpoints(pods.addresses())
            service.wait_ready(pods.addresses())
        took = time.monotonic() - started
        time.sleep(0.5)
        attempts = client.stop()
        holders.done.set()
        holders.join(5)
        report(f"rolling update of both pods ({took:.1f} s)", started, attempts)
        assert failures(attempts) == []
        assert holders.samples > 20 and holders.most == dict.fromkeys(addresses, 1)  # never two pods on one address
        assert {a.source for a in attempts[-8:]} == set(addresses)  # both new pods serve, each with its ordinal's address
    finally:
        client.stop()
        holders.done.set()
        pods.close()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HOSTNAME": "egress-2"}, "HOSTNAME: ordinal 2 is past the end of the pool in EGRESS_SOURCE (2 addresses: ordinals 0-1;"),
        ({"HOSTNAME": "egress-7d9f8-x2kq"}, "HOSTNAME: no StatefulSet ordinal at its end (NAME-<number>)"),
        ({"EGRESS_SOURCE_INDEX": "two"}, 'EGRESS_SOURCE_INDEX: must be a whole number from 0 to 1000000: "two"'),
        ({"EGRESS_SOURCE": "192.168.12.121-192.168.12.120"}, "EGRESS_SOURCE: the range runs backwards"),
        (  # this pod's own address (.120) is fine: the pool is checked whole, in every pod
            {"EGRESS_SOURCE": f"192.168.12.120,{t.GATEWAY_IP}", "HOSTNAME": "egress-0"},
            f"EGRESS_GATEWAY: must differ from every address of the pool in EGRESS_SOURCE ({t.GATEWAY_IP} holds it)",
        ),
    ],
)
def test_a_pod_the_pool_has_no_address_for_is_refused_and_nothing_changes(lab: Lab, env: dict[str, str], message: str) -> None:
    """A third replica of a two-address pool, a Deployment's pod (no ordinal), a bad index, a backwards range, a pool
    holding the gateway."""
    role = f"eg{next(_numbers)}"
    lab.add_routed_pod(role, "10.128.2.99")
    lab.add_macvlan(role)
    try:
        before = lab.snapshot(role)
        given = {"EGRESS_SOURCE": "192.168.12.120-192.168.12.121", "EGRESS_GATEWAY": t.GATEWAY_IP, "EGRESS_DESTINATION": RULES, **env}
        done = lab.run_in(role, [sys.executable, "-m", "egress_router", "init"], env=environment(**given, EGRESS_ROUTER_MODE="init"))
        assert done.returncode == 1
        (line,) = done.stderr.splitlines()
        assert line.startswith(f"egress-router init: error: {message}"), line
        assert lab.snapshot(role) == before
    finally:
        lab.remove_namespace(role)
