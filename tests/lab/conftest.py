"""Lab tests: real namespaces, interfaces, NAT and traffic. They need root (CI runs as root)."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from egress_router.lab import Lab

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


@dataclass
class Pod:
    """A router pod: a namespace on the node's bridge, with its own egress source address."""

    lab: Lab
    role: str
    ip: str
    source: str

    def init(self, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
        """Run the real CLI inside the pod; keyword arguments become EGRESS_* variables."""
        environment = {k: v for k, v in os.environ.items() if not k.startswith("EGRESS_")}
        environment.update(env)
        return self.lab.run_in(self.role, [sys.executable, "-m", "egress_router", "init"], env=environment, timeout=timeout)

    def snapshot(self) -> dict[str, str]:
        return self.lab.snapshot(self.role)


def new_pod(lab: Lab, macvlan: bool = True) -> Pod:
    n = (next(_numbers) - 1) % 30 + 1
    pod = Pod(lab, f"r{n}", f"10.128.0.{20 + n}", f"192.168.12.{96 + n}")
    lab.add_pod(pod.role, pod.ip)
    if macvlan:
        lab.add_macvlan(pod.role)
    return pod


@pytest.fixture
def pod(lab: Lab) -> Iterator[Pod]:
    made = new_pod(lab)
    yield made
    lab.remove_namespace(made.role)


@pytest.fixture
def bare_pod(lab: Lab) -> Iterator[Pod]:
    """A pod the SDN gave no macvlan."""
    made = new_pod(lab, macvlan=False)
    yield made
    lab.remove_namespace(made.role)
