"""The init image, run by podman inside a lab router pod with the env of OpenShift's redirect manifest.

Runs where the image has been built (`bash images/build.sh`); skipped elsewhere with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from egress_router.lab import Lab
from egress_router.lab import topology as t
from egress_router.lab.dns import DNS
from egress_router.lab.dns import DnsServer as Dns
from tests.manifests import EXAMPLES, containers, init_containers

IMAGE = os.environ.get("EGRESS_ROUTER_INIT_IMAGE", "localhost/egress-router-init:latest")
PROXY_IMAGE = os.environ.get("EGRESS_ROUTER_PROXY_IMAGE", "localhost/egress-router-proxy:latest")


def podman(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "containers.conf"
    conf.write_text("[containers]\ndefault_ulimits = []\n")
    argv = ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs", *args]
    return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "CONTAINERS_CONF": str(conf)}, timeout=120)


def built(tmp_path: Path, name: str) -> str:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (apt-get install podman runc)")
    if podman(tmp_path, "image", "exists", name).returncode != 0:
        pytest.skip(f"{name} is not built (bash images/build.sh)")
    return name


@pytest.fixture
def image(tmp_path: Path) -> str:
    return built(tmp_path, IMAGE)


@pytest.fixture
def proxy_image(tmp_path: Path) -> str:
    return built(tmp_path, PROXY_IMAGE)


def env_args(env: dict[str, str]) -> list[str]:
    return [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")]


def test_redirect_manifest_works_with_our_image(lab: Lab, image: str, tmp_path: Path) -> None:
    (container,) = init_containers(EXAMPLES / "redirect-pod.yaml")
    lab.add_pod("img", "10.128.0.60")
    lab.add_macvlan("img")
    try:
        done = podman(
            tmp_path,
            "run",
            "--rm",
            "--privileged",
            "--network",
            f"ns:/run/netns/{lab.ns('img')}",
            *env_args(container["resolved_env"]),
            image,
        )
        assert done.returncode == 0, done.stderr
        assert "NAT rules installed" in done.stderr
        source = container["resolved_env"]["EGRESS_SOURCE"].split("/")[0]
        seen = lab.tcp("client", "10.128.0.60", 80)
        assert (seen.server, seen.port, seen.client) == ("203.0.113.25", 80, source)
        seen = lab.tcp("client", "10.128.0.60", 8443)
        assert (seen.server, seen.port, seen.client) == ("203.0.113.26", 443, source)
        seen = lab.tcp("client", "10.128.0.60", 5432)  # the fallback
        assert (seen.server, seen.port, seen.client) == ("203.0.113.27", 5432, source)
        assert t.GATEWAY_IP in container["resolved_env"]["EGRESS_GATEWAY"]
    finally:
        lab.remove_namespace("img")


def test_http_proxy_manifest_works_with_our_images(lab: Lab, image: str, proxy_image: str, tmp_path: Path) -> None:
    """Init image in http-proxy mode, then the proxy image with no arguments, as OpenShift's manifest runs them."""
    manifest = EXAMPLES / "http-proxy-pod.yaml"
    (init,) = init_containers(manifest)
    (proxy,) = containers(manifest)
    lab.add_pod("himg", "10.128.0.61")
    lab.add_macvlan("himg")
    lab.python_in("server", "egress_router.lab.http_server", "--http", "0.0.0.0:8000", ready_line="ready")
    network = f"ns:/run/netns/{lab.ns('himg')}"
    name = f"{lab.prefix}-proxy"
    try:
        done = podman(tmp_path, "run", "--rm", "--privileged", "--network", network, *env_args(init["resolved_env"]), image)
        assert done.returncode == 0, done.stderr
        done = podman(
            tmp_path,
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--user",
            "1000650000",
            *env_args(proxy["resolved_env"]),
            proxy_image,
        )
        assert done.returncode == 0, done.stderr
        lab.wait_for_port("himg", "127.0.0.1", 8080)
        response = subprocess.run(
            lab.exec_argv("client", ["curl", "-sS", "--max-time", "5", "-x", "http://10.128.0.61:8080", "http://203.0.113.25:8000/x"]),
            capture_output=True,
            text=True,
        )
        assert json.loads(response.stdout)["client"] == init["resolved_env"]["EGRESS_SOURCE"].split("/")[0]
        denied = subprocess.run(
            lab.exec_argv("client", ["curl", "-sS", "--max-time", "5", "-x", "http://10.128.0.61:8080", "http://api.example.com:8000/"]),
            capture_output=True,
            text=True,
        )
        assert "line 1: !*.example.com" in denied.stdout
    finally:
        podman(tmp_path, "rm", "-f", "-t", "2", name)
        lab.remove_namespace("himg")


def test_dns_proxy_manifest_works_with_our_images(lab: Lab, image: str, proxy_image: str, tmp_path: Path) -> None:
    """Init image in dns-proxy mode, then the proxy image with no arguments and a random UID, listening on port 80."""
    manifest = EXAMPLES / "dns-proxy-pod.yaml"
    (init,) = init_containers(manifest)
    (proxy,) = containers(manifest)
    dns = Dns.site(lab, "203.0.113.25 foobar.com\n203.0.113.27 example.com\n")
    dns.start()
    lab.add_pod("dimg", "10.128.0.62")
    lab.add_macvlan("dimg")
    network = f"ns:/run/netns/{lab.ns('dimg')}"
    name = f"{lab.prefix}-dns"
    source = init["resolved_env"]["EGRESS_SOURCE"].split("/")[0]
    try:
        done = podman(tmp_path, "run", "--rm", "--privileged", "--network", network, *env_args(init["resolved_env"]), image)
        assert done.returncode == 0, done.stderr
        done = podman(
            tmp_path,
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--dns",
            DNS,
            "--user",
            "1000650000",
            *env_args(proxy["resolved_env"]),
            proxy_image,
        )
        assert done.returncode == 0, done.stderr
        lab.wait_for_port("dimg", "127.0.0.1", 80)
        for port, server, remote in ((80, "203.0.113.25", 80), (8080, "203.0.113.26", 80), (8443, "203.0.113.25", 443)):
            seen = lab.tcp("client", "10.128.0.62", port)
            assert (seen.server, seen.port, seen.client) == (server, remote, source)
    finally:
        podman(tmp_path, "rm", "-f", "-t", "2", name)
        lab.remove_namespace("dimg")
