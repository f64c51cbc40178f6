"""The running watch for IPv6 (issue 11, point 2): a dual-stack router drops readiness while another host advertises
its IPv6 EGRESS_SOURCE (a neighbour advertisement), probes with duplicate address detection solicitations, and
announces the address once when the other host is gone. IPv4's twin is test_claim.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv6Address

import pytest

from egress_router.init import arp
from egress_router.lab import Lab
from egress_router.lab import topology as t
from egress_router.lab.topology import Process, entered, environment, v6
from tests.lab.address_conflicts import conflict_comes_and_goes
from tests.lab.conftest import Pod, new_pod
from tests.lab.waiting import eventually

#: A lan host's own IPv4 address, not a router's (they take 192.168.12.96 and up).
INTRUDER_IP = "192.168.12.240"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(ipv6=True).build(router=False) as built:
        yield built


def dual_env(pod: Pod) -> dict[str, str]:
    return {
        "EGRESS_SOURCE": f"{pod.source}/24,{v6(pod.source)}/64",
        "EGRESS_GATEWAY": f"{t.GATEWAY_IP},{v6(t.GATEWAY_IP)}",
        "EGRESS_DESTINATION": f"80 tcp 203.0.113.25\n80 tcp {v6('203.0.113.26')}\n",
    }


def start(lab: Lab, pod: Pod, command: str) -> Process:
    if command == "monitor":
        assert pod.init(EGRESS_ROUTER_MODE="init", **dual_env(pod)).returncode == 0
        env = environment(**dual_env(pod), EGRESS_ROUTER_MONITOR_INTERVAL="300ms")
        argv = [sys.executable, "-m", "egress_router", "monitor"]
    else:  # legacy: init sets up, then watches as the monitor does, every 10 s
        env = environment(**dual_env(pod), EGRESS_ROUTER_MODE="legacy")
        argv = [sys.executable, "-m", "egress_router", "init"]
    process = lab.start_in(pod.role, argv, env=env)
    lab.wait_for_port(pod.role, "127.0.0.1", 9191, process=process)
    eventually(lambda: pod.readyz() == (200, "ok\n"))
    for source in (pod.source, v6(pod.source)):  # one watch per family
        eventually(lambda source=source: f"watching macvlan0 for other hosts claiming {source}\n" in process.stderr())
    return process


@pytest.mark.parametrize("command", ["monitor", "legacy"])
def test_a_host_advertising_the_ipv6_address_makes_the_router_unready_until_it_is_gone(lab: Lab, pod: Pod, command: str) -> None:
    source6 = v6(pod.source)
    monitor = start(lab, pod, command)
    router = lab.link_mac(pod.role, "macvlan0")
    assert lab.tcp("client", v6(pod.ip), 80).client == source6  # the gateway now knows the source at the router's MAC
    assert lab.neighbour_mac("gw", source6) == router
    assert pod.metric("egress_router_address_conflict") == 0

    def take() -> str:
        intruder = lab.add_lan_host("intruder", INTRUDER_IP)
        lab.ip("intruder", "addr", "add", f"{source6}/64", "dev", "eth0", "nodad")  # taken without asking first
        with entered(lab.ns("intruder")):
            arp.announce("eth0", IPv6Address(source6))  # and announced: an unsolicited neighbour advertisement
        return intruder

    how = "an unsolicited neighbour advertisement"
    over = conflict_comes_and_goes(lab, pod, monitor, command=command, source=source6, via=v6(pod.ip), take=take, how=how)
    assert "address conflict over" not in monitor.stderr().replace(over, "")  # IPv4 was never in conflict


def test_two_routers_racing_for_one_ipv6_address_never_both_get_it(lab: Lab) -> None:
    """IPv6's claim check is the kernel's duplicate address detection: both routers' solicitations cross (both back
    off) or the later one's is answered; either way each refusal names the other router's MAC, which init heard
    while DAD ran."""
    pods = [new_pod(lab), new_pod(lab)]
    try:
        source6 = v6(pods[0].source)
        env = environment(
            EGRESS_ROUTER_MODE="init",
            EGRESS_SOURCE=f"{source6}/64",
            EGRESS_GATEWAY=v6(t.GATEWAY_IP),
            EGRESS_DESTINATION=f"{v6('203.0.113.26')}",
        )
        argv = [sys.executable, "-m", "egress_router", "init"]
        started = [subprocess.Popen(lab.exec_argv(p.role, argv), env=env, stderr=subprocess.PIPE, text=True) for p in pods]
        results = [(proc.wait(30), proc.communicate()[1]) for proc in started]
        assert [code for code, _ in results].count(0) <= 1, results
        for (code, stderr), other in zip(results, reversed(pods), strict=True):
            if code != 0:
                assert f"EGRESS_SOURCE: {source6} is already in use: MAC {lab.link_mac(other.role, 'macvlan0')}" in stderr, stderr
                assert "duplicate address detection failed" in stderr and "Traceback" not in stderr
    finally:
        for p in pods:
            lab.remove_namespace(p.role)
