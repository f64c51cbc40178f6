"""Every pod network: clients on the other node, probes from the node's own address, the cluster DNS
behind a Service, pods whose eth0 has nothing but a default route (Calico, Cilium), a Multus `net1`.
The redirect-mode tests run with each NAT backend (iptables, nftables)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from egress_router.lab import Lab
from egress_router.lab import topology as t
from egress_router.lab.topology import environment
from tests.lab.conftest import Pod, backend_of, new_pod
from tests.lab.http_helpers import start_proxy

RULES = """
80 tcp 203.0.113.25
53 udp 203.0.113.27
203.0.113.50
"""
SERVICES = {"iptables": "172.30.1.80", "nftables": "172.30.1.81"}  # the router pod's own Service, one for each run


def redirect(pod: Pod, destination: str = RULES, **env: str) -> subprocess.CompletedProcess[str]:
    settings = {
        "EGRESS_SOURCE": pod.source,
        "EGRESS_GATEWAY": t.GATEWAY_IP,
        "EGRESS_DESTINATION": destination,
        "EGRESS_ROUTER_MODE": "init",
    }
    done = pod.init(**{**settings, **env})
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def origin(lab: Lab) -> None:
    lab.python_in("server", "egress_router.lab.http_server", "--http", "0.0.0.0:8000", ready_line="ready")


@pytest.fixture
def pod(lab: Lab, request: pytest.FixtureRequest) -> Iterator[Pod]:
    """Both shapes of pod network: a flat bridge (openshift-sdn) and a routed /32 with only a default route."""
    made = new_pod(lab, routed=True, nat_backend=backend_of(request))
    yield made
    lab.remove_namespace(made.role)


@pytest.mark.parametrize("routed", [False, True], ids=["bridge-pod", "routed-pod"])
def test_redirect_answers_a_client_on_the_other_node(lab: Lab, routed: bool, nat_backend: str) -> None:
    pod = new_pod(lab, routed=routed, nat_backend=nat_backend)
    try:
        redirect(pod)
        seen = lab.tcp("client2", pod.ip, 80)
        assert (seen.server, seen.client) == ("203.0.113.25", pod.source)
        seen = lab.udp("client2", pod.ip, 53)
        assert (seen.proto, seen.server, seen.client) == ("udp", "203.0.113.27", pod.source)
        seen = lab.tcp("client2", pod.ip, 9000)  # the fallback
        assert (seen.server, seen.port, seen.client) == (t.PUBLIC_SERVER, 9000, pod.source)
        assert lab.tcp("client", pod.ip, 80).client == pod.source  # and a client on the same node still works
    finally:
        lab.remove_namespace(pod.role)


def test_redirect_through_the_routers_service(lab: Lab, pod: Pod, nat_backend: str) -> None:
    redirect(pod)
    lab.add_service(SERVICES[nat_backend], pod.ip)
    for client in ("client", "client2"):
        seen = lab.tcp(client, SERVICES[nat_backend], 80)
        assert (seen.server, seen.client) == ("203.0.113.25", pod.source)


@pytest.mark.usefixtures("nat_backend")
@pytest.mark.parametrize("prefix", ["", "/24"], ids=["source-alone", "source-with-prefix"])
def test_a_probe_from_the_nodes_own_address_is_answered(lab: Lab, pod: Pod, prefix: str) -> None:
    """kubelet probes come from the node's address; with /24 that address is on the egress interface's subnet."""
    redirect(pod, EGRESS_SOURCE=pod.source + prefix)
    seen = lab.tcp("node", pod.ip, 80, source=t.NODE_IP)
    assert (seen.server, seen.client) == ("203.0.113.25", pod.source)


@pytest.mark.parametrize("prefix", ["", "/24"], ids=["source-alone", "source-with-prefix"])
def test_http_proxy_serves_the_other_node_and_resolves_through_the_cluster_dns(lab: Lab, origin: None, pod: Pod, prefix: str) -> None:
    done = pod.init(
        EGRESS_SOURCE=pod.source + prefix, EGRESS_GATEWAY=t.GATEWAY_IP, EGRESS_ROUTER_MODE="http-proxy", EGRESS_ROUTER_DEBUG="1"
    )
    assert done.returncode == 0, done.stderr
    assert f"nameserver {t.CLUSTER_DNS}: reached through eth0 by its default route: kept on eth0" in done.stderr
    start_proxy(lab, pod.role, EGRESS_HTTP_PROXY_DESTINATION="*.partner.test\n203.0.113.26", EGRESS_HTTP_PROXY_WORKERS="1")
    for url, server in (("http://api.partner.test:8000/", "203.0.113.25"), ("http://203.0.113.26:8000/", "203.0.113.26")):
        # api.partner.test is known only to the cluster DNS, found through the search list with ndots:5
        answer = curl(lab, "client2", pod.ip, url)
        assert (answer["client"], answer["server"]) == (pod.source, server)
    # the proxy port answers a probe from the node's own address
    probe = subprocess.run(
        lab.exec_argv(
            "node",
            ["curl", "-sS", "--max-time", "5", "--interface", t.NODE_IP, "-o", "/dev/null", "-w", "%{http_code}", f"http://{pod.ip}:8080/"],
        ),
        capture_output=True,
        text=True,
    )
    assert probe.stdout == "400", probe.stderr  # the proxy's own answer to a request that is not a proxy request


def curl(lab: Lab, client: str, proxy: str, url: str) -> dict[str, str]:
    done = subprocess.run(
        lab.exec_argv(client, ["curl", "-sS", "--max-time", "10", "-x", f"http://{proxy}:8080", url]), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_dns_proxy_serves_the_other_node_with_a_name_only_the_cluster_dns_knows(lab: Lab, pod: Pod) -> None:
    done = pod.init(EGRESS_SOURCE=pod.source, EGRESS_GATEWAY=t.GATEWAY_IP, EGRESS_ROUTER_MODE="dns-proxy")
    assert done.returncode == 0, done.stderr
    env = {"EGRESS_DNS_PROXY_DESTINATION": "5432 db.partner.test\n9000 203.0.113.25 80"}
    proxy = lab.start_in(pod.role, [sys.executable, "-m", "egress_router", "dns-proxy"], env=environment(**env))
    lab.wait_for_port(pod.role, "127.0.0.1", 5432, process=proxy)
    seen = lab.tcp("client2", pod.ip, 5432)
    assert (seen.server, seen.port, seen.client) == ("203.0.113.26", 5432, pod.source)
    seen = lab.tcp("client2", pod.ip, 9000)
    assert (seen.server, seen.port, seen.client) == ("203.0.113.25", 80, pod.source)
    assert lab.tcp("node", pod.ip, 9000, source=t.NODE_IP).client == pod.source  # a TCP probe from the node


SNAT = {"iptables": "-A EGRESS-ROUTER-SNAT -o net1 -j SNAT --to-source {}", "nftables": 'oifname "net1" counter snat to {}'}
MARK = {
    "iptables": "-A EGRESS-ROUTER-MARK -i eth0 -m conntrack --ctstate NEW -j CONNMARK --set-xmark 0x400000/0x400000",
    "nftables": 'iifname "eth0" ct state new counter ct mark set ct mark | 0x00400000',
}


def test_multus_net1_on_a_routed_pod(lab: Lab, nat_backend: str) -> None:
    pod = new_pod(lab, routed=True, egress="net1", nat_backend=nat_backend)
    try:
        redirect(pod, EGRESS_INTERFACE="net1")
        assert lab.tcp("client2", pod.ip, 80).client == pod.source
        assert lab.tcp("node", pod.ip, 80, source=t.NODE_IP).client == pod.source
        assert SNAT[nat_backend].format(pod.source) in pod.nat_rules()
    finally:
        lab.remove_namespace(pod.role)


def test_policy_routing_in_the_pod(pod: Pod, nat_backend: str) -> None:
    done = redirect(pod)
    state = pod.snapshot()
    assert "1000:\tfrom all fwmark 0x400000/0x400000 lookup 201" in state["rules"]
    assert f"default via {t.ROUTED_POD_GATEWAY} dev eth0 table 201 proto 201" in state["routes"]
    assert f"{t.ROUTED_POD_GATEWAY} dev eth0 table 201 proto 201 scope link" in state["routes"]
    assert f"{t.CLUSTER_DNS} via {t.ROUTED_POD_GATEWAY} dev eth0 proto 201" in state["routes"]
    assert f"default via {t.GATEWAY_IP} dev macvlan0" in state["routes"]
    assert MARK[nat_backend] in state["nftables" if nat_backend == "nftables" else "mangle"]
    assert state["rp_filter"] == "2"
    assert "added rule fwmark 0x400000/0x400000 lookup 201 priority 1000" in done.stderr


@pytest.mark.usefixtures("nat_backend")
def test_init_twice_changes_nothing(lab: Lab, pod: Pod) -> None:
    redirect(pod, EGRESS_CLUSTER_NETWORKS="172.30.0.0/16")
    before = pod.snapshot()
    again = redirect(pod, EGRESS_CLUSTER_NETWORKS="172.30.0.0/16")
    assert "nothing to change" in again.stderr
    assert pod.snapshot() == before
    assert lab.tcp("client2", pod.ip, 80).client == pod.source


@pytest.mark.usefixtures("nat_backend")
def test_new_input_replaces_the_routes_kept_on_eth0(lab: Lab, pod: Pod) -> None:
    redirect(pod, EGRESS_CLUSTER_NETWORKS="172.31.0.0/16")
    redirect(pod, EGRESS_CLUSTER_NETWORKS="172.30.0.0/16")
    routes = pod.snapshot()["routes"]
    assert "172.30.0.0/16 via" in routes and "172.31.0.0/16" not in routes
    assert f"{t.CLUSTER_DNS} via" not in routes  # the cluster network covers the nameserver now
    assert lab.tcp("client2", pod.ip, 80).client == pod.source


#: A server on client2 for each run of the tests below (the lab, and what runs in it, lives for the whole module).
CLIENT2_PORTS = {"iptables": 7000, "nftables": 7010}


def test_cluster_networks_keep_the_pods_own_connections_on_eth0(lab: Lab, pod: Pod, nat_backend: str) -> None:
    port = CLIENT2_PORTS[nat_backend]
    lab.python_in("client2", "egress_router.lab.whoami", f"tcp:{t.CLIENT2_IP}:{port}", ready_line="ready")
    redirect(pod, EGRESS_CLUSTER_NETWORKS=t.CLUSTER_NETWORK)
    assert lab.tcp(pod.role, t.CLIENT2_IP, port).client == pod.ip  # from the pod's own address, through eth0
    assert lab.tcp(pod.role, "203.0.113.25", 80).client == pod.source  # everything else still leaves as EGRESS_SOURCE


def test_without_cluster_networks_the_pods_own_connections_to_the_cluster_leave_by_the_egress_interface(
    lab: Lab, pod: Pod, nat_backend: str
) -> None:
    """What EGRESS_CLUSTER_NETWORKS is for: without it, the site gateway drops them (no route, anti-spoofing)."""
    port = CLIENT2_PORTS[nat_backend] + 1
    lab.python_in("client2", "egress_router.lab.whoami", f"tcp:{t.CLIENT2_IP}:{port}", ready_line="ready")
    redirect(pod)
    with pytest.raises(OSError):
        lab.tcp(pod.role, t.CLIENT2_IP, port, timeout=1)


def test_an_external_nameserver_on_the_egress_network_stays_there(lab: Lab, nat_backend: str) -> None:
    """A Multus attachment with IPAM already put net1 on the node's network; a resolver there is reached through it."""
    pod = new_pod(lab, routed=True, egress="net1", nat_backend=nat_backend)
    try:
        lab.ip(pod.role, "addr", "add", f"{pod.source}/24", "dev", "net1")
        lab.ip(pod.role, "link", "set", "net1", "up")
        lab.write_etc(pod.role, "resolv.conf", f"nameserver 192.168.12.53\nnameserver {t.CLUSTER_DNS}\n")
        done = redirect(pod, EGRESS_INTERFACE="net1", EGRESS_SOURCE=f"{pod.source}/24", EGRESS_ROUTER_DEBUG="1")
        assert "nameserver 192.168.12.53: reached through net1, not eth0: stays there" in done.stderr
        assert f"nameserver {t.CLUSTER_DNS}: reached through eth0 by its default route: kept on eth0" in done.stderr
        routes = pod.snapshot()["routes"]
        assert "192.168.12.53" not in routes and f"{t.CLUSTER_DNS} via" in routes
    finally:
        lab.remove_namespace(pod.role)


@pytest.mark.usefixtures("nat_backend")
def test_no_default_route_on_eth0_is_explained_and_changes_nothing(lab: Lab, pod: Pod) -> None:
    lab.ip(pod.role, "route", "del", "default")  # a Multus attachment that took the default route
    lab.ip(pod.role, "link", "set", "macvlan0", "up")
    lab.ip(pod.role, "route", "add", "default", "via", t.GATEWAY_IP, "dev", "macvlan0", "onlink")
    before = pod.snapshot()
    done = pod.init(EGRESS_SOURCE=pod.source, EGRESS_GATEWAY=t.GATEWAY_IP, EGRESS_DESTINATION=RULES, EGRESS_ROUTER_MODE="init")
    assert done.returncode == 1
    assert done.stderr.startswith(
        "egress-router init: error: eth0 has no default route to keep (the pod's default route is default via 192.168.12.1 dev macvlan0"
    )
    assert "leave the default route out of the attachment" in done.stderr and "nothing was changed" in done.stderr
    assert "Traceback" not in done.stderr
    assert pod.snapshot() == before


def test_a_failure_part_way_rolls_back_the_policy_routing(lab: Lab, pod: Pod) -> None:
    """A read-only /proc/sys fails after the reply table, the mark rule and the kept routes were made."""
    for setting in ("accept_ra", "autoconf"):  # as the pod's sysctls may give them: written first, they would stop init at once
        lab.sysctl(pod.role, f"net.ipv6.conf.macvlan0.{setting}", "0")
    before = pod.snapshot()
    env = f"EGRESS_SOURCE={pod.source} EGRESS_GATEWAY={t.GATEWAY_IP} EGRESS_ROUTER_MODE=http-proxy EGRESS_CLUSTER_NETWORKS=172.30.0.0/16"
    script = f"mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && env {env} {sys.executable} -m egress_router init"
    done = lab.run_in(pod.role, ["unshare", "-m", "sh", "-c", script])
    assert done.returncode == 1, done.stderr
    assert "rolled back, the pod's network is as it was" in done.stderr
    assert pod.snapshot() == before


def test_the_mark_rules_are_rolled_back_when_a_later_step_fails(lab: Lab, pod: Pod, nat_backend: str) -> None:
    """The mangle chains are committed before NAT: the journal puts back what was there."""
    before = pod.snapshot()
    edge, listing, jump = {
        "iptables": ("nat", "['iptables-legacy-save', '-t', 'mangle']", "-A OUTPUT -j EGRESS-ROUTER-MARK"),
        "nftables": ("nft", "['nft', 'list', 'chain', 'ip', 'egress_router', 'mangle-output']", "jump EGRESS-ROUTER-MARK"),
    }[nat_backend]
    script = (
        f"from egress_router.init import {edge} as edge\n"
        "from egress_router.init.journal import Journal\n"
        "from egress_router.init.plan import mark_chains\n"
        "journal = Journal()\n"
        "assert edge.apply_chains(mark_chains(), journal)\n"
        "import subprocess\n"
        f"saved = subprocess.run({listing}, capture_output=True, text=True).stdout\n"
        f"assert {jump!r} in saved, saved\n"
        "assert not journal.rollback()\n"
    )
    done = lab.run_in(pod.role, [sys.executable, "-c", script])
    assert done.returncode == 0, done.stderr
    assert pod.snapshot() == before
