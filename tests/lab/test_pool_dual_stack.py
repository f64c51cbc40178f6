"""A dual-stack source pool end to end (issue 11, points 1 and 2 together): StatefulSet pods set up by the real `init`
from one EGRESS_SOURCE pool with a range per family, each taking the IPv4 and the IPv6 address at its HOSTNAME's
ordinal; a pod whose addresses are held elsewhere is refused, naming the holder's MAC, with nothing changed, for
either family; the monitor of a pool pod keeps exactly the addresses its init took, and is ready; and the proxy modes
work with a pool unchanged: each pod's proxy leaves from its ordinal's addresses."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from egress_router.lab import Lab
from egress_router.lab import topology as t
from egress_router.lab.topology import Process, environment, v6
from tests.lab.conftest import Pod, new_pod
from tests.lab.http_helpers import start_proxy
from tests.lab.waiting import eventually

SOURCES = ("192.168.12.120", "192.168.12.121", "192.168.12.122")
POOL = f"{SOURCES[0]}-{SOURCES[-1]}/24,{v6(SOURCES[0])}-{v6(SOURCES[-1])}/64"
RULES = f"80 tcp 203.0.113.25\n80 tcp {v6('203.0.113.26')}\n"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(ipv6=True).build(router=False) as built:
        built.python_in("server", "egress_router.lab.http_server", "--http", "0.0.0.0:8000", "--http", "[::]:8000", ready_line="ready")
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
    eventually(lambda: pod.readyz() == (200, "ok\n"), what=monitor.stderr)
    for source in (SOURCES[2], v6(SOURCES[2])):
        eventually(lambda source=source: f"watching macvlan0 for other hosts claiming {source}\n" in monitor.stderr())
    assert pod.snapshot() == before  # nothing to correct: the monitor chose the same addresses
    assert lab.tcp("client", v6(pod.ip), 80).client == v6(SOURCES[2])
    assert "Traceback" not in monitor.stderr()


def start_mode(lab: Lab, pod: Pod, mode: str) -> Process:
    if mode == "http-proxy":
        return start_proxy(lab, pod.role, user=65534, EGRESS_HTTP_PROXY_DESTINATION="*", EGRESS_HTTP_PROXY_WORKERS="1")
    targets = f"6100 203.0.113.25 5432\n6101 {v6('203.0.113.25')} 5432\n"
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "egress_router", "dns-proxy"]
    proc = lab.start_in(pod.role, argv, env=environment(EGRESS_DNS_PROXY_DESTINATION=targets))
    lab.wait_for_port(pod.role, "127.0.0.1", 6100, process=proc)
    return proc


def sources_seen(lab: Lab, pod: Pod, mode: str) -> tuple[str, str]:
    """The client's connection through the pod's proxy to the server, once over each family: the source it saw."""
    if mode == "dns-proxy":
        return lab.tcp("client", pod.ip, 6100, timeout=5).client, lab.tcp("client", pod.ip, 6101, timeout=5).client
    seen = []
    for url in ("http://203.0.113.25:8000/", f"http://[{v6('203.0.113.25')}]:8000/"):
        argv = ["curl", "-sS", "--max-time", "10", "-g", "-x", f"http://{pod.ip}:8080", url]
        done = subprocess.run(lab.exec_argv("client", argv), capture_output=True, text=True, timeout=30, check=True)
        seen.append(json.loads(done.stdout)["client"])
    return seen[0], seen[1]


@pytest.mark.parametrize("mode", ["http-proxy", "dns-proxy"])
def test_the_proxies_of_a_pool_leave_from_their_ordinals_addresses(lab: Lab, pods: list[Pod], mode: str) -> None:
    routers = [member(lab, pods) for _ in (0, 1)]
    for ordinal, pod in enumerate(routers):
        done = pod.init(EGRESS_ROUTER_MODE=mode, **{k: v for k, v in pool_env(ordinal).items() if k != "EGRESS_DESTINATION"})
        assert done.returncode == 0, done.stderr
        start_mode(lab, pod, mode)
    for ordinal, pod in enumerate(routers):
        assert sources_seen(lab, pod, mode) == (SOURCES[ordinal], v6(SOURCES[ordinal]))
