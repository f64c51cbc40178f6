"""`egress-router monitor` in a redirect pod: follows the rules file, restores removed rules, stops on SIGTERM.
Every test runs with each NAT backend (iptables, nftables)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from egress_router.lab import Lab
from egress_router.lab import topology as t
from tests.lab.conftest import Pod
from tests.lab.http_helpers import http_get, samples
from tests.lab.waiting import eventually

pytestmark = pytest.mark.usefixtures("nat_backend")


def test_monitor_follows_the_file_and_restores_rules(lab: Lab, pod: Pod, tmp_path: Path) -> None:
    rules = tmp_path / "destination"
    rules.write_text("80 tcp 203.0.113.25\n")
    env = {"EGRESS_SOURCE": pod.source, "EGRESS_GATEWAY": t.GATEWAY_IP, "EGRESS_DESTINATION_FILE": str(rules)}
    assert pod.init(EGRESS_ROUTER_MODE="init", **env).returncode == 0
    monitor = lab.start_in(
        pod.role, [sys.executable, "-m", "egress_router", "monitor"], env=pod.env(**env, EGRESS_ROUTER_MONITOR_INTERVAL="500ms")
    )
    eventually(lambda: "watching macvlan0" in monitor.stderr())
    assert f"NAT backend: {pod.nat_backend} (EGRESS_NAT_BACKEND={pod.nat_backend})" in monitor.stderr()
    assert lab.tcp("client", pod.ip, 80).server == "203.0.113.25"

    rules.write_text("80 tcp 203.0.113.26\n9000 tcp 203.0.113.27\n")
    eventually(lambda: lab.tcp("client", pod.ip, 9000).server == "203.0.113.27")
    assert lab.tcp("client", pod.ip, 80).server == "203.0.113.26"
    assert "NAT rules replaced from the new list" in monitor.stderr()

    rules.write_text("80 tcp 203.0.113.25 99999\n")
    eventually(lambda: "keeping the previous list" in monitor.stderr())
    assert "EGRESS_DESTINATION line 1: invalid port 99999" in monitor.stderr()
    assert lab.tcp("client", pod.ip, 80).server == "203.0.113.26"

    pod.flush_chain("nat", "EGRESS-ROUTER-DNAT")
    eventually(lambda: "NAT rules restored" in monitor.stderr())
    assert lab.tcp("client", pod.ip, 9000).server == "203.0.113.27"

    # the reply routing too: a client on the other node is answered again once the monitor puts it back
    assert lab.tcp("client2", pod.ip, 9000).server == "203.0.113.27"
    lab.ip(pod.role, "rule", "del", "priority", "1000")
    lab.ip(pod.role, "route", "flush", "table", "201")
    pod.flush_chain("mangle", "EGRESS-ROUTER-MARK")
    eventually(lambda: "reply routing restored" in monitor.stderr() and "reply marks restored" in monitor.stderr())
    eventually(lambda: lab.tcp("client2", pod.ip, 9000, timeout=1).server == "203.0.113.27")
    assert "1000:\tfrom all fwmark 0x400000/0x400000 lookup 201" in pod.snapshot()["rules"]

    os.killpg(monitor.popen.pid, signal.SIGTERM)
    assert monitor.popen.wait(5) == 0
    assert "Traceback" not in monitor.stderr()


def metric(lab: Lab, pod: Pod, name: str, **labels: str) -> float | None:
    scrape = samples(http_get(lab, "node", pod.ip, 9191, "/metrics")[1])
    return scrape.get((name, tuple(sorted(labels.items()))))


def test_monitor_probes_and_nat_counters(lab: Lab, pod: Pod) -> None:
    """Probes from the node reach the pod itself, even with a fallback that DNATs every other port."""
    env = {"EGRESS_SOURCE": pod.source, "EGRESS_GATEWAY": t.GATEWAY_IP, "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n203.0.113.26"}
    assert pod.init(EGRESS_ROUTER_MODE="init", **env).returncode == 0
    monitor = lab.start_in(
        pod.role, [sys.executable, "-m", "egress_router", "monitor"], env=pod.env(**env, EGRESS_ROUTER_MONITOR_INTERVAL="300ms")
    )
    lab.wait_for_port(pod.role, "127.0.0.1", 9191, process=monitor)
    assert http_get(lab, "node", pod.ip, 9191, "/healthz") == (200, "ok\n")
    eventually(lambda: http_get(lab, "node", pod.ip, 9191, "/readyz") == (200, "ok\n"))
    for _ in range(3):
        assert lab.tcp("client", pod.ip, 80).server == "203.0.113.25"
    assert lab.tcp("client", pod.ip, 9000).server == "203.0.113.26"  # the fallback (line 2) still takes other ports
    eventually(lambda: (metric(lab, pod, "egress_router_nat_packets_total", rule="1") or 0) >= 3)
    assert (metric(lab, pod, "egress_router_nat_packets_total", rule="2") or 0) >= 1
    assert (metric(lab, pod, "egress_router_nat_bytes_total", rule="1") or 0) > 0
    assert metric(lab, pod, "egress_router_egress_address_present") == 1
    assert (metric(lab, pod, "egress_router_arp_last_announce_timestamp_seconds") or 0) > 1.7e9
    assert metric(lab, pod, "egress_router_build_info", mode="monitor", version="0.1.0") == 1

    pod.flush_chain("nat", "EGRESS-ROUTER-DNAT")
    eventually(lambda: metric(lab, pod, "egress_router_restores_total", what="nat") == 1)

    lab.ip(pod.role, "addr", "flush", "dev", "macvlan0")  # the egress address is gone: not ready, and says why
    eventually(lambda: http_get(lab, "node", pod.ip, 9191, "/readyz")[0] == 503)
    assert http_get(lab, "node", pod.ip, 9191, "/readyz") == (503, f"{pod.source} is not on macvlan0 (run init again)\n")
    assert metric(lab, pod, "egress_router_egress_address_present") == 0

    os.killpg(monitor.popen.pid, signal.SIGTERM)
    assert monitor.popen.wait(5) == 0


def test_a_metrics_port_that_a_rule_redirects_is_refused(lab: Lab, pod: Pod) -> None:
    before = pod.snapshot()
    done = pod.init(
        EGRESS_ROUTER_MODE="init",
        EGRESS_SOURCE=pod.source,
        EGRESS_GATEWAY=t.GATEWAY_IP,
        EGRESS_DESTINATION="80 tcp 203.0.113.25\n9191 tcp 203.0.113.25",
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "EGRESS_METRICS_PORT: port 9191 is redirected by EGRESS_DESTINATION line 2 too" in done.stderr
    assert pod.snapshot() == before
