"""Everything `egress-router init` (and `monitor`) needs, validated together before any change is made."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from egress_router.config.addresses import Gateways, IPNetwork, Sources, family_problems, parse_gateways, parse_sources
from egress_router.config.cluster_networks import VARIABLE, parse_cluster_networks
from egress_router.config.destinations import Destinations, parse_destinations
from egress_router.config.errors import Collector, ConfigError, Problem
from egress_router.config.options import METRICS_PORT, SHUTDOWN_DELAY, Choice, Duration, Flag, Option, Text
from egress_router.config.source_pool import HOSTNAME_VARIABLE, INDEX_VARIABLE, Span, gateway_problems, pool_spans, select_source
from egress_router.config.values import render_duration


class Mode(enum.Enum):
    INIT = "init"
    LEGACY = "legacy"
    HTTP_PROXY = "http-proxy"
    DNS_PROXY = "dns-proxy"
    UNIT_TEST = "unit-test"

    @property
    def installs_nat(self) -> bool:
        """The proxy modes only need the network: their own sockets leave from EGRESS_SOURCE."""
        return self not in (Mode.HTTP_PROXY, Mode.DNS_PROXY)

    @property
    def serves_endpoints(self) -> bool:
        """Legacy mode stays running and answers on the metrics port. In the others nothing of ours listens there,
        so only a port set explicitly (the monitor container's) is kept from the fallback and from redirect rules."""
        return self is Mode.LEGACY


MACVLAN_MODES = ("bridge", "private", "vepa", "passthru")

SOURCE = Option(
    "source",
    "EGRESS_SOURCE",
    "Reserved egress address, A.B.C.D or A.B.C.D/len or IPv6 addr[/len]; dual-stack: one of each family, comma-separated;"
    " or a pool, each pod taking one: several of a family, comma-separated, or a range A-B[/len]. Required",
)
SOURCE_INDEX = Option(
    "source_index",
    INDEX_VARIABLE,
    "With a pool in EGRESS_SOURCE, the place (from 0) of this pod's address in it; unset: the StatefulSet ordinal ending HOSTNAME",
)
HOSTNAME = Option(
    "hostname",
    HOSTNAME_VARIABLE,
    "The pod's name (Kubernetes sets it; of an FQDN, the part before the first '.'); a StatefulSet pod's ends in -<ordinal>",
)
GATEWAY = Option("gateway", "EGRESS_GATEWAY", "Next hop on the node's network; dual-stack: one of each family, comma-separated. Required")
DESTINATION = Option(
    "destination", "EGRESS_DESTINATION", "Redirect rules, one a line: '<port> <proto> <addr> [<remote-port>]', or a fallback '<addr>' last"
)
DESTINATION_FILE = Option("destination_file", "EGRESS_DESTINATION_FILE", "File holding the redirect rules instead (a mounted ConfigMap)")
MODE = Choice(
    "mode",
    "EGRESS_ROUTER_MODE",
    "init: set up and exit; legacy: set up and stay running; http-proxy, dns-proxy: the network only, no NAT;"
    " unit-test: print the plan, change nothing",
    default=Mode.LEGACY.value,
    choices=tuple(mode.value for mode in Mode),
    what="mode",
)
DEBUG = Flag("debug", "EGRESS_ROUTER_DEBUG", "Non-empty: log every step")
INTERFACE = Text("interface", "EGRESS_INTERFACE", "Egress interface in the pod; net1 for a Multus attachment", default="macvlan0")
MACVLAN_MASTER = Option(
    "macvlan_master", "EGRESS_MACVLAN_MASTER", "Node interface to create the egress macvlan on when it does not exist yet"
)
MACVLAN_MODE = Choice(
    "macvlan_mode",
    "EGRESS_MACVLAN_MODE",
    f"Mode of the macvlan created on the master: {' | '.join(MACVLAN_MODES)}",
    default="bridge",
    choices=MACVLAN_MODES,
    what="macvlan mode",
    fold_case=True,
)
HOST_NETNS = Text("host_netns", "EGRESS_HOST_NETNS", "The node's network namespace, for creating the macvlan", default="/proc/1/ns/net")
CLUSTER_NETWORKS = Option(
    "cluster_networks",
    VARIABLE,
    "CIDRs the pod's own connections reach through eth0 (cluster and Service networks), comma-separated",
)
NAT_BACKENDS = ("auto", "iptables", "nftables")
NAT_BACKEND = Choice(
    "nat_backend",
    "EGRESS_NAT_BACKEND",
    "How NAT and reply marks are installed: iptables (legacy xtables, python-iptables), nftables (libnftables),"
    " or auto: iptables where the kernel and the image have it, nftables otherwise",
    default="auto",
    choices=NAT_BACKENDS,
    what="NAT backend",
    fold_case=True,
)

PROBE_TIME = Duration(
    "probe_time",
    "EGRESS_ROUTER_PROBE_TIME",
    "How long init probes with ARP that no other host holds EGRESS_SOURCE before taking it (3 probes; 100ms to 10s)",
    default=1.0,
)
#: The probe's bounds: shorter could miss a slow host's answer; longer only delays the pod.
PROBE_TIME_RANGE = (0.1, 10.0)

#: Every option of `egress-router init`, in the order --help shows them.
INIT_OPTIONS = (
    SOURCE,
    SOURCE_INDEX,
    HOSTNAME,
    GATEWAY,
    DESTINATION,
    DESTINATION_FILE,
    MODE,
    DEBUG,
    INTERFACE,
    MACVLAN_MASTER,
    MACVLAN_MODE,
    HOST_NETNS,
    CLUSTER_NETWORKS,
    NAT_BACKEND,
    dataclasses.replace(
        METRICS_PORT,
        help="Port of /healthz, /readyz and /metrics in legacy mode; in init and unit-test modes only a port set here counts"
        " (give the monitor container's: the fallback then leaves it to the pod); off: none",
    ),
    SHUTDOWN_DELAY,  # legacy mode only: it stays running
    PROBE_TIME,
)

CHECK_INTERVAL = Duration(
    "check_interval", "EGRESS_ROUTER_MONITOR_INTERVAL", "How often the NAT rules are checked and put back if changed", default=10.0
)

#: Every option of `egress-router monitor`: init's (it keeps init's setup true) and how often it looks.
MONITOR_OPTIONS = (
    SOURCE,
    SOURCE_INDEX,
    HOSTNAME,
    GATEWAY,
    DESTINATION,
    dataclasses.replace(DESTINATION_FILE, help="File holding the redirect rules; re-applied whenever it changes"),
    INTERFACE,
    CLUSTER_NETWORKS,
    NAT_BACKEND,
    CHECK_INTERVAL,
    METRICS_PORT,
    SHUTDOWN_DELAY,
    DEBUG,
)


@dataclass(frozen=True)
class MacvlanRequest:
    """Create the egress interface ourselves: a macvlan on `master` in the node's namespace."""

    master: str
    mode: str
    host_netns: str


@dataclass(frozen=True)
class InitSettings:
    mode: Mode
    sources: Sources
    gateways: Gateways
    destinations: Destinations | None
    interface: str
    macvlan: MacvlanRequest | None
    debug: bool
    cluster_networks: tuple[IPNetwork, ...]
    #: legacy init and monitor serve /healthz, /readyz, /metrics there; init and unit-test modes only keep a port
    #: set explicitly (the monitor's) from the fallback and the redirect rules. Never DNATed.
    metrics_port: int | None = None
    nat_backend: str = "auto"  # one of NAT_BACKENDS; init/nat_backend.py resolves auto on the machine
    shutdown_delay: float = 0.0  # legacy init and monitor: unready this long after SIGTERM before they exit
    probe_time: float = PROBE_TIME.default_value()  # ARP probes for EGRESS_SOURCE before init takes it


def interface_name_problem(name: str) -> str | None:
    """The kernel's own rules for interface names (IFNAMSIZ and dev_valid_name)."""
    if not name:
        return "is empty"
    if len(name.encode()) > 15:
        return "is longer than 15 bytes"
    if name in (".", "..") or any(ch in name for ch in "/:") or any(ch.isspace() for ch in name):
        return "is not a valid interface name (no '/', ':' or spaces)"
    return None


def parse_probe_time(text: str | None) -> float:
    seconds = PROBE_TIME.parse(text)
    shortest, longest = PROBE_TIME_RANGE
    if not shortest <= seconds <= longest:
        raise ConfigError.single(PROBE_TIME.variable, f"must be from {render_duration(shortest)} to {render_duration(longest)}", text)
    return seconds


def metrics_port_problems(port: int | None, destinations: Destinations | None) -> list[Problem]:
    """The metrics port must stay the pod's own: no redirect rule may take it."""
    rules = destinations.rules if destinations is not None and port is not None else ()
    return [
        Problem(
            METRICS_PORT.variable,
            f"port {port} is redirected by {DESTINATION.variable} line {rule.line_no} too (move one of them, or set it to off)",
            str(port),
        )
        for rule in rules
        if rule.protocol == "tcp" and rule.local_port == port
    ]


def egress_problems(
    sources: Sources | None, gateways: Gateways | None, networks: tuple[IPNetwork, ...], pool: tuple[Span, ...] = ()
) -> list[Problem]:
    """Sources and gateways that do not fit together, or that a cluster network would take from the egress interface:
    with a pool, any address of it (the lowest such one), so that every pod says the same."""
    problems = family_problems(sources, gateways, SOURCE.variable, GATEWAY.variable) if sources and gateways else []
    egress = [(SOURCE.variable, s.ip, s.ip) for s in sources.values()] if sources and not pool else []
    egress += [(SOURCE.variable, span.first, span.last) for span in pool]
    egress += [(GATEWAY.variable, g, g) for g in gateways.values()] if gateways else []
    for network in networks:
        for name, first, last in egress:
            if first.version == network.version and int(first) <= int(network[-1]) and int(network[0]) <= int(last):
                address = max(first, network[0], key=int)
                problems.append(
                    Problem(CLUSTER_NETWORKS.variable, f"contains {name} {address}, which must stay on the egress interface", str(network))
                )
    return problems


def destinations_for(text: str | None, sources: Sources | None) -> Destinations:
    """EGRESS_DESTINATION for a router with `sources`: a destination of a family it has no address of is an error."""
    return parse_destinations(text, families=sources.families if sources else None)


def check_metrics_port(destinations: Destinations, port: int | None) -> Destinations:
    """`destinations` when no rule takes the metrics port (at start, and in every new version of the list file)."""
    problems = metrics_port_problems(port, destinations)
    if problems:
        raise ConfigError(problems)
    return destinations


def load_init_settings(
    *,
    source: str | None,
    gateway: str | None,
    destination: str | None,
    source_index: str | None = None,
    hostname: str | None = None,
    mode: str | None = None,
    interface: str | None = None,
    macvlan_master: str | None = None,
    macvlan_mode: str | None = None,
    host_netns: str | None = None,
    debug: str | None = None,
    cluster_networks: str | None = None,
    metrics_port: str | None = None,
    nat_backend: str | None = None,
    shutdown_delay: str | None = None,
    probe_time: str | None = None,
) -> InitSettings:
    """Validate every variable and raise one ConfigError listing all problems."""
    found = Collector()
    parsed = found.gather(
        {
            "mode": lambda: Mode(MODE.parse(mode)),
            "source": lambda: parse_sources(select_source(source, source_index, hostname)),  # a pool: this pod's address(es)
            "gateway": lambda: parse_gateways(gateway),
            "cluster_networks": lambda: parse_cluster_networks(cluster_networks),
            "metrics_port": lambda: METRICS_PORT.parse(metrics_port),
            "nat_backend": lambda: NAT_BACKEND.parse(nat_backend),
            "shutdown_delay": lambda: SHUTDOWN_DELAY.parse(shutdown_delay),
            "probe_time": lambda: parse_probe_time(probe_time),
        }
    )
    parsed_mode: Mode | None = parsed.get("mode")
    served = parsed_mode is not None and parsed_mode.serves_endpoints
    port: int | None = parsed.get("metrics_port") if served or (metrics_port and metrics_port.strip()) else None
    parsed_source: Sources | None = parsed.get("source")
    parsed_gateway: Gateways | None = parsed.get("gateway")
    pool = pool_spans(source) if parsed_source else ()  # a pool is checked whole, so that every pod says the same
    held = gateway_problems(pool, parsed_gateway.values()) if parsed_gateway else []
    for problem in held:
        found.add(problem)
    if held:
        parsed_source = None  # this pod's own address is not compared with the gateway again
    parsed_destinations: Destinations | None = None
    networks: tuple[IPNetwork, ...] = parsed.get("cluster_networks", ())
    for problem in egress_problems(parsed_source, parsed_gateway, networks, pool):
        found.add(problem)
    if parsed_mode is None or parsed_mode.installs_nat:
        parsed_destinations = found.gather({"destinations": lambda: destinations_for(destination, parsed_source)}).get("destinations")
    for problem in metrics_port_problems(port, parsed_destinations):
        found.add(problem)
    ifname = INTERFACE.parse(interface)
    reason = interface_name_problem(ifname)
    if reason:
        found.add(Problem(INTERFACE.variable, reason, ifname))
    if ifname == "eth0":
        found.add(Problem(INTERFACE.variable, "eth0 is the pod's cluster interface; the egress interface must be another one", ifname))
    kind: str = found.gather({"macvlan_mode": lambda: MACVLAN_MODE.parse(macvlan_mode)}).get("macvlan_mode", "")
    request = None
    if macvlan_master and macvlan_master.strip():
        master = macvlan_master.strip()
        reason = interface_name_problem(master)
        if reason:
            found.add(Problem(MACVLAN_MASTER.variable, reason, master))
        netns = HOST_NETNS.parse(host_netns)
        if not netns.startswith("/"):
            found.add(Problem(HOST_NETNS.variable, "must be an absolute path to a network namespace file", netns))
        request = MacvlanRequest(master, kind, netns)
    found.raise_if_any()
    assert parsed_mode and parsed_source and parsed_gateway
    return InitSettings(
        mode=parsed_mode,
        sources=parsed_source,
        gateways=parsed_gateway,
        destinations=parsed_destinations,
        interface=ifname,
        macvlan=request,
        debug=DEBUG.parse(debug),
        cluster_networks=networks,
        metrics_port=port,
        nat_backend=parsed["nat_backend"],
        shutdown_delay=parsed["shutdown_delay"],
        probe_time=parsed["probe_time"],
    )


@dataclass(frozen=True)
class MonitorSettings:
    init: InitSettings
    check_interval: float


def load_monitor_settings(*, check_interval: str | None = None, metrics_port: str | None = None, **given: str | None) -> MonitorSettings:
    """init's settings in mode `init` (the monitor keeps them true) and the check interval; all problems at once.
    The monitor serves the metrics port, so unset means the default, which mode `init` takes only when it is given."""
    served = metrics_port if metrics_port is not None and metrics_port.strip() else METRICS_PORT.shown_default
    found = Collector()
    values = found.gather(
        {
            "init": lambda: load_init_settings(mode="init", metrics_port=served, **given),
            "check_interval": lambda: CHECK_INTERVAL.parse(check_interval),
        }
    )
    found.raise_if_any()
    return MonitorSettings(**values)
