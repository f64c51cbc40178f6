"""Reading the init container's environment out of the example manifests (used by unit and lab tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def init_containers(path: Path) -> list[dict[str, Any]]:
    """Each init container of the file's pods and deployments, with its env resolved against the file's ConfigMaps."""
    return containers(path, "initContainers")


def containers(path: Path, kind: str = "containers") -> list[dict[str, Any]]:
    """Each container of `kind` (containers, initContainers), with `resolved_env`."""
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    config_maps = {d["metadata"]["name"]: d["data"] for d in documents if d["kind"] == "ConfigMap"}
    found = []
    for document in documents:
        spec = document.get("spec", {})
        pod_spec = spec.get("template", {}).get("spec", spec)
        for container in pod_spec.get(kind, []):
            env = {}
            for item in container.get("env", []):
                if "value" in item:
                    env[item["name"]] = item["value"]
                else:
                    ref = item["valueFrom"]["configMapKeyRef"]
                    env[item["name"]] = config_maps[ref["name"]][ref["key"]]
            found.append({**container, "resolved_env": env})
    return found
