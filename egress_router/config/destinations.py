"""EGRESS_DESTINATION: which local ports are redirected to which external hosts.

A rule applies to connections arriving over its destination's family, so a dual-stack router may use a
(port, protocol) pair once per family and have a fallback per family.
"""

from __future__ import annotations

from dataclasses import dataclass

from egress_router.config.addresses import FAMILIES, FAMILY_NAMES, IPAddress, PerFamily, family_of, parse_ip, unusable_host_reason
from egress_router.config.errors import ConfigError, Problem
from egress_router.config.lines import BadLine, Line, meaningful_lines, port_or_bad

PROTOCOLS = ("tcp", "udp", "sctp")
VARIABLE = "EGRESS_DESTINATION"


@dataclass(frozen=True)
class PortRule:
    """Connections to `local_port`/`protocol` go to `address`:`remote_port`."""

    local_port: int
    protocol: str
    address: IPAddress
    remote_port: int | None = None
    line_no: int = 0

    @property
    def family(self) -> str:
        return family_of(self.address)


@dataclass(frozen=True)
class Fallback:
    """Every other port and protocol of its family goes to `address`."""

    address: IPAddress
    line_no: int = 0

    @property
    def family(self) -> str:
        return family_of(self.address)


@dataclass(frozen=True)
class Destinations:
    rules: tuple[PortRule, ...]
    fallbacks: PerFamily[Fallback] = PerFamily()

    def rules_for(self, family: str) -> tuple[PortRule, ...]:
        return tuple(rule for rule in self.rules if rule.family == family)

    @property
    def families(self) -> tuple[str, ...]:
        """The families the rules and fallbacks send to, in FAMILIES order."""
        used = {rule.family for rule in self.rules} | set(self.fallbacks.families)
        return tuple(f for f in FAMILIES if f in used)


def _address(text: str) -> IPAddress:
    address = parse_ip(text)
    reason = address if isinstance(address, str) else unusable_host_reason(address)
    if reason:
        raise BadLine(f"value '{text}' is invalid: {reason}")
    assert not isinstance(address, str)
    return address


def _rule(line: Line) -> PortRule | Fallback:
    """One line: a port rule, or a fallback address."""
    fields = line.fields
    if len(fields) == 1:
        return Fallback(_address(fields[0]), line.number)
    if len(fields) == 2 or len(fields) > 4:
        raise BadLine(
            f"expected '<local-port> <protocol> <address> [<remote-port>]' or a single fallback address, got {len(fields)} fields"
        )
    local_port = port_or_bad(fields[0])
    protocol = fields[1].lower()
    if protocol not in PROTOCOLS:
        raise BadLine(f"invalid protocol '{fields[1]}' (must be tcp, udp or sctp)")
    address = _address(fields[2])
    remote_port = port_or_bad(fields[3]) if len(fields) == 4 else None
    return PortRule(local_port, protocol, address, remote_port, line.number)


def _family_served(rule: PortRule | Fallback, families: tuple[str, ...] | None, source_variable: str) -> None:
    if families is None or rule.family in families:
        return
    name = FAMILY_NAMES[rule.family]
    only = " and ".join(FAMILY_NAMES[f] for f in families)
    raise BadLine(f"{rule.address} is an {name} destination, but this router is {only}-only ({source_variable} has no {name} address)")


def parse_destinations(
    value: str | None, variable: str = VARIABLE, *, families: tuple[str, ...] | None = None, source_variable: str = "EGRESS_SOURCE"
) -> Destinations:
    """Parse the whole list and report every bad line at once.

    `families`: the families the router has a source address of; a destination of another family is an error
    (None: not checked, when the sources themselves did not parse).
    """
    if value is None or not value.strip():
        raise ConfigError.single(variable, "unspecified (give at least one destination line, e.g. '80 tcp 203.0.113.25')")
    problems: list[Problem] = []
    rules: list[PortRule] = []
    seen: dict[tuple[int, str, str], int] = {}
    fallbacks: dict[str, Fallback] = {}
    lines = list(meaningful_lines(value))
    for line in lines:
        try:
            rule = _rule(line)
            if fallbacks and (isinstance(rule, PortRule) or rule.family in fallbacks):
                given = fallbacks.get(rule.family) or next(iter(fallbacks.values()))
                raise BadLine(f"fallback IP must be the last line (fallback given on line {given.line_no})")
            _family_served(rule, families, source_variable)
            if isinstance(rule, Fallback):
                fallbacks[rule.family] = rule
                continue
            key = (rule.local_port, rule.protocol, rule.family)
            if key in seen:
                also = " for IPv6" if rule.family != FAMILIES[0] else ""
                raise BadLine(f"localport {rule.local_port}/{rule.protocol} is already used{also} on line {seen[key]}")
        except BadLine as error:
            problems.append(Problem(variable, str(error), line.text, line.number))
            continue
        seen[key] = line.number
        rules.append(rule)
    if not lines:
        problems.append(Problem(variable, "no destination given (only blank lines and comments)"))
    if problems:
        raise ConfigError(problems)
    return Destinations(tuple(rules), PerFamily(*(fallbacks.get(f) for f in FAMILIES)))
