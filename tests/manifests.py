"""Reading the example manifests (used by unit and lab tests): their documents, pods and containers, with each
container's environment resolved against the file's ConfigMaps."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: kustomize's own files: not Kubernetes objects
KUSTOMIZATION = "kustomization.yaml"
#: kustomize components in examples/, each in its own folder
COMPONENTS = ("least-privilege",)


def manifest_files() -> list[Path]:
    """Every file of Kubernetes objects in examples/, kustomize's own files left out."""
    return sorted(path for path in EXAMPLES.glob("*.yaml") if path.name != KUSTOMIZATION)


def documents(path: Path) -> list[dict[str, Any]]:
    return parse(path.read_text())


def parse(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def kustomize(*components: str) -> str | None:
    """`kubectl kustomize` of an overlay such as a user writes: examples/ (the base) as its resource, with the named
    components of examples/. None without kubectl (kustomize is built into it and works offline)."""
    if shutil.which("kubectl") is None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        base = os.path.relpath(EXAMPLES, folder)  # kustomize takes relative paths only
        lines = ["resources:", f"- {base}", "components:", *(f"- {base}/{c}" for c in components)]
        Path(folder, KUSTOMIZATION).write_text("\n".join(lines) + "\n")
        done = subprocess.run(["kubectl", "kustomize", folder], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def pod_spec(document: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a Pod, or of a workload's pod template (itself, not a copy); None for other kinds."""
    template = document if document["kind"] == "Pod" else document.get("spec", {}).get("template")
    spec: dict[str, Any] | None = template["spec"] if template else None
    return spec


def pod_labels(document: dict[str, Any]) -> dict[str, str]:
    meta = document["metadata"] if document["kind"] == "Pod" else document["spec"]["template"]["metadata"]
    return dict(meta.get("labels", {}))


def init_containers(path: Path) -> list[dict[str, Any]]:
    """Each init container of the file's pods and deployments, with its env resolved against the file's ConfigMaps."""
    return containers(path, "initContainers")


def containers(path: Path, kind: str = "containers") -> list[dict[str, Any]]:
    """Each container of `kind` (containers, initContainers), with `resolved_env`."""
    return containers_of(documents(path), kind)


def statefulset_pods(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The Pods a StatefulSet's controller makes of it: NAME-<ordinal>, with the template's metadata and spec; the pod's
    name is its hostname, which its containers get as HOSTNAME."""
    name, spec = document["metadata"]["name"], document["spec"]
    template = spec["template"]
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {**template["metadata"], "name": f"{name}-{ordinal}"},
            "spec": template["spec"],
        }
        for ordinal in range(spec.get("replicas", 1))
    ]


def hostnames(document: dict[str, Any]) -> list[str]:
    """The HOSTNAME of each pod the workload makes: a StatefulSet's end in their ordinals; a Deployment's in a random
    suffix (shown as one made-up name); a Pod's is its name."""
    name = document["metadata"]["name"]
    if document["kind"] == "StatefulSet":
        return [f"{name}-{ordinal}" for ordinal in range(document["spec"].get("replicas", 1))]
    if document["kind"] == "Deployment":
        return [f"{name}-7d9f8c6b5d-x2kqz"]
    return [name]


def containers_of(found: list[dict[str, Any]], kind: str = "containers") -> list[dict[str, Any]]:
    """Each container of `kind` in the documents, with `resolved_env` (its variables, ConfigMap references
    resolved), `mounted_files` (path -> text of each file of the ConfigMaps it mounts) and `hostnames` (its pods')."""
    config_maps = {d["metadata"]["name"]: d["data"] for d in found if d["kind"] == "ConfigMap"}
    result = []
    for document in found:
        spec = pod_spec(document) or {}
        volumes = {v["name"]: v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v}
        for container in spec.get(kind, []):
            env = {}
            for item in container.get("env", []):
                if "value" in item:
                    env[item["name"]] = item["value"]
                else:
                    ref = item["valueFrom"]["configMapKeyRef"]
                    env[item["name"]] = config_maps[ref["name"]][ref["key"]]
            files = {
                f"{mount['mountPath']}/{key}": text
                for mount in container.get("volumeMounts", [])
                if mount["name"] in volumes
                for key, text in config_maps[volumes[mount["name"]]].items()
            }
            result.append({**container, "resolved_env": env, "mounted_files": files, "hostnames": hostnames(document)})
    return result
