"""EGRESS_DNS_PROXY_DESTINATION: `<local-port> <address-or-name> [<remote-port>]`, one a line."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from egress_router.config.addresses import unusable_host_reason
from egress_router.config.errors import ConfigError, Problem
from egress_router.config.hostnames import host_name_problem, normalize_host
from egress_router.config.ipv4_in_ipv6 import canonical
from egress_router.config.lines import BadLine, Line, meaningful_lines, port_or_bad

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


def _target(line: Line) -> Target:
    if len(line.fields) not in (2, 3):
        raise BadLine(f"expected '<local-port> <address-or-name> [<remote-port>]', got {len(line.fields)} field(s)")
    local = port_or_bad(line.fields[0])
    remote = port_or_bad(line.fields[2]) if len(line.fields) == 3 else local
    host = _host(line.fields[1])
    if host is None:
        raise BadLine(f"value '{line.fields[1]}' is invalid: not an IPv4/IPv6 address or a host name")
    if isinstance(host, str):
        return Target(local, host, None, remote, line.number)
    host = canonical(host)  # ::ffff:a.b.c.d is an IPv4 destination
    # An explicit loopback address is allowed: a relay to a sidecar in the pod is the admin's call.
    if host.is_loopback:
        reason = None
    elif isinstance(host, IPv4Address):
        reason = unusable_host_reason(host)
    elif host.is_link_local and host.scope_id is None:
        reason = f"a link-local address needs the interface it is on ({host}%net1)"
    else:
        reason = "the unspecified address cannot be used" if host.is_unspecified else None
        reason = "a multicast address cannot be used" if host.is_multicast else reason
    if reason:
        raise BadLine(f"value '{line.fields[1]}' is invalid: {reason}")
    return Target(local, str(host), host, remote, line.number)


def parse_targets(value: str | None, variable: str = VARIABLE) -> tuple[Target, ...]:
    if value is None or not value.strip():
        raise ConfigError.single(variable, "unspecified (give at least one line, e.g. '5432 db.example.com')")
    problems: list[Problem] = []
    targets: list[Target] = []
    seen: dict[int, int] = {}
    for line in meaningful_lines(value):
        try:
            target = _target(line)
            if target.local_port in seen:
                raise BadLine(f"localport {target.local_port} is already used on line {seen[target.local_port]}")
        except BadLine as error:
            problems.append(Problem(variable, str(error), line.text, line.number))
            continue
        seen[target.local_port] = line.number
        targets.append(target)
    if not targets and not problems:
        problems.append(Problem(variable, "no destination given (only blank lines and comments)"))
    if problems:
        raise ConfigError(problems)
    return tuple(targets)
