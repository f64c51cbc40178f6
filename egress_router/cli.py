"""The `egress-router` command: thin click wrappers; every option is also its environment variable."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, TypeVar

import click

from egress_router import __version__
from egress_router.config import dns_settings, http_settings, init_settings
from egress_router.config.errors import ConfigError
from egress_router.config.init_settings import Mode, load_init_settings, load_monitor_settings
from egress_router.config.options import Option
from egress_router.errors import ApplyError, Terminated
from egress_router.runtime import logs
from egress_router.runtime.watch import ListFile

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("egress_router")


def help_text(option: Option) -> str:
    """The option's sentence and, when it has one, its default as the loader takes it."""
    shown = option.shown_default
    return f"{option.help} (default {shown})." if shown is not None else f"{option.help}."


def env_options(table: tuple[Option, ...]) -> Callable[[F], F]:
    """A command's options, in the table's order: text read from each option's variable; our own parsers
    validate it (with the table's defaults), so errors read the same either way."""

    def decorate(command: F) -> F:
        for option in reversed(table):
            flag = click.option(option.flag, envvar=option.variable, show_envvar=True, default=None, metavar="TEXT", help=help_text(option))
            command = flag(command)
        return command

    return decorate


def fail(command: str, message: str, code: int = 1) -> None:
    for line in message.splitlines():
        click.echo(f"egress-router {command}: error: {line}", err=True)
    sys.exit(code)


def list_file(path: str | None, text: str | None) -> ListFile | None:
    """What a long-running command follows: the *_FILE it was given, and the text it started with."""
    return ListFile(path.strip(), text or "") if path and path.strip() else None


def read_list(option: Option, value: str | None, file_option: Option, path: str | None) -> str | None:
    """A list variable or its *_FILE twin (a mounted ConfigMap), never both."""
    if path is None or not path.strip():
        return value
    if value is not None and value.strip():
        raise ConfigError.single(file_option.variable, f"set either {option.variable} or {file_option.variable}, not both", path)
    try:
        with open(path.strip(), encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ConfigError.single(file_option.variable, f"cannot read the file: {reason}", path) from error


#: With no command, the mode the environment names: OpenShift's proxy pod manifests give no arguments.
MODE_VARIABLES = (
    ("http-proxy", (http_settings.LIST.variable, http_settings.LIST_FILE.variable)),
    ("dns-proxy", (dns_settings.LIST.variable, dns_settings.LIST_FILE.variable)),
)


def command_from_environment(environ: dict[str, str]) -> str | None:
    for command, variables in MODE_VARIABLES:
        if any(environ.get(variable, "").strip() for variable in variables):
            return command
    return None


#: What only init and monitor need: the `[init]` extra, absent from the proxy image.
INIT_ONLY_MODULES = frozenset({"pyroute2", "iptc"})


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
        missing = (error.name or "").split(".")[0] if isinstance(error, ModuleNotFoundError) else ""
        if missing in INIT_ONLY_MODULES:
            click.echo(
                f"egress-router {args[0] if args else ''}: error: {missing} is not installed here: init and monitor run from"
                " the init image (or pip install 'egress-router[init]'); the proxy image has only the proxies",
                err=True,
            )
            sys.exit(70)
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
@env_options(init_settings.INIT_OPTIONS)
def init(destination: str | None, destination_file: str | None, **values: str | None) -> None:
    """Set up the pod's egress interface, routes and NAT (the privileged init container)."""
    from egress_router.init.plan import build_plan, render_plan

    logs.setup(init_settings.DEBUG.parse(values["debug"]), "init")
    try:
        rules = read_list(init_settings.DESTINATION, destination, init_settings.DESTINATION_FILE, destination_file)
        settings = load_init_settings(destination=rules, **values)
    except ConfigError as error:
        fail("init", str(error))
        return
    nameservers = pod_nameservers()
    plan = build_plan(settings, nameservers)
    from egress_router.init import nat_backend

    try:
        backend = nat_backend.resolve(settings.nat_backend, plan, check=settings.mode is not Mode.UNIT_TEST)
    except ApplyError as error:
        fail("init", f"{error}; nothing was changed")
        return
    if settings.mode is Mode.UNIT_TEST:
        click.echo(render_plan(plan, backend.render))
        click.echo(f"nat    backend {backend.name} ({backend.why})")
        return
    from egress_router.init.apply import apply_plan

    if settings.mode.serves_endpoints:
        claim_metrics_port("init", settings.metrics_port)

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        apply_plan(plan, backend)
    except ApplyError as error:
        fail("init", str(error))
    except Terminated:
        fail("init", "stopped by SIGTERM before the setup was complete; every change was rolled back", 143)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if settings.mode is Mode.LEGACY:  # stay running, as the old image did, and keep the setup true as monitor does
        from egress_router.init import monitor as monitor_module

        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # held until the loop's handlers are in
        log.info("set up; waiting for SIGTERM")
        try:
            sys.exit(monitor_module.run(settings, nameservers, None, init_settings.CHECK_INTERVAL.default_value(), backend))
        except ApplyError as error:
            fail("init", str(error))


def claim_metrics_port(command: str, port: int | None) -> None:
    """monitor and legacy init serve the probes: a port another process holds stops them before they change anything."""
    if port is None:
        return
    from egress_router.observe.endpoints import check_port

    try:
        check_port(port)
    except ApplyError as error:
        fail(command, str(error))


def pod_nameservers(path: str = "/etc/resolv.conf") -> tuple[IPv4Address | IPv6Address, ...]:
    """The pod's nameservers, both families (as Kubernetes wrote them): init keeps those eth0 reaches on eth0."""
    from egress_router.config.resolv_conf import parse_resolv_conf

    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            conf = parse_resolv_conf(f.read())
    except OSError:
        return ()
    return tuple(ip_address(n) for n in conf.nameservers)


_MAIN_PID = os.getpid()


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM during init: roll back, then stop. A forked helper (pyroute2 forks one to open a socket in the
    node's namespace, and stops it with SIGTERM) inherits this handler: it must just die, as by default,
    not unwind a copy of our stack and roll back the parent's changes."""
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise Terminated


@main.command()
def demo() -> None:
    """Build a cluster in network namespaces and show what an external server sees (root, Linux)."""
    from egress_router.lab import demo as demo_module

    logs.setup(False, "demo")
    sys.exit(demo_module.run())


@main.command("http-proxy")
@env_options(http_settings.OPTIONS)
def http_proxy(destination: str | None, destination_file: str | None, debug: str | None, **values: str | None) -> None:
    """Forward HTTP proxy with an allow/deny list and CONNECT tunnels (unprivileged)."""
    from egress_router.http_proxy import service

    logs.setup(http_settings.DEBUG.parse(debug), "http-proxy")
    try:
        rules = read_list(http_settings.LIST, destination, http_settings.LIST_FILE, destination_file)
        settings = http_settings.load_http_settings(destination=rules, **values)
    except ConfigError as error:
        fail("http-proxy", str(error))
        return
    try:
        sys.exit(service.run(settings, list_file(destination_file, rules)))
    except ApplyError as error:
        fail("http-proxy", str(error))


@main.command("dns-proxy")
@env_options(dns_settings.OPTIONS)
def dns_proxy(destination: str | None, destination_file: str | None, **values: str | None) -> None:
    """TCP relays to destinations given by address or DNS name, following record changes (unprivileged)."""
    from egress_router.dns_proxy import service

    logs.setup(False, "dns-proxy")
    try:
        rules = read_list(dns_settings.LIST, destination, dns_settings.LIST_FILE, destination_file)
        settings = dns_settings.load_dns_settings(destination=rules, **values)
    except ConfigError as error:
        fail("dns-proxy", str(error))
        return
    try:
        sys.exit(service.run(settings, list_file(destination_file, rules)))
    except ApplyError as error:
        fail("dns-proxy", str(error))


@main.command()
@env_options(init_settings.MONITOR_OPTIONS)
def monitor(destination: str | None, destination_file: str | None, debug: str | None, **values: str | None) -> None:
    """Keep a redirect pod's setup true: re-announce, follow the rules file, restore removed rules (NET_ADMIN, NET_RAW)."""
    from egress_router.init import monitor as monitor_module
    from egress_router.init import nat_backend
    from egress_router.init.plan import build_plan

    logs.setup(init_settings.DEBUG.parse(debug), "monitor")
    try:
        rules = read_list(init_settings.DESTINATION, destination, init_settings.DESTINATION_FILE, destination_file)
        settings = load_monitor_settings(destination=rules, debug=debug, **values)
    except ConfigError as error:
        fail("monitor", str(error))
        return
    claim_metrics_port("monitor", settings.init.metrics_port)
    nameservers = pod_nameservers()
    try:
        plan = build_plan(settings.init, nameservers)
        backend = nat_backend.follow_installed(nat_backend.resolve(settings.init.nat_backend, plan), settings.init.nat_backend, plan)
    except ApplyError as error:
        fail("monitor", str(error))
        return
    log.info("NAT backend: %s (%s)", backend.name, backend.why)
    try:
        sys.exit(monitor_module.run(settings.init, nameservers, list_file(destination_file, rules), settings.check_interval, backend))
    except ApplyError as error:
        fail("monitor", str(error))
