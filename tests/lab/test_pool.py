"""A pool of router pods behind one Service (issue 11): a StatefulSet's pods, each set up by the real `init` from one
EGRESS_SOURCE pool by its HOSTNAME ordinal and kept by the real `monitor`, behind the lab's Service stand-in (new
connections go to a ready router in turn). A client keeps opening new connections while routers stop, vanish or are
replaced; the figures of each case are printed (pytest -s shows them) and quoted in the README.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import pytest

from egress_router.lab import Lab
from egress_router.lab import topology as t
from egress_router.lab.service import Service
from egress_router.lab.topology import Process, environment

RULES = "80 tcp 203.0.113.25"
PERIOD = 0.5  # the readiness probes' period (periodSeconds; timeoutSeconds the same)
PROPAGATION = 1.0  # from a probe's verdict to every node's Service rules (API server, EndpointSlice, kube-proxy)
NOTICE = PERIOD + PERIOD + PROPAGATION  # the longest a router that stopped answering stays in the Service
DELAY_SECONDS = 3.0
DELAY = f"{DELAY_SECONDS:g}s"  # EGRESS_SHUTDOWN_DELAY: longer than that
ROLE = "eg"  # the router pods' roles in the lab: eg1, eg2, ...
_numbers = itertools.count(1)


def is_pod(lab: Lab, namespace: str) -> bool:
    """Whether a namespace of the lab is a router pod's."""
    return re.fullmatch(rf"{re.escape(lab.prefix)}-{ROLE}\d+", namespace) is not None


@dataclass
class Sandbox:
    """A pod's network before its containers run: its namespace, its pod address, and the macvlan the SDN gave it."""

    role: str
    ip: str


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
    pods: dict[int, Router] = field(default_factory=dict)  # the pods the API server has, by ordinal (not terminating)
    made: list[str] = field(default_factory=list)  # the roles of every pod made, for close()

    def env(self, ordinal: int) -> dict[str, str]:
        return {"EGRESS_SOURCE": self.pool, "EGRESS_GATEWAY": t.GATEWAY_IP, "EGRESS_DESTINATION": RULES, "HOSTNAME": f"egress-{ordinal}"}

    def sandbox(self) -> Sandbox:
        """A new pod's network (a new pod address, as a recreated pod gets), its containers not started yet."""
        number = next(_numbers)
        sandbox = Sandbox(f"{ROLE}{number}", f"10.128.2.{100 + number}")
        self.made.append(sandbox.role)
        self.lab.add_routed_pod(sandbox.role, sandbox.ip)
        self.lab.add_macvlan(sandbox.role)
        return sandbox

    def init(self, sandbox: Sandbox, ordinal: int) -> subprocess.CompletedProcess[str]:
        """The pod's init container: the real `init`, taking the pool's address of `ordinal`."""
        env = environment(**self.env(ordinal), EGRESS_ROUTER_MODE="init")
        return self.lab.run_in(sandbox.role, [sys.executable, "-m", "egress_router", "init"], env=env)

    def start(self, sandbox: Sandbox, ordinal: int) -> Router:
        """The pod's container, once init has succeeded: the monitor."""
        argv = [sys.executable, "-m", "egress_router", "monitor"]
        monitor = self.lab.start_in(sandbox.role, argv, env=environment(**self.env(ordinal), EGRESS_SHUTDOWN_DELAY=self.delay))
        self.pods[ordinal] = Router(f"egress-{ordinal}", sandbox.role, sandbox.ip, monitor)
        return self.pods[ordinal]

    def create(self, ordinal: int) -> Router:
        """A new pod for `ordinal`: its network, init from the pool, then the monitor."""
        sandbox = self.sandbox()
        done = self.init(sandbox, ordinal)
        assert done.returncode == 0, done.stderr
        return self.start(sandbox, ordinal)

    def delete(self, ordinal: int) -> tuple[Router, float]:
        """What deleting the pod starts: it leaves the StatefulSet's pods (a force-delete removes its API object at
        once) and SIGTERM goes to its container's process (only that one, as the runtime sends it); the pod, its
        network and its address stay until `gone`. Returns the pod and when the SIGTERM was sent."""
        router = self.pods.pop(ordinal)
        sent = time.monotonic()
        router.monitor.popen.send_signal(signal.SIGTERM)
        return router, sent

    def gone(self, router: Router) -> None:
        """The rest of a deletion: once the container has exited, the pod's network goes (the sandbox is torn down)."""
        assert router.monitor.popen.wait(30) == 0, router.monitor.stderr()
        self.lab.remove_namespace(router.role)

    def terminate(self, ordinal: int) -> float:
        """Deleting the pod, until it is gone. Returns when the SIGTERM was sent."""
        router, sent = self.delete(ordinal)
        self.gone(router)
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
        """Every pod's network, those deleted but not gone yet (a test that failed half-way) included."""
        for role in self.made:
            if self.lab.ns(role) in self.lab.namespaces:
                self.lab.remove_namespace(role)
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


def serve(service: Service, pods: StatefulSet) -> None:
    """The Service follows the StatefulSet's pods (the EndpointSlice controller's part): until exactly they are ready."""
    service.set_endpoints(pods.addresses())
    service.wait_ready(pods.addresses())


def statefulset(lab: Lab, pool: str, service: Service, delay: str = DELAY) -> StatefulSet:
    """Two pods, egress-0 and egress-1 (created together: podManagementPolicy Parallel), both ready in the Service."""
    pods = StatefulSet(lab, pool, delay)
    for ordinal in (0, 1):
        pods.create(ordinal)
    serve(service, pods)
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


def losses_until_noticed(lab: Lab, service: Service, first: str, end: Callable[[StatefulSet], float], case: str, delay: str) -> None:
    """Egress-1 of a pool `first` and the next address goes by `end` (returning when): new connections fail until the
    Service notices, and none after; then the other router, with `first`, takes them all."""
    second = str(IPv4Address(first) + 1)
    pods = statefulset(lab, f"{first}-{second}", service, delay=delay)
    client = Client(lab, service)
    try:
        client.start()
        time.sleep(0.5)
        ended = end(pods)
        time.sleep(NOTICE + 1.0)
        attempts = client.stop()
        failed, window = report(case, ended, attempts)
        assert failed > 0 and window <= NOTICE + 0.5  # until the Service notices; nothing after
        assert all(a.source == first for a in attempts if a.at > ended + NOTICE + 0.5)
    finally:
        client.stop()
        pods.close()


def test_without_the_delay_new_connections_fail_until_the_service_notices(lab: Lab, service: Service) -> None:
    """The same with EGRESS_SHUTDOWN_DELAY=0: the pod goes before the Service knows, and what it still sends there fails."""
    losses_until_noticed(lab, service, "192.168.12.114", lambda pods: pods.terminate(1), "SIGTERM, EGRESS_SHUTDOWN_DELAY=0", "0")


def test_a_vanished_router_costs_new_connections_until_its_probe_fails(lab: Lab, service: Service) -> None:
    """A pod gone without warning (no SIGTERM: a crash, its node's network cut): until the probe fails, the Service
    still sends it every other new connection; then the other router takes them all."""
    losses_until_noticed(lab, service, "192.168.12.116", lambda pods: pods.vanish(1), "router vanished (no SIGTERM)", DELAY)


@dataclass(frozen=True)
class Sample:
    at: float  # when it started (monotonic seconds)
    holders: dict[str, tuple[str, ...]]  # each address of the pool: the roles of the pods that held it


class Holders(threading.Thread):
    """Samples, every 50 ms, which router pods of the lab hold each address of the pool on their egress interface.

    Every router pod's namespace the lab has at that instant is read (`Lab.namespaces` lists one from just before it is
    made until just after it is deleted), so a deleted pod is read through its shutdown delay until its network is gone,
    and a pod is read before its init has run. Newest first: pods take their address in the order they were made and
    keep it until their namespace goes, so an older pod seen holding an address after a newer one was seen holding it
    held it all along, and a sample that finds two holders found a real overlap, however slowly it was taken.
    A sampler that died (an exception) or stalled fails the test in `stop()`."""

    def __init__(self, lab: Lab, addresses: list[str]) -> None:
        super().__init__(daemon=True)
        self.lab, self.addresses = lab, addresses
        self.samples: list[Sample] = []
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while not self.done.is_set():
                self.samples.append(self.sample())
                self.done.wait(0.05)
        except BaseException as error:  # noqa: BLE001 - handed to stop(): alone it would end the thread, not the test
            self.error = error

    def sample(self) -> Sample:
        at = time.monotonic()
        pods = [n for n in reversed(list(self.lab.namespaces)) if is_pod(self.lab, n)]  # a copy: the lab changes it
        holders: dict[str, list[str]] = {address: [] for address in self.addresses}
        for role in (n.removeprefix(f"{self.lab.prefix}-") for n in pods):
            shown = self.lab.ip(role, "-br", "addr", "show", "dev", "macvlan0", check=False).stdout.split()  # none: gone
            for address in {a.partition("/")[0] for a in shown[2:]} & set(self.addresses):
                holders[address].append(role)
        return Sample(at, {address: tuple(roles) for address, roles in holders.items()})

    def stop(self) -> list[Sample]:
        """Ends sampling; fails when the sampler did not run to the end."""
        running = self.is_alive()
        self.done.set()
        self.join(10)
        assert self.error is None, f"the address sampler died: {self.error!r}"
        assert running and not self.is_alive(), "the address sampler stopped early or hung"
        return self.samples

    def most(self) -> dict[str, int]:
        """The most pods that held each address at once."""
        return {address: max((len(s.holders[address]) for s in self.samples), default=0) for address in self.addresses}

    def overlaps(self) -> list[str]:
        """Pods seen together on one address, as text: which, in how many samples, when (seconds after the first)."""
        start = self.samples[0].at if self.samples else 0.0
        seen: dict[tuple[str, tuple[str, ...]], list[float]] = {}
        for sample in self.samples:
            for address, roles in sample.holders.items():
                if len(roles) > 1:
                    seen.setdefault((address, roles), []).append(sample.at - start)
        return [f"{a} held by {', '.join(r)} in {len(t)} samples, {t[0]:.2f}-{t[-1]:.2f} s" for (a, r), t in seen.items()]

    def last_held(self, role: str, address: str, since: float) -> float:
        """The last time, from `since` on, `role` was seen holding `address` (seconds after `since`; -1: never)."""
        return max((s.at - since for s in self.samples if s.at >= since and role in s.holders[address]), default=-1.0)

    def summary(self) -> str:
        gaps = [b.at - a.at for a, b in itertools.pairwise(self.samples)]
        return f"{len(self.samples)} samples of the addresses' holders, at most {max(gaps, default=0.0):.2f} s apart"


@contextlib.contextmanager
def watched_rollout(lab: Lab, service: Service, addresses: list[str]) -> Iterator[tuple[StatefulSet, Client, Holders]]:
    """Two pods of a pool of `addresses`, a client opening new connections and the sampler of who holds each address,
    all running; stopped and removed at the end, whatever happened."""
    pods = statefulset(lab, f"{addresses[0]}-{addresses[1]}", service)
    client = Client(lab, service)
    holders = Holders(lab, addresses)
    try:
        client.start()
        holders.start()
        yield pods, client, holders
    finally:
        client.stop()
        holders.done.set()
        pods.close()


def test_a_rolling_update_replaces_one_pod_at_a_time_never_two_on_one_address(lab: Lab, service: Service) -> None:
    """What a StatefulSet's RollingUpdate does: from the highest ordinal down, delete a pod, wait until it is gone,
    create its replacement with the same name (so the same address), wait until it is ready, then the next one."""
    addresses = ["192.168.12.118", "192.168.12.119"]
    with watched_rollout(lab, service, addresses) as (pods, client, holders):
        started = time.monotonic()
        deleted = []
        for ordinal in (1, 0):
            deleted.append((pods.pods[ordinal].role, addresses[ordinal], pods.terminate(ordinal)))
            serve(service, pods)
            pods.create(ordinal)
            serve(service, pods)
        took = time.monotonic() - started
        time.sleep(0.5)
        attempts = client.stop()
        holders.stop()
        report(f"rolling update of both pods ({took:.1f} s)", started, attempts)
        print(holders.summary())
        assert failures(attempts) == []
        assert holders.most() == dict.fromkeys(addresses, 1), holders.overlaps()  # never two pods on one address
        for role, address, sent in deleted:  # each old pod was sampled holding its address through its shutdown delay
            seen = holders.last_held(role, address, sent)
            print(f"the old pod holding {address} was last seen holding it {seen:.2f} s after SIGTERM")
            assert seen >= DELAY_SECONDS - 0.5, (role, address, seen)
        assert {a.source for a in attempts[-8:]} == set(addresses)  # both new pods serve, each with its ordinal's address


def test_a_force_deleted_pod_s_replacement_is_refused_its_address_until_the_old_pod_is_gone(lab: Lab, service: Service) -> None:
    """A force-delete during a rollout (`kubectl delete pod --force --grace-period=0`, say on a node that is cut off):
    the pod's API object goes at once and the StatefulSet creates the replacement, with the same name and so the same
    address, while the old pod still runs its shutdown delay holding the address. The replacement's init must refuse the
    address, naming the old pod's MAC, and change nothing; the kubelet retries the init container, and once the old pod
    is gone the retry takes the address and the new pod joins the Service."""
    addresses = ["192.168.12.122", "192.168.12.123"]
    with watched_rollout(lab, service, addresses) as (pods, client, holders):
        time.sleep(0.5)
        old_mac = lab.link_mac(pods.pods[1].role, "macvlan0")
        old, sent = pods.delete(1)
        service.set_endpoints(pods.addresses())
        new = pods.sandbox()
        before = lab.snapshot(new.role)
        refused = pods.init(new, 1)
        refused_at = time.monotonic() - sent
        delaying = old.monitor.popen.poll() is None  # init ran and ended within the old pod's shutdown delay
        after = lab.snapshot(new.role)
        pods.gone(old)
        retried = pods.init(new, 1)
        assert retried.returncode == 0, retried.stderr
        pods.start(new, 1)
        serve(service, pods)
        took = time.monotonic() - sent
        time.sleep(0.5)
        attempts = client.stop()
        holders.stop()
        failed, _ = report(f"egress-1 force-deleted, its replacement's init started in the old pod's delay ({took:.1f} s)", sent, attempts)
        seen = holders.last_held(old.role, addresses[1], sent)
        print(
            f"{holders.summary()}; the replacement's first init ended {refused_at:.2f} s after the old pod's SIGTERM (exit {refused.returncode}),"
        )
        print(f"the old pod was last seen holding {addresses[1]} {seen:.2f} s after it")
        assert holders.most() == dict.fromkeys(addresses, 1), holders.overlaps()  # never two pods on one address
        assert delaying, f"init took longer than the old pod's EGRESS_SHUTDOWN_DELAY={DELAY}: {refused}"
        assert seen >= DELAY_SECONDS - 0.5, seen
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
        errors = [line for line in refused.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0].startswith(
            f"egress-router init: error: EGRESS_SOURCE: {addresses[1]} is already in use: MAC {old_mac} answered for it on macvlan0"
        ), refused.stderr
        assert after == before  # the new pod's network as the SDN gave it
        assert failed == 0, failures(attempts)
        assert {a.source for a in attempts[-8:]} == set(addresses)  # the new egress-1 serves with its ordinal's address


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
