"""EGRESS_DESTINATION: which local ports are redirected to which external hosts."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from egress_router.config.addresses import parse_ipv4, unusable_host_reason
from egress_router.config.errors import ConfigError, Problem
from egress_router.config.lines import BadLine, Line, meaningful_lines, port_or_bad

PROTOCOLS = ("tcp", "udp", "sctp")
VARIABLE = "EGRESS_DESTINATION"


@dataclass(frozen=True)
class PortRule:
    """Connections to `local_port`/`protocol` go to `address`:`remote_port`."""

    local_port: int
    protocol: str
    address: IPv4Address
    remote_port: int | None = None
    line_no: int = 0


@dataclass(frozen=True)
class Destinations:
    rules: tuple[PortRule, ...]
    fallback: IPv4Address | None
    fallback_line: int = 0


def _address(text: str) -> IPv4Address:
    address = parse_ipv4(text)
    reason = address if isinstance(address, str) else unusable_host_reason(address)
    if reason:
        raise BadLine(f"value '{text}' is invalid: {reason}")
    assert isinstance(address, IPv4Address)
    return address


def _rule(line: Line) -> PortRule | IPv4Address:
    """One line: a port rule, or the fallback address."""
    fields = line.fields
    if len(fields) == 1:
        return _address(fields[0])
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


def parse_destinations(value: str | None, variable: str = VARIABLE) -> Destinations:
    """Parse the whole list and report every bad line at once."""
    if value is None or not value.strip():
        raise ConfigError.single(variable, "unspecified (give at least one destination line, e.g. '80 tcp 203.0.113.25')")
    problems: list[Problem] = []
    rules: list[PortRule] = []
    seen: dict[tuple[int, str], int] = {}
    fallback: IPv4Address | None = None
    fallback_line = 0
    lines = list(meaningful_lines(value))
    for line in lines:
        try:
            if fallback_line:
                raise BadLine(f"fallback IP must be the last line (fallback given on line {fallback_line})")
            rule = _rule(line)
            if isinstance(rule, IPv4Address):
                fallback, fallback_line = rule, line.number
                continue
            key = (rule.local_port, rule.protocol)
            if key in seen:
                raise BadLine(f"localport {rule.local_port}/{rule.protocol} is already used on line {seen[key]}")
        except BadLine as error:
            problems.append(Problem(variable, str(error), line.text, line.number))
            continue
        seen[key] = line.number
        rules.append(rule)
    if not lines:
        problems.append(Problem(variable, "no destination given (only blank lines and comments)"))
    if problems:
        raise ConfigError(problems)
    return Destinations(tuple(rules), fallback, fallback_line)
