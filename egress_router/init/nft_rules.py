"""Our chain sets in nftables' terms: the JSON commands that install them, the text `nft` shows, and what the
kernel's listing says is there now. Pure; the libnftables edge is init/nft.py.

The layout, in a table the router owns (`ip egress_router`, `ip6 egress_router` for IPv6 chain sets):
* each chain of a ChainSet becomes a regular chain of the same name with the same rules, each rule counting
  what it matches (the monitor's metrics) just before its verdict;
* each built-in chain iptables would jump to it from becomes a base chain `<table>-<hook>` (`nat-prerouting`,
  `mangle-output`) at the priority of iptables' own table there, holding only the jumps.
Writing replaces exactly these chains in one batch, which the kernel applies as one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv6Address, ip_address
from typing import Any

from egress_router.init.plan import ChainSet, XtRule

TABLE = "egress_router"
NFT_FAMILIES = {"ipv4": "ip", "ipv6": "ip6"}
MARK_BITS = 0xFFFFFFFF

Expr = dict[str, Any]  # one statement of a rule, as libnftables' JSON has it


class Unsupported(ValueError):
    """A planned rule with no nftables form here: a programming error, found by the unit tests, never by users."""


def hook(type_: str, hook_: str, prio: int) -> dict[str, Any]:
    """A base chain's place, as libnftables lists it."""
    return {"type": type_, "hook": hook_, "prio": prio, "policy": "accept"}


#: iptables' (table, built-in chain) -> the base chain that stands for it: same hook, same priority as
#: iptables' own tables (mangle -150, nat -100 before routing and 100 after); mangle's OUTPUT re-routes a packet
#: whose mark changed, which in nftables is a `route` chain.
HOOKS = {
    ("nat", "PREROUTING"): hook("nat", "prerouting", -100),
    ("nat", "OUTPUT"): hook("nat", "output", -100),
    ("nat", "INPUT"): hook("nat", "input", 100),
    ("nat", "POSTROUTING"): hook("nat", "postrouting", 100),
    ("mangle", "PREROUTING"): hook("filter", "prerouting", -150),
    ("mangle", "INPUT"): hook("filter", "input", -150),
    ("mangle", "FORWARD"): hook("filter", "forward", -150),
    ("mangle", "OUTPUT"): hook("route", "output", -150),
    ("mangle", "POSTROUTING"): hook("filter", "postrouting", -150),
}
#: The names nft gives these priorities where they stand (`nft list` shows `priority dstnat`, not -100).
PRIORITY_NAMES = {("prerouting", -100): "dstnat", ("postrouting", 100): "srcnat"}


@dataclass(frozen=True)
class Chain:
    """One chain as it should be (wanted) or as the kernel lists it (found): its hook (None: a regular chain) and rules."""

    name: str
    hook: dict[str, Any] | None
    rules: tuple[tuple[Expr, ...], ...]


def nft_family(chains: ChainSet) -> str:
    try:
        return NFT_FAMILIES[chains.family]
    except KeyError:
        raise Unsupported(f"unknown address family {chains.family!r} (must be one of {', '.join(NFT_FAMILIES)})") from None


def base_chain_name(table: str, parent: str) -> str:
    return f"{table}-{parent.lower()}"


def layout(chains: ChainSet) -> tuple[Chain, ...]:
    """The chains a ChainSet becomes: its own chains with their rules, then one base chain per built-in chain."""
    ours = tuple(
        Chain(name, None, tuple(tuple(rule_exprs(rule)) for rule in chains.rules if rule.chain == name)) for name, _ in chains.chains
    )
    parents: list[str] = []
    for _, jumped_from in chains.chains:
        parents += [parent for parent in jumped_from if parent not in parents]
    bases = []
    for parent in parents:
        place = HOOKS.get((chains.table, parent))
        if place is None:
            raise Unsupported(f"no nftables hook for iptables chain {parent} of table {chains.table}")
        jumps = tuple(({"jump": {"target": name}},) for name, jumped_from in chains.chains if parent in jumped_from)
        bases.append(Chain(base_chain_name(chains.table, parent), place, jumps))
    return ours + tuple(bases)


# the planned rules, statement by statement ---------------------------------------------------------------------------


def _match(left: Expr, right: Any, op: str = "==") -> Expr:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> Expr:
    return {"meta": {"key": key}}


def _ct(key: str) -> Expr:
    return {"ct": {"key": key}}


def _number(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise Unsupported(f"{what} {text!r} is not a number") from None


def parse_mark(text: str) -> tuple[int, int]:
    """iptables' `value[/mask]` (mask defaults to all 32 bits)."""
    value, _, mask = text.partition("/")
    parsed = _number(value, "mark"), _number(mask, "mark mask") if mask else MARK_BITS
    if not all(0 <= n <= MARK_BITS for n in parsed):
        raise Unsupported(f"mark {text!r} does not fit 32 bits")
    return parsed


def parse_endpoint(text: str) -> tuple[str, int | None]:
    """A DNAT/SNAT target: `A.B.C.D`, `A.B.C.D:port`, an IPv6 address, or `[IPv6]:port`."""
    address, port = text, None
    if text.startswith("["):
        address, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise Unsupported(f"bad NAT target {text!r}")
        port = _number(rest[1:], "port") if rest else None
    elif text.count(":") == 1:
        address, _, given = text.partition(":")
        port = _number(given, "port")
    try:
        parsed = ip_address(address)
    except ValueError:
        raise Unsupported(f"bad NAT target {text!r}") from None
    if (text.startswith("[") or text.count(":") > 1) != isinstance(parsed, IPv6Address):
        raise Unsupported(f"bad NAT target {text!r}: IPv6 addresses with a port are written [address]:port")
    if port is not None and not 1 <= port <= 65535:
        raise Unsupported(f"bad port in NAT target {text!r}")
    return str(parsed), port


def format_endpoint(address: str, port: int | None) -> str:
    """The inverse of parse_endpoint, as nft writes it."""
    if port is None:
        return address
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def set_xmark(key: Expr, value: int, mask: int) -> Expr:
    """iptables' --set-xmark value/mask (mark = mark & ~mask ^ value), in the form nft lists it back in: when the value
    lies within the mask, nft writes the XOR as an OR and keeps the value's bits in the AND."""
    if mask == 0:
        raise Unsupported(f"--set-xmark {value:#x}/0 sets no bit")
    if mask == MARK_BITS:
        new: Any = value
    elif value & ~mask & MARK_BITS:
        new = {"^": [{"&": [key, ~mask & MARK_BITS]}, value]}
    else:
        keep = (~mask | value) & MARK_BITS
        if keep == MARK_BITS:
            new = {"|": [key, value]}
        elif value == 0:
            new = {"&": [key, keep]}
        else:
            new = {"|": [{"&": [key, keep]}, value]}
    return {"mangle": {"key": key, "value": new}}


def _mark_match(key: Expr, text: str) -> Expr:
    value, mask = parse_mark(text)
    return _match(key if mask == MARK_BITS else {"&": [key, mask]}, value)


def _port_match(protocol: str, options: dict[str, str]) -> list[Expr]:
    found = []
    for field in ("sport", "dport"):
        if field in options:
            found.append(_match({"payload": {"protocol": protocol, "field": field}}, _number(options.pop(field), "port")))
    return found


#: Connection states in the order of their bits, the order nft lists a set of them in.
CT_STATES = ("invalid", "established", "related", "new", "untracked")


def _conntrack_match(options: dict[str, str]) -> list[Expr]:
    found = []
    if "ctstate" in options:
        given = options.pop("ctstate")
        states = sorted({state.lower() for state in given.split(",")}, key=lambda s: CT_STATES.index(s) if s in CT_STATES else -1)
        if states[0] not in CT_STATES:
            raise Unsupported(f"unknown connection state in {given!r}")
        found.append(_match(_ct("state"), states[0] if len(states) == 1 else states, "in"))
    if "ctdir" in options:
        found.append(_match(_ct("direction"), options.pop("ctdir").lower()))
    return found


def _match_exprs(name: str, given: tuple[tuple[str, str], ...]) -> list[Expr]:
    options = dict(given)
    if name in ("tcp", "udp", "sctp"):
        found = _port_match(name, options)
    elif name == "conntrack":
        found = _conntrack_match(options)
    elif name in ("connmark", "mark") and "mark" in options:
        found = [_mark_match(_ct("mark") if name == "connmark" else _meta("mark"), options.pop("mark"))]
    else:
        found = []
    if options or not found:
        raise Unsupported(f"no nftables form for -m {name} {' '.join(f'--{k} {v}' for k, v in given)}")
    return found


_VERDICTS = {"RETURN": "return", "ACCEPT": "accept", "DROP": "drop"}


def _target_expr(rule: XtRule) -> Expr:
    options = dict(rule.target_options)
    if rule.target in _VERDICTS and not options:
        return {_VERDICTS[rule.target]: None}
    if rule.target in ("DNAT", "SNAT") and len(options) == 1:
        text = options.get("to-destination" if rule.target == "DNAT" else "to-source")
        if text is not None:
            address, port = parse_endpoint(text)
            return {rule.target.lower(): {"addr": address} if port is None else {"addr": address, "port": port}}
    if rule.target in ("CONNMARK", "MARK") and list(options) == ["set-xmark"]:
        return set_xmark(_ct("mark") if rule.target == "CONNMARK" else _meta("mark"), *parse_mark(options["set-xmark"]))
    raise Unsupported(f"no nftables form for -j {rule.target} {rule.target_options}")


def rule_exprs(rule: XtRule) -> list[Expr]:
    """One iptables rule as nftables statements: its matches, a counter, its verdict or NAT."""
    exprs: list[Expr] = []
    if rule.in_interface:
        exprs.append(_match(_meta("iifname"), rule.in_interface))
    if rule.out_interface:
        exprs.append(_match(_meta("oifname"), rule.out_interface))
    named = [name for name, _ in rule.matches]
    if rule.protocol and rule.protocol not in named:  # `tcp dport` carries its own protocol match
        exprs.append(_match(_meta("l4proto"), rule.protocol))
    for name, options in rule.matches:
        exprs += _match_exprs(name, options)
    exprs.append({"counter": None})
    exprs.append(_target_expr(rule))
    return exprs


# what the kernel lists -----------------------------------------------------------------------------------------------


def read_table(listing: list[Expr], family: str) -> dict[str, Chain]:
    """Every chain of our table in a `list table` answer (the items of its "nftables" array), rules in order."""
    chains: dict[str, Chain] = {}
    rules: dict[str, list[tuple[Expr, ...]]] = {}
    for item in listing:
        (kind, body), *_ = item.items()
        if not isinstance(body, dict) or body.get("family") != family or body.get("table", body.get("name")) != TABLE:
            continue
        if kind == "chain":
            hook = {key: body[key] for key in ("type", "hook", "prio", "policy") if key in body} or None
            chains[body["name"]] = Chain(body["name"], hook, ())
            rules.setdefault(body["name"], [])
        elif kind == "rule":
            rules.setdefault(body["chain"], []).append(tuple(body.get("expr", ())))
    return {name: Chain(name, chain.hook, tuple(rules[name])) for name, chain in chains.items()}


def _comparable(rule: tuple[Expr, ...]) -> tuple[Expr, ...]:
    """A rule without its counter's values (they move with traffic)."""
    return tuple({"counter": None} if "counter" in expr else expr for expr in rule)


def holds(found: dict[str, Chain], wanted: tuple[Chain, ...]) -> bool:
    """Whether the kernel's chains are already the wanted ones, rule for rule (counters aside)."""
    for chain in wanted:
        have = found.get(chain.name)
        if have is None or have.hook != chain.hook or len(have.rules) != len(chain.rules):
            return False
        if any(_comparable(a) != _comparable(b) for a, b in zip(have.rules, chain.rules, strict=True)):
            return False
    return True


def counters(found: dict[str, Chain], chains: ChainSet) -> list[tuple[int, int]] | None:
    """Packets and bytes of each planned rule, in the order of `chains.rules`; None when our chains do not hold them."""
    counts: list[tuple[int, int]] = []
    for name, _ in chains.chains:
        have = found.get(name)
        if have is None or len(have.rules) != sum(rule.chain == name for rule in chains.rules):
            return None
        for rule in have.rules:
            counter = next((expr["counter"] for expr in rule if "counter" in expr), None)
            if not isinstance(counter, dict):
                return None
            counts.append((int(counter.get("packets", 0)), int(counter.get("bytes", 0))))
    return counts


# writing ---------------------------------------------------------------------------------------------------------------


def write_batch(family: str, found: dict[str, Chain], wanted: dict[str, Chain | None]) -> list[Expr]:
    """Commands that make each chain named in `wanted` hold exactly it (None: the chain goes) in one transaction.

    Chains not named are left alone; when none is left at all, the table goes too. A base chain whose hook
    differs from the wanted one is made again (nft cannot move a chain to another hook).
    """
    table = {"family": family, "name": TABLE}

    def ref(name: str) -> Expr:
        return {"family": family, "table": TABLE, "name": name}

    others = [name for name in found if name not in wanted]
    if not others and all(chain is None for chain in wanted.values()):
        return [{"delete": {"table": table}}] if found else []
    remade = [name for name, chain in wanted.items() if name in found and (chain is None or (chain.hook != found[name].hook))]
    commands: list[Expr] = [{"add": {"table": table}}]
    for name in sorted(remade, key=lambda n: found[n].hook is None):  # base chains first: they hold the jumps
        commands += [{"flush": {"chain": ref(name)}}, {"delete": {"chain": ref(name)}}]
    for chain in sorted((c for c in wanted.values() if c is not None), key=lambda c: c.hook is not None):  # jump targets first
        commands.append({"add": {"chain": {**ref(chain.name), **(chain.hook or {})}}})
        if chain.name in found and chain.name not in remade:
            commands.append({"flush": {"chain": ref(chain.name)}})
        commands += [{"add": {"rule": {"family": family, "table": TABLE, "chain": chain.name, "expr": list(rule)}}} for rule in chain.rules]
    return commands


# text, for people ------------------------------------------------------------------------------------------------------


def _value_text(value: Any, hexadecimal: bool) -> str:
    if isinstance(value, list):  # flags (ct state), which nft writes comma-separated
        return ",".join(_value_text(v, hexadecimal) for v in value)
    if isinstance(value, int):
        return f"{value:#010x}" if hexadecimal else str(value)
    if isinstance(value, dict):
        return _operand_text(value)
    return str(value)


_BINARY = {"&": "&", "|": "|", "^": "^"}


def _operand_text(expr: Expr) -> str:
    (kind, body), *_ = expr.items()
    if kind == "meta":
        return body["key"] if body["key"] in ("iifname", "oifname") else f"meta {body['key']}"
    if kind == "ct":
        return f"ct {body['key']}"
    if kind == "payload":
        return f"{body['protocol']} {body['field']}"
    if kind in _BINARY:
        left, right = body
        return f"{_operand_text(left)} {_BINARY[kind]} {_value_text(right, True)}"
    raise Unsupported(f"no text for {expr}")


def _is_mark(expr: Expr) -> bool:
    """Marks are written in hexadecimal, ports and the rest in decimal."""
    (kind, body), *_ = expr.items()
    if kind in _BINARY:
        return _is_mark(body[0])
    return kind in ("meta", "ct") and body["key"] == "mark"


def hook_text(place: dict[str, Any]) -> str:
    prio = place["prio"]
    name = "mangle" if prio == -150 else PRIORITY_NAMES.get((place["hook"], prio), str(prio))
    return f"type {place['type']} hook {place['hook']} priority {name}; policy {place['policy']};"


def statement_text(expr: Expr) -> str:
    """One statement as `nft list` writes it (counters without their values)."""
    (kind, body), *_ = expr.items()
    if kind == "match":
        left, right = body["left"], body["right"]
        value = f'"{right}"' if isinstance(right, str) and left.get("meta", {}).get("key") in ("iifname", "oifname") else None
        op = " == " if any(k in _BINARY for k in left) else " "
        return f"{_operand_text(left)}{op}{value or _value_text(right, _is_mark(left))}"
    if kind == "counter":
        return "counter"
    if kind in ("dnat", "snat"):
        return f"{kind} to {format_endpoint(body['addr'], body.get('port'))}"
    if kind == "jump":
        return f"jump {body['target']}"
    if kind == "mangle":
        return f"{_operand_text(body['key'])} set {_value_text(body['value'], True)}"
    if body is None:
        return kind  # return, accept, drop
    raise Unsupported(f"no text for {expr}")


def render_text(chains: ChainSet) -> str:
    """Our part of the ruleset as `nft list table` shows it (and `nft -f` reads it)."""
    lines = [f"table {nft_family(chains)} {TABLE} {{"]
    for number, chain in enumerate(layout(chains)):
        if number:
            lines.append("")
        lines.append(f"\tchain {chain.name} {{")
        if chain.hook is not None:
            lines.append(f"\t\t{hook_text(chain.hook)}")
        lines += ["\t\t" + " ".join(statement_text(expr) for expr in rule) for rule in chain.rules]
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines)
