"""The README's main command: a readable table, and nothing left behind, also when interrupted."""

from __future__ import annotations

import signal
import subprocess
import sys

from egress_router.lab.topology import run


def leftovers(prefix: str) -> list[str]:
    return [line for line in run(["ip", "netns", "list"]).stdout.splitlines() if line.startswith(prefix)]


def test_demo_shows_before_and_after_and_cleans_up() -> None:
    done = subprocess.run([sys.executable, "-m", "egress_router", "demo"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    prefix = out.split("network namespaces ", 1)[1].split("-*", 1)[0]
    assert "203.0.113.50:80 directly (public server)  192.168.12.11" in out
    assert "refused by the site firewall" in out
    assert out.count("192.168.12.99      reached") == 5
    assert "client2 on node2 -> router:80 (routed, no NAT)      192.168.12.99      reached 203.0.113.25:80/tcp" in out
    assert out.count("192.168.12.100     200, allowed") == 3
    assert "client2 on node2 -> proxy -> http://api.example.test:8000/  192.168.12.100     200, allowed" in out
    assert "403, sneaky.partner.test resolves to 10.128.0.10: line 1: !10.0.0.0/8" in out
    assert "192.168.12.101     reached 203.0.113.25:5432/tcp" in out
    assert "192.168.12.101     reached 203.0.113.26:5432/tcp after" in out
    for n, source in enumerate(["192.168.12.110", "192.168.12.111"] * 2, 1):  # the pool: each new connection in turn
        assert f"client -> Service 172.30.0.60:80, connection {n}  {source} " in out
    assert "refused: 192.168.12.111 is already in use: MAC " in out
    deleted = out.split("egress-0 deleted: ", 1)[1].splitlines()[0]
    assert deleted.endswith(" 0 failed") and "via 192.168.12.111" in deleted, deleted
    assert "client -> Service after egress-0 is gone (x4)   192.168.12.111" in out
    assert out.rstrip().endswith("Cleaned up: every lab namespace and process is gone.")
    assert leftovers(prefix) == []


def test_interrupted_demo_cleans_up() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "egress_router", "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    prefix = first.split("network namespaces ", 1)[1].split("-*", 1)[0]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Cleaned up" in out
    assert leftovers(prefix) == []
