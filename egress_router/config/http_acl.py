"""EGRESS_HTTP_PROXY_DESTINATION: which hosts the HTTP proxy may reach, first match wins.

Pure: `Acl.decide` takes the requested host and the addresses it resolved to, and says yes or no
with the rule that decided, so the proxy connects to exactly the addresses that were checked.
IPv6 spellings of IPv4 addresses cannot get round an IPv4 rule (see ipv4_in_ipv6): an IPv4-mapped
address is its IPv4 address for every rule, and an address that carries an IPv4 address (NAT64, 6to4,
...) is denied by a deny rule or refused as loopback/link-local for either of its two addresses.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

from egress_router.config.addresses import IPAddress
from egress_router.config.errors import ConfigError, Problem
from egress_router.config.hostnames import host_name_problem, normalize_host
from egress_router.config.ipv4_in_ipv6 import canonical, canonical_network, embedded_ipv4
from egress_router.config.lines import meaningful_lines

VARIABLE = "EGRESS_HTTP_PROXY_DESTINATION"
IPNetwork = IPv4Network | IPv6Network


@dataclass(frozen=True)
class Rule:
    """One line of the list. Exactly one of network, name, domain is set, or none for `*`."""

    text: str
    line_no: int
    deny: bool = False
    network: IPNetwork | None = None
    name: str | None = None  # exact host name
    domain: str | None = None  # "*.example.com" stored as "example.com"

    def __str__(self) -> str:
        return f"line {self.line_no}: {self.text}"

    def matches_name(self, host: str) -> bool:
        if self.name is not None:
            return host == self.name
        if self.domain is not None:
            return host.endswith("." + self.domain)
        return False

    def matches_address(self, address: IPAddress) -> bool:
        return self.network is not None and address.version == self.network.version and address in self.network


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # the rule that decided, or why nothing allowed it
    line: int | None = None  # the list line that decided; None when none did (default deny, a special address)


def _special(address: IPAddress) -> bool:
    return address.is_loopback or address.is_link_local or address.is_unspecified


def special_reason(address: IPAddress) -> str | None:
    """Why the proxy must not reach `address` unless told to explicitly (itself, the node, cloud metadata), also
    through an IPv6 form that carries such an IPv4 address (`::ffff:127.0.0.1`, `64:ff9b::169.254.169.254`); else None."""
    address = canonical(address)
    if _special(address):
        return f"{address} is loopback, link-local or unspecified; only an address rule can allow it"
    carried = next((v4 for v4 in embedded_ipv4(address) if _special(v4)), None)
    if carried is not None:
        return (
            f"{address} carries the IPv4 address {carried}, which is loopback, link-local or unspecified; only an address rule can allow it"
        )
    return None


@dataclass(frozen=True)
class Acl:
    rules: tuple[Rule, ...]
    wildcard: Rule | None  # the final `*`, if any

    def _decide_one(self, host: str | None, address: IPAddress) -> Decision:
        """`address` is canonical; the IPv4 addresses it carries meet the deny rules too, in the same place."""
        carried = embedded_ipv4(address)
        for rule in self.rules:
            if rule.matches_address(address):
                return Decision(not rule.deny, str(rule), rule.line_no)
            if rule.deny and (hit := next((v4 for v4 in carried if rule.matches_address(v4)), None)) is not None:
                return Decision(False, f"{rule} (it carries the IPv4 address {hit})", rule.line_no)
            if host is not None and rule.matches_name(host):
                if not rule.deny and (special := special_reason(address)) is not None:
                    return Decision(False, special)
                return Decision(not rule.deny, str(rule), rule.line_no)
        if self.wildcard is not None:
            if (special := special_reason(address)) is not None:
                return Decision(False, special)
            return Decision(True, str(self.wildcard), self.wildcard.line_no)
        return Decision(False, "no rule allows it (default deny)")

    def decide(self, host: str | None, addresses: list[IPAddress]) -> Decision:
        """`host` is the requested name (None for an address literal); every address must be allowed."""
        if not addresses:
            return Decision(False, "no address to connect to")
        name = normalize_host(host) if host is not None else None
        first: Decision | None = None
        for given in addresses:
            address = canonical(given)
            decision = self._decide_one(name, address)
            if not decision.allowed:
                shown = f"{given}" if address == given else f"{given} (IPv4 {address})"
                shown = shown if name is None else f"{name} resolves to {shown}"
                return Decision(False, f"{shown}: {decision.reason}", decision.line)
            first = first or decision
        assert first is not None
        return first

    def decide_before_lookup(self, host: str) -> Decision | None:
        """A denial that needs no DNS lookup (a `!name` rule or nothing that could allow it), else None."""
        name = normalize_host(host)
        for rule in self.rules:
            if rule.network is not None:
                return None  # an address rule might decide: resolve and look
            if rule.matches_name(name):
                return None if not rule.deny else Decision(False, f"{name}: {rule}", rule.line_no)
        return None if self.wildcard is not None else Decision(False, f"{name}: no rule allows it (default deny)")


def _parse_rule(text: str, line_no: int) -> Rule | str:
    deny = text.startswith("!")
    body = text[1:].strip() if deny else text
    if not body:
        return "nothing after '!'"
    if "/" in body or ":" in body or body.replace(".", "").isdigit():
        try:
            network = ip_network(body.strip("[]"), strict=False) if "/" in body else ip_network(ip_address(body.strip("[]")))
        except ValueError as error:
            return f"not a valid address or CIDR ({error})"
        if "/" in body and ip_network(body, strict=False).network_address != ip_address(body.split("/")[0]):
            return f"host bits set in CIDR (did you mean {network}?)"
        return Rule(text, line_no, deny, network=canonical_network(network))
    name = normalize_host(body)
    under = name.startswith("*.")
    bare = name[2:] if under else name
    if "*" in bare:
        return (
            "'*' may only be the first label" if under else "'*' may only stand alone (last line) or as the first label ('*.example.com')"
        )
    problem = host_name_problem(bare)
    if problem:
        return problem
    return Rule(text, line_no, deny, domain=bare) if under else Rule(text, line_no, deny, name=bare)


def parse_acl(value: str | None, variable: str = VARIABLE) -> Acl:
    if value is None or not value.strip():
        raise ConfigError.single(variable, "unspecified (give at least one rule, e.g. 'example.com' or '*')")
    problems: list[Problem] = []
    rules: list[Rule] = []
    wildcard: Rule | None = None
    for line in meaningful_lines(value):
        if wildcard is not None:
            problems.append(
                Problem(variable, f"Wildcard must be last rule, if present (wildcard on line {wildcard.line_no})", line.text, line.number)
            )
            continue
        if len(line.fields) != 1:
            problems.append(Problem(variable, "Bad destination: one rule a line", line.text, line.number))
            continue
        text = line.fields[0]
        if text == "*":
            wildcard = Rule(text, line.number)
            continue
        if text == "!*":
            problems.append(Problem(variable, "Bad destination: '!*' is the default already (leave it out)", line.text, line.number))
            continue
        rule = _parse_rule(text, line.number)
        if isinstance(rule, str):
            problems.append(Problem(variable, f"Bad destination: {rule}", line.text, line.number))
        else:
            rules.append(rule)
    if not rules and wildcard is None and not problems:
        problems.append(Problem(variable, "no rule given (only blank lines and comments)"))
    if problems:
        raise ConfigError(problems)
    return Acl(tuple(rules), wildcard)
