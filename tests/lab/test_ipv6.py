"""IPv6 and dual-stack routers end to end, in the dual-stack lab (every address has its `v6()` twin): the external
server reports the source address it saw, over each family."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from egress_router.lab import Lab
from egress_router.lab import topology as t
from egress_router.lab.topology import run, v6
from tests.lab.conftest import Pod, new_pod
from tests.lab.http_helpers import http_get
from tests.lab.waiting import eventually

GATEWAY6 = v6(t.GATEWAY_IP)
SERVER25, SERVER26, SERVER27, PUBLIC6 = (v6(s) for s in (*t.PROTECTED_SERVERS, t.PUBLIC_SERVER))
RULES6 = f"""
80 tcp {SERVER25}            # plain port rule
8080 tcp {SERVER26} 80       # remote port: DNAT to [addr]:80
53 udp {SERVER27}
53 tcp {SERVER27}
{PUBLIC6}                    # fallback
"""
#: Dual-stack: port 80 once per family, each family its own fallback (and different servers, to tell them apart).
DUAL_RULES = f"""
80 tcp 203.0.113.25
80 tcp {SERVER26}
53 udp {SERVER27}
203.0.113.50
{SERVER27}
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(ipv6=True).build(router=False) as built:
        yield built


def source6(pod: Pod) -> str:
    return v6(pod.source)


def init(pod: Pod, **env: str) -> subprocess.CompletedProcess[str]:
    done = pod.init(**{"EGRESS_ROUTER_MODE": "init", **env})
    assert done.returncode == 0, done.stderr
    return done


def redirect6(pod: Pod, destination: str = RULES6, **env: str) -> subprocess.CompletedProcess[str]:
    return init(pod, **{"EGRESS_SOURCE": source6(pod), "EGRESS_GATEWAY": GATEWAY6, "EGRESS_DESTINATION": destination, **env})


def dual(pod: Pod, destination: str = DUAL_RULES, **env: str) -> subprocess.CompletedProcess[str]:
    return init(
        pod,
        **{
            "EGRESS_SOURCE": f"{pod.source}/24,{source6(pod)}/64",
            "EGRESS_GATEWAY": f"{t.GATEWAY_IP},{GATEWAY6}",
            "EGRESS_DESTINATION": destination,
            **env,
        },
    )


def test_direct_ipv6_traffic_leaves_as_the_node_and_the_firewall_refuses_it(lab: Lab) -> None:
    assert lab.tcp("client", PUBLIC6, 80).client == v6(t.NODE_IP)
    with pytest.raises(OSError):
        lab.tcp("client", SERVER25, 80, timeout=2)


def test_redirect_over_ipv6_every_rule_reaches_its_host_as_the_egress_source(lab: Lab, pod: Pod, nat_backend: str) -> None:
    fresh = pod.snapshot()
    redirect6(pod)
    router = v6(pod.ip)
    seen = lab.tcp("client", router, 80)
    assert (seen.server, seen.port, seen.client) == (SERVER25, 80, source6(pod))
    seen = lab.tcp("client", router, 8080)
    assert (seen.server, seen.port, seen.client) == (SERVER26, 80, source6(pod))
    seen = lab.udp("client", router, 53)
    assert (seen.proto, seen.server, seen.port, seen.client) == ("udp", SERVER27, 53, source6(pod))
    seen = lab.tcp("client", router, 53)
    assert (seen.proto, seen.server, seen.client) == ("tcp", SERVER27, source6(pod))
    for port in (443, 9000):  # every other port: the fallback
        seen = lab.tcp("client", router, port)
        assert (seen.server, seen.port, seen.client) == (PUBLIC6, port, source6(pod))
    # an IPv6-only router leaves IPv4 alone: nothing of it is redirected, the pod's IPv4 default route stays on eth0
    with pytest.raises(ConnectionRefusedError):
        lab.tcp("client", pod.ip, 80)
    state = pod.snapshot()
    assert f"default via {GATEWAY6} dev macvlan0 proto static src {source6(pod)}" in state["routes6"]
    assert f"{GATEWAY6} dev macvlan0 proto static" in state["routes6"]
    assert "default via 10.128.0.1 dev eth0" in state["routes"]
    if nat_backend == "iptables":
        assert f"-A EGRESS-ROUTER-DNAT -i eth0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination [{SERVER26}]:80" in state["nat6"]
        assert f"-A EGRESS-ROUTER-SNAT -o macvlan0 -j SNAT --to-source {source6(pod)}" in state["nat6"]
    else:
        assert "table ip6 egress_router {" in state["nftables"] and "table ip egress_router" not in state["nftables"]
        assert f'iifname "eth0" tcp dport 8080 counter dnat to [{SERVER26}]:80' in state["nftables"]
    assert (state["forwarding6"], state["ip_forward"]) == ("1", fresh["ip_forward"])  # a new namespace inherits the machine's
    assert "EGRESS-ROUTER" not in state["nat"] and "EGRESS-ROUTER" not in state["mangle"]


def test_dual_stack_router_serves_both_families_with_a_fallback_each(lab: Lab, pod: Pod, nat_backend: str) -> None:
    dual(pod)
    for host, server, fallback, source in (
        (pod.ip, "203.0.113.25", "203.0.113.50", pod.source),
        (v6(pod.ip), SERVER26, SERVER27, source6(pod)),
    ):
        seen = lab.tcp("client", host, 80)  # the same port, a rule per family
        assert (seen.server, seen.port, seen.client) == (server, 80, source)
        seen = lab.tcp("client", host, 9000)
        assert (seen.server, seen.port, seen.client) == (fallback, 9000, source)
    seen = lab.udp("client", v6(pod.ip), 53)
    assert (seen.server, seen.client) == (SERVER27, source6(pod))
    seen = lab.udp("client", pod.ip, 53)  # the UDP rule is IPv6's: over IPv4, port 53 takes IPv4's fallback
    assert (seen.server, seen.client) == ("203.0.113.50", pod.source)
    # the pod's own connections leave from the egress address of their family
    assert lab.tcp(pod.role, "203.0.113.26", 443).client == pod.source
    assert lab.tcp(pod.role, SERVER26, 443).client == source6(pod)


def test_dual_stack_init_twice_changes_nothing(lab: Lab, pod: Pod, nat_backend: str) -> None:
    dual(pod, EGRESS_CLUSTER_NETWORKS=f"172.30.0.0/16,{t.SERVICE_NETWORK6}")
    before = pod.snapshot()
    again = dual(pod, EGRESS_CLUSTER_NETWORKS=f"172.30.0.0/16,{t.SERVICE_NETWORK6}")
    assert "nothing to change" in again.stderr
    assert pod.snapshot() == before
    assert lab.tcp("client", v6(pod.ip), 80).client == source6(pod)


def test_new_input_replaces_the_old_ipv6_address_and_rules(lab: Lab, pod: Pod) -> None:
    redirect6(pod)
    init(pod, EGRESS_SOURCE="2001:db8:12::120", EGRESS_GATEWAY=GATEWAY6, EGRESS_DESTINATION=f"80 tcp {SERVER26}")
    state = pod.snapshot()
    assert "2001:db8:12::120/128" in state["addresses"] and f"{source6(pod)}/" not in state["addresses"]
    assert SERVER25 not in state["nat6"] and PUBLIC6 not in state["nat6"]
    seen = lab.tcp("client", v6(pod.ip), 80)
    assert (seen.server, seen.client) == (SERVER26, "2001:db8:12::120")


def test_dropping_a_family_undoes_what_init_did_for_it(lab: Lab, pod: Pod, nat_backend: str) -> None:
    """Dual-stack, then IPv4 only, then IPv6 only: each family left behind is as a fresh pod has it."""

    def without_macvlan(text: str, family: int = 6) -> str:
        """Routes but the egress interface's (up now: it has a link-local route) and the subnet-router anycast ones that
        forwarding (left on, as ip_forward is) brings."""
        lines = text.splitlines()
        return "\n".join(
            line for line in lines if "macvlan0" not in line and not line.startswith("anycast") and (family == 6 or ":" not in line)
        )

    fresh = pod.snapshot()
    dual(pod)
    done = init(pod, EGRESS_SOURCE=pod.source, EGRESS_GATEWAY=t.GATEWAY_IP, EGRESS_DESTINATION="80 tcp 203.0.113.25")
    assert "IPv6 is no longer in EGRESS_SOURCE" in done.stderr
    state = pod.snapshot()
    assert without_macvlan(state["routes6"]) == without_macvlan(fresh["routes6"])  # eth0's default route is back
    assert (state["rules6"], state["nat6"], state["mangle6"]) == (fresh["rules6"], fresh["nat6"], fresh["mangle6"])
    assert "table ip6 egress_router" not in state["nftables"]
    assert source6(pod) not in state["addresses"]
    assert lab.tcp(pod.role, PUBLIC6, 80).client == v6(t.NODE_IP)  # the pod's own IPv6 leaves by eth0 again
    assert lab.tcp("client", pod.ip, 80).client == pod.source

    redirect6(pod)
    state = pod.snapshot()
    assert without_macvlan(state["routes"], 4) == without_macvlan(fresh["routes"], 4)  # `ip route show table all`: both families
    assert (state["rules"], state["nat"], state["mangle"]) == (fresh["rules"], fresh["nat"], fresh["mangle"])
    assert f"{pod.source}/" not in state["addresses"]
    assert lab.tcp(pod.role, t.PUBLIC_SERVER, 80).client == t.NODE_IP
    assert lab.tcp("client", v6(pod.ip), 80).client == source6(pod)


def test_unit_test_mode_prints_both_families_and_changes_nothing(pod: Pod) -> None:
    before = pod.snapshot()
    done = pod.init(
        EGRESS_SOURCE=f"{pod.source},{source6(pod)}",
        EGRESS_GATEWAY=f"{t.GATEWAY_IP},{GATEWAY6}",
        EGRESS_DESTINATION=DUAL_RULES,
        EGRESS_ROUTER_MODE="unit-test",
    )
    assert done.returncode == 0, done.stderr
    assert f"addr   {source6(pod)}/128 dev macvlan0" in done.stdout
    assert "sysctl net.ipv6.conf.all.forwarding=1" in done.stdout
    assert f"-A EGRESS-ROUTER-DNAT -i eth0 -p tcp -m tcp --dport 80 -j DNAT --to-destination {SERVER26}" in done.stdout
    assert "-A EGRESS-ROUTER-DNAT -i eth0 -p tcp -m tcp --dport 80 -j DNAT --to-destination 203.0.113.25" in done.stdout
    assert pod.snapshot() == before


@pytest.mark.parametrize("mode", ["http-proxy", "dns-proxy"])
def test_proxy_modes_with_an_ipv6_source(lab: Lab, pod: Pod, mode: str) -> None:
    done = pod.init(EGRESS_SOURCE=source6(pod), EGRESS_GATEWAY=GATEWAY6, EGRESS_ROUTER_MODE=mode)
    assert done.returncode == 0, done.stderr
    state = pod.snapshot()
    assert "EGRESS-ROUTER" not in state["nat6"] and state["forwarding6"] == "0"
    assert lab.tcp(pod.role, SERVER25, 443).client == source6(pod)  # the proxy's own connections, as the egress address
    assert lab.tcp(pod.role, t.PUBLIC_SERVER, 443).client == t.NODE_IP  # IPv4 is not the router's: it leaves by eth0


def test_a_link_local_gateway(lab: Lab, pod: Pod) -> None:
    lab.ip("gw", "addr", "add", "fe80::1/64", "dev", "eth0", "nodad")  # as routers advertise themselves
    try:
        redirect6(pod, EGRESS_GATEWAY="fe80::1")
        assert "default via fe80::1 dev macvlan0" in pod.snapshot()["routes6"]
        assert lab.tcp("client", v6(pod.ip), 80).client == source6(pod)
    finally:
        lab.ip("gw", "addr", "del", "fe80::1/64", "dev", "eth0")


def test_an_ipv4_only_pod_network_with_an_ipv6_egress(lab: Lab, pod: Pod) -> None:
    """The proxies of an IPv4-only cluster may leave over IPv6: eth0 has no IPv6 to keep, nothing of it is touched."""
    lab.ip(pod.role, "-6", "addr", "flush", "dev", "eth0", "scope", "global")
    done = pod.init(EGRESS_SOURCE=source6(pod), EGRESS_GATEWAY=GATEWAY6, EGRESS_ROUTER_MODE="http-proxy", EGRESS_ROUTER_DEBUG="1")
    assert done.returncode == 0, done.stderr
    assert "eth0 has no IPv6 address: nothing arrives over IPv6 to answer, its routes stay" in done.stderr
    assert "from all fwmark" not in pod.snapshot()["rules6"]
    assert lab.tcp(pod.role, SERVER25, 443).client == source6(pod)
    assert "default via 10.128.0.1 dev eth0" in pod.snapshot()["routes"]


def test_dual_stack_proxy_mode(lab: Lab, pod: Pod) -> None:
    done = pod.init(
        EGRESS_SOURCE=f"{pod.source},{source6(pod)}", EGRESS_GATEWAY=f"{t.GATEWAY_IP},{GATEWAY6}", EGRESS_ROUTER_MODE="http-proxy"
    )
    assert done.returncode == 0, done.stderr
    assert lab.tcp(pod.role, SERVER25, 443).client == source6(pod)
    assert lab.tcp(pod.role, "203.0.113.25", 443).client == pod.source


# every pod network: replies by arrival interface, the pod's IPv6 nameservers and cluster networks on eth0 ------------


@pytest.mark.parametrize("routed", [False, True], ids=["bridge-pod", "routed-pod"])
def test_a_client_on_the_other_node_and_a_probe_from_the_node_are_answered_over_ipv6(lab: Lab, routed: bool) -> None:
    pod = new_pod(lab, routed=routed)
    try:
        dual(pod)
        seen = lab.tcp("client2", v6(pod.ip), 80)
        assert (seen.server, seen.client) == (SERVER26, source6(pod))
        seen = lab.tcp("client2", v6(pod.ip), 9000)  # IPv6's fallback
        assert (seen.server, seen.client) == (SERVER27, source6(pod))
        assert lab.tcp("client2", pod.ip, 80).client == pod.source  # and IPv4 alongside
        seen = lab.tcp("node", v6(pod.ip), 80, source=v6(t.NODE_IP))  # a kubelet probe from the node's own address
        assert (seen.server, seen.client) == (SERVER26, source6(pod))
        state = pod.snapshot()
        assert "1000:\tfrom all fwmark 0x400000/0x400000 lookup 201" in state["rules6"]
        assert "-A EGRESS-ROUTER-MARK -i eth0 -m conntrack --ctstate NEW -j CONNMARK --set-xmark 0x400000/0x400000" in state["mangle6"]
        hop = v6(t.ROUTED_POD_GATEWAY) if routed else v6("10.128.0.1")
        assert f"default via {hop} dev eth0 table 201 proto 201" in state["routes6"]
    finally:
        lab.remove_namespace(pod.role)


def test_redirect_through_the_routers_ipv6_service(lab: Lab) -> None:
    pod = new_pod(lab, routed=True)
    try:
        redirect6(pod)
        service = v6("172.30.1.81")
        lab.add_service(service, v6(pod.ip))
        for client in ("client", "client2"):
            seen = lab.tcp(client, service, 80)
            assert (seen.server, seen.client) == (SERVER25, source6(pod))
    finally:
        lab.remove_namespace(pod.role)


def test_ipv6_nameservers_stay_on_eth0(lab: Lab) -> None:
    pod = new_pod(lab, routed=True)
    try:
        lab.write_etc(pod.role, "resolv.conf", f"search {t.CLUSTER_SEARCH}\nnameserver {v6(t.CLUSTER_DNS)}\noptions ndots:5\n")
        done = dual(pod, EGRESS_ROUTER_DEBUG="1")
        assert f"nameserver {v6(t.CLUSTER_DNS)}: reached through eth0 by its default route: kept on eth0" in done.stderr
        assert f"{v6(t.CLUSTER_DNS)} via {v6(t.ROUTED_POD_GATEWAY)} dev eth0 proto 201" in pod.snapshot()["routes6"]
        resolved = lab.run_in(pod.role, ["getent", "ahostsv4", "api.partner.test"])  # through the IPv6 cluster DNS Service
        assert resolved.stdout.startswith("203.0.113.25"), resolved.stderr
    finally:
        lab.remove_namespace(pod.role)


def test_ipv6_cluster_networks_keep_the_pods_own_connections_on_eth0(lab: Lab) -> None:
    pod = new_pod(lab, routed=True)
    try:
        client2 = v6(t.CLIENT2_IP)
        lab.python_in("client2", "egress_router.lab.whoami", f"tcp:{client2}:7006", ready_line="ready")
        redirect6(pod)
        with pytest.raises(OSError):  # without them, the pod's own IPv6 connections into the cluster leave by the egress interface
            lab.tcp(pod.role, client2, 7006, timeout=1)
        redirect6(pod, EGRESS_CLUSTER_NETWORKS=f"{t.CLUSTER_NETWORK},{t.CLUSTER_NETWORK6}")
        assert lab.tcp(pod.role, client2, 7006).client == v6(pod.ip)
        assert lab.tcp(pod.role, SERVER25, 80).client == source6(pod)
    finally:
        lab.remove_namespace(pod.role)


# announcing the address, duplicate address detection, and bad input ------------------------------------------------------


def test_a_neighbour_advertisement_moves_the_address_to_the_new_pod(lab: Lab) -> None:
    old = new_pod(lab)
    new = new_pod(lab)
    new.source = old.source
    try:
        redirect6(old)
        assert lab.tcp("client", v6(old.ip), 80).client == source6(old)
        old_mac = lab.link_mac(old.role, "macvlan0")
        assert lab.neighbour_mac("gw", source6(old)) == old_mac
        lab.remove_namespace(old.role)  # the old pod is gone; the gateway still has its MAC
        time.sleep(1.1)
        done = redirect6(new)
        assert f"announced {source6(new)} on macvlan0 with an unsolicited neighbour advertisement" in done.stderr
        new_mac = lab.link_mac(new.role, "macvlan0")
        assert new_mac != old_mac
        eventually(lambda: lab.neighbour_mac("gw", source6(new)) == new_mac, 3, "the gateway never learned the new MAC")
        assert lab.tcp("client", v6(new.ip), 80).client == source6(new)
    finally:
        lab.remove_namespace(old.role)
        lab.remove_namespace(new.role)


def test_an_address_another_host_has_fails_duplicate_address_detection_and_changes_nothing(lab: Lab, pod: Pod) -> None:
    lab.ip("gw", "addr", "add", f"{source6(pod)}/64", "dev", "eth0", "nodad")  # someone on the node's network has it already
    try:
        before = pod.snapshot()
        done = pod.init(
            EGRESS_SOURCE=f"{pod.source},{source6(pod)}/64",
            EGRESS_GATEWAY=f"{t.GATEWAY_IP},{GATEWAY6}",
            EGRESS_DESTINATION=DUAL_RULES,
            EGRESS_ROUTER_MODE="init",
        )
        assert done.returncode == 1
        holder = lab.link_mac("gw", "eth0")
        assert done.stderr.splitlines()[-1].startswith(
            f"egress-router init: error: EGRESS_SOURCE: {source6(pod)} is already in use: MAC {holder} answered for it on macvlan0"
            " (another router pod or host holds it; duplicate address detection failed)"
        ), done.stderr
        assert "rolled back, the pod's network is as it was" in done.stderr and "Traceback" not in done.stderr
        assert pod.snapshot() == before
    finally:
        lab.ip("gw", "addr", "del", f"{source6(pod)}/64", "dev", "eth0")


def test_duplicate_address_detection_turned_off_on_the_egress_interface_is_turned_on_for_the_claim(lab: Lab, pod: Pod) -> None:
    """accept_dad=0 (a node's defaults that a new namespace inherits, say) would let the router take an address another
    host holds without a word: init raises it before adding the address, and a failure puts it back."""
    lab.sysctl(pod.role, "net.ipv6.conf.macvlan0.accept_dad", "0")
    lab.ip("gw", "addr", "add", f"{source6(pod)}/64", "dev", "eth0", "nodad")
    try:
        done = pod.init(EGRESS_SOURCE=f"{source6(pod)}/64", EGRESS_GATEWAY=GATEWAY6, EGRESS_DESTINATION=RULES6, EGRESS_ROUTER_MODE="init")
        assert done.returncode == 1
        assert f"EGRESS_SOURCE: {source6(pod)} is already in use: MAC {lab.link_mac('gw', 'eth0')} answered for it" in done.stderr
        assert "set net.ipv6.conf.macvlan0.accept_dad=1" in done.stderr and "Traceback" not in done.stderr
        dad = run(lab.exec_argv(pod.role, ["cat", "/proc/sys/net/ipv6/conf/macvlan0/accept_dad"])).stdout.strip()
        assert dad == "0"  # rolled back with the rest
    finally:
        lab.ip("gw", "addr", "del", f"{source6(pod)}/64", "dev", "eth0")


def test_ipv6_disabled_on_the_egress_interface_is_explained_and_changes_nothing(lab: Lab, pod: Pod) -> None:
    lab.sysctl(pod.role, "net.ipv6.conf.macvlan0.disable_ipv6", "1")
    before = pod.snapshot()
    done = pod.init(
        EGRESS_SOURCE=f"{pod.source},{source6(pod)}", EGRESS_GATEWAY=f"{t.GATEWAY_IP},{GATEWAY6}", EGRESS_ROUTER_MODE="http-proxy"
    )
    assert done.returncode == 1
    assert "EGRESS_SOURCE: IPv6 is disabled on macvlan0 (net.ipv6.conf.macvlan0.disable_ipv6 is not 0" in done.stderr.splitlines()[-1]
    assert "rolled back, the pod's network is as it was" in done.stderr
    assert pod.snapshot() == before


BAD = [
    (
        {"EGRESS_GATEWAY": GATEWAY6},
        "EGRESS_GATEWAY: 2001:db8:12::1 is an IPv6 gateway but EGRESS_SOURCE has no IPv6 address (it has IPv4); each gateway must match"
        ' a source\'s family: "2001:db8:12::1"',
    ),
    # two of one family are a pool (issue 11): without an index or a StatefulSet name, which one is this pod's?
    ({"EGRESS_SOURCE": "192.168.12.99,192.168.12.98"}, "EGRESS_SOURCE_INDEX: unspecified: EGRESS_SOURCE is a pool of 2 addresses"),
    (
        {"EGRESS_SOURCE": "2001:db8:12::99,2001:db8:12::98", "EGRESS_GATEWAY": GATEWAY6},
        "EGRESS_SOURCE_INDEX: unspecified: EGRESS_SOURCE is a pool of 2 addresses",
    ),
    (
        {"EGRESS_DESTINATION": f"80 tcp 203.0.113.25\n80 tcp {SERVER25}"},
        f"EGRESS_DESTINATION line 2: {SERVER25} is an IPv6 destination, but this router is IPv4-only (EGRESS_SOURCE has no IPv6 address):"
        f' "80 tcp {SERVER25}"',
    ),
    (
        {"EGRESS_SOURCE": "2001:db8:12::99", "EGRESS_GATEWAY": GATEWAY6},
        'EGRESS_DESTINATION line 1: 203.0.113.25 is an IPv4 destination, but this router is IPv6-only (EGRESS_SOURCE has no IPv4 address): "80 tcp 203.0.113.25"',
    ),
    (
        {"EGRESS_SOURCE": "192.168.12.99,2001:db8:12::99"},
        "EGRESS_GATEWAY: no IPv6 gateway for EGRESS_SOURCE's IPv6 address 2001:db8:12::99 (give one next hop of each family",
    ),
    ({"EGRESS_SOURCE": "fe80::99", "EGRESS_GATEWAY": GATEWAY6}, "EGRESS_SOURCE: a link-local address cannot be the egress address"),
    ({"EGRESS_CLUSTER_NETWORKS": "fd00:10:128::1/48"}, "EGRESS_CLUSTER_NETWORKS: has host bits set (did you mean fd00:10:128::/48?)"),
]


@pytest.mark.parametrize(
    ("changes", "message"),
    BAD,
    ids=["wrong-family-gateway", "two-ipv4", "two-ipv6", "ipv6-destination", "ipv4-destination", "no-ipv6-gateway", "link-local", "cidr"],
)
def test_bad_ipv6_input_is_explained_and_changes_nothing(pod: Pod, changes: dict[str, str], message: str) -> None:
    env = {
        "EGRESS_SOURCE": pod.source,
        "EGRESS_GATEWAY": t.GATEWAY_IP,
        "EGRESS_DESTINATION": "80 tcp 203.0.113.25",
        "EGRESS_ROUTER_MODE": "init",
    }
    before = pod.snapshot()
    done = pod.init(**{**env, **changes})
    assert done.returncode == 1
    assert message in done.stderr
    assert all(line.startswith("egress-router init: error: ") for line in done.stderr.splitlines()), done.stderr
    assert pod.snapshot() == before


# monitor and legacy mode ------------------------------------------------------------------------------------------


def test_monitor_keeps_both_families_true(lab: Lab, pod: Pod, tmp_path: Path, nat_backend: str) -> None:
    rules = tmp_path / "destination"
    rules.write_text(f"80 tcp 203.0.113.25\n80 tcp {SERVER25}\n")
    env = {
        "EGRESS_SOURCE": f"{pod.source},{source6(pod)}",
        "EGRESS_GATEWAY": f"{t.GATEWAY_IP},{GATEWAY6}",
        "EGRESS_DESTINATION_FILE": str(rules),
        "EGRESS_METRICS_PORT": "9191",  # as the examples give both containers: the monitor finds init's NAT as it plans it
    }
    init(pod, **env)
    monitor = lab.start_in(
        pod.role, [sys.executable, "-m", "egress_router", "monitor"], env=pod.env(**env, EGRESS_ROUTER_MONITOR_INTERVAL="300ms")
    )
    lab.wait_for_port(pod.role, "::1", 9191, process=monitor)
    for _ in range(2):
        assert lab.tcp("client", v6(pod.ip), 80).server == SERVER25
    assert lab.tcp("client", pod.ip, 80).server == "203.0.113.25"
    eventually(lambda: (pod.metric("egress_router_nat_packets_total", rule="2") or 0) >= 2)  # counters: read each pass
    eventually(lambda: (pod.metric("egress_router_nat_packets_total", rule="1") or 0) >= 1)
    eventually(lambda: (pod.metric("egress_router_nat_packets_total", rule="snat") or 0) >= 3)  # both families' SNAT

    rules.write_text(f"80 tcp {SERVER26}\n443 tcp 2001:db8::1\n{SERVER27}\n")  # IPv6 only now, and a fallback
    eventually(lambda: lab.tcp("client", v6(pod.ip), 9000).server == SERVER27)
    assert lab.tcp("client", v6(pod.ip), 80).server == SERVER26
    rules.write_text("80 tcp 203.0.113.25\n80 tcp 2001:db8::zz\n")  # a bad list is refused, the running rules stay
    eventually(lambda: "keeping the previous list" in monitor.stderr())
    assert "EGRESS_DESTINATION line 2: value '2001:db8::zz' is invalid" in monitor.stderr()

    flush = {"iptables": ["ip6tables-legacy", "-t", "nat", "-F"], "nftables": ["nft", "flush", "chain", "ip6", "egress_router"]}
    run(lab.exec_argv(pod.role, [*flush[nat_backend], "EGRESS-ROUTER-DNAT"]))
    lab.ip(pod.role, "-6", "rule", "del", "priority", "1000")
    eventually(lambda: "NAT rules restored" in monitor.stderr() and "reply routing restored" in monitor.stderr())
    eventually(lambda: lab.tcp("client2", v6(pod.ip), 80, timeout=1).server == SERVER26)

    lab.ip(pod.role, "-6", "addr", "del", f"{source6(pod)}/128", "dev", "macvlan0")
    eventually(lambda: http_get(lab, "node", pod.ip, 9191, "/readyz")[0] == 503)
    assert http_get(lab, "node", pod.ip, 9191, "/readyz") == (503, f"{source6(pod)} is not on macvlan0 (run init again)\n")
    os.killpg(monitor.popen.pid, signal.SIGTERM)
    assert monitor.popen.wait(5) == 0
    assert "Traceback" not in monitor.stderr()


def test_legacy_mode_over_ipv6_stays_up_until_sigterm(lab: Lab, pod: Pod) -> None:
    with pod.legacy_init(EGRESS_SOURCE=source6(pod), EGRESS_GATEWAY=GATEWAY6, EGRESS_DESTINATION=RULES6) as proc:
        assert lab.tcp("client", v6(pod.ip), 80).client == source6(pod)
        run(lab.exec_argv(pod.role, ["ip6tables-legacy", "-t", "nat", "-F", "EGRESS-ROUTER-DNAT"]))
        eventually(lambda: lab.tcp("client", v6(pod.ip), 80, timeout=1).client == source6(pod), 15)  # put back within an interval
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
