"""A site router that sends IPv6 router advertisements on the node's network (SLAAC for the lan's prefix, itself as
default router): without init, the egress interface takes an address nobody whitelisted and an IPv6 default route;
after init (every mode, IPv4-only or dual-stack), it takes nothing, and what it took before is gone.

The advertisements are real (`Lab.advertise_router`, a raw ICMPv6 socket in the gateway namespace). A witness pod
with a plain macvlan that takes them shows each one arrived, so "nothing appeared" is not "nothing was sent".
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from egress_router.lab import Lab
from egress_router.lab import topology as t
from egress_router.lab.topology import run, v6
from tests.lab.conftest import Pod, new_pod
from tests.lab.http_helpers import start_proxy
from tests.lab.test_unserved_family import GAI_CONF, PROBE, PROBE_RULES, curl, ipv6_packets, web_lab
from tests.lab.waiting import eventually

PREFIX = "2001:db8:12::/64"  # the lan's own prefix
GATEWAY6 = v6(t.GATEWAY_IP)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from web_lab()


@pytest.fixture(scope="module")
def witness(lab: Lab) -> Iterator[Pod]:
    """A pod whose macvlan is up without init: it takes every advertisement, as any pod's would before the fix."""
    pod = new_pod(lab)
    lab.ip(pod.role, "link", "set", "macvlan0", "up")
    yield pod
    lab.remove_namespace(pod.role)


def taken(lab: Lab, pod: Pod) -> list[str]:
    """What advertisements gave the pod's macvlan0: their routes (`proto ra`, expiring prefix routes) and SLAAC addresses."""
    routes = [
        line
        for line in lab.ip(pod.role, "-6", "route", "show", "dev", "macvlan0").stdout.splitlines()
        if "proto ra" in line or "expires" in line
    ]
    (link,) = json.loads(lab.ip(pod.role, "-6", "-j", "addr", "show", "dev", "macvlan0").stdout)
    return routes + [f"{a['local']}/{a['prefixlen']} dynamic" for a in link["addr_info"] if a.get("dynamic")]


def advertise(lab: Lab, witness: Pod) -> None:
    """One advertisement; returns once the witness has taken it (its advertised default route is back)."""
    lab.ip(witness.role, "-6", "route", "flush", "dev", "macvlan0", "proto", "ra")
    lab.advertise_router("gw", PREFIX)
    eventually(lambda: any("default" in line for line in taken(lab, witness)), 5, "the witness never took the advertisement")


def ra_settings(lab: Lab, pod: Pod) -> tuple[str, str]:
    read = run(lab.exec_argv(pod.role, ["cat", "/proc/sys/net/ipv6/conf/macvlan0/accept_ra", "/proc/sys/net/ipv6/conf/macvlan0/autoconf"]))
    accept_ra, autoconf = read.stdout.split()
    return accept_ra, autoconf


def took_advertisement(lab: Lab, witness: Pod) -> Pod:
    """A router pod whose macvlan0 is already up and took an advertisement before init runs (an attachment brought up
    early, or a restarted pod running init again)."""
    pod = new_pod(lab)
    lab.ip(pod.role, "link", "set", "macvlan0", "up")
    advertise(lab, witness)
    eventually(lambda: len(taken(lab, pod)) >= 3, 5, lambda: f"macvlan0 took no advertisement: {taken(lab, pod)}")
    return pod


def test_without_init_an_advertisement_gives_a_macvlan_a_slaac_address_and_a_default_route(lab: Lab, witness: Pod) -> None:
    advertise(lab, witness)
    took = taken(lab, witness)
    assert any(line.startswith("default via fe80:") and "proto ra" in line for line in took), took
    assert any(line.startswith("2001:db8:12:0:") and line.endswith("/64 dynamic") for line in took), took
    assert "default" in run(lab.exec_argv(witness.role, ["ip", "-6", "route", "show", "default", "dev", "macvlan0"])).stdout


ROUTERS = {
    "ipv4-only-redirect": lambda pod: {"EGRESS_SOURCE": pod.source, "EGRESS_GATEWAY": t.GATEWAY_IP, "EGRESS_DESTINATION": "203.0.113.50"},
    "ipv4-only-http-proxy": lambda pod: {"EGRESS_SOURCE": pod.source, "EGRESS_GATEWAY": t.GATEWAY_IP, "EGRESS_ROUTER_MODE": "http-proxy"},
    "dual-stack-redirect": lambda pod: {
        "EGRESS_SOURCE": f"{pod.source},{v6(pod.source)}",
        "EGRESS_GATEWAY": f"{t.GATEWAY_IP},{GATEWAY6}",
        "EGRESS_DESTINATION": f"203.0.113.50\n{v6('203.0.113.50')}",
    },
    "dual-stack-dns-proxy": lambda pod: {
        "EGRESS_SOURCE": f"{pod.source},{v6(pod.source)}",
        "EGRESS_GATEWAY": f"{t.GATEWAY_IP},{GATEWAY6}",
        "EGRESS_ROUTER_MODE": "dns-proxy",
    },
}


@pytest.mark.parametrize("router", list(ROUTERS))
def test_init_removes_what_advertisements_gave_and_takes_no_more(lab: Lab, witness: Pod, router: str) -> None:
    pod = took_advertisement(lab, witness)
    try:
        env = {"EGRESS_ROUTER_MODE": "init", **ROUTERS[router](pod)}
        done = pod.init(**env)
        assert done.returncode == 0, done.stderr
        # a dual-stack router's own address and default route replace them anyway; an IPv4-only one's need the flush
        assert re.search(r"removed route default via fe80:\S+ dev macvlan0", done.stderr), done.stderr
        assert re.search(r"removed (old )?address 2001:db8:12:0:\S+/64 from macvlan0", done.stderr), done.stderr
        assert taken(lab, pod) == []
        assert ra_settings(lab, pod) == ("0", "0")
        advertise(lab, witness)  # arrived: the witness took it
        assert taken(lab, pod) == []
        addresses = lab.ip(pod.role, "-6", "-br", "addr", "show", "dev", "macvlan0").stdout.split()[2:]
        defaults = run(lab.exec_argv(pod.role, ["ip", "-6", "route", "show", "default"])).stdout
        if router.startswith("dual-stack"):
            assert [a for a in addresses if not a.startswith("fe80:")] == [f"{v6(pod.source)}/128"]
            assert f"default via {GATEWAY6} dev macvlan0" in defaults and "fe80:" not in defaults
        else:
            assert [a for a in addresses if not a.startswith("fe80:")] == []
            assert "macvlan0" not in defaults  # no IPv6 default route off eth0: the proxies do not take IPv6 as served

        before = pod.snapshot()
        again = pod.init(**env)
        assert again.returncode == 0 and "nothing to change" in again.stderr, again.stderr
        assert pod.snapshot() == before
    finally:
        lab.remove_namespace(pod.role)


def test_the_ipv4_only_http_proxy_makes_no_ipv6_connection_on_a_lan_with_advertisements(lab: Lab, witness: Pod) -> None:
    pod = took_advertisement(lab, witness)
    try:
        done = pod.init(EGRESS_SOURCE=pod.source, EGRESS_GATEWAY=t.GATEWAY_IP, EGRESS_ROUTER_MODE="http-proxy")
        assert done.returncode == 0, done.stderr
        advertise(lab, witness)
        lab.write_etc(pod.role, "resolv.conf", "nameserver 203.0.113.53\noptions timeout:1 attempts:1\n")
        lab.write_etc(pod.role, "gai.conf", GAI_CONF)  # IPv6 first, were it served
        subprocess.run(lab.exec_argv(pod.role, PROBE), input=PROBE_RULES, text=True, check=True)
        proc = start_proxy(lab, pod.role, user=65534, EGRESS_HTTP_PROXY_DESTINATION="*", EGRESS_HTTP_PROXY_WORKERS="1")
        for _ in range(3):
            code, body = curl(lab, pod, "http://dual.lab.test:8000/")
            assert code == 200, body
            assert json.loads(body)["client"] == pod.source
        assert ipv6_packets(lab, pod) == 0
        assert "egress default routes for IPv4: connecting over those only" in proc.stderr()
    finally:
        lab.remove_namespace(pod.role)


def without_lifetimes(snapshot: dict[str, str]) -> dict[str, str]:
    """Remaining lifetimes count down between two snapshots."""
    return {key: re.sub(r"expires \d+sec", "expires", text) for key, text in snapshot.items()}


def test_a_failed_init_gives_back_what_advertisements_gave(lab: Lab, witness: Pod) -> None:
    """All or nothing: the settings, the advertised routes (with what was left of their lifetimes) and the SLAAC address
    come back when a later step fails (here: another host has the IPv6 source)."""
    pod = took_advertisement(lab, witness)
    lab.ip("gw", "addr", "add", f"{v6(pod.source)}/64", "dev", "eth0", "nodad")
    try:
        before = pod.snapshot()
        done = pod.init(
            EGRESS_SOURCE=f"{pod.source},{v6(pod.source)}",
            EGRESS_GATEWAY=f"{t.GATEWAY_IP},{GATEWAY6}",
            EGRESS_DESTINATION="203.0.113.50",
            EGRESS_ROUTER_MODE="init",
        )
        assert done.returncode == 1
        assert "duplicate address detection failed" in done.stderr and "the pod's network is as it was" in done.stderr, done.stderr
        assert "rolling back also failed" not in done.stderr
        assert without_lifetimes(pod.snapshot()) == without_lifetimes(before)
        assert ra_settings(lab, pod) == ("1", "1")
    finally:
        lab.ip("gw", "addr", "del", f"{v6(pod.source)}/64", "dev", "eth0")
        lab.remove_namespace(pod.role)


def test_ipv6_disabled_on_the_egress_interface_is_fine_for_an_ipv4_only_router(lab: Lab, pod: Pod) -> None:
    lab.sysctl(pod.role, "net.ipv6.conf.macvlan0.disable_ipv6", "1")
    done = pod.init(EGRESS_SOURCE=pod.source, EGRESS_GATEWAY=t.GATEWAY_IP, EGRESS_DESTINATION="203.0.113.50", EGRESS_ROUTER_MODE="init")
    assert done.returncode == 0, done.stderr
    assert ra_settings(lab, pod) == ("0", "0")  # still there to set: should IPv6 come on later, it takes no advertisement
    assert lab.tcp("client", pod.ip, 80).client == pod.source


READ_ONLY_PROC_SYS = [
    "unshare",
    "--mount",
    "sh",
    "-c",
    'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$@"',
    "-",
]


@pytest.mark.parametrize("defaults", [False, True], ids=["not-given", "given-as-defaults"])
def test_without_privilege_the_settings_come_from_the_pod(lab: Lab, defaults: bool) -> None:
    """A container that is not privileged has /proc/sys read-only (examples/least-privilege): the kubelet sets the pod's
    sysctls before the pod network exists, the namespace's IPv6 defaults included, and the macvlan moved in later takes
    them, so init finds accept_ra and autoconf off and writes nothing. Without them it says what it could not set."""
    pod = new_pod(lab, macvlan=False)
    try:
        for key, value in (("net.ipv4.ip_forward", "1"), ("net.ipv4.conf.eth0.rp_filter", "2")):
            lab.sysctl(pod.role, key, value)
        if defaults:
            lab.sysctl(pod.role, "net.ipv6.conf.default.accept_ra", "0")
            lab.sysctl(pod.role, "net.ipv6.conf.default.autoconf", "0")
        lab.add_macvlan(pod.role)
        before = pod.snapshot()
        env = pod.env(EGRESS_SOURCE=pod.source, EGRESS_GATEWAY=t.GATEWAY_IP, EGRESS_DESTINATION="203.0.113.50", EGRESS_ROUTER_MODE="init")
        done = lab.run_in(pod.role, [*READ_ONLY_PROC_SYS, sys.executable, "-m", "egress_router", "init"], env=env)
        if defaults:
            assert done.returncode == 0, done.stderr
            assert lab.tcp("client", pod.ip, 80).client == pod.source
        else:
            assert done.returncode == 1
            assert done.stderr.splitlines()[-1] == (
                "egress-router init: error: cannot set net.ipv6.conf.macvlan0.accept_ra=0 in /proc/sys/net/ipv6/conf/macvlan0/accept_ra:"
                " Read-only file system (is the init container privileged?); nothing was changed"
            ), done.stderr
            assert pod.snapshot() == before
    finally:
        lab.remove_namespace(pod.role)
