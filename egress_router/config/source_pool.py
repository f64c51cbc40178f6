"""EGRESS_SOURCE as a pool: several addresses of a family (a list, or a range `A-B`), each pod taking one.

A pure step before the address parser: from the raw text and the pod's index (EGRESS_SOURCE_INDEX, else the
StatefulSet ordinal that ends HOSTNAME) it gives back the text of exactly one address per family, which
`config/addresses.py` then parses as if the pod had been given that address alone. Text with one address per
family is no pool: it comes back unchanged and needs no index. The pool is checked as a whole (every address,
duplicates, ranges, equal sizes per family, and the address parser's rules for every address, reasoned per item so a
range of billions costs no more than one address) in every pod, so a mistake shows in the first pod that starts,
whatever its index.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

from egress_router.config.addresses import IPAddress, IPNetwork, ipv4_problem, source_address_problem, subnet_edges
from egress_router.config.errors import Collector, ConfigError, Problem
from egress_router.config.values import parse_count

VARIABLE = "EGRESS_SOURCE"
GATEWAY_VARIABLE = "EGRESS_GATEWAY"
INDEX_VARIABLE = "EGRESS_SOURCE_INDEX"
HOSTNAME_VARIABLE = "HOSTNAME"
FAMILY_NAMES = {4: "IPv4", 6: "IPv6"}
MAX_PREFIX = {4: 32, 6: 128}
#: Far more than any pool; keeps the index's error message short and its number small.
MAX_INDEX = 1_000_000
#: The blocks of addresses that can never be an egress address (`source_address_problem`). The lowest such address of a
#: span is its first address or the first address of one of these blocks, so a span of any size is checked at a few places.
UNUSABLE_BLOCKS: dict[int, tuple[IPNetwork, ...]] = {
    4: tuple(IPv4Network(text) for text in ("0.0.0.0/32", "127.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4")),
    6: tuple(
        IPv6Network(text)
        for text in ("::/3", "4000::/2", "8000::/2", "c000::/3", "e000::/4", "f000::/5", "f800::/6", "fe00::/9", "fe80::/10", "ff00::/8")
    ),
}


@dataclass(frozen=True)
class Span:
    """One item of the text: a single address (first == last) or a range, the prefix written with it, and the item."""

    first: IPAddress
    last: IPAddress
    prefix: int | None
    text: str

    def holds(self, address: IPAddress) -> bool:
        return address.version == self.first.version and int(self.first) <= int(address) <= int(self.last)

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1

    def member(self, offset: int) -> str:
        """The address `offset` places after the first, as the address parser reads it."""
        address = self.first + offset
        return f"{address}/{self.prefix}" if self.prefix is not None else str(address)


@dataclass(frozen=True)
class Pool:
    """Each family's spans, in the order the text gives them; families in the order they first appear."""

    families: tuple[tuple[int, tuple[Span, ...]], ...]
    ranged: bool  # some item is a range: even a range of one address is turned into that address

    @property
    def size(self) -> int:
        """Addresses per family (every family has as many)."""
        return sum(span.size for span in self.families[0][1])

    def member(self, index: int) -> str:
        """The text of the `index`-th address of each family, comma-separated."""
        chosen = []
        for _, spans in self.families:
            offset = index
            for span in spans:
                if offset < span.size:
                    chosen.append(span.member(offset))
                    break
                offset -= span.size
        return ",".join(chosen)


def parse_address(text: str) -> IPAddress | str:
    """The address, or why it is not one: IPv4 as strictly as the address parser reads it, IPv6 when there is a colon."""
    if ":" not in text:
        problem = ipv4_problem(text)
        return problem if problem else IPv4Address(text)
    if "%" in text or not text.isascii() or any(ch.isspace() for ch in text):
        return "not an IPv6 address (unexpected characters)"
    try:
        return IPv6Address(text)
    except ValueError as error:
        return f"not an IPv6 address ({error})"


def parse_prefix(text: str, version: int) -> int | str:
    limit = MAX_PREFIX[version]
    if not text.isascii() or not text.isdigit() or len(text) > 3 or (len(text) > 1 and text.startswith("0")) or int(text) > limit:
        return f"invalid prefix length (must be 0-{limit})"
    return int(text)


def unusable_address(first: IPAddress, last: IPAddress) -> tuple[IPAddress, str] | None:
    """The lowest address from `first` to `last` (one family) that can never be an egress address, and why."""
    starts = (block.network_address for block in UNUSABLE_BLOCKS[first.version])
    for address in sorted([first, *(start for start in starts if int(first) < int(start) <= int(last))], key=int):
        reason = source_address_problem(address)
        if reason:
            return address, reason
    return None


def span_problem(first: IPAddress, last: IPAddress, prefix: int | None, ranged: bool) -> str | None:
    """Why an item (a range, or a single address: a span of one) holds an address no pod may take: the address
    parser's rules for one address, worded as it words them, applied to every address of the span at once."""
    if first.version != last.version:
        return f"a range stays in one family (this one goes from {FAMILY_NAMES[first.version]} to {FAMILY_NAMES[last.version]})"
    if int(first) > int(last):
        return "the range runs backwards (its first address comes after its last)"
    if prefix == 0:
        return "prefix length 0 would put the whole Internet on-link"
    unusable = unusable_address(first, last)
    if unusable:
        address, reason = unusable
        return f"the range holds {address}: {reason}" if ranged else reason
    if prefix is None or prefix >= MAX_PREFIX[first.version] - 1:
        return None  # host and point-to-point prefixes: each address alone, only the gateway on-link
    network = ip_network(f"{first}/{prefix}", strict=False)
    if last not in network:
        return f"the range leaves its subnet {network} (both ends must be in it)"
    for edge, kind in subnet_edges(network):
        if int(first) <= int(edge) <= int(last):
            return f"the range holds {edge}, the {kind} address of {network}" if ranged else f"{edge} is the {kind} address of {network}"
    return None


def parse_span(item: str) -> Span | str:
    """One comma-separated item: `A`, `A/len`, `A-B` or `A-B/len` (the prefix, written once, applies to each)."""
    if not item:
        return "an empty item (two commas in a row, or one at an end)"
    first_text, dash, rest = item.partition("-")
    last_text, slash, prefix_text = (rest if dash else item).partition("/")
    if not dash:
        first_text = last_text
    elif "/" in first_text:
        return "write a range's prefix once, after its last address (A-B/len)"
    first = parse_address(first_text.strip())
    if isinstance(first, str):
        return first
    last = parse_address(last_text.strip()) if dash else first
    if isinstance(last, str):
        return last
    prefix = parse_prefix(prefix_text.strip(), first.version) if slash else None
    if isinstance(prefix, str):
        return prefix
    problem = span_problem(first, last, prefix, ranged=bool(dash))
    return problem if problem else Span(first, last, prefix, item)


def overlap_problem(spans: list[Span]) -> Problem | None:
    """Two pods must never share an address: the first address given twice in one family, if any."""
    ordered = sorted(spans, key=lambda span: int(span.first))
    for before, after in zip(ordered, ordered[1:], strict=False):
        if int(after.first) <= int(before.last):
            return Problem(VARIABLE, f"{after.first} is in the pool twice (two pods would share it)", after.text)
    return None


def subnet_problem(spans: list[Span]) -> Problem | None:
    """The pods of one StatefulSet share one subnet: one family's items take the same prefix (or none), and with a
    subnet prefix every address lies in the first item's subnet."""
    first = spans[0]
    for span in spans[1:]:
        if span.prefix != first.prefix:
            given, this = ("none" if prefix is None else f"/{prefix}" for prefix in (first.prefix, span.prefix))
            return Problem(
                VARIABLE,
                f"every address of a pool takes the same prefix length, so that its pods share one subnet ({first.text} has"
                f" {given}, this one {this})",
                span.text,
            )
    if first.prefix is None or first.prefix >= MAX_PREFIX[first.first.version] - 1:
        return None
    network = ip_network(f"{first.first}/{first.prefix}", strict=False)
    for span in spans[1:]:
        if span.first not in network:
            return Problem(VARIABLE, f"the pool leaves its subnet {network} (every address must be in it)", span.text)
    return None


def parse_pool(text: str) -> Pool:
    """Every item of the comma-separated text; all problems at once."""
    found = Collector()
    families: dict[int, list[Span]] = {}
    items = [item.strip() for item in text.split(",")]
    for item in items:
        span = parse_span(item)
        if isinstance(span, str):
            found.add(Problem(VARIABLE, span, item))
        else:
            families.setdefault(span.first.version, []).append(span)
    for spans in families.values():
        for problem in (overlap_problem(spans), subnet_problem(spans)):
            if problem:
                found.add(problem)
    sizes = {version: sum(span.size for span in spans) for version, spans in families.items()}
    if len(set(sizes.values())) > 1:
        counts = " and ".join(f"{size} {FAMILY_NAMES[version]}" for version, size in sizes.items())
        found.add(Problem(VARIABLE, f"a dual-stack pool needs as many addresses of each family (this one has {counts})", text.strip()))
    found.raise_if_any()
    pool = tuple((version, tuple(spans)) for version, spans in families.items())
    return Pool(pool, ranged=any("-" in item for item in items))


def is_pool(text: str | None) -> bool:
    """Several addresses of a family, or a range: text with one address per family is the address parser's alone."""
    return text is not None and ("," in text or "-" in text)


def pool_spans(text: str | None) -> tuple[Span, ...]:
    """Every item of a pool of more than one address per family, for the checks that concern every pod; none for one
    address per family, which the address parser checks alone. `text` is an EGRESS_SOURCE that `select_source` accepted."""
    if text is None or not is_pool(text):
        return ()
    pool = parse_pool(text)
    return tuple(span for _, spans in pool.families for span in spans) if pool.size > 1 else ()


def gateway_problems(spans: tuple[Span, ...], gateways: Iterable[IPAddress]) -> list[Problem]:
    """No pod of a pool may take a gateway: each gateway some item of the pool holds."""
    problems = []
    for gateway in gateways:
        holder = next((span for span in spans if span.holds(gateway)), None)
        if holder is not None:
            reason = f"must differ from every address of the pool in {VARIABLE} ({holder.text} holds it)"
            problems.append(Problem(GATEWAY_VARIABLE, reason, str(gateway)))
    return problems


def hostname_ordinal(hostname: str) -> int | None:
    """A StatefulSet pod's ordinal: the number after the last '-' of its name (`egress-3` -> 3), also when HOSTNAME is
    the pod's FQDN (`setHostnameAsFQDN`: `egress-3.egress-pods.default.svc.cluster.local`)."""
    name = hostname.strip().partition(".")[0]
    _, dash, tail = name.rpartition("-")
    if not dash or not tail.isascii() or not tail.isdigit() or (len(tail) > 1 and tail.startswith("0")) or len(tail) > 7:
        return None
    return int(tail)


def pod_index(source_index: str | None, hostname: str | None, size: int) -> int:
    """Which address of a pool of `size` this pod takes: EGRESS_SOURCE_INDEX, else HOSTNAME's ordinal."""
    if source_index is not None and source_index.strip():
        index = parse_count(source_index.strip(), INDEX_VARIABLE, 0, MAX_INDEX)
        variable, shown = INDEX_VARIABLE, source_index.strip()
    elif hostname is not None and hostname.strip():
        ordinal = hostname_ordinal(hostname)
        if ordinal is None:
            raise ConfigError.single(
                HOSTNAME_VARIABLE,
                f"no StatefulSet ordinal at its end (NAME-<number>) to take an address of the pool in {VARIABLE} by;"
                f" run the router pods as a StatefulSet, or set {INDEX_VARIABLE}",
                hostname.strip(),
            )
        index, variable, shown = ordinal, HOSTNAME_VARIABLE, hostname.strip()
    else:
        raise ConfigError.single(
            INDEX_VARIABLE,
            f"unspecified: {VARIABLE} is a pool of {size} addresses; set {INDEX_VARIABLE} to this pod's place in it (0-{size - 1}),"
            f" or run the pods as a StatefulSet, whose HOSTNAME ends in the ordinal",
        )
    if index >= size == 1:
        raise ConfigError.single(variable, f"{VARIABLE} holds one address per family, no pool: the only index is 0", shown)
    if index >= size:
        raise ConfigError.single(
            variable,
            f"ordinal {index} is past the end of the pool in {VARIABLE} ({size} addresses: ordinals 0-{size - 1};"
            " more replicas than addresses?)",
            shown,
        )
    return index


def select_source(text: str | None, source_index: str | None = None, hostname: str | None = None) -> str | None:
    """EGRESS_SOURCE for this pod: one address per family. Text with one address per family is no pool: it comes
    back unchanged, for the address parser alone (an index, when given, must then be 0)."""
    given = source_index is not None and bool(source_index.strip())
    if text is None or not text.strip():
        return text
    if not is_pool(text):
        if given:
            pod_index(source_index, None, 1)
        return text
    pool = parse_pool(text)
    if pool.size == 1:
        index = pod_index(source_index, None, 1) if given else 0
        return pool.member(index) if pool.ranged else text
    return pool.member(pod_index(source_index, hostname, pool.size))
