"""The manifests in examples/ configure a pod our parser accepts."""

from __future__ import annotations

from typing import Any

import pytest

from egress_router.cli import command_from_environment
from egress_router.config.dns_settings import load_dns_settings
from egress_router.config.http_settings import load_http_settings
from egress_router.config.init_settings import load_init_settings
from egress_router.init.plan import build_plan
from tests.manifests import EXAMPLES, containers, init_containers

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
CASES = [(path.name, container) for path in sorted(EXAMPLES.glob("*.yaml")) for container in init_containers(path)]


@pytest.mark.parametrize(("name", "container"), CASES, ids=[c[0] for c in CASES])
def test_example_init_container_is_valid(name: str, container: dict[str, Any]) -> None:
    env = container["resolved_env"]
    assert set(env) <= set(OPTION_FOR), f"{name} uses a variable we do not know"
    assert container["securityContext"]["privileged"] is True
    plan = build_plan(load_init_settings(**{"destination": None, **{OPTION_FOR[k]: v for k, v in env.items()}}))
    assert (plan.nat_rules is None) == name.startswith(("http-proxy", "dns-proxy"))


PROXIES = [(path.name, c) for path in sorted(EXAMPLES.glob("*proxy*.yaml")) for c in containers(path)]


@pytest.mark.parametrize(("name", "container"), PROXIES, ids=[c[0] for c in PROXIES])
def test_example_proxy_container_is_valid(name: str, container: dict[str, Any]) -> None:
    env = container["resolved_env"]
    assert "securityContext" not in container  # unprivileged
    assert command_from_environment(env) == name.split("-pod")[0]
    if "EGRESS_HTTP_PROXY_DESTINATION" in env:
        assert load_http_settings(destination=env["EGRESS_HTTP_PROXY_DESTINATION"]).acl.wildcard is not None
    else:
        settings = load_dns_settings(destination=env["EGRESS_DNS_PROXY_DESTINATION"], debug=env.get("EGRESS_DNS_PROXY_DEBUG"))
        assert settings.debug and [t.local_port for t in settings.targets] == [80, 100, 8080, 8443]
