"""The init image, run by podman inside a lab router pod with the env of OpenShift's redirect manifest.

Runs where the image has been built (`bash images/build.sh`); skipped elsewhere with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from egress_router.lab import Lab
from egress_router.lab import topology as t
from tests.manifests import EXAMPLES, init_containers

IMAGE = os.environ.get("EGRESS_ROUTER_INIT_IMAGE", "localhost/egress-router-init:latest")


def podman(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "containers.conf"
    conf.write_text("[containers]\ndefault_ulimits = []\n")
    argv = ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs", *args]
    return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "CONTAINERS_CONF": str(conf)}, timeout=120)


@pytest.fixture
def image(tmp_path: Path) -> str:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (apt-get install podman runc)")
    if podman(tmp_path, "image", "exists", IMAGE).returncode != 0:
        pytest.skip(f"{IMAGE} is not built (bash images/build.sh)")
    return IMAGE


def test_redirect_manifest_works_with_our_image(lab: Lab, image: str, tmp_path: Path) -> None:
    (container,) = init_containers(EXAMPLES / "redirect-pod.yaml")
    lab.add_pod("img", "10.128.0.60")
    lab.add_macvlan("img")
    try:
        env_args = [arg for name, value in container["resolved_env"].items() for arg in ("-e", f"{name}={value}")]
        done = podman(tmp_path, "run", "--rm", "--privileged", "--network", f"ns:/run/netns/{lab.ns('img')}", *env_args, image)
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
