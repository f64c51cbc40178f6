"""The `egress-router` command: thin click wrappers; every option is also its environment variable."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from ipaddress import IPv4Address, ip_address
from typing import Any, TypeVar

import click

from egress_router import __version__
from egress_router.config.errors import ConfigError
from egress_router.config.init_settings import Mode, load_init_settings
from egress_router.errors import ApplyError, Terminated
from egress_router.runtime import logs
from egress_router.runtime.watch import ListFile

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("egress_router")


def env_option(flag: str, envvar: str, help: str) -> Callable[[F], F]:
    """A text option read from `envvar`; our own parsers validate it, so errors read the same either way."""
    return click.option(flag, envvar=envvar, show_envvar=True, default=None, metavar="TEXT", help=help)


def fail(command: str, message: str, code: int = 1) -> None:
    for line in message.splitlines():
        click.echo(f"egress-router {command}: error: {line}", err=True)
    sys.exit(code)


def list_file(path: str | None, text: str | None) -> ListFile | None:
    """What a long-running command follows: the *_FILE it was given, and the text it started with."""
    return ListFile(path.strip(), text or "") if path and path.strip() else None


def read_list(variable: str, value: str | None, file_variable: str, path: str | None) -> str | None:
    """A list variable or its *_FILE twin (a mounted ConfigMap), never both."""
    if path is None or not path.strip():
        return value
    if value is not None and value.strip():
        raise ConfigError.single(file_variable, f"set either {variable} or {file_variable}, not both", path)
    try:
        with open(path.strip(), encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ConfigError.single(file_variable, f"cannot read the file: {reason}", path) from error


#: With no command, the mode the environment names: OpenShift's proxy pod manifests give no arguments.
MODE_VARIABLES = (
    ("http-proxy", ("EGRESS_HTTP_PROXY_DESTINATION", "EGRESS_HTTP_PROXY_DESTINATION_FILE")),
    ("dns-proxy", ("EGRESS_DNS_PROXY_DESTINATION", "EGRESS_DNS_PROXY_DESTINATION_FILE")),
)


def command_from_environment(environ: dict[str, str]) -> str | None:
    for command, variables in MODE_VARIABLES:
        if any(environ.get(variable, "").strip() for variable in variables):
            return command
    return None


def run() -> None:
    """The console entry point: `egress-router` alone runs the mode the environment names."""
    args = sys.argv[1:]
    if not args:
        command = command_from_environment(dict(os.environ))
        if command:
            args = [command]
    try:
        main(args=args, prog_name="egress-router")
    except Exception as error:
        if os.environ.get("EGRESS_ROUTER_DEBUG", "").strip():
            raise
        click.echo(
            f"egress-router: internal error: {type(error).__name__}: {error} (set EGRESS_ROUTER_DEBUG=1 for the traceback)", err=True
        )
        sys.exit(70)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="egress-router")
def main() -> None:
    """Give cluster workloads a fixed, firewall-whitelistable source IP for traffic leaving the cluster."""


@main.command()
@env_option("--source", "EGRESS_SOURCE", "Reserved egress address, A.B.C.D or A.B.C.D/len. Required.")
@env_option("--gateway", "EGRESS_GATEWAY", "Next hop on the node's network. Required.")
@env_option(
    "--destination",
    "EGRESS_DESTINATION",
    "Redirect rules, one a line: '<port> <proto> <addr> [<remote-port>]', or a fallback '<addr>' last.",
)
@env_option("--destination-file", "EGRESS_DESTINATION_FILE", "File holding the redirect rules instead (a mounted ConfigMap).")
@env_option(
    "--mode",
    "EGRESS_ROUTER_MODE",
    "init | legacy (default: set up, stay running) | http-proxy | dns-proxy | unit-test (print the plan, change nothing).",
)
@env_option("--debug", "EGRESS_ROUTER_DEBUG", "Non-empty: log every step.")
@env_option("--interface", "EGRESS_INTERFACE", "Egress interface in the pod (default macvlan0; net1 for a Multus attachment).")
@env_option("--macvlan-master", "EGRESS_MACVLAN_MASTER", "Node interface to create the egress macvlan on when it does not exist yet.")
@env_option("--macvlan-mode", "EGRESS_MACVLAN_MODE", "bridge (default) | private | vepa | passthru.")
@env_option("--host-netns", "EGRESS_HOST_NETNS", "The node's network namespace, for creating the macvlan (default /proc/1/ns/net).")
@env_option(
    "--cluster-networks",
    "EGRESS_CLUSTER_NETWORKS",
    "CIDRs the pod's own connections reach through eth0 (cluster and Service networks), comma-separated.",
)
def init(destination: str | None, destination_file: str | None, **values: str | None) -> None:
    """Set up the pod's egress interface, routes and NAT (the privileged init container)."""
    from egress_router.init.plan import build_plan, render_plan

    debug = values["debug"]
    logs.setup(bool(debug and debug.strip()), "init")
    try:
        rules = read_list("EGRESS_DESTINATION", destination, "EGRESS_DESTINATION_FILE", destination_file)
        settings = load_init_settings(destination=rules, **values)
    except ConfigError as error:
        fail("init", str(error))
        return
    plan = build_plan(settings, pod_nameservers())
    if settings.mode is Mode.UNIT_TEST:
        click.echo(render_plan(plan))
        return
    from egress_router.init.apply import apply_plan

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        apply_plan(plan)
    except ApplyError as error:
        fail("init", str(error))
    except Terminated:
        fail("init", "stopped by SIGTERM before the setup was complete; every change was rolled back", 143)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if settings.mode is Mode.LEGACY:
        wait_for_termination()


def pod_nameservers(path: str = "/etc/resolv.conf") -> tuple[IPv4Address, ...]:
    """The pod's IPv4 nameservers (as Kubernetes wrote them): init keeps those eth0 reaches on eth0."""
    from egress_router.config.resolv_conf import parse_resolv_conf

    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            conf = parse_resolv_conf(f.read())
    except OSError:
        return ()
    return tuple(IPv4Address(n) for n in conf.nameservers if ip_address(n).version == 4)


_MAIN_PID = os.getpid()


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM during init: roll back, then stop. A forked helper (pyroute2 forks one to open a socket in the
    node's namespace, and stops it with SIGTERM) inherits this handler: it must just die, as by default,
    not unwind a copy of our stack and roll back the parent's changes."""
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise Terminated


def wait_for_termination() -> None:
    """`legacy` mode keeps the container alive, as the old image did, until the pod stops."""
    signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    log.info("set up; waiting for SIGTERM")
    received = signal.sigwait(signals)
    log.info("received %s, exiting", signal.Signals(received).name)


@main.command()
def demo() -> None:
    """Build a cluster in network namespaces and show what an external server sees (root, Linux)."""
    from egress_router.lab import demo as demo_module

    logs.setup(False, "demo")
    sys.exit(demo_module.run())


@main.command("http-proxy")
@env_option(
    "--destination", "EGRESS_HTTP_PROXY_DESTINATION", "Allow/deny list, one rule a line: address, CIDR, name, *.domain, !rule, and * last."
)
@env_option("--destination-file", "EGRESS_HTTP_PROXY_DESTINATION_FILE", "File holding the list instead (a mounted ConfigMap).")
@env_option("--listen-port", "EGRESS_HTTP_PROXY_LISTEN_PORT", "Port to listen on, IPv4 and IPv6 (default 8080).")
@env_option("--connect-ports", "EGRESS_HTTP_PROXY_CONNECT_PORTS", "Ports CONNECT tunnels may reach, comma-separated (default 443).")
@env_option("--max-connections", "EGRESS_HTTP_PROXY_MAX_CONNECTIONS", "Client connections per worker; more get 503 (default 4096).")
@env_option("--max-header-size", "EGRESS_HTTP_PROXY_MAX_HEADER_SIZE", "Largest request head in bytes; larger gets 431 (default 65536).")
@env_option("--header-timeout", "EGRESS_HTTP_PROXY_HEADER_TIMEOUT", "Time to send a whole request head; slower gets 408 (default 10s).")
@env_option(
    "--idle-timeout", "EGRESS_HTTP_PROXY_IDLE_TIMEOUT", "Idle keep-alive connections and silent servers are cut after this (default 60s)."
)
@env_option(
    "--tunnel-idle-timeout",
    "EGRESS_HTTP_PROXY_TUNNEL_IDLE_TIMEOUT",
    "A CONNECT tunnel with no bytes either way is closed after this (default 1h).",
)
@env_option(
    "--connect-timeout", "EGRESS_HTTP_PROXY_CONNECT_TIMEOUT", "Time to connect to a server address before trying the next (default 10s)."
)
@env_option("--drain-timeout", "EGRESS_HTTP_PROXY_DRAIN_TIMEOUT", "On SIGTERM, in-flight requests get this long to finish (default 30s).")
@env_option("--workers", "EGRESS_HTTP_PROXY_WORKERS", "Worker processes sharing the port (default: one per CPU).")
@env_option("--debug", "EGRESS_ROUTER_DEBUG", "Non-empty: log more.")
def http_proxy(destination: str | None, destination_file: str | None, debug: str | None, **values: str | None) -> None:
    """Forward HTTP proxy with an allow/deny list and CONNECT tunnels (unprivileged)."""
    from egress_router.config.http_settings import load_http_settings
    from egress_router.http_proxy import service

    logs.setup(bool(debug and debug.strip()), "http-proxy")
    try:
        rules = read_list("EGRESS_HTTP_PROXY_DESTINATION", destination, "EGRESS_HTTP_PROXY_DESTINATION_FILE", destination_file)
        settings = load_http_settings(destination=rules, **values)
    except ConfigError as error:
        fail("http-proxy", str(error))
        return
    try:
        sys.exit(service.run(settings, list_file(destination_file, rules)))
    except ApplyError as error:
        fail("http-proxy", str(error))


@main.command("dns-proxy")
@env_option(
    "--destination", "EGRESS_DNS_PROXY_DESTINATION", "Ports to forward, one a line: '<local-port> <address-or-name> [<remote-port>]'."
)
@env_option("--destination-file", "EGRESS_DNS_PROXY_DESTINATION_FILE", "File holding the relays instead (a mounted ConfigMap).")
@env_option("--debug", "EGRESS_DNS_PROXY_DEBUG", "Non-empty: one log line per connection.")
@env_option("--max-connections", "EGRESS_DNS_PROXY_MAX_CONNECTIONS", "Relayed connections in all; more are closed at once (default 4096).")
@env_option("--idle-timeout", "EGRESS_DNS_PROXY_IDLE_TIMEOUT", "A connection with no bytes either way is closed after this (default 1h).")
@env_option("--connect-timeout", "EGRESS_DNS_PROXY_CONNECT_TIMEOUT", "Time for one address to accept before trying the next (default 5s).")
@env_option("--drain-timeout", "EGRESS_DNS_PROXY_DRAIN_TIMEOUT", "On SIGTERM, open connections get this long to finish (default 30s).")
@env_option("--min-ttl", "EGRESS_DNS_PROXY_MIN_TTL", "Names are not re-resolved more often than this (default 1s).")
@env_option("--max-ttl", "EGRESS_DNS_PROXY_MAX_TTL", "Names are re-resolved at least this often (default 5m).")
@env_option("--stale-limit", "EGRESS_DNS_PROXY_STALE_LIMIT", "How long the last good answer is used while DNS fails (default 1h).")
@env_option(
    "--splice",
    "EGRESS_DNS_PROXY_SPLICE",
    "on: relay bytes with zero-copy splice(2); off (default, measured faster here): copy them through the process.",
)
def dns_proxy(destination: str | None, destination_file: str | None, debug: str | None, **values: str | None) -> None:
    """TCP relays to destinations given by address or DNS name, following record changes (unprivileged)."""
    from egress_router.config.dns_settings import load_dns_settings
    from egress_router.dns_proxy import service

    logs.setup(False, "dns-proxy")
    try:
        rules = read_list("EGRESS_DNS_PROXY_DESTINATION", destination, "EGRESS_DNS_PROXY_DESTINATION_FILE", destination_file)
        settings = load_dns_settings(destination=rules, debug=debug, **values)
    except ConfigError as error:
        fail("dns-proxy", str(error))
        return
    try:
        sys.exit(service.run(settings, list_file(destination_file, rules)))
    except ApplyError as error:
        fail("dns-proxy", str(error))


@main.command()
@env_option("--source", "EGRESS_SOURCE", "Reserved egress address, as given to init. Required.")
@env_option("--gateway", "EGRESS_GATEWAY", "Next hop, as given to init. Required.")
@env_option("--destination", "EGRESS_DESTINATION", "Redirect rules, as given to init.")
@env_option("--destination-file", "EGRESS_DESTINATION_FILE", "File holding the rules; re-applied whenever it changes.")
@env_option("--interface", "EGRESS_INTERFACE", "Egress interface in the pod (default macvlan0).")
@env_option("--cluster-networks", "EGRESS_CLUSTER_NETWORKS", "CIDRs kept on eth0, as given to init.")
@env_option(
    "--check-interval", "EGRESS_ROUTER_MONITOR_INTERVAL", "How often the NAT rules are checked and put back if changed (default 10s)."
)
@env_option("--debug", "EGRESS_ROUTER_DEBUG", "Non-empty: log every step.")
def monitor(
    destination: str | None, destination_file: str | None, check_interval: str | None, debug: str | None, **values: str | None
) -> None:
    """Keep a redirect pod's setup true: re-announce, follow the rules file, restore removed rules (NET_ADMIN, NET_RAW)."""
    from egress_router.config.values import parse_duration
    from egress_router.init import monitor as monitor_module

    logs.setup(bool(debug and debug.strip()), "monitor")
    try:
        rules = read_list("EGRESS_DESTINATION", destination, "EGRESS_DESTINATION_FILE", destination_file)
        settings = load_init_settings(destination=rules, mode="init", debug=debug, **values)
        interval = parse_duration(check_interval, "EGRESS_ROUTER_MONITOR_INTERVAL", 10.0)
    except ConfigError as error:
        fail("monitor", str(error))
        return
    sys.exit(monitor_module.run(settings, pod_nameservers(), list_file(destination_file, rules), interval))
