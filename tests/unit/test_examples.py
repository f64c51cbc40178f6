"""The manifests in examples/ configure a pod our parser accepts and plans as the comments say."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from egress_router.config.init_settings import load_init_settings
from egress_router.plan import build_plan, render_plan

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
OPTION_FOR = {
    "EGRESS_SOURCE": "source",
    "EGRESS_GATEWAY": "gateway",
    "EGRESS_DESTINATION": "destination",
    "EGRESS_ROUTER_MODE": "mode",
    "EGRESS_INTERFACE": "interface",
    "EGRESS_MACVLAN_MASTER": "macvlan_master",
    "EGRESS_MACVLAN_MODE": "macvlan_mode",
    "EGRESS_HOST_NETNS": "host_netns",
    "EGRESS_ROUTER_DEBUG": "debug",
}


def init_containers(path: Path) -> list[tuple[dict[str, Any], dict[str, dict[str, str]]]]:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    config_maps = {d["metadata"]["name"]: d["data"] for d in documents if d["kind"] == "ConfigMap"}
    found = []
    for document in documents:
        spec = document.get("spec", {})
        pod_spec = spec.get("template", {}).get("spec", spec)
        for container in pod_spec.get("initContainers", []):
            found.append((container, config_maps))
    return found


def environment(container: dict[str, Any], config_maps: dict[str, dict[str, str]]) -> dict[str, str]:
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = config_maps[ref["name"]][ref["key"]]
    return env


CASES = [(path.name, c, m) for path in sorted(EXAMPLES.glob("*.yaml")) for c, m in init_containers(path)]


@pytest.mark.parametrize(("name", "container", "config_maps"), CASES, ids=[c[0] for c in CASES])
def test_example_init_container_is_valid(name: str, container: dict[str, Any], config_maps: dict[str, dict[str, str]]) -> None:
    env = environment(container, config_maps)
    assert set(env) <= set(OPTION_FOR), f"{name} uses a variable we do not know"
    assert container["securityContext"]["privileged"] is True
    plan = build_plan(load_init_settings(**{OPTION_FOR[k]: v for k, v in env.items()}))
    assert "EGRESS-ROUTER-SNAT" in render_plan(plan) or plan.nat_rules is None
