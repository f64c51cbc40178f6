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
from egress_router.lab.topology import environment
from tests.lab.conftest import Pod
from tests.lab.http_helpers import http_get
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
    eventually(lambda: "NAT rules replaced from the new list" in monitor.stderr())  # logged just after the rules land

    rules.write_text("80 tcp 203.0.113.25 99999\n")
    eventually(lambda: "keeping the previous list" in monitor.stderr())
    assert "EGRESS_DESTINATION line 1: invalid port 99999" in monitor.stderr()
    assert lab.tcp("client", pod.ip, 80).server == "203.0.113.26"

    rules.write_text("80 tcp 203.0.113.25\n9191 tcp 203.0.113.25\n")  # the monitor's own port: refused as init refuses it
    eventually(lambda: "EGRESS_METRICS_PORT: port 9191 is redirected by EGRESS_DESTINATION line 2 too" in monitor.stderr())
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


def test_monitor_probes_and_nat_counters(lab: Lab, pod: Pod) -> None:
    """Probes from the node reach the pod itself, even with a fallback that DNATs every other port."""
    env = {
        "EGRESS_SOURCE": pod.source,
        "EGRESS_GATEWAY": t.GATEWAY_IP,
        "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n203.0.113.26",
        "EGRESS_METRICS_PORT": "9191",  # both containers, as in the examples: init keeps the monitor's port from the fallback
    }
    assert pod.init(EGRESS_ROUTER_MODE="init", **env).returncode == 0
    monitor = lab.start_in(
        pod.role, [sys.executable, "-m", "egress_router", "monitor"], env=pod.env(**env, EGRESS_ROUTER_MONITOR_INTERVAL="300ms")
    )
    lab.wait_for_port(pod.role, "127.0.0.1", 9191, process=monitor)
    assert http_get(lab, "node", pod.ip, 9191, "/healthz") == (200, "ok\n")
    assert "return" in pod.nat_rules().lower()  # init put it there: the monitor had nothing to change
    eventually(lambda: pod.readyz() == (200, "ok\n"))
    for _ in range(3):
        assert lab.tcp("client", pod.ip, 80).server == "203.0.113.25"
    assert lab.tcp("client", pod.ip, 9000).server == "203.0.113.26"  # the fallback (line 2) still takes other ports
    eventually(lambda: (pod.metric("egress_router_nat_packets_total", rule="1") or 0) >= 3)
    eventually(lambda: (pod.metric("egress_router_nat_packets_total", rule="2") or 0) >= 1)  # read at the next check
    assert (pod.metric("egress_router_nat_bytes_total", rule="1") or 0) > 0
    assert pod.metric("egress_router_egress_address_present") == 1
    eventually(lambda: (pod.metric("egress_router_arp_last_announce_timestamp_seconds") or 0) > 1.7e9)  # a second after the start
    assert pod.metric("egress_router_build_info", mode="monitor", version="0.1.0") == 1

    pod.flush_chain("nat", "EGRESS-ROUTER-DNAT")
    eventually(lambda: pod.metric("egress_router_restores_total", what="nat") == 1)

    lab.ip(pod.role, "addr", "flush", "dev", "macvlan0")  # the egress address is gone: not ready, and says why
    eventually(lambda: pod.readyz()[0] == 503)
    assert pod.readyz() == (503, f"{pod.source} is not on macvlan0 (run init again)\n")
    assert pod.metric("egress_router_egress_address_present") == 0

    os.killpg(monitor.popen.pid, signal.SIGTERM)
    assert monitor.popen.wait(5) == 0


def test_a_metrics_port_that_a_rule_redirects_is_refused(lab: Lab, pod: Pod) -> None:
    before = pod.snapshot()
    done = pod.init(
        EGRESS_ROUTER_MODE="init",
        EGRESS_SOURCE=pod.source,
        EGRESS_GATEWAY=t.GATEWAY_IP,
        EGRESS_DESTINATION="80 tcp 203.0.113.25\n9191 tcp 203.0.113.25",
        EGRESS_METRICS_PORT="9191",
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "EGRESS_METRICS_PORT: port 9191 is redirected by EGRESS_DESTINATION line 2 too" in done.stderr
    assert pod.snapshot() == before


def test_init_mode_reserves_no_port_unless_told(lab: Lab, pod: Pod) -> None:
    """As OpenShift's image: a rule may take 9191 and the fallback takes every other port, 9191 of a pause pod too."""
    server = lab.python_in("server", "egress_router.lab.whoami", "tcp:203.0.113.25:9191", "tcp:203.0.113.26:9191", ready_line="ready")
    try:
        env = {"EGRESS_ROUTER_MODE": "init", "EGRESS_SOURCE": pod.source, "EGRESS_GATEWAY": t.GATEWAY_IP}
        done = pod.init(**env, EGRESS_DESTINATION="9191 tcp 203.0.113.25\n203.0.113.26")
        assert done.returncode == 0, done.stderr
        assert lab.tcp("client", pod.ip, 9191).server == "203.0.113.25"
        done = pod.init(**env, EGRESS_DESTINATION="203.0.113.26")
        assert done.returncode == 0, done.stderr
        assert lab.tcp("client", pod.ip, 9191).server == "203.0.113.26"
        assert "return" not in pod.nat_rules().lower()
    finally:
        os.killpg(server.popen.pid, signal.SIGTERM)
        server.popen.wait(5)


HOLD_9191 = "import socket, time\ns = socket.socket()\ns.bind(('0.0.0.0', 9191))\ns.listen()\nprint('ready', flush=True)\ntime.sleep(60)\n"


@pytest.mark.parametrize("command", ["monitor", "legacy"])
def test_a_metrics_port_in_use_is_a_clear_error_before_any_change(lab: Lab, pod: Pod, command: str) -> None:
    holder = lab.start_in(pod.role, [sys.executable, "-c", HOLD_9191], ready_line="ready")
    try:
        # the kernel adds the routes of the pod's IPv6 link-local addresses once they leave the tentative state (up to
        # a few seconds on a busy machine): only then is the pod as it stays
        eventually(lambda: lab.ip(pod.role, "-6", "addr", "show", "tentative").stdout == "", 10, "IPv6 addresses still tentative")
        before = pod.snapshot()
        env = {"EGRESS_SOURCE": pod.source, "EGRESS_GATEWAY": t.GATEWAY_IP, "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n203.0.113.26"}
        argv = [sys.executable, "-m", "egress_router", "monitor" if command == "monitor" else "init"]
        done = lab.run_in(pod.role, argv, env=pod.env(**env, EGRESS_ROUTER_MODE=command), timeout=20)
        name = "monitor" if command == "monitor" else "init"
        assert done.returncode == 1, done.stderr
        assert done.stderr.splitlines() == [
            f"egress-router {name}: error: EGRESS_METRICS_PORT: cannot listen on port 9191: Address already in use"
            " (another process listens there)"
        ]
        assert pod.snapshot() == before
    finally:
        os.killpg(holder.popen.pid, signal.SIGKILL)
        holder.popen.wait(5)


#: A monitor's Keeper in the pod, its passes run as the monitor's thread runs them. A trace function takes the place
#: of the other thread at the moment that matters: when a pass reads the NAT counters, the loop hands over a new list
#: (or that read fails), so the interleaving is the same on every run.
KEEPER_PASSES = """
import os
import sys
from egress_router.cli import pod_nameservers
from egress_router.config.destinations import parse_destinations
from egress_router.config.init_settings import load_init_settings
from egress_router.init import monitor, nat_backend
from egress_router.init.plan import build_plan
from egress_router.runtime import logs

logs.setup(False, "monitor")
settings = load_init_settings(source=sys.argv[1], gateway=sys.argv[2], destination="80 tcp 203.0.113.25\\n203.0.113.26", mode="init")
plan = build_plan(settings, pod_nameservers())
backend = nat_backend.resolve(os.environ.get("EGRESS_NAT_BACKEND", "auto"), plan)
keeper = monitor.Keeper(settings, plan, backend)

def when_counters_are_read(action):
    def trace(frame, event, arg):
        if event == "call" and frame.f_code is backend.edge.counters.__code__:
            sys.settrace(None)
            action()
    sys.settrace(trace)

def fail():
    raise RuntimeError("the kernel said something odd")

def show():
    print(sorted(label for (label,) in keeper.nat_counters), keeper.ready(), flush=True)

when_counters_are_read(lambda: keeper.use(parse_destinations("80 tcp 203.0.113.25\\n8080 tcp 203.0.113.25\\n203.0.113.26")))
keeper.apply()
show()
keeper.apply()
show()
when_counters_are_read(fail)
keeper.apply()
show()
keeper.apply()
show()
"""


def test_a_pass_keeps_to_the_list_it_started_with_and_survives_any_failure(lab: Lab, pod: Pod) -> None:
    """A new list that arrives mid-pass is the next pass's; a pass that fails unexpectedly is a readiness reason."""
    env = {"EGRESS_SOURCE": pod.source, "EGRESS_GATEWAY": t.GATEWAY_IP, "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n203.0.113.26"}
    assert pod.init(EGRESS_ROUTER_MODE="init", **env).returncode == 0
    done = lab.run_in(pod.role, [sys.executable, "-c", KEEPER_PASSES, pod.source, t.GATEWAY_IP], env=pod.env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "['1', '2', 'snat'] None",  # the old list's rules and counters, both: the new list came after the pass began
        "['1', '2', '3', 'snat'] None",  # the next pass put the new list in place
        "['1', '2', '3', 'snat'] checking the setup failed: RuntimeError: the kernel said something odd",
        "['1', '2', '3', 'snat'] None",
    ]
    assert "NAT rules replaced from the new list" in done.stderr
    assert "restored" not in done.stderr and "installed" not in done.stderr  # init and this monitor agree
    assert lab.tcp("client", pod.ip, 8080).server == "203.0.113.25"  # the new rule, not the fallback


def test_a_monitor_whose_init_had_no_metrics_port_installs_its_own_rules_and_says_so(lab: Lab, pod: Pod) -> None:
    env = {"EGRESS_SOURCE": pod.source, "EGRESS_GATEWAY": t.GATEWAY_IP, "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n203.0.113.26"}
    assert pod.init(EGRESS_ROUTER_MODE="init", **env).returncode == 0  # no EGRESS_METRICS_PORT: the fallback takes 9191
    monitor = lab.start_in(pod.role, [sys.executable, "-m", "egress_router", "monitor"], env=pod.env(**env))
    try:
        lab.wait_for_port(pod.role, "127.0.0.1", 9191, process=monitor)
        eventually(lambda: pod.readyz() == (200, "ok\n"))  # the probes reach the monitor
        assert "WARNING NAT rules installed: what init left differed" in monitor.stderr()
        assert pod.metric("egress_router_restores_total", what="nat") is None  # nothing had been changed
    finally:
        os.killpg(monitor.popen.pid, signal.SIGTERM)
        assert monitor.popen.wait(5) == 0


def test_a_monitor_left_at_auto_follows_the_backend_init_was_told(lab: Lab, pod: Pod) -> None:
    """init told EGRESS_NAT_BACKEND (each backend in turn), the monitor not: it keeps the rules where init put them
    (auto alone takes legacy iptables here, and would move nftables rules at its first check)."""
    env = {
        "EGRESS_SOURCE": pod.source,
        "EGRESS_GATEWAY": t.GATEWAY_IP,
        "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n203.0.113.26",
        "EGRESS_METRICS_PORT": "9191",
    }
    assert pod.init(EGRESS_ROUTER_MODE="init", **env).returncode == 0
    before = pod.snapshot()
    monitor = lab.start_in(pod.role, [sys.executable, "-m", "egress_router", "monitor"], env=environment(**env))
    try:
        lab.wait_for_port(pod.role, "127.0.0.1", 9191, process=monitor)
        eventually(lambda: pod.readyz() == (200, "ok\n"), what=monitor.stderr)
        following = "EGRESS_NAT_BACKEND=auto: following init, which installed the rules with nftables"
        why = following if pod.nat_backend == "nftables" else "EGRESS_NAT_BACKEND=auto: legacy iptables is in the kernel and the image"
        assert f"NAT backend: {pod.nat_backend} ({why})" in monitor.stderr()
        assert "NAT rules installed" not in monitor.stderr()  # nothing moved
        assert pod.snapshot() == before
        assert lab.tcp("client", pod.ip, 80).client == pod.source
    finally:
        os.killpg(monitor.popen.pid, signal.SIGTERM)
        assert monitor.popen.wait(5) == 0
