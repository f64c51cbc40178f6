"""The images, run by podman inside lab router pods: with the environment of OpenShift's manifests (`podman run`),
and every pod manifest of examples/ as written (`podman kube play`), checking the traffic and the probes.

Runs where the images have been built (`bash images/build.sh`); skipped elsewhere with the reason.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from egress_router.lab import Lab
from egress_router.lab import topology as t
from egress_router.lab.dns import DNS
from egress_router.lab.dns import DnsServer as Dns
from tests.lab.http_helpers import http_get
from tests.lab.waiting import eventually
from tests.manifests import (
    EXAMPLES,
    containers,
    containers_of,
    documents,
    init_containers,
    kustomize,
    parse,
    pod_spec,
    statefulset_pods,
)

IMAGE = os.environ.get("EGRESS_ROUTER_INIT_IMAGE", "localhost/egress-router-init:latest")
PROXY_IMAGE = os.environ.get("EGRESS_ROUTER_PROXY_IMAGE", "localhost/egress-router-proxy:latest")
#: a UID from OpenShift's ranges, not the image's own USER
RANDOM_UID = "1000650000"


def podman(tmp_path: Path, *args: str, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    """podman as root on this kind of machine; with `netns`, inside that lab namespace only (`nsenter --net`, not
    `ip netns exec`, which remounts /sys and hides the cgroups podman's pods need)."""
    conf = tmp_path / "containers.conf"
    conf.write_text("[containers]\ndefault_ulimits = []\n")
    enter = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
    argv = [*enter, "podman", "--runtime", "runc", "--cgroup-manager=cgroupfs", *args]
    return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "CONTAINERS_CONF": str(conf)}, timeout=120)


def built(tmp_path: Path, name: str) -> str:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (apt-get install podman runc buildah)")
    if podman(tmp_path, "image", "exists", name).returncode != 0:
        pytest.skip(f"{name} is not built (bash images/build.sh)")
    return name


@pytest.fixture
def image(tmp_path: Path) -> str:
    return built(tmp_path, IMAGE)


@pytest.fixture
def proxy_image(tmp_path: Path) -> str:
    return built(tmp_path, PROXY_IMAGE)


@pytest.fixture(scope="module")
def web_server(lab: Lab) -> str:
    """An HTTP server on the protected server 203.0.113.25:8000 that answers with the client address it saw."""
    lab.python_in("server", "egress_router.lab.http_server", "--http", "0.0.0.0:8000", ready_line="ready")
    return "http://203.0.113.25:8000/x"


def env_args(env: dict[str, str]) -> list[str]:
    return [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")]


def source_of(container: dict[str, Any]) -> str:
    return str(container["resolved_env"]["EGRESS_SOURCE"]).split("/")[0]


def curl_via(lab: Lab, proxy: str, url: str) -> str:
    argv = ["curl", "-sS", "--max-time", "5", "-x", proxy, url]
    return subprocess.run(lab.exec_argv("client", argv), capture_output=True, text=True).stdout


# the images themselves ------------------------------------------------------------------------------------------


def run_in_image(tmp_path: Path, image: str, script: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return podman(tmp_path, "run", "--rm", "--network", "none", *flags, "--entrypoint", "python3", image, "-c", script)


def test_images_hold_no_compiler_and_the_proxy_image_no_init_libraries(image: str, proxy_image: str, tmp_path: Path) -> None:
    script = "import shutil; print([c for c in ('gcc', 'cc', 'x86_64-linux-gnu-gcc-12', 'ld', 'strip') if shutil.which(c)])"
    for name in (image, proxy_image):
        done = run_in_image(tmp_path, name, script)
        assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr
    done = run_in_image(tmp_path, proxy_image, "import importlib.util as u; print([m for m in ('pyroute2', 'iptc') if u.find_spec(m)])")
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr
    done = run_in_image(
        tmp_path, image, "import pyroute2, iptc; from egress_router.init import libnftables; libnftables.load(); print('ok')"
    )
    assert done.stdout.strip() == "ok", done.stderr  # both NAT backends


# OpenShift's manifests' environment, with podman run -------------------------------------------------------------


#: Each NAT backend in its own pod: (role, address).
IMAGE_PODS = {"auto": ("img", "10.128.0.60"), "nftables": ("imgnft", "10.128.0.59")}


@pytest.mark.parametrize("backend", IMAGE_PODS)
def test_redirect_manifest_works_with_our_image(lab: Lab, image: str, tmp_path: Path, backend: str) -> None:
    (container,) = init_containers(EXAMPLES / "redirect-pod.yaml")
    role, address = IMAGE_PODS[backend]
    lab.add_pod(role, address)
    lab.add_macvlan(role)
    try:
        network = f"ns:/run/netns/{lab.ns(role)}"
        env = {**container["resolved_env"], "EGRESS_NAT_BACKEND": backend}
        done = podman(tmp_path, "run", "--rm", "--privileged", "--network", network, *env_args(env), image)
        assert done.returncode == 0, done.stderr
        assert "NAT rules installed" in done.stderr
        assert f"NAT backend: {'iptables' if backend == 'auto' else backend} (EGRESS_NAT_BACKEND={backend}" in done.stderr
        source = source_of(container)
        seen = lab.tcp("client", address, 80)
        assert (seen.server, seen.port, seen.client) == ("203.0.113.25", 80, source)
        seen = lab.tcp("client", address, 8443)
        assert (seen.server, seen.port, seen.client) == ("203.0.113.26", 443, source)
        seen = lab.tcp("client", address, 5432)  # the fallback
        assert (seen.server, seen.port, seen.client) == ("203.0.113.27", 5432, source)
        assert t.GATEWAY_IP in container["resolved_env"]["EGRESS_GATEWAY"]
    finally:
        lab.remove_namespace(role)


@contextlib.contextmanager
def proxy_container(
    lab: Lab, tmp_path: Path, role: str, image: str, proxy_image: str, manifest: str, *extra: str
) -> Iterator[dict[str, Any]]:
    """Init image in the manifest's proxy mode, then the proxy image with no arguments, as OpenShift's manifest runs
    them: an arbitrary UID, and a read-only root filesystem without even a /tmp."""
    (init,) = init_containers(EXAMPLES / manifest)
    (proxy,) = containers(EXAMPLES / manifest)
    network = f"ns:/run/netns/{lab.ns(role)}"
    name = f"{lab.prefix}-{role}"
    try:
        done = podman(tmp_path, "run", "--rm", "--privileged", "--network", network, *env_args(init["resolved_env"]), image)
        assert done.returncode == 0, done.stderr
        done = podman(
            tmp_path,
            *("run", "-d", "--name", name, "--network", network, "--user", RANDOM_UID, "--cap-drop", "all"),
            *("--read-only", "--read-only-tmpfs=false", *extra),
            *env_args(proxy["resolved_env"]),
            proxy_image,
        )
        assert done.returncode == 0, done.stderr
        yield init
    finally:
        podman(tmp_path, "rm", "-f", "-t", "2", name)


def test_http_proxy_manifest_works_with_our_images(lab: Lab, image: str, proxy_image: str, web_server: str, tmp_path: Path) -> None:
    lab.add_pod("himg", "10.128.0.61")
    lab.add_macvlan("himg")
    try:
        with proxy_container(lab, tmp_path, "himg", image, proxy_image, "http-proxy-pod.yaml") as init:
            lab.wait_for_port("himg", "127.0.0.1", 8080)
            response = curl_via(lab, "http://10.128.0.61:8080", web_server)
            assert json.loads(response)["client"] == source_of(init)
            assert "line 1: !*.example.com" in curl_via(lab, "http://10.128.0.61:8080", "http://api.example.com:8000/")
            assert eventually(lambda: http_get(lab, "client", "10.128.0.61", 9191, "/readyz")) == (200, "ok\n")
    finally:
        lab.remove_namespace("himg")


def test_dns_proxy_manifest_works_with_our_images(lab: Lab, image: str, proxy_image: str, tmp_path: Path) -> None:
    """The DNS proxy listening on port 80, as OpenShift's manifest asks, and names resolved by the site's DNS (without
    the search list podman takes from the lab pod's /etc/netns resolv.conf: that DNS refuses the cluster's names)."""
    dns = Dns.site(lab, "203.0.113.25 foobar.com\n203.0.113.27 example.com\n")
    dns.start()
    lab.add_pod("dimg", "10.128.0.62")
    lab.add_macvlan("dimg")
    try:
        with proxy_container(lab, tmp_path, "dimg", image, proxy_image, "dns-proxy-pod.yaml", "--dns", DNS, "--dns-search", ".") as init:
            lab.wait_for_port("dimg", "127.0.0.1", 80)
            for port, server, remote in ((80, "203.0.113.25", 80), (8080, "203.0.113.26", 80), (8443, "203.0.113.25", 443)):
                seen = lab.tcp("client", "10.128.0.62", port)
                assert (seen.server, seen.port, seen.client) == (server, remote, source_of(init))
    finally:
        lab.remove_namespace("dimg")


# every pod manifest as written, with podman kube play ------------------------------------------------------------


def for_the_lab(found: list[dict[str, Any]], env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """A copy of the manifest's objects as a node of the lab runs them: our local images (never pulled), `env` given
    to the init containers (where the lab's node differs from the example's), and no `ports`
    (informational in Kubernetes, but podman 4.3 publishes them, which a pod sharing its network cannot), so probes
    name their port by number; and restartPolicy OnFailure (podman 4.3 applies the pod's Always to its init
    containers too, restarting them for ever, where Kubernetes runs each once)."""
    found = copy.deepcopy(found)
    local = {"egress-router-init:latest": IMAGE, "egress-router-proxy:latest": PROXY_IMAGE}
    for document in found:
        spec = pod_spec(document)
        if spec is None:
            continue
        spec["restartPolicy"] = "OnFailure"
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            container["image"] = local[container["image"]]
            container["imagePullPolicy"] = "Never"
            numbers = {port["name"]: port["containerPort"] for port in container.pop("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                if probe in container:
                    get = container[probe]["httpGet"]
                    get["port"] = numbers.get(get["port"], get["port"])
        for container in spec.get("initContainers", []):
            given = {**{item["name"]: item for item in container["env"]}, **{k: {"name": k, "value": v} for k, v in (env or {}).items()}}
            container["env"] = list(given.values())
    return found


@contextlib.contextmanager
def played(lab: Lab, tmp_path: Path, role: str, found: list[dict[str, Any]]) -> Iterator[None]:
    """`podman kube play` of the objects inside the lab pod `role`'s network namespace (its pods share it:
    `--network host` there is the lab pod's network, exactly as a pod's containers see it); then `kube down`."""
    path = tmp_path / f"{role}.yaml"
    path.write_text(yaml.safe_dump_all(found))
    try:
        done = podman(tmp_path, "kube", "play", "--network", "host", str(path), netns=lab.ns(role))
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{pod_logs(tmp_path, found)}"
        yield
    finally:
        podman(tmp_path, "kube", "down", str(path))


def pod_logs(tmp_path: Path, found: list[dict[str, Any]]) -> str:
    names = [d["metadata"]["name"] + ("-pod-0" if d["kind"] == "Deployment" else "") for d in found if pod_spec(d) is not None]
    return "\n".join(podman(tmp_path, "pod", "logs", name).stderr[-2000:] for name in names)


def assert_probes_answer(lab: Lab, tmp_path: Path, found: list[dict[str, Any]], address: str) -> None:
    """What the kubelet and Prometheus ask of every long-running container, from another pod."""
    for container in containers_of(found):
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
        for probe in ("readinessProbe", "livenessProbe"):
            url = (address, port, container[probe]["httpGet"]["path"])
            eventually(
                lambda url=url: http_get(lab, "client", *url) == (200, "ok\n"), 10, lambda url=url: f"{url}: {pod_logs(tmp_path, found)}"
            )
        status, metrics = http_get(lab, "client", address, port, "/metrics")
        assert status == 200 and "egress_router_build_info{" in metrics


#: what the kernel shows a long-running container: its UID, its effective capabilities, whether / is writable
SHOW_PRIVILEGE = (
    "import os\n"
    "caps = [int(l.split()[1], 16) for l in open('/proc/self/status') if l.startswith('CapEff')][0]\n"
    "try:\n    open('/written', 'w')\n    writable = True\nexcept OSError:\n    writable = False\n"
    "print(os.getuid(), caps, writable)\n"
)
CAPABILITY_BITS = {"NET_ADMIN": 12, "NET_RAW": 13}


def assert_privileges_as_written(tmp_path: Path, found: list[dict[str, Any]]) -> None:
    """Each long-running container runs with exactly the UID and capabilities its securityContext gives, read-only."""
    for document in found:
        spec = pod_spec(document)
        pod = document["metadata"]["name"] + ("-pod-0" if document["kind"] == "Deployment" else "")
        for container in (spec or {}).get("containers", []):
            context = container["securityContext"]
            caps = sum(1 << CAPABILITY_BITS[c] for c in context["capabilities"].get("add", []))
            done = podman(tmp_path, "exec", f"{pod}-{container['name']}", "python3", "-c", SHOW_PRIVILEGE)
            assert done.stdout.split() == [str(context.get("runAsUser", 0)), str(caps), "False"], done.stderr


def assert_redirected(lab: Lab, address: str, source: str, expected: dict[int, tuple[str, int]]) -> None:
    for port, (server, remote) in expected.items():
        seen = eventually(lambda port=port: lab.tcp("client", address, port), 10, f"nothing answered on {address}:{port}")
        assert (seen.server, seen.port, seen.client) == (server, remote, source), port


KUBE_PLAY_REDIRECTS = {
    "redirect-pod.yaml": ("10.128.0.63", "macvlan0", {80: ("203.0.113.25", 80), 8443: ("203.0.113.26", 443), 9000: ("203.0.113.27", 9000)}),
    "redirect-pod-multus.yaml": ("10.128.0.64", "net1", {5432: ("203.0.113.25", 5432)}),
    "redirect-pod-configmap.yaml": ("10.128.0.65", None, {80: ("203.0.113.25", 80), 443: ("203.0.113.25", 443), 53: ("203.0.113.27", 53)}),
}


@pytest.mark.parametrize("manifest", KUBE_PLAY_REDIRECTS)
def test_redirect_manifest_runs_as_written(lab: Lab, image: str, tmp_path: Path, manifest: str) -> None:
    """The init container sets the pod up, the monitor keeps it and answers the probes; clients get redirected
    and the server sees the reserved source address. The pod that creates its own macvlan is given the lab node's
    namespace and interface instead of /proc/1/ns/net (hostPID: the machine's own) and ens3."""
    address, interface, expected = KUBE_PLAY_REDIRECTS[manifest]
    role = f"k{address.rsplit('.', 1)[1]}"
    lab.add_pod(role, address)
    found = documents(EXAMPLES / manifest)
    env = None
    if interface is not None:
        lab.add_macvlan(role, interface)
    else:
        for document in found:
            if document["kind"] == "Pod":
                document["spec"]["hostPID"] = False
                document["spec"]["volumes"].append({"name": "netns", "hostPath": {"path": "/run/netns"}})
                document["spec"]["initContainers"][0]["volumeMounts"] = [{"name": "netns", "mountPath": "/host/netns"}]
        env = {"EGRESS_MACVLAN_MASTER": "eth0", "EGRESS_HOST_NETNS": f"/host/netns/{lab.ns('node')}"}
    try:
        with played(lab, tmp_path, role, for_the_lab(found, env)):
            assert_redirected(lab, address, source_of(containers_of(found, "initContainers")[0]), expected)
            assert_probes_answer(lab, tmp_path, found, address)
            assert_privileges_as_written(tmp_path, found)
    finally:
        lab.remove_namespace(role)


@pytest.mark.parametrize("manifest", ["http-proxy-pod.yaml", "dns-proxy-pod.yaml"])
def test_proxy_manifest_runs_as_written(lab: Lab, image: str, proxy_image: str, web_server: str, tmp_path: Path, manifest: str) -> None:
    """Both containers as the manifest has them: the proxy as UID 1001 with no capabilities, a read-only root
    filesystem and no arguments (its mode from its environment); the traffic and the probes."""
    address = "10.128.0.66" if manifest.startswith("http") else "10.128.0.67"
    role = f"k{address.rsplit('.', 1)[1]}"
    lab.add_pod(role, address)
    lab.add_macvlan(role)
    found = documents(EXAMPLES / manifest)
    source = source_of(containers_of(found, "initContainers")[0])
    try:
        with played(lab, tmp_path, role, for_the_lab(found)):
            if manifest.startswith("http"):
                lab.wait_for_port("client", address, 8080)
                assert json.loads(curl_via(lab, f"http://{address}:8080", web_server))["client"] == source
            else:
                assert_redirected(lab, address, source, {80: ("203.0.113.25", 80), 8080: ("203.0.113.26", 80)})
            assert_probes_answer(lab, tmp_path, found, address)
            assert_privileges_as_written(tmp_path, found)
    finally:
        lab.remove_namespace(role)


def test_least_privilege_component_runs_with_capabilities_only(lab: Lab, image: str, tmp_path: Path) -> None:
    """The base with the least-privilege component (`kubectl kustomize`): the init container with NET_ADMIN and NET_RAW only. The pod's
    sysctls are set in its namespace first, as the kubelet does before any container starts (podman refuses net.*
    sysctls for a pod that shares the network it was started in)."""
    built = kustomize("least-privilege")
    if built is None:
        pytest.skip("kubectl is not installed (kubectl kustomize builds the overlay)")
    found = [d for d in parse(built) if d["kind"] in ("ConfigMap", "Deployment")]
    address = "10.128.0.68"
    role = "k68"
    lab.add_pod(role, address)
    for document in found:
        spec = pod_spec(document)
        if spec is not None:
            for sysctl in spec["securityContext"].pop("sysctls"):
                lab.sysctl(role, sysctl["name"], sysctl["value"])
    lab.add_macvlan(role)  # after, as CRI-O's pod network comes: it takes the namespace's IPv6 defaults (accept_ra=0)
    try:
        with played(lab, tmp_path, role, for_the_lab(found)):
            assert_redirected(lab, address, source_of(containers_of(found, "initContainers")[0]), {80: ("203.0.113.25", 80)})
            assert_probes_answer(lab, tmp_path, found, address)
            assert_privileges_as_written(tmp_path, found)
    finally:
        lab.remove_namespace(role)


def test_statefulset_pods_take_the_addresses_of_their_ordinals(
    lab: Lab, image: str, proxy_image: str, web_server: str, tmp_path: Path
) -> None:
    """The StatefulSet example's first two pods as its controller makes them (podman 4.3 plays no StatefulSet), each in
    a lab pod: each init container takes the pool's address at the ordinal its HOSTNAME ends in, and the proxy leaves
    with it; the probes answer."""
    found = documents(EXAMPLES / "http-proxy-statefulset.yaml")
    (statefulset,) = [d for d in found if d["kind"] == "StatefulSet"]
    pods = statefulset_pods(statefulset)[:2]
    addresses = ["10.128.0.71", "10.128.0.72"]
    roles = [f"k{address.rsplit('.', 1)[1]}" for address in addresses]
    try:
        with contextlib.ExitStack() as stack:
            for pod, role, address in zip(pods, roles, addresses, strict=True):
                lab.add_pod(role, address)
                lab.add_macvlan(role)
                stack.enter_context(played(lab, tmp_path, role, for_the_lab([pod])))
            for pod, address, source in zip(pods, addresses, ["192.168.12.99", "192.168.12.100"], strict=True):
                lab.wait_for_port("client", address, 8080)
                assert json.loads(curl_via(lab, f"http://{address}:8080", web_server))["client"] == source, pod["metadata"]["name"]
                assert_probes_answer(lab, tmp_path, [pod], address)
    finally:
        for role in roles:
            lab.remove_namespace(role)
