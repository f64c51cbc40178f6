"""Lab tests: real namespaces, interfaces, NAT and traffic. They need root (CI runs as root)."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from egress_router.lab import Lab
from egress_router.lab.topology import environment, run
from tests.lab.http_helpers import http_get, samples

MISSING = [tool for tool in ("ip", "nft", "iptables-legacy-save") if shutil.which(tool) is None]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = None
    if os.geteuid() != 0:
        reason = "lab tests need root (network namespaces, macvlan, NAT)"
    elif MISSING:
        reason = f"lab tests need {', '.join(MISSING)} (apt-get install iproute2 nftables iptables)"
    if reason:
        for item in items:
            if "tests/lab" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab().build(router=False) as built:
        yield built


_numbers = itertools.count(1)
_slots: dict[str, int] = {}  # namespace -> slot: pod address 10.128.0.(20+slot), source 192.168.12.(96+slot)


_last_slot = 0


def _free_slot(lab: Lab) -> int:
    """The next slot no living pod uses (module-scoped pods outlive many test pods), in rotation:
    an address comes back as late as possible, so neighbours' ARP caches have long forgotten its old MAC."""
    global _last_slot
    for name in [n for n in _slots if n not in lab.namespaces]:
        del _slots[name]
    used = set(_slots.values())
    for step in range(1, 31):
        slot = (_last_slot + step - 1) % 30 + 1
        if slot not in used:
            _last_slot = slot
            return slot
    raise RuntimeError("more than 30 lab pods at once")


NAT_BACKENDS = ("iptables", "nftables")


@pytest.fixture(params=NAT_BACKENDS)
def nat_backend(request: pytest.FixtureRequest) -> str:
    """Runs a test once with each NAT backend: the pods it gets (their init and monitor) use that EGRESS_NAT_BACKEND."""
    return str(request.param)


def backend_of(request: pytest.FixtureRequest) -> str | None:
    """The NAT backend the requesting test runs with; None (the default, auto) when it is not parametrized by one."""
    return str(request.getfixturevalue("nat_backend")) if "nat_backend" in request.fixturenames else None


@dataclass
class Pod:
    """A router pod: a namespace on the node's bridge, with its own egress source address."""

    lab: Lab
    role: str
    ip: str
    source: str
    nat_backend: str | None = None  # EGRESS_NAT_BACKEND of its commands; None: unset (auto)

    def env(self, **env: str) -> dict[str, str]:
        """The environment of a command in this pod: keyword arguments become EGRESS_* variables."""
        backend = {"EGRESS_NAT_BACKEND": self.nat_backend} if self.nat_backend else {}
        return environment(**{**backend, **env})

    def init(self, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
        """Run the real CLI inside the pod; keyword arguments become EGRESS_* variables."""
        return self.lab.run_in(self.role, [sys.executable, "-m", "egress_router", "init"], env=self.env(**env), timeout=timeout)

    @contextmanager
    def legacy_init(self, **env: str) -> Iterator[subprocess.Popen[str]]:
        """`init` in legacy mode (it stays up), yielded once it is up (logs that it waits for SIGTERM, within 20 s);
        killed on the way out if the test did not stop it."""
        argv = self.lab.exec_argv(self.role, [sys.executable, "-m", "egress_router", "init"])
        proc = subprocess.Popen(argv, env=self.env(**env), stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            deadline = time.monotonic() + 20
            while "waiting for SIGTERM" not in proc.stderr.readline():
                assert proc.poll() is None and time.monotonic() < deadline
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def snapshot(self) -> dict[str, str]:
        return self.lab.snapshot(self.role)

    def readyz(self) -> tuple[int, str]:
        """The pod's readiness, asked from the node as the kubelet asks (EGRESS_METRICS_PORT 9191)."""
        return http_get(self.lab, "node", self.ip, 9191, "/readyz")

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of the pod's /metrics, scraped from the node; None when it is not there."""
        return samples(http_get(self.lab, "node", self.ip, 9191, "/metrics")[1]).get((name, tuple(sorted(labels.items()))))

    def nat_rules(self) -> str:
        """Our NAT rules as the pod's backend shows them: `iptables-legacy-save -t nat`, or `nft list ruleset`."""
        return self.snapshot()["nftables" if self.nat_backend == "nftables" else "nat"]

    def flush_chain(self, table: str, chain: str) -> None:
        """Empty one of our chains behind the router's back, with the tool of the pod's backend."""
        if self.nat_backend == "nftables":
            argv = ["nft", "flush", "chain", "ip", "egress_router", chain]
        else:
            argv = ["iptables-legacy", "-t", table, "-F", chain]
        run(self.lab.exec_argv(self.role, argv))


def new_pod(lab: Lab, macvlan: bool = True, *, routed: bool = False, egress: str = "macvlan0", nat_backend: str | None = None) -> Pod:
    """A router pod on the node's bridge (openshift-sdn-like) or, `routed`, with only a default route (Calico-like)."""
    slot = _free_slot(lab)
    pod = Pod(lab, f"r{next(_numbers)}", f"10.128.{2 if routed else 0}.{20 + slot}", f"192.168.12.{96 + slot}", nat_backend)
    _slots[lab.ns(pod.role)] = slot
    if routed:
        lab.add_routed_pod(pod.role, pod.ip)
    else:
        lab.add_pod(pod.role, pod.ip)
    if macvlan:
        lab.add_macvlan(pod.role, egress)
    return pod


@pytest.fixture
def pod(lab: Lab, request: pytest.FixtureRequest) -> Iterator[Pod]:
    made = new_pod(lab, nat_backend=backend_of(request))
    yield made
    lab.remove_namespace(made.role)


@pytest.fixture
def routed_pod(lab: Lab, request: pytest.FixtureRequest) -> Iterator[Pod]:
    """A router pod whose eth0 has a /32 and only a default route, as Calico and Cilium make them."""
    made = new_pod(lab, routed=True, nat_backend=backend_of(request))
    yield made
    lab.remove_namespace(made.role)


@pytest.fixture
def bare_pod(lab: Lab, request: pytest.FixtureRequest) -> Iterator[Pod]:
    """A pod the SDN gave no macvlan."""
    made = new_pod(lab, macvlan=False, nat_backend=backend_of(request))
    yield made
    lab.remove_namespace(made.role)
