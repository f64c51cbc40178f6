"""EGRESS_DNS_PROXY_DESTINATION: `<local-port> <address-or-name> [<remote-port>]`, one a line."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from egress_router.config.addresses import unusable_host_reason
from egress_router.config.errors import ConfigError, Problem
from egress_router.config.hostnames import host_name_problem, normalize_host
from egress_router.config.lines import PORT_REASON, meaningful_lines, parse_port

VARIABLE = "EGRESS_DNS_PROXY_DESTINATION"


@dataclass(frozen=True)
class Target:
    """Connections to `local_port` are relayed to `host` (an address, or a name resolved as it changes)."""

    local_port: int
    host: str
    address: IPv4Address | IPv6Address | None
    remote_port: int
    line_no: int = 0

    @property
    def describe(self) -> str:
        host = f"[{self.host}]" if isinstance(self.address, IPv6Address) else self.host
        return f"{host}:{self.remote_port}"


def _host(text: str) -> IPv4Address | IPv6Address | str | None:
    """An address, a normalized name, or None when it is neither."""
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return ip_address(bare)
    except ValueError:
        pass
    name = normalize_host(text)
    return None if host_name_problem(name) else name


def parse_targets(value: str | None, variable: str = VARIABLE) -> tuple[Target, ...]:
    if value is None or not value.strip():
        raise ConfigError.single(variable, "unspecified (give at least one line, e.g. '5432 db.example.com')")
    problems: list[Problem] = []
    targets: list[Target] = []
    seen: dict[int, int] = {}
    for line in meaningful_lines(value):

        def bad(reason: str) -> None:
            problems.append(Problem(variable, reason, line.text, line.number))

        if len(line.fields) not in (2, 3):
            bad(f"expected '<local-port> <address-or-name> [<remote-port>]', got {len(line.fields)} field(s)")
            continue
        local = parse_port(line.fields[0])
        if local is None:
            bad(PORT_REASON.format(port=line.fields[0]))
            continue
        remote = local
        if len(line.fields) == 3:
            parsed_remote = parse_port(line.fields[2])
            if parsed_remote is None:
                bad(PORT_REASON.format(port=line.fields[2]))
                continue
            remote = parsed_remote
        host = _host(line.fields[1])
        if host is None:
            bad(f"value '{line.fields[1]}' is invalid: not an IPv4/IPv6 address or a host name")
            continue
        if not isinstance(host, str):
            # An explicit loopback address is allowed: a relay to a sidecar in the pod is the admin's call.
            reason = None if host.is_loopback else (unusable_host_reason(host) if isinstance(host, IPv4Address) else ("cannot be used" if host.is_unspecified or host.is_multicast else None))
            if reason:
                bad(f"value '{line.fields[1]}' is invalid: {reason}")
                continue
        if local in seen:
            bad(f"localport {local} is already used on line {seen[local]}")
            continue
        seen[local] = line.number
        address = None if isinstance(host, str) else host
        targets.append(Target(local, str(host), address, remote, line.number))
    if not targets and not problems:
        problems.append(Problem(variable, "no destination given (only blank lines and comments)"))
    if problems:
        raise ConfigError(problems)
    return tuple(targets)
