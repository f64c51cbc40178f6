"""EGRESS_SOURCE is claimed only when it is free (issue 11, point 2): init probes with ARP first and refuses an address
another host holds, changing nothing; the monitor drops readiness while another host claims the address."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from egress_router.config.init_settings import PROBE_TIME
from egress_router.init.conflicts import ANSWER_TIME
from egress_router.lab import Lab
from egress_router.lab import topology as t
from egress_router.lab.topology import Process, environment
from tests.lab.address_conflicts import conflict_comes_and_goes
from tests.lab.conftest import Pod, new_pod
from tests.lab.waiting import eventually

INTERVAL = "300ms"


def redirect_env(source: str) -> dict[str, str]:
    """The probe as it is outside the lab (its default), not the lab's shorter one."""
    return {
        "EGRESS_SOURCE": source,
        "EGRESS_GATEWAY": t.GATEWAY_IP,
        "EGRESS_DESTINATION": "80 tcp 203.0.113.25",
        "EGRESS_ROUTER_PROBE_TIME": PROBE_TIME.render(PROBE_TIME.default_value()),
    }


def start_monitor(lab: Lab, pod: Pod) -> Process:
    env = environment(**redirect_env(pod.source), EGRESS_ROUTER_MONITOR_INTERVAL=INTERVAL)
    monitor = lab.start_in(pod.role, [sys.executable, "-m", "egress_router", "monitor"], env=env)
    lab.wait_for_port(pod.role, "127.0.0.1", 9191, process=monitor)
    eventually(lambda: pod.readyz() == (200, "ok\n"))
    eventually(lambda: f"watching macvlan0 for other hosts claiming {pod.source}\n" in monitor.stderr())
    return monitor


def test_an_address_another_router_holds_is_refused_and_nothing_changes(lab: Lab, pod: Pod) -> None:
    assert pod.init(EGRESS_ROUTER_MODE="init", **redirect_env(pod.source)).returncode == 0
    start_monitor(lab, pod)
    holder = lab.link_mac(pod.role, "macvlan0")
    second = new_pod(lab)
    try:
        before = second.snapshot()
        done = second.init(EGRESS_ROUTER_MODE="init", **redirect_env(pod.source))
        assert done.returncode == 1 and "Traceback" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if "error:" in line]
        assert errors == [
            f"egress-router init: error: EGRESS_SOURCE: {pod.source} is already in use: MAC {holder} answered for it on macvlan0"
            " (another router pod or host holds it); give each router its own address, or stop the other holder;"
            " 3 earlier change(s) rolled back, the pod's network is as it was"  # accept_ra, autoconf, up
        ]
        assert second.snapshot() == before  # the macvlan is down again, without an address
        # the holder saw only probes (from 0.0.0.0): no conflict for it, still ready and still the source
        assert pod.readyz() == (200, "ok\n")
        assert pod.metric("egress_router_address_conflicts_total") == 0
        assert lab.tcp("client", pod.ip, 80).client == pod.source
    finally:
        lab.remove_namespace(second.role)


def test_a_macvlan_init_created_is_removed_when_the_address_is_taken(lab: Lab, pod: Pod, bare_pod: Pod) -> None:
    assert pod.init(EGRESS_ROUTER_MODE="init", **redirect_env(pod.source)).returncode == 0
    before = bare_pod.snapshot()
    done = bare_pod.init(
        EGRESS_ROUTER_MODE="init",
        EGRESS_MACVLAN_MASTER="eth0",
        EGRESS_HOST_NETNS=f"/run/netns/{lab.ns('node')}",
        **redirect_env(pod.source),
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"is already in use: MAC {lab.link_mac(pod.role, 'macvlan0')} answered for it" in done.stderr
    assert bare_pod.snapshot() == before


def test_without_net_raw_init_cannot_probe_says_so_and_changes_nothing(lab: Lab, pod: Pod) -> None:
    """With the nftables backend (the iptables one already needs NET_RAW when it is chosen), the probe is the first to."""
    before = pod.snapshot()
    argv = ["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw", sys.executable, "-m", "egress_router", "init"]
    env = environment(EGRESS_ROUTER_MODE="init", EGRESS_NAT_BACKEND="nftables", **redirect_env(pod.source))
    done = lab.run_in(pod.role, argv, env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if "error:" in line] == [
        f"egress-router init: error: cannot send ARP probes for EGRESS_SOURCE {pod.source} on macvlan0: Operation not permitted"
        " (the init container needs NET_RAW); 3 earlier change(s) rolled back, the pod's network is as it was"  # accept_ra, autoconf, up
    ]
    assert pod.snapshot() == before


def test_two_routers_racing_for_one_address_never_both_get_it(lab: Lab) -> None:
    pods = [new_pod(lab), new_pod(lab)]
    try:
        source = pods[0].source
        argv = [sys.executable, "-m", "egress_router", "init"]
        env = environment(EGRESS_ROUTER_MODE="init", **redirect_env(source))
        started = [subprocess.Popen(lab.exec_argv(p.role, argv), env=env, stderr=subprocess.PIPE, text=True) for p in pods]
        results = [(proc.wait(30), proc.communicate()[1]) for proc in started]
        assert [code for code, _ in results].count(0) <= 1, results
        for (code, stderr), other in zip(results, reversed(pods), strict=True):
            if code != 0:  # refused, naming the other one: it answered (it got there first) or probed at the same time
                assert f"EGRESS_SOURCE: {source} is already in use: MAC {lab.link_mac(other.role, 'macvlan0')}" in stderr, stderr
    finally:
        for p in pods:
            lab.remove_namespace(p.role)


def start_legacy(lab: Lab, pod: Pod) -> Process:
    """`init` in legacy mode: set up, then watch as the monitor does, every 10 s (its interval is not configurable)."""
    env = environment(**redirect_env(pod.source), EGRESS_ROUTER_MODE="legacy")
    legacy = lab.start_in(pod.role, [sys.executable, "-m", "egress_router", "init"], env=env)
    lab.wait_for_port(pod.role, "127.0.0.1", 9191, process=legacy)
    eventually(lambda: pod.readyz() == (200, "ok\n"))
    eventually(lambda: f"watching macvlan0 for other hosts claiming {pod.source}\n" in legacy.stderr())
    return legacy


@pytest.mark.parametrize("command", ["monitor", "legacy"])
def test_a_host_taking_the_address_later_makes_the_router_unready_until_it_is_gone(lab: Lab, pod: Pod, command: str) -> None:
    if command == "monitor":
        assert pod.init(EGRESS_ROUTER_MODE="init", **redirect_env(pod.source)).returncode == 0
        monitor = start_monitor(lab, pod)
    else:
        monitor = start_legacy(lab, pod)
    assert lab.tcp("client", pod.ip, 80).client == pod.source  # the gateway now knows the source at the router's MAC
    assert pod.metric("egress_router_address_conflict") == 0

    def take() -> str:
        intruder = lab.add_lan_host("intruder", pod.source)
        lab.announce("intruder", pod.source)
        return intruder

    conflict_comes_and_goes(lab, pod, monitor, command=command, source=pod.source, via=pod.ip, take=take, how="gratuitous ARP")


def test_a_monitor_that_starts_while_another_host_holds_the_address_does_not_announce_it(lab: Lab, pod: Pod) -> None:
    """Its start probe is answered by the holder, so it neither announces (which would flip the LAN's caches to it
    while the other host still answers) nor becomes ready; a holder that stays silent otherwise is found this way."""
    assert pod.init(EGRESS_ROUTER_MODE="init", **redirect_env(pod.source)).returncode == 0
    intruder = lab.add_lan_host("intruder", pod.source)  # holds it, says nothing until asked
    try:
        env = environment(**redirect_env(pod.source), EGRESS_ROUTER_MONITOR_INTERVAL=INTERVAL)
        monitor = lab.start_in(pod.role, [sys.executable, "-m", "egress_router", "monitor"], env=env)
        lab.wait_for_port(pod.role, "127.0.0.1", 9191, process=monitor)
        reason = f"another host (MAC {intruder}) claims {pod.source}"
        eventually(lambda: pod.readyz() == (503, reason + "\n"), what=monitor.stderr)
        eventually(lambda: "not announcing the egress address on macvlan0: " + reason in monitor.stderr(), what=monitor.stderr)
        time.sleep(ANSWER_TIME + 2.5)  # past both announcements' times
        assert "gratuitous ARP" not in monitor.stderr()
        assert pod.metric("egress_router_arp_last_announce_timestamp_seconds") is None
    finally:
        lab.remove_namespace("intruder")
    eventually(lambda: pod.readyz() == (200, "ok\n"), seconds=6)  # gone: ready again after one announcement
    assert monitor.stderr().count("announced it with gratuitous ARP") == 1
    assert "Traceback" not in monitor.stderr()
