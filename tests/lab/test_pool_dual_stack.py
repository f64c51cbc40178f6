"""A dual-stack source pool end to end (issue 11, points 1 and 2 together): StatefulSet pods set up by the real `init`
from one EGRESS_SOURCE pool with a range per family, each taking the IPv4 and the IPv6 address at its HOSTNAME's
ordinal; a pod whose addresses are held elsewhere is refused, naming the holder's MAC, with nothing changed, for
either family; the monitor of a pool pod keeps exactly the addresses its init took, and is ready."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from egress_router.lab import Lab
from egress_router.lab import topology as t
from egress_router.lab.topology import environment, v6
from tests.lab.conftest import Pod, new_pod
from tests.lab.http_helpers import http_get
from tests.lab.waiting import eventually

SOURCES = ("192.168.12.120", "192.168.12.121", "192.168.12.122")
POOL = f"{SOURCES[0]}-{SOURCES[-1]}/24,{v6(SOURCES[0])}-{v6(SOURCES[-1])}/64"
RULES = f"80 tcp 203.0.113.25\n80 tcp {v6('203.0.113.26')}\n"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(ipv6=True).build(router=False) as built:
        yield built


@pytest.fixture
def pods(lab: Lab) -> Iterator[list[Pod]]:
    made: list[Pod] = []
    yield made
    for pod in made:
        lab.remove_namespace(pod.role)


def pool_env(ordinal: int) -> dict[str, str]:
    return {
        "EGRESS_SOURCE": POOL,
        "EGRESS_GATEWAY": f"{t.GATEWAY_IP},{v6(t.GATEWAY_IP)}",
        "EGRESS_DESTINATION": RULES,
        "HOSTNAME": f"egress-{ordinal}",
        "EGRESS_METRICS_PORT": "9191",  # reserved by init too, so the monitor has nothing to add
    }


def member(lab: Lab, pods: list[Pod]) -> Pod:
    pod = new_pod(lab)
    pods.append(pod)
    return pod


def test_each_pod_takes_both_addresses_at_its_ordinal(lab: Lab, pods: list[Pod]) -> None:
    routers = [member(lab, pods) for ordinal in (0, 1)]
    for ordinal, pod in enumerate(routers):
        done = pod.init(EGRESS_ROUTER_MODE="init", **pool_env(ordinal))
        assert done.returncode == 0, done.stderr
        assert f"{SOURCES[ordinal]} is free: no other host answered 3 ARP probes on macvlan0" in done.stderr
    for ordinal, pod in enumerate(routers):
        assert lab.tcp("client", pod.ip, 80).client == SOURCES[ordinal]
        assert lab.tcp("client", v6(pod.ip), 80).client == v6(SOURCES[ordinal])
        state = pod.snapshot()
        assert f" {SOURCES[ordinal]}/24 {v6(SOURCES[ordinal])}/64 " in state["addresses"]


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_a_pod_whose_address_is_held_is_refused_naming_the_mac_and_nothing_changes(lab: Lab, pods: list[Pod], family: str) -> None:
    """The same ordinal twice (a second pod while the first still holds the addresses): refused by the ARP probe. Only
    the IPv6 address held (by a host on the lan): the IPv4 address, free and taken, is given back with the rest."""
    if family == "ipv4":
        holder = member(lab, pods)
        assert holder.init(EGRESS_ROUTER_MODE="init", **pool_env(1)).returncode == 0
        holder_mac, held, ordinal = lab.link_mac(holder.role, "macvlan0"), SOURCES[1], 1
    else:
        lab.ip("gw", "addr", "add", f"{v6(SOURCES[2])}/64", "dev", "eth0", "nodad")
        holder_mac, held, ordinal = lab.link_mac("gw", "eth0"), v6(SOURCES[2]), 2
    try:
        pod = member(lab, pods)
        before = pod.snapshot()
        done = pod.init(EGRESS_ROUTER_MODE="init", **pool_env(ordinal))
        assert done.returncode == 1
        last = done.stderr.splitlines()[-1]
        assert last.startswith(f"egress-router init: error: EGRESS_SOURCE: {held} is already in use: MAC {holder_mac} answered for it"), (
            last
        )
        assert last.endswith("rolled back, the pod's network is as it was"), last
        assert "Traceback" not in done.stderr
        assert pod.snapshot() == before
    finally:
        if family == "ipv6":
            lab.ip("gw", "addr", "del", f"{v6(SOURCES[2])}/64", "dev", "eth0")


def test_the_monitor_of_a_pool_pod_keeps_the_addresses_init_took(lab: Lab, pods: list[Pod]) -> None:
    pod = member(lab, pods)
    assert pod.init(EGRESS_ROUTER_MODE="init", **pool_env(2)).returncode == 0
    before = pod.snapshot()
    argv = [sys.executable, "-m", "egress_router", "monitor"]
    monitor = lab.start_in(pod.role, argv, env=environment(**pool_env(2), EGRESS_ROUTER_MONITOR_INTERVAL="300ms"))
    lab.wait_for_port(pod.role, "127.0.0.1", 9191, process=monitor)
    eventually(lambda: http_get(lab, "node", pod.ip, 9191, "/readyz") == (200, "ok\n"), what=monitor.stderr)
    for source in (SOURCES[2], v6(SOURCES[2])):
        eventually(lambda source=source: f"watching macvlan0 for other hosts claiming {source}\n" in monitor.stderr())
    assert pod.snapshot() == before  # nothing to correct: the monitor chose the same addresses
    assert lab.tcp("client", v6(pod.ip), 80).client == v6(SOURCES[2])
    assert "Traceback" not in monitor.stderr()
