"""EGRESS_DESTINATION: which local ports are redirected to which external hosts."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from egress_router.config.addresses import parse_ipv4, unusable_host_reason
from egress_router.config.errors import ConfigError, Problem
from egress_router.config.lines import PORT_REASON, meaningful_lines, parse_port

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


def _parse_address(text: str, line_no: int, line: str, variable: str) -> IPv4Address | Problem:
    address = parse_ipv4(text)
    if isinstance(address, str):
        return Problem(variable, f"value '{text}' is invalid: {address}", line, line_no)
    reason = unusable_host_reason(address)
    if reason:
        return Problem(variable, f"value '{text}' is invalid: {reason}", line, line_no)
    return address


def parse_destinations(value: str | None, variable: str = VARIABLE) -> Destinations:
    """Parse the whole list and report every bad line at once."""
    if value is None or not value.strip():
        raise ConfigError.single(variable, "unspecified (give at least one destination line, e.g. '80 tcp 203.0.113.25')")
    problems: list[Problem] = []
    rules: list[PortRule] = []
    seen: dict[tuple[int, str], int] = {}
    fallback: IPv4Address | None = None
    fallback_line = 0
    any_line = False
    for line in meaningful_lines(value):
        any_line = True

        def bad(reason: str) -> None:
            problems.append(Problem(variable, reason, line.text, line.number))

        if fallback_line:
            bad(f"fallback IP must be the last line (fallback given on line {fallback_line})")
            continue
        fields = line.fields
        if len(fields) == 1:
            address = _parse_address(fields[0], line.number, line.text, variable)
            if isinstance(address, Problem):
                problems.append(address)
            else:
                fallback, fallback_line = address, line.number
            continue
        if len(fields) == 2 or len(fields) > 4:
            bad(f"expected '<local-port> <protocol> <address> [<remote-port>]' or a single fallback address, got {len(fields)} fields")
            continue
        port_text, protocol_text, address_text = fields[:3]
        local_port = parse_port(port_text)
        if local_port is None:
            bad(PORT_REASON.format(port=port_text))
            continue
        protocol = protocol_text.lower()
        if protocol not in PROTOCOLS:
            bad(f"invalid protocol '{protocol_text}' (must be tcp, udp or sctp)")
            continue
        address = _parse_address(address_text, line.number, line.text, variable)
        if isinstance(address, Problem):
            problems.append(address)
            continue
        remote_port = None
        if len(fields) == 4:
            remote_port = parse_port(fields[3])
            if remote_port is None:
                bad(PORT_REASON.format(port=fields[3]))
                continue
        key = (local_port, protocol)
        if key in seen:
            bad(f"localport {local_port}/{protocol} is already used on line {seen[key]}")
            continue
        seen[key] = line.number
        rules.append(PortRule(local_port, protocol, address, remote_port, line.number))
    if not any_line:
        problems.append(Problem(variable, "no destination given (only blank lines and comments)"))
    if problems:
        raise ConfigError(problems)
    return Destinations(tuple(rules), fallback)
