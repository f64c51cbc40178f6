"""Redirect mode end to end: the external server reports the source address it saw. Every test runs with each
NAT backend (iptables, nftables)."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from egress_router.lab import Lab
from egress_router.lab import topology as t
from tests.lab.conftest import Pod, new_pod
from tests.lab.waiting import eventually

pytestmark = pytest.mark.usefixtures("nat_backend")

GATEWAY = t.GATEWAY_IP
OTHER_SOURCE = "192.168.12.96"  # in the egress range, never a pod's (their slots give .97-.126), so never the same as pod.source
RULES = """
80 tcp 203.0.113.25          # plain port rule
8080 tcp 203.0.113.26 80     # remote port
53 udp 203.0.113.27          # UDP
53 tcp 203.0.113.27          # same port, other protocol
203.0.113.50                 # fallback
"""


def redirect(pod: Pod, destination: str = RULES, **env: str) -> subprocess.CompletedProcess[str]:
    settings = {"EGRESS_SOURCE": pod.source, "EGRESS_GATEWAY": GATEWAY, "EGRESS_DESTINATION": destination, "EGRESS_ROUTER_MODE": "init"}
    done = pod.init(**{**settings, **env})
    assert done.returncode == 0, done.stderr
    return done


def test_direct_traffic_leaves_as_the_node_and_the_firewall_refuses_it(lab: Lab) -> None:
    assert lab.tcp("client", t.PUBLIC_SERVER, 80).client == t.NODE_IP
    with pytest.raises(OSError):
        lab.tcp("client", "203.0.113.25", 80, timeout=2)


def test_through_the_router_every_rule_reaches_its_host_as_egress_source(lab: Lab, pod: Pod) -> None:
    redirect(pod)
    seen = lab.tcp("client", pod.ip, 80)
    assert (seen.server, seen.port, seen.client) == ("203.0.113.25", 80, pod.source)
    seen = lab.tcp("client", pod.ip, 8080)
    assert (seen.server, seen.port, seen.client) == ("203.0.113.26", 80, pod.source)
    seen = lab.udp("client", pod.ip, 53)
    assert (seen.proto, seen.server, seen.port, seen.client) == ("udp", "203.0.113.27", 53, pod.source)
    seen = lab.tcp("client", pod.ip, 53)
    assert (seen.proto, seen.server, seen.client) == ("tcp", "203.0.113.27", pod.source)
    for port in (443, 9000):  # every other port: the fallback
        seen = lab.tcp("client", pod.ip, port)
        assert (seen.server, seen.port, seen.client) == (t.PUBLIC_SERVER, port, pod.source)
    seen = lab.udp("client", pod.ip, 5353)
    assert (seen.proto, seen.server, seen.client) == ("udp", t.PUBLIC_SERVER, pod.source)


def test_without_fallback_other_ports_are_not_redirected(lab: Lab, pod: Pod) -> None:
    redirect(pod, "80 tcp 203.0.113.25")
    assert lab.tcp("client", pod.ip, 80).client == pod.source
    with pytest.raises(ConnectionRefusedError):  # nothing listens on the router pod itself
        lab.tcp("client", pod.ip, 9000)


#: How each backend shows the jump into our DNAT chain and our SNAT rule.
JUMP = {"iptables": "-A PREROUTING -j EGRESS-ROUTER-DNAT", "nftables": "jump EGRESS-ROUTER-DNAT"}
SNAT = {"iptables": "-A EGRESS-ROUTER-SNAT -o macvlan0 -j SNAT --to-source {}", "nftables": 'oifname "macvlan0" counter snat to {}'}


def test_router_pod_routes_and_nat(pod: Pod, nat_backend: str) -> None:
    redirect(pod)
    state = pod.snapshot()
    assert f"default via {GATEWAY} dev macvlan0" in state["routes"]
    assert f"{GATEWAY} dev macvlan0 proto static scope link" in state["routes"]
    assert "10.128.0.0/23 dev eth0" in state["routes"]  # the cluster network stays on eth0
    assert f"{pod.source}/32" in state["addresses"]
    assert state["ip_forward"] == "1"
    assert JUMP[nat_backend] in pod.nat_rules()
    assert SNAT[nat_backend].format(pod.source) in pod.nat_rules()
    other = state["nat"] + state["mangle"] if nat_backend == "nftables" else state["nftables"]
    assert "EGRESS-ROUTER" not in other  # nothing through the other backend


def test_init_twice_changes_nothing(lab: Lab, pod: Pod) -> None:
    redirect(pod)
    before = pod.snapshot()
    handles = lab.run_in(pod.role, ["nft", "-a", "list", "ruleset"]).stdout  # a rewrite of the same rules gets new handles
    again = redirect(pod)
    assert "nothing to change" in again.stderr
    assert pod.snapshot() == before
    assert lab.run_in(pod.role, ["nft", "-a", "list", "ruleset"]).stdout == handles
    assert lab.tcp("client", pod.ip, 80).client == pod.source


def test_new_input_replaces_the_old_rules_and_address(lab: Lab, pod: Pod, nat_backend: str) -> None:
    redirect(pod)
    done = pod.init(EGRESS_SOURCE=OTHER_SOURCE, EGRESS_GATEWAY=GATEWAY, EGRESS_DESTINATION="80 tcp 203.0.113.26", EGRESS_ROUTER_MODE="init")
    assert done.returncode == 0, done.stderr
    state = pod.snapshot()
    assert f"{OTHER_SOURCE}/32" in state["addresses"] and f"{pod.source}/" not in state["addresses"]
    rules = pod.nat_rules()
    assert "203.0.113.25" not in rules and "203.0.113.50" not in rules
    assert rules.count(JUMP[nat_backend].rsplit(" ", 1)[0] + " EGRESS-ROUTER-DNAT") == 1
    seen = lab.tcp("client", pod.ip, 80)
    assert (seen.server, seen.client) == ("203.0.113.26", OTHER_SOURCE)


def test_subnet_source_gets_the_kernel_subnet_route(lab: Lab, pod: Pod) -> None:
    redirect(pod, EGRESS_SOURCE=f"{pod.source}/24")
    assert "192.168.12.0/24 dev macvlan0 proto kernel" in pod.snapshot()["routes"]
    assert lab.tcp("client", pod.ip, 80).client == pod.source


def test_destination_file(lab: Lab, pod: Pod, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rules = tmp_path / "destination"
    rules.write_text("80 tcp 203.0.113.27\n")
    done = pod.init(EGRESS_SOURCE=pod.source, EGRESS_GATEWAY=GATEWAY, EGRESS_DESTINATION_FILE=str(rules), EGRESS_ROUTER_MODE="init")
    assert done.returncode == 0, done.stderr
    assert lab.tcp("client", pod.ip, 80).server == "203.0.113.27"


SCTP = {
    "iptables": "-p sctp -m sctp --dport 9000 -j DNAT --to-destination 203.0.113.25:9001",
    "nftables": 'iifname "eth0" sctp dport 9000 counter dnat to 203.0.113.25:9001',
}


def test_sctp_rules_are_installed(pod: Pod, nat_backend: str) -> None:
    redirect(pod, "9000 sctp 203.0.113.25 9001")
    assert SCTP[nat_backend] in pod.nat_rules()


PLANNED = {
    "iptables": "-A EGRESS-ROUTER-DNAT -i eth0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 203.0.113.26:80",
    "nftables": '\t\tiifname "eth0" tcp dport 8080 counter dnat to 203.0.113.26:80',
}


def test_unit_test_mode_prints_the_plan_and_changes_nothing(pod: Pod, nat_backend: str) -> None:
    before = pod.snapshot()
    done = pod.init(EGRESS_SOURCE=pod.source, EGRESS_GATEWAY=GATEWAY, EGRESS_DESTINATION=RULES, EGRESS_ROUTER_MODE="unit-test")
    assert done.returncode == 0, done.stderr
    assert PLANNED[nat_backend] in done.stdout
    assert f"nat    backend {nat_backend} (EGRESS_NAT_BACKEND={nat_backend})" in done.stdout
    assert pod.snapshot() == before


@pytest.mark.parametrize("mode", ["http-proxy", "dns-proxy"])
def test_proxy_modes_set_up_the_network_without_nat(lab: Lab, pod: Pod, mode: str) -> None:
    lab.sysctl(pod.role, "net.ipv4.ip_forward", "0")  # a new namespace copies the machine's own value; start from off
    done = pod.init(EGRESS_SOURCE=pod.source, EGRESS_GATEWAY=GATEWAY, EGRESS_ROUTER_MODE=mode)
    assert done.returncode == 0, done.stderr
    state = pod.snapshot()
    assert "EGRESS-ROUTER-DNAT" not in state["nat"] + state["nftables"] and state["ip_forward"] == "0"
    assert "EGRESS-ROUTER-MARK" in pod.snapshot()["nftables" if pod.nat_backend == "nftables" else "mangle"]
    assert lab.tcp(pod.role, "203.0.113.25", 443).client == pod.source  # the proxy's own connections
    unprivileged = lab.run_in(pod.role, ["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]).stdout.strip()
    assert unprivileged == "0"  # an unprivileged proxy may listen on port 80 of its own pod


def test_legacy_mode_stays_up_until_sigterm(lab: Lab, pod: Pod) -> None:
    with pod.legacy_init(EGRESS_SOURCE=pod.source, EGRESS_GATEWAY=GATEWAY, EGRESS_DESTINATION=RULES) as proc:
        assert lab.tcp("client", pod.ip, 80).client == pod.source
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_macvlan_created_from_master(lab: Lab, bare_pod: Pod) -> None:
    done = bare_pod.init(
        EGRESS_SOURCE=bare_pod.source,
        EGRESS_GATEWAY=GATEWAY,
        EGRESS_DESTINATION="80 tcp 203.0.113.25",
        EGRESS_ROUTER_MODE="init",
        EGRESS_MACVLAN_MASTER="eth0",
        EGRESS_HOST_NETNS=f"/run/netns/{lab.ns('node')}",
    )
    assert done.returncode == 0, done.stderr
    assert "created macvlan0: macvlan (bridge) on eth0" in done.stderr
    assert lab.tcp("client", bare_pod.ip, 80).client == bare_pod.source
    assert "egr" not in lab.ip("node", "-br", "link").stdout  # nothing left behind on the node


def test_gratuitous_arp_moves_the_address_to_the_new_pod(lab: Lab, nat_backend: str) -> None:
    old = new_pod(lab, nat_backend=nat_backend)
    new = new_pod(lab, nat_backend=nat_backend)
    new.source = old.source
    try:
        redirect(old)
        assert lab.tcp("client", old.ip, 80).client == old.source
        old_mac = lab.link_mac(old.role, "macvlan0")
        assert lab.neighbour_mac("gw", old.source) == old_mac
        lab.remove_namespace(old.role)  # the old pod is gone; the gateway still has its MAC
        time.sleep(1.1)  # past the neighbour table's locktime, so the first announcement counts
        redirect(new)
        new_mac = lab.link_mac(new.role, "macvlan0")
        assert new_mac != old_mac
        eventually(lambda: lab.neighbour_mac("gw", new.source) == new_mac, 3, "the gateway never learned the new MAC")
    finally:
        lab.remove_namespace(old.role)
        lab.remove_namespace(new.role)


def test_debug_logs_every_step_one_line_each(pod: Pod) -> None:
    first = redirect(pod, EGRESS_ROUTER_DEBUG="1")
    again = redirect(pod, EGRESS_ROUTER_DEBUG="1")
    for line in first.stderr.splitlines() + again.stderr.splitlines():
        assert " egress-router init " in line and line.split(" ", 4)[3] in ("DEBUG", "INFO")
    assert "DEBUG plan: sysctl net.ipv4.ip_forward=1" in first.stderr
    assert "DEBUG nat: 6 rules committed in one transaction" in first.stderr  # init mode: no metrics port unless one is set
    assert "DEBUG nat rules already in place" in again.stderr
    assert f"DEBUG macvlan0 already has {pod.source}/32" in again.stderr
    assert "DEBUG" not in redirect(pod).stderr
