"""Every bad input: a clear message, a non-zero exit, no traceback, and the pod exactly as it was; with each NAT
backend (iptables, nftables). A backend the machine lacks: tests/lab/test_nat_backends.py."""

from __future__ import annotations

import pytest

from egress_router.lab import Lab
from egress_router.lab import topology as t
from tests.lab.conftest import Pod

pytestmark = pytest.mark.usefixtures("nat_backend")

GOOD = {
    "EGRESS_SOURCE": "192.168.12.99",
    "EGRESS_GATEWAY": t.GATEWAY_IP,
    "EGRESS_DESTINATION": "80 tcp 203.0.113.25",
    "EGRESS_ROUTER_MODE": "init",
}

CASES = [
    ({"EGRESS_SOURCE": ""}, "EGRESS_SOURCE: unspecified"),
    ({"EGRESS_SOURCE": "192.168.12.300"}, 'EGRESS_SOURCE: not an IPv4 address (octet 300 out of range 0-255): "192.168.12.300"'),
    ({"EGRESS_GATEWAY": "gateway"}, "EGRESS_GATEWAY: not an IPv4 address"),
    (
        {"EGRESS_DESTINATION": "80 tcp 203.0.113.25\n\n800000 tcp 203.0.113.25"},
        'EGRESS_DESTINATION line 3: invalid port 800000 (must be 1-65535): "800000 tcp 203.0.113.25"',
    ),
    ({"EGRESS_DESTINATION": "203.0.113.50\n80 tcp 203.0.113.25"}, "EGRESS_DESTINATION line 2: fallback IP must be the last line"),
    (
        {"EGRESS_DESTINATION": "80 tcp 203.0.113.25\n80 tcp 203.0.113.26"},
        "EGRESS_DESTINATION line 2: localport 80/tcp is already used on line 1",
    ),
    ({"EGRESS_DESTINATION": "80 tcp example.com"}, "EGRESS_DESTINATION line 1: value 'example.com' is invalid"),
    ({"EGRESS_DESTINATION": "# nothing"}, "EGRESS_DESTINATION: no destination given"),
    ({"EGRESS_ROUTER_MODE": "nat"}, "EGRESS_ROUTER_MODE: unknown mode"),
    ({"EGRESS_INTERFACE": "net1"}, "EGRESS_INTERFACE: no interface 'net1' in this pod"),
    (
        {"EGRESS_INTERFACE": "net1", "EGRESS_MACVLAN_MASTER": "eth9", "EGRESS_HOST_NETNS": "/run/netns/{node}"},
        "EGRESS_MACVLAN_MASTER: no interface 'eth9'",
    ),
    (
        {"EGRESS_INTERFACE": "net1", "EGRESS_MACVLAN_MASTER": "eth0", "EGRESS_HOST_NETNS": "/nonexistent"},
        "EGRESS_HOST_NETNS: /nonexistent does not exist",
    ),
    (
        {"EGRESS_INTERFACE": "net1", "EGRESS_MACVLAN_MASTER": "eth0", "EGRESS_HOST_NETNS": "/proc/self/ns/net"},
        "is this pod's own network namespace",
    ),
    (
        {"EGRESS_CLUSTER_NETWORKS": "172.30.0.1/16, 10.0.0.0"},
        'EGRESS_CLUSTER_NETWORKS: has host bits set (did you mean 172.30.0.0/16?): "172.30.0.1/16"',
    ),
    (
        {"EGRESS_CLUSTER_NETWORKS": "192.168.0.0/16"},
        "EGRESS_CLUSTER_NETWORKS: contains EGRESS_GATEWAY 192.168.12.1, which must stay on the egress interface",
    ),
    (
        {"EGRESS_DESTINATION": "", "EGRESS_DESTINATION_FILE": "/nonexistent/rules"},
        'EGRESS_DESTINATION_FILE: cannot read the file: No such file or directory: "/nonexistent/rules"',
    ),
    ({"EGRESS_NAT_BACKEND": "pf"}, 'EGRESS_NAT_BACKEND: unknown NAT backend (must be one of auto, iptables, nftables): "pf"'),
]


@pytest.mark.parametrize(("changes", "message"), CASES, ids=[c[1].split(":")[0] + "-" + str(i) for i, c in enumerate(CASES)])
def test_bad_input_is_explained_and_changes_nothing(lab: Lab, pod: Pod, changes: dict[str, str], message: str) -> None:
    env = {**GOOD, "EGRESS_SOURCE": pod.source, **{k: v.format(node=lab.ns("node")) for k, v in changes.items()}}
    before = pod.snapshot()
    done = pod.init(**env)
    assert done.returncode == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert all(line.startswith("egress-router init: error: ") for line in done.stderr.splitlines())
    assert pod.snapshot() == before


def test_failure_part_way_restores_the_pod(lab: Lab, pod: Pod) -> None:
    """A read-only /proc/sys (an unprivileged init container) fails after links, addresses and routes changed."""
    for setting in ("accept_ra", "autoconf"):  # as the pod's sysctls may give them: written first, they would stop init at once
        lab.sysctl(pod.role, f"net.ipv6.conf.macvlan0.{setting}", "0")
    before = pod.snapshot()
    env = " ".join(f"{k}='{v}'" for k, v in {**GOOD, "EGRESS_SOURCE": pod.source, "EGRESS_NAT_BACKEND": str(pod.nat_backend)}.items())
    import sys

    script = f"mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && env {env} {sys.executable} -m egress_router init"
    done = lab.run_in(pod.role, ["unshare", "-m", "sh", "-c", script])
    assert done.returncode == 1, done.stderr
    assert "cannot set net.ipv4." in done.stderr and "privileged" in done.stderr  # ip_forward, or rp_filter when forwarding is on
    assert "rolled back, the pod's network is as it was" in done.stderr
    assert "Traceback" not in done.stderr
    assert pod.snapshot() == before
