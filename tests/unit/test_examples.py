"""The manifests in examples/: valid against the Kubernetes schemas, configuring pods our parsers accept, with
probes, resources and least privilege for every long-running container."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from egress_router.cli import command_from_environment
from egress_router.config import dns_settings, http_settings
from egress_router.config.dns_settings import load_dns_settings
from egress_router.config.errors import ConfigError
from egress_router.config.http_settings import load_http_settings
from egress_router.config.init_settings import MONITOR_OPTIONS, load_init_settings, load_monitor_settings
from egress_router.config.options import SHUTDOWN_DELAY, Option
from egress_router.init.plan import build_plan
from tests.manifests import (
    COMPONENTS,
    EXAMPLES,
    containers,
    containers_of,
    documents,
    init_containers,
    kustomize,
    manifest_files,
    parse,
    pod_labels,
    pod_spec,
)

#: OpenShift 4.16 (the last with openshift-sdn) is Kubernetes 1.29; the newest the validator knows is checked too
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
#: Custom resources are not in the Kubernetes schemas: their operators' CRDs define them. They are checked below
#: against what they select (PodMonitor) and what the pods name (NetworkAttachmentDefinition) instead.
CUSTOM_KINDS = {"PodMonitor", "NetworkAttachmentDefinition"}
ROUTER_LABEL = ("app.kubernetes.io/name", "egress-router")
METRICS_PORT = 9191

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
    "EGRESS_METRICS_PORT": "metrics_port",
    "EGRESS_SOURCE_INDEX": "source_index",
}
FILES = manifest_files()
#: the base alone, and with each of its components
KUSTOMIZED = [("base", kustomize()), *((component, kustomize(component)) for component in COMPONENTS)]


def all_documents() -> list[tuple[str, dict[str, Any]]]:
    found = [(f"{path.name}:{i}", d) for path in FILES for i, d in enumerate(documents(path))]
    for variant, built in KUSTOMIZED:
        found += [(f"kustomize {variant}:{i}", d) for i, d in enumerate(parse(built or ""))]
    return found


DOCUMENTS = all_documents()


def test_every_example_file_is_known() -> None:
    assert [p.name for p in FILES] == [
        "dns-proxy-pod.yaml",
        "http-proxy-pod.yaml",
        "http-proxy-statefulset.yaml",
        "network-policy.yaml",
        "pod-monitor.yaml",
        "redirect-pod-configmap.yaml",
        "redirect-pod-multus.yaml",
        "redirect-pod.yaml",
    ]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("name", "document"), DOCUMENTS, ids=[d[0] for d in DOCUMENTS])
def test_manifest_is_valid_against_the_kubernetes_schema(name: str, document: dict[str, Any], version: str) -> None:
    if document["kind"] in CUSTOM_KINDS:
        pytest.skip(f"{document['kind']} is a custom resource: its CRD, not the Kubernetes schema, defines it (checked below)")
    kubernetes_validate.validate(document, version, strict=True)  # strict: an unknown or misspelt field is an error


def test_kustomize_builds_the_base_and_each_component() -> None:
    for variant, built in KUSTOMIZED:
        if built is None:
            pytest.skip("kubectl is not installed: `kubectl kustomize` builds examples/kustomization.yaml")
        kinds = sorted(d["kind"] for d in parse(built))
        assert kinds == ["ConfigMap", "Deployment", "NetworkPolicy", "Service"], variant


def test_least_privilege_component_gives_the_init_container_capabilities_and_the_pod_its_sysctls() -> None:
    built = KUSTOMIZED[1][1]
    if built is None:
        pytest.skip("kubectl is not installed")
    (deployment,) = [d for d in parse(built) if d["kind"] == "Deployment"]
    spec = pod_spec(deployment) or {}
    (init,) = spec["initContainers"]
    assert "privileged" not in init["securityContext"]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    sysctls = {s["name"]: s["value"] for s in spec["securityContext"]["sysctls"]}
    plan = build_plan(
        load_init_settings(**{OPTION_FOR[k]: v for k, v in containers_of(parse(built), "initContainers")[0]["resolved_env"].items()})
    )
    # exactly what init would write, so it finds them set and writes nothing: the egress interface's as the defaults it
    # takes when it arrives in the pod
    defaults = {key.replace(f".{plan.interface}.", ".default."): value for key, value in plan.egress_sysctls}
    assert sysctls == dict(plan.sysctls) | defaults


INITS = [(path.name, container) for path in FILES for container in init_containers(path)]


@pytest.mark.parametrize(("name", "container"), INITS, ids=[c[0] for c in INITS])
def test_example_init_container_is_valid(name: str, container: dict[str, Any]) -> None:
    """Valid in every pod of the workload (each replica of a StatefulSet with a pool takes an address of its own)."""
    env = container["resolved_env"]
    assert set(env) <= set(OPTION_FOR), f"{name} uses a variable we do not know"
    assert container["securityContext"] == {"privileged": True}
    given = {"destination": None, **{OPTION_FOR[k]: v for k, v in env.items()}}
    sources = [load_init_settings(**given, hostname=hostname).sources for hostname in container["hostnames"]]
    assert len(set(sources)) == len(sources), f"{name}: two pods would share an address"
    plan = build_plan(load_init_settings(**given, hostname=container["hostnames"][0]))
    assert (plan.nat_rules is None) == name.startswith(("http-proxy", "dns-proxy"))
    assert set(container["resources"]["requests"]) == {"cpu", "memory"} and "memory" in container["resources"]["limits"]


LONG_RUNNING = [(path.name, c) for path in FILES for c in containers(path)]


@pytest.mark.parametrize(("name", "container"), LONG_RUNNING, ids=[c[0] for c in LONG_RUNNING])
def test_long_running_container_has_probes_on_the_metrics_port_and_resources(name: str, container: dict[str, Any]) -> None:
    assert {"name": "metrics", "containerPort": METRICS_PORT} in container["ports"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert set(container["resources"]["requests"]) == {"cpu", "memory"} and "memory" in container["resources"]["limits"]
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
    assert context["capabilities"]["drop"] == ["ALL"] and context["seccompProfile"] == {"type": "RuntimeDefault"}


PROXIES = [(path.name, c) for path in FILES if "proxy" in path.name for c in containers(path)]


@pytest.mark.parametrize(("name", "container"), PROXIES, ids=[c[0] for c in PROXIES])
def test_example_proxy_container_is_valid_and_unprivileged(name: str, container: dict[str, Any]) -> None:
    env = container["resolved_env"]
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True and isinstance(context["runAsUser"], int) and context["runAsUser"] > 0
    assert "add" not in context["capabilities"] and "privileged" not in context
    assert "command" not in container and "args" not in container  # the mode comes from the environment, as on OpenShift
    assert name.startswith(f"{command_from_environment(env)}-")
    if "EGRESS_HTTP_PROXY_DESTINATION" in env:
        assert load_http_settings(destination=env["EGRESS_HTTP_PROXY_DESTINATION"]).acl.wildcard is not None
    else:
        settings = load_dns_settings(destination=env["EGRESS_DNS_PROXY_DESTINATION"], debug=env.get("EGRESS_DNS_PROXY_DEBUG"))
        assert settings.debug and [t.local_port for t in settings.targets] == [80, 100, 8080, 8443]


REDIRECTS = [path for path in FILES if path.name.startswith("redirect")]


@pytest.mark.parametrize("path", REDIRECTS, ids=[p.name for p in REDIRECTS])
def test_redirect_monitor_keeps_what_init_set_up(path: Path) -> None:
    """The monitor is given the init container's address, gateway, interface and rules (one ConfigMap for both)."""
    (init,) = init_containers(path)
    (monitor,) = containers(path)
    assert monitor["command"] == ["egress-router", "monitor"] and monitor["image"] == init["image"]
    assert monitor["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    env = monitor["resolved_env"]
    for variable in ("EGRESS_SOURCE", "EGRESS_GATEWAY", "EGRESS_INTERFACE", "EGRESS_METRICS_PORT"):
        assert env.get(variable) == init["resolved_env"].get(variable), variable
    rules = monitor["mounted_files"][env["EGRESS_DESTINATION_FILE"]]
    assert rules == init["resolved_env"]["EGRESS_DESTINATION"]
    settings = load_init_settings(**{OPTION_FOR[k]: v for k, v in init["resolved_env"].items()})
    assert settings.destinations is not None and settings.destinations.rules
    # the monitor plans what init installed, so it never "repairs" init's rules; both keep the probes' port from the fallback
    given = {OPTION_FOR[k]: v for k, v in env.items() if k in OPTION_FOR}
    kept = load_monitor_settings(**given, destination=rules).init
    made = replace(build_plan(settings), create_macvlan=None)  # the macvlan is init's business only
    assert build_plan(kept) == made and kept.metrics_port == METRICS_PORT


def workloads() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, d) for path in FILES for d in documents(path) if pod_spec(d) is not None]


@pytest.mark.parametrize(("name", "workload"), workloads(), ids=[w[0] for w in workloads()])
def test_router_pods_are_labelled_for_the_policy_and_the_pod_monitor(name: str, workload: dict[str, Any]) -> None:
    key, value = ROUTER_LABEL
    assert pod_labels(workload)[key] == value
    if workload["kind"] == "Deployment":  # two pods must never hold one address, not even during a rollout
        assert workload["spec"]["strategy"] == {"type": "Recreate"} and workload["spec"]["replicas"] == 1


def test_pod_monitor_and_network_policy_select_every_router_pod_and_its_metrics_port() -> None:
    (monitor,) = documents(EXAMPLES / "pod-monitor.yaml")
    (policy,) = documents(EXAMPLES / "network-policy.yaml")
    key, value = ROUTER_LABEL
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["spec"]["selector"]["matchLabels"] == {key: value}
    assert policy["spec"]["podSelector"]["matchLabels"] == {key: value}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert {"protocol": "TCP", "port": "metrics"} in policy["spec"]["ingress"][1]["ports"]


def test_network_attachment_is_a_macvlan_without_addresses_that_the_pod_names() -> None:
    path = EXAMPLES / "redirect-pod-multus.yaml"
    (attachment,) = [d for d in documents(path) if d["kind"] == "NetworkAttachmentDefinition"]
    (pod,) = [d for d in documents(path) if d["kind"] == "Pod"]
    config = json.loads(attachment["spec"]["config"])
    assert config["type"] == "macvlan" and config["ipam"] == {} and "master" in config
    assert pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == attachment["metadata"]["name"]
    (init,) = init_containers(path)
    assert init["resolved_env"]["EGRESS_INTERFACE"] == "net1"


#: each long-running command's options by variable (the loaders' keywords), to load a container's whole environment
LOADERS = {
    "http-proxy": (http_settings.OPTIONS, load_http_settings),
    "dns-proxy": (dns_settings.OPTIONS, load_dns_settings),
    "monitor": (MONITOR_OPTIONS, None),
}


def settings_of(container: dict[str, Any]) -> Any:
    """What the container's command makes of its whole environment (every variable one it knows)."""
    env = container["resolved_env"]
    command = (container.get("command") or ["", command_from_environment(env)])[-1]
    table, load = LOADERS[str(command)]
    names: dict[str, Option] = {option.variable: option for option in table}
    assert set(env) <= set(names), f"variables {sorted(set(env) - set(names))} are not {command}'s"
    given = {names[k].name: v for k, v in env.items() if not k.endswith("_FILE")}
    return load(**given) if load is not None else None


WITH_PODS = [path for path in FILES if any(pod_spec(d) is not None for d in documents(path))]


@pytest.mark.parametrize("path", WITH_PODS, ids=[p.name for p in WITH_PODS])
def test_the_grace_period_holds_the_shutdown_delay_and_the_drain(path: Path) -> None:
    """The kubelet kills what still runs terminationGracePeriodSeconds (default 30) after SIGTERM: the delay and the
    drain must end before. A delay is kept, except by a single replica replaced with Recreate (nothing else takes
    the connections meanwhile, and the replacement waits for this pod to be gone)."""
    found = documents(path)
    (workload,) = [d for d in found if pod_spec(d) is not None]
    grace = (pod_spec(workload) or {}).get("terminationGracePeriodSeconds", 30)
    recreated = workload.get("spec", {}).get("strategy", {}).get("type") == "Recreate" and workload["spec"].get("replicas") == 1
    for container in containers_of(found):
        settings = settings_of(container)
        delay = SHUTDOWN_DELAY.parse(container["resolved_env"].get(SHUTDOWN_DELAY.variable))
        drain = settings.drain_timeout if settings is not None else 0.0
        assert (delay == 0) == recreated, f"{path.name}: {delay:g} s delay"
        assert delay + drain < grace, f"{path.name}: {delay:g} s delay + {drain:g} s drain, {grace} s grace"


def test_the_statefulset_pool_is_spread_gated_and_budgeted() -> None:
    """The StatefulSet example: parallel pods on different nodes, its headless Service and the clients' Service, a
    PodDisruptionBudget of one, all selecting exactly its pods; one address in the pool per replica."""
    found = documents(EXAMPLES / "http-proxy-statefulset.yaml")
    (statefulset,) = [d for d in found if d["kind"] == "StatefulSet"]
    (budget,) = [d for d in found if d["kind"] == "PodDisruptionBudget"]
    services = {d["metadata"]["name"]: d for d in found if d["kind"] == "Service"}
    spec = statefulset["spec"]
    labels = spec["selector"]["matchLabels"]
    assert spec["podManagementPolicy"] == "Parallel" and spec["updateStrategy"] == {"type": "RollingUpdate"}
    assert labels.items() <= pod_labels(statefulset).items()
    headless = services.pop(spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["selector"] == labels
    ((_, clients),) = services.items()
    assert clients["spec"]["selector"] == labels and clients["spec"].get("clusterIP") != "None"
    assert budget["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": labels}}
    (term,) = spec["template"]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term == {"labelSelector": {"matchLabels": labels}, "topologyKey": "kubernetes.io/hostname"}
    (init,) = containers_of([statefulset], "initContainers")
    pool = init["resolved_env"]["EGRESS_SOURCE"]
    with pytest.raises(ConfigError, match="past the end of the pool"):  # the pool is as large as the StatefulSet, exactly
        load_init_settings(source=pool, gateway="192.168.12.1", destination=None, mode="http-proxy", source_index=str(spec["replicas"]))
