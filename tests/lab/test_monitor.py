"""`egress-router monitor` in a redirect pod: follows the rules file, restores removed rules, stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from egress_router.lab import Lab
from egress_router.lab import topology as t
from egress_router.lab.topology import environment, run
from tests.lab.conftest import Pod
from tests.lab.waiting import eventually


def test_monitor_follows_the_file_and_restores_rules(lab: Lab, pod: Pod, tmp_path: Path) -> None:
    rules = tmp_path / "destination"
    rules.write_text("80 tcp 203.0.113.25\n")
    env = {"EGRESS_SOURCE": pod.source, "EGRESS_GATEWAY": t.GATEWAY_IP, "EGRESS_DESTINATION_FILE": str(rules)}
    assert pod.init(EGRESS_ROUTER_MODE="init", **env).returncode == 0
    monitor = lab.start_in(
        pod.role, [sys.executable, "-m", "egress_router", "monitor"], env=environment(**env, EGRESS_ROUTER_MONITOR_INTERVAL="500ms")
    )
    eventually(lambda: "watching macvlan0" in monitor.stderr())
    assert lab.tcp("client", pod.ip, 80).server == "203.0.113.25"

    rules.write_text("80 tcp 203.0.113.26\n9000 tcp 203.0.113.27\n")
    eventually(lambda: lab.tcp("client", pod.ip, 9000).server == "203.0.113.27")
    assert lab.tcp("client", pod.ip, 80).server == "203.0.113.26"
    assert "NAT rules replaced from the new list" in monitor.stderr()

    rules.write_text("80 tcp 203.0.113.25 99999\n")
    eventually(lambda: "keeping the previous list" in monitor.stderr())
    assert "EGRESS_DESTINATION line 1: invalid port 99999" in monitor.stderr()
    assert lab.tcp("client", pod.ip, 80).server == "203.0.113.26"

    run(lab.exec_argv(pod.role, ["iptables-legacy", "-t", "nat", "-F", "EGRESS-ROUTER-DNAT"]))
    eventually(lambda: "NAT rules restored" in monitor.stderr())
    assert lab.tcp("client", pod.ip, 9000).server == "203.0.113.27"

    # the reply routing too: a client on the other node is answered again once the monitor puts it back
    assert lab.tcp("client2", pod.ip, 9000).server == "203.0.113.27"
    lab.ip(pod.role, "rule", "del", "priority", "1000")
    lab.ip(pod.role, "route", "flush", "table", "201")
    run(lab.exec_argv(pod.role, ["iptables-legacy", "-t", "mangle", "-F", "EGRESS-ROUTER-MARK"]))
    eventually(lambda: "reply routing restored" in monitor.stderr() and "reply marks restored" in monitor.stderr())
    eventually(lambda: lab.tcp("client2", pod.ip, 9000, timeout=1).server == "203.0.113.27")
    assert "1000:\tfrom all fwmark 0x400000/0x400000 lookup 201" in pod.snapshot()["rules"]

    os.killpg(monitor.popen.pid, signal.SIGTERM)
    assert monitor.popen.wait(5) == 0
    assert "Traceback" not in monitor.stderr()
