"""HTTP proxy mode end to end: curl in the client pod, the proxy unprivileged in the router pod,
the origin server reporting the source address it saw."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from egress_router.lab import Lab
from egress_router.lab import topology as t
from egress_router.lab.http_server import pattern
from egress_router.lab.topology import run
from tests.lab.conftest import Pod, new_pod
from tests.lab.http_helpers import start_proxy

HOSTS = """
203.0.113.25 api.example.test secure.example.test blocked.example.test
203.0.113.26 www.partner.test x.bad.example.test unlisted.test
10.128.0.10 rebind.partner.test
169.254.169.254 metadata.partner.test
127.0.0.1 loop.partner.test
"""
ACL = """
!10.0.0.0/8              # never the cluster
!blocked.example.test    # a name
!*.bad.example.test      # a domain
!203.0.113.27            # an address
api.example.test
secure.example.test
*.partner.test
203.0.113.50             # an address
203.0.113.24/30          # a CIDR (.24-.27)
"""


@pytest.fixture(scope="module")
def proxy(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=secure.example.test",
            "-addext",
            "subjectAltName=DNS:secure.example.test,DNS:api.example.test",
        ],
        check=True,
        capture_output=True,
    )
    folder.chmod(0o755)
    key.chmod(0o644)
    lab.python_in(
        "server",
        "egress_router.lab.http_server",
        "--http",
        "0.0.0.0:8000",
        "--https",
        "0.0.0.0:8443",
        "--cert",
        str(cert),
        "--key",
        str(key),
        ready_line="ready",
    )
    pod = new_pod(lab)
    done = pod.init(EGRESS_SOURCE=pod.source, EGRESS_GATEWAY=t.GATEWAY_IP, EGRESS_ROUTER_MODE="http-proxy")
    assert done.returncode == 0, done.stderr
    lab.write_etc(pod.role, "hosts", "127.0.0.1 localhost\n" + HOSTS)
    lab.write_etc(pod.role, "resolv.conf", "nameserver 127.0.0.1\n")  # names outside /etc/hosts fail at once
    pod.proxy = start_proxy(  # type: ignore[attr-defined]
        lab,
        pod.role,
        user=65534,
        EGRESS_HTTP_PROXY_DESTINATION=ACL,
        EGRESS_HTTP_PROXY_CONNECT_PORTS="443,8443,8444",
        EGRESS_HTTP_PROXY_WORKERS="2",
    )
    pod.cert = cert  # type: ignore[attr-defined]
    yield pod
    lab.remove_namespace(pod.role)


def curl(lab: Lab, proxy: Pod, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    base = ["curl", "-sS", "--max-time", "10", "-x", f"http://{proxy.ip}:8080"]
    if env is not None:
        base = ["env", *(f"{k}={v}" for k, v in env.items()), "curl", "-sS", "--max-time", "10"]
    return subprocess.run(lab.exec_argv("client", [*base, *args]), capture_output=True, timeout=30)


def get(lab: Lab, proxy: Pod, url: str) -> tuple[int, bytes]:
    done = curl(lab, proxy, "-w", "\n%{http_code}", url)
    body, _, code = done.stdout.rpartition(b"\n")
    return int(code or 0), body


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://api.example.test:8000/", "line 6: api.example.test"),
        ("http://www.partner.test:8000/", "line 8: *.partner.test"),
        ("http://203.0.113.50:8000/", "line 9: 203.0.113.50"),
        ("http://203.0.113.26:8000/", "line 10: 203.0.113.24/30"),
        ("http://unlisted.test:8000/", "line 10: 203.0.113.24/30"),  # a name allowed by where it resolves
    ],
)
def test_allowed_requests_leave_as_egress_source(lab: Lab, proxy: Pod, url: str, rule: str) -> None:
    code, body = get(lab, proxy, url)
    assert code == 200, body
    seen = json.loads(body)
    assert seen["client"] == proxy.source
    assert "x-forwarded-for" not in {k.lower() for k in seen["headers"]}


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://blocked.example.test:8000/", "line 3: !blocked.example.test"),
        ("http://x.bad.example.test:8000/", "line 4: !*.bad.example.test"),
        ("http://203.0.113.27:8000/", "line 5: !203.0.113.27"),
        ("http://10.128.0.10:8000/", "line 2: !10.0.0.0/8"),
        ("http://203.0.113.1:8000/", "default deny"),
        ("http://rebind.partner.test:8000/", "rebind.partner.test resolves to 10.128.0.10: line 2: !10.0.0.0/8"),
        ("http://metadata.partner.test/latest/", "169.254.169.254 is loopback, link-local or unspecified"),
        ("http://loop.partner.test:8080/", "127.0.0.1 is loopback"),
    ],
)
def test_denied_requests_get_403_with_the_reason(lab: Lab, proxy: Pod, url: str, reason: str) -> None:
    code, body = get(lab, proxy, url)
    assert code == 403
    assert reason in body.decode()


def test_direct_access_is_refused_by_the_site_firewall(lab: Lab, proxy: Pod) -> None:
    done = subprocess.run(lab.exec_argv("client", ["curl", "-sS", "--max-time", "3", "http://203.0.113.25:8000/"]), capture_output=True)
    assert done.returncode != 0


def test_https_through_connect(lab: Lab, proxy: Pod) -> None:
    done = curl(
        lab,
        proxy,
        "--cacert",
        str(proxy.cert),
        "https://secure.example.test:8443/tls",  # type: ignore[attr-defined]
        env={"https_proxy": f"http://{proxy.ip}:8080"},
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["tls"] is True and seen["client"] == proxy.source and seen["path"] == "/tls"


def test_connect_denied(lab: Lab, proxy: Pod) -> None:
    done = curl(lab, proxy, "-v", "--cacert", str(proxy.cert), "https://blocked.example.test:8443/")  # type: ignore[attr-defined]
    assert done.returncode != 0
    assert b"403" in done.stderr


def test_connect_to_a_port_not_allowed(lab: Lab, proxy: Pod) -> None:
    done = curl(lab, proxy, "-v", "-k", "https://api.example.test:9000/")
    assert done.returncode != 0 and b"403" in done.stderr


def test_connect_to_a_refused_port(lab: Lab, proxy: Pod) -> None:
    done = curl(lab, proxy, "-v", "-k", "https://api.example.test:8444/")
    assert done.returncode != 0 and b"502" in done.stderr


def test_large_bodies_are_byte_exact_both_ways(lab: Lab, proxy: Pod, tmp_path: Path) -> None:
    upload = tmp_path / "upload.bin"
    upload.write_bytes(pattern(8 * 1024 * 1024 + 7)[::-1])
    done = curl(
        lab, proxy, "--data-binary", f"@{upload}", "-H", "Content-Type: application/octet-stream", "http://api.example.test:8000/echo"
    )
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(done.stdout).digest() == hashlib.sha256(upload.read_bytes()).digest()
    size = 16 * 1024 * 1024 + 3
    done = curl(lab, proxy, f"http://api.example.test:8000/bytes/{size}")
    assert done.stdout == pattern(size)
    done = curl(lab, proxy, "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{upload}", "http://api.example.test:8000/echo")
    assert done.stdout == upload.read_bytes()


def test_keep_alive_reuses_one_client_connection(lab: Lab, proxy: Pod) -> None:
    done = curl(lab, proxy, "-v", "http://api.example.test:8000/1", "http://api.example.test:8000/2")
    assert done.returncode == 0
    assert b"Re-using existing connection" in done.stderr or b"Reusing existing" in done.stderr


def test_access_log_line_per_request_and_tunnel(lab: Lab, proxy: Pod) -> None:
    get(lab, proxy, "http://api.example.test:8000/logged?x=1")
    get(lab, proxy, "http://x.bad.example.test:8000/")
    curl(lab, proxy, "--cacert", str(proxy.cert), "https://secure.example.test:8443/t", env={"https_proxy": f"http://{proxy.ip}:8080"})  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = proxy.proxy.stdout().splitlines()  # type: ignore[attr-defined]
        wanted = ("method=CONNECT target=secure.example.test:8443", "http://api.example.test:8000/logged?x=1", "x.bad.example.test")
        if all(any(needle in line for line in lines) for needle in wanted):  # each worker flushes its own lines
            break
        time.sleep(0.05)
    allowed = next(line for line in lines if 'target="http://api.example.test:8000/logged?x=1"' in line)
    assert f"client={t.CLIENT_IP}:" in allowed and " method=GET " in allowed and " status=200 " in allowed
    assert 'rule="line 6: api.example.test"' in allowed and " in=0 out=" in allowed and " ms=" in allowed
    denied = next(line for line in lines if "x.bad.example.test" in line)
    assert " status=403 " in denied and "!*.bad.example.test" in denied
    tunnel = next(line for line in lines if "method=CONNECT target=secure.example.test:8443" in line)
    assert " status=200 " in tunnel and 'rule="line 7: secure.example.test; ' in tunnel
    assert int(tunnel.split(" in=")[1].split()[0]) > 0 and int(tunnel.split(" out=")[1].split()[0]) > 0


def test_runs_unprivileged(lab: Lab, proxy: Pod) -> None:
    pids = [
        pid
        for pid in run(["ip", "netns", "pids", lab.ns(proxy.role)]).stdout.split()
        if b"http-proxy" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(pids) == 4  # the supervisor, its endpoints' process and two workers
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        uid = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        caps = next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1]
        assert set(uid) == {"65534"} and int(caps, 16) == 0
