"""EGRESS_SOURCE as a pool: each pod takes the address at its index (EGRESS_SOURCE_INDEX, or HOSTNAME's ordinal)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from egress_router.cli import main
from egress_router.config.addresses import source_address_problem
from egress_router.config.errors import ConfigError
from egress_router.config.init_settings import load_init_settings, load_monitor_settings
from egress_router.config.source_pool import UNUSABLE_BLOCKS, hostname_ordinal, parse_pool, select_source, unusable_address

RANGE = "192.168.12.99-192.168.12.102/24"


def message(text: str, source_index: str | None = None, hostname: str | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        select_source(text, source_index, hostname)
    return str(caught.value)


@pytest.mark.parametrize(
    ("text", "index", "chosen"),
    [
        (RANGE, "0", "192.168.12.99/24"),
        (RANGE, "3", "192.168.12.102/24"),
        ("192.168.12.99-192.168.12.102", "1", "192.168.12.100"),
        ("192.168.12.99/24, 192.168.12.120/24,192.168.12.7/24", "2", "192.168.12.7/24"),
        ("10.0.0.1-10.0.0.3, 10.0.0.9-10.0.0.10", "4", "10.0.0.10"),  # items follow each other in the order given
        ("2001:db8::10-2001:db8::13/64", "2", "2001:db8::12/64"),
        ("2001:db8::ffff-2001:db8::1:1/64", "1", "2001:db8::1:0/64"),
        ("192.168.12.99 - 192.168.12.100 /24", "1", "192.168.12.100/24"),  # spaces around the parts
        # dual-stack: the same place in each family's pool, families in the order given
        ("192.168.12.99-192.168.12.100/24,2001:db8::10-2001:db8::11/64", "1", "192.168.12.100/24,2001:db8::11/64"),
        ("2001:db8::a,2001:db8::b,192.168.12.99-192.168.12.100", "0", "2001:db8::a,192.168.12.99"),
        ("192.168.12.99-192.168.12.99/24", None, "192.168.12.99/24"),  # a range of one address is that address
    ],
)
def test_the_pod_takes_the_address_at_its_index(text: str, index: str | None, chosen: str) -> None:
    assert select_source(text, index) == chosen


def test_a_hostname_given_as_the_pods_fqdn_gives_its_ordinal() -> None:  # setHostnameAsFQDN: true
    fqdn = "egress-http-proxy-1.egress-http-proxy-pods.default.svc.cluster.local"
    assert hostname_ordinal(fqdn) == 1
    assert select_source(RANGE, hostname=fqdn) == "192.168.12.100/24"
    assert hostname_ordinal("egress.default-2.svc") is None  # the ordinal ends the pod's name, not the domain
    assert message(RANGE, None, "egress-9.pods.svc") == (
        "HOSTNAME: ordinal 9 is past the end of the pool in EGRESS_SOURCE (4 addresses: ordinals 0-3; more replicas than"
        ' addresses?): "egress-9.pods.svc"'
    )


def test_the_ordinal_ending_the_hostname_is_the_index() -> None:
    assert select_source(RANGE, hostname="egress-router-2") == "192.168.12.101/24"
    assert select_source(RANGE, "0", hostname="egress-router-2") == "192.168.12.99/24"  # EGRESS_SOURCE_INDEX wins
    assert [hostname_ordinal(name) for name in ("web-0", "web-10", "a-b-7", "web-", "web", "web-01", "web-1a", "web-٣")] == [
        0,
        10,
        7,
        None,
        None,
        None,
        None,
        None,
    ]


@pytest.mark.parametrize("text", [None, "", "  ", "192.168.12.99", " 192.168.12.99/24 ", "192.168.12.99,2001:db8::1", "not an address"])
def test_without_a_pool_nothing_changes_and_no_index_is_needed(text: str | None) -> None:
    assert select_source(text, None, "egress-7d9f8-x2kq") == text  # a Deployment's pod name has no ordinal: fine here


@pytest.mark.parametrize(
    ("text", "index", "hostname", "expected"),
    [
        (RANGE, None, "egress-4", "HOSTNAME: ordinal 4 is past the end of the pool in EGRESS_SOURCE (4 addresses: ordinals 0-3;"),
        (RANGE, "9", None, "EGRESS_SOURCE_INDEX: ordinal 9 is past the end of the pool in EGRESS_SOURCE (4 addresses"),
        (RANGE, "-1", None, 'EGRESS_SOURCE_INDEX: must be a whole number from 0 to 1000000: "-1"'),
        (RANGE, None, "egress-7d9f8-x2kq", "HOSTNAME: no StatefulSet ordinal at its end (NAME-<number>)"),
        (RANGE, None, None, "EGRESS_SOURCE_INDEX: unspecified: EGRESS_SOURCE is a pool of 4 addresses; set EGRESS_SOURCE_INDEX"),
        (RANGE, " ", " ", "EGRESS_SOURCE_INDEX: unspecified"),
        ("192.168.12.99", "1", None, 'EGRESS_SOURCE_INDEX: EGRESS_SOURCE holds one address per family, no pool: the only index is 0: "1"'),
        (
            "192.168.12.102-192.168.12.99",
            "0",
            None,
            'EGRESS_SOURCE: the range runs backwards (its first address comes after its last): "192.168.12.102-192.168.12.99"',
        ),
        (
            "192.168.12.99-2001:db8::1",
            "0",
            None,
            'EGRESS_SOURCE: a range stays in one family (this one goes from IPv4 to IPv6): "192.168.12.99-2001:db8::1"',
        ),
        (
            "192.168.12.250-192.168.13.2/24",
            "0",
            None,
            'EGRESS_SOURCE: the range leaves its subnet 192.168.12.0/24 (both ends must be in it): "192.168.12.250-192.168.13.2/24"',
        ),
        ("192.168.12.250-192.168.12.255/24", "0", None, "EGRESS_SOURCE: the range holds 192.168.12.255, the broadcast address of"),
        ("192.168.12.0-192.168.12.3/24", "0", None, "EGRESS_SOURCE: the range holds 192.168.12.0, the network address of"),
        ("192.168.12.99/24-192.168.12.100", "0", None, "EGRESS_SOURCE: write a range's prefix once, after its last address (A-B/len)"),
        ("192.168.12.99,,192.168.12.100", "0", None, 'EGRESS_SOURCE: an empty item (two commas in a row, or one at an end): ""'),
        ("192.168.12.99,192.168.12.100,", "0", None, "EGRESS_SOURCE: an empty item"),
        (
            "192.168.12.99-192.168.12.102,192.168.12.100",
            "0",
            None,
            'EGRESS_SOURCE: 192.168.12.100 is in the pool twice (two pods would share it): "192.168.12.100"',
        ),
        (
            "192.168.12.99-192.168.12.100,2001:db8::1",
            "0",
            None,
            "EGRESS_SOURCE: a dual-stack pool needs as many addresses of each family (this one has 2 IPv4 and 1 IPv6)",
        ),
        ("192.168.12.99,192.168.012.100", "0", None, "EGRESS_SOURCE: not an IPv4 address (octet '012' has a leading zero"),
        ("192.168.12.99/33,192.168.12.100", "0", None, 'EGRESS_SOURCE: invalid prefix length (must be 0-32): "192.168.12.99/33"'),
        ("2001:db8::1-2001:db8::2/129", "0", None, "EGRESS_SOURCE: invalid prefix length (must be 0-128)"),
        ("2001:db8::1%eth0-2001:db8::2", "0", None, "EGRESS_SOURCE: not an IPv6 address (unexpected characters)"),
        ("2001:db8::1-2001:db8::g", "0", None, "EGRESS_SOURCE: not an IPv6 address ("),
    ],
)
def test_mistakes_are_one_line_naming_the_variable(text: str, index: str | None, hostname: str | None, expected: str) -> None:
    assert message(text, index, hostname).startswith(expected)


def test_every_problem_of_the_pool_at_once() -> None:
    assert message("300.1.1.1, 192.168.12.9-192.168.12.1, 192.168.12.99/x").splitlines() == [
        'EGRESS_SOURCE: not an IPv4 address (octet 300 out of range 0-255): "300.1.1.1"',
        'EGRESS_SOURCE: the range runs backwards (its first address comes after its last): "192.168.12.9-192.168.12.1"',
        'EGRESS_SOURCE: invalid prefix length (must be 0-32): "192.168.12.99/x"',
    ]


def test_the_pool_is_checked_with_every_other_variable() -> None:
    base = {"gateway": "192.168.12.1", "destination": "80 tcp 203.0.113.25", "mode": "init"}
    settings = load_init_settings(source="192.168.12.99-192.168.12.102/24", hostname="egress-1", **base)
    chosen = settings.sources.ipv4
    assert chosen is not None and str(chosen.interface) == "192.168.12.100/24" and chosen.has_prefix
    with pytest.raises(ConfigError) as caught:  # the pool's mistakes are reported with every other problem
        load_init_settings(source="192.168.12.0,192.168.12.1", source_index="0", **{**base, "mode": "nonsense"})
    assert [str(p) for p in caught.value.problems] == [
        'EGRESS_ROUTER_MODE: unknown mode (must be one of init, legacy, http-proxy, dns-proxy, unit-test): "nonsense"',
        'EGRESS_GATEWAY: must differ from every address of the pool in EGRESS_SOURCE (192.168.12.1 holds it): "192.168.12.1"',
    ]
    with pytest.raises(ConfigError, match='^EGRESS_SOURCE: the unspecified address cannot be used: "0.0.0.0"$'):
        load_init_settings(source="0.0.0.0,192.168.12.99", source_index="1", **base)  # the address parser's words


#: By the families of a pool (46: dual-stack), a gateway and a destination that fit it.
GATEWAYS = {4: "192.168.12.1", 6: "2001:db8::ff", 46: "192.168.12.1,2001:db8::ff"}
DESTINATIONS = {4: "80 tcp 203.0.113.25", 6: "80 tcp 2001:db8:ff::25", 46: "80 tcp 203.0.113.25"}


def outcomes(source: str, size: int, version: int = 4, gateway: str | None = None, networks: str | None = None) -> set[str]:
    """What each index of a pool of `size` gets from init: "ok", or its error message."""
    found = set()
    for index in range(size):
        given = {
            "gateway": gateway or GATEWAYS[version],
            "destination": DESTINATIONS[version],
            "mode": "unit-test",
            "cluster_networks": networks,
        }
        try:
            load_init_settings(source=source, hostname=f"egress-{index}", **given)
            found.add("ok")
        except ConfigError as error:
            found.add(str(error))
    return found


@pytest.mark.parametrize(
    ("source", "size", "version", "expected"),
    [
        (
            "192.168.12.99/24,192.168.12.255/24",
            2,
            4,
            'EGRESS_SOURCE: 192.168.12.255 is the broadcast address of 192.168.12.0/24: "192.168.12.255/24"',
        ),
        (
            "192.168.12.99/24,192.168.12.0/24",
            2,
            4,
            'EGRESS_SOURCE: 192.168.12.0 is the network address of 192.168.12.0/24: "192.168.12.0/24"',
        ),
        (
            "192.168.12.1-192.168.12.3/24",
            3,
            4,
            "EGRESS_GATEWAY: must differ from every address of the pool in EGRESS_SOURCE (192.168.12.1-192.168.12.3/24 holds it):"
            ' "192.168.12.1"',
        ),
        (
            "192.168.12.99,192.168.12.1",
            2,
            4,
            'EGRESS_GATEWAY: must differ from every address of the pool in EGRESS_SOURCE (192.168.12.1 holds it): "192.168.12.1"',
        ),
        (
            "2001:db8::-2001:db8::2/64",
            3,
            6,
            'EGRESS_SOURCE: the range holds 2001:db8::, the subnet-router anycast address of 2001:db8::/64: "2001:db8::-2001:db8::2/64"',
        ),
        (
            "2001:db8::10/64,2001:db8::/64",
            2,
            6,
            'EGRESS_SOURCE: 2001:db8:: is the subnet-router anycast address of 2001:db8::/64: "2001:db8::/64"',
        ),
        (
            "192.168.12.99/24,192.168.12.100/8",
            2,
            4,
            "EGRESS_SOURCE: every address of a pool takes the same prefix length, so that its pods share one subnet"
            ' (192.168.12.99/24 has /24, this one /8): "192.168.12.100/8"',
        ),
        (
            "192.168.12.99-192.168.12.100/24,192.168.12.101",
            3,
            4,
            "EGRESS_SOURCE: every address of a pool takes the same prefix length, so that its pods share one subnet"
            ' (192.168.12.99-192.168.12.100/24 has /24, this one none): "192.168.12.101"',
        ),
        (
            "192.168.12.99/24,192.168.13.99/24",
            2,
            4,
            'EGRESS_SOURCE: the pool leaves its subnet 192.168.12.0/24 (every address must be in it): "192.168.13.99/24"',
        ),
        (
            "192.168.12.99-192.168.12.100/0",
            2,
            4,
            'EGRESS_SOURCE: prefix length 0 would put the whole Internet on-link: "192.168.12.99-192.168.12.100/0"',
        ),
        ("192.168.12.99,224.0.0.1", 2, 4, 'EGRESS_SOURCE: a multicast address cannot be used: "224.0.0.1"'),
        (
            "126.255.255.254-127.0.0.1",
            4,
            4,
            'EGRESS_SOURCE: the range holds 127.0.0.0: a loopback address cannot be used: "126.255.255.254-127.0.0.1"',
        ),
        (
            "2001:db8::10,fe80::1",
            2,
            6,
            "EGRESS_SOURCE: a link-local address cannot be the egress address (it never leaves the link; use a global or ULA"
            ' address): "fe80::1"',
        ),
        (  # a range of 2**64 - 2 addresses, checked per item: no loop over its members
            "2001:db8::1-2001:db8::ffff:ffff:ffff:fffe/64",
            4,
            6,
            "EGRESS_GATEWAY: must differ from every address of the pool in EGRESS_SOURCE"
            ' (2001:db8::1-2001:db8::ffff:ffff:ffff:fffe/64 holds it): "2001:db8::ff"',
        ),
        (
            "192.168.12.99-192.168.12.100/24,2001:db8::-2001:db8::1/64",
            2,
            46,
            'EGRESS_SOURCE: the range holds 2001:db8::, the subnet-router anycast address of 2001:db8::/64: "2001:db8::-2001:db8::1/64"',
        ),
    ],
)
def test_a_bad_address_anywhere_in_the_pool_is_refused_by_every_pod_alike(source: str, size: int, version: int, expected: str) -> None:
    assert outcomes(source, size, version) == {expected}


def test_a_huge_range_costs_no_more_than_one_address() -> None:
    source = "2001:db8::1-2001:db8::ffff:ffff:ffff:fffe/64"
    assert select_source(source, "999999") == "2001:db8::f:4240/64"
    assert outcomes(source, 3, 6, gateway="2001:db8:1::1") == {"ok"}


def test_the_monitor_takes_the_same_address_as_init() -> None:
    given = {"source": RANGE, "gateway": "192.168.12.1", "destination": "80 tcp 203.0.113.25", "hostname": "egress-3"}
    assert load_monitor_settings(**given).init.sources == load_init_settings(mode="init", **given).sources


def test_init_in_unit_test_mode_shows_the_address_the_pod_takes() -> None:
    env = {"EGRESS_SOURCE": RANGE, "EGRESS_GATEWAY": "192.168.12.1", "EGRESS_DESTINATION": "80 tcp 203.0.113.25"}
    result = CliRunner().invoke(main, ["init"], env={**env, "EGRESS_ROUTER_MODE": "unit-test", "HOSTNAME": "egress-2"})
    assert result.exit_code == 0, result.output
    assert "--to-source 192.168.12.101" in result.stdout
    result = CliRunner().invoke(main, ["init", "--source-index", "7"], env={**env, "EGRESS_ROUTER_MODE": "unit-test"})
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (
        "egress-router init: error: EGRESS_SOURCE_INDEX: ordinal 7 is past the end of the pool in EGRESS_SOURCE (4 addresses:"
        ' ordinals 0-3; more replicas than addresses?): "7"\n'
    )


# properties ---------------------------------------------------------------------------------------------------------


@st.composite
def pools(draw: st.DrawFn, version: int) -> tuple[str, list[str]]:
    """A pool's text (single addresses and ranges, in any order) and every address of it, in the order written."""
    low, span = (1, 127 << 24) if version == 4 else (0x20010DB8 << 96, 2**32)  # IPv4 below 127.0.0.0/8: no unusable address
    cursor = draw(st.integers(low, low + span - 20_000))
    items = []
    for gap in draw(st.lists(st.integers(0, 400), min_size=1, max_size=6)):
        first = IPv4Address(cursor + gap) if version == 4 else IPv6Address(cursor + gap)
        length = draw(st.integers(1, 5))
        last = first + (length - 1)
        text = str(first) if length == 1 and draw(st.booleans()) else f"{first}-{last}"
        items.append((text, [str(first + i) for i in range(length)]))
        cursor = int(last) + 1
    items = draw(st.permutations(items))
    return ", ".join(text for text, _ in items), [member for _, members in items for member in members]


@given(pools(4) | pools(6))
def test_every_index_takes_its_own_address_and_together_they_are_the_pool(pool: tuple[str, list[str]]) -> None:
    text, members = pool
    if len(members) == 1:
        return
    assert [select_source(text, str(index)) for index in range(len(members))] == members  # in the order written, each once
    with pytest.raises(ConfigError, match="^EGRESS_SOURCE_INDEX: ordinal .* is past the end of the pool"):
        select_source(text, str(len(members)))


@given(pools(4), st.from_regex(r"\A[a-z]([a-z0-9-]{0,20}[a-z0-9])?\Z"))
def test_a_statefulset_pod_takes_the_address_at_its_ordinal_with_the_prefix_written(pool: tuple[str, list[str]], name: str) -> None:
    text, members = pool
    if len(members) == 1:
        return
    written = ",".join(f"{item}/32" for item in text.split(","))
    for ordinal in range(len(members)):
        assert select_source(written, hostname=f"{name}-{ordinal}") == f"{members[ordinal]}/32"


@given(st.text(alphabet="0123456789abcdef.:-/, %x", max_size=60), st.none() | st.text(max_size=8), st.none() | st.text(max_size=12))
def test_any_text_gives_one_address_per_family_or_a_config_error(text: str, index: str | None, hostname: str | None) -> None:
    try:
        chosen = select_source(text, index, hostname)
    except ConfigError as error:
        assert all(p.variable in ("EGRESS_SOURCE", "EGRESS_SOURCE_INDEX", "HOSTNAME") for p in error.problems)
        return
    if chosen == text:
        return
    assert chosen is not None
    families = [ip_address(item.split("/")[0]).version for item in chosen.split(",")]
    assert len(families) == len(set(families))


def test_parse_pool_keeps_families_in_the_order_given() -> None:
    pool = parse_pool("2001:db8::1-2001:db8::2/64, 192.168.12.1-192.168.12.2")
    assert [version for version, _ in pool.families] == [6, 4] and pool.size == 2
    assert pool.families[1][1][0].first == IPv4Address("192.168.12.1")


#: Where random pools are drawn from: a window across subnet edges, the prefixes written, and the gateway's window.
WINDOWS = {
    4: (int(IPv4Address("192.168.11.250")), 24, (None, 8, 23, 24, 25, 30, 31, 32, 0)),
    6: (int(IPv6Address("2001:db8::fffa")), 24, (None, 64, 112, 113, 126, 127, 128, 0)),
}


@st.composite
def bad_or_good_pools(draw: st.DrawFn) -> tuple[str, int, int, str, str | None]:
    """A pool (text, size, family) near subnet edges, its items mostly sharing one prefix, a gateway near it, and
    maybe a cluster network near it."""
    version = draw(st.sampled_from((4, 6)))
    low, width, prefixes = WINDOWS[version]
    make = IPv4Address if version == 4 else IPv6Address
    common = draw(st.sampled_from(prefixes))
    items, size = [], 0
    for _ in range(draw(st.integers(1, 4))):
        first, length = draw(st.integers(low, low + width)), draw(st.integers(1, 4))
        prefix = draw(st.sampled_from(prefixes)) if draw(st.integers(0, 5)) == 0 else common
        shown = "" if prefix is None else f"/{prefix}"
        text = f"{make(first)}{shown}" if length == 1 and draw(st.booleans()) else f"{make(first)}-{make(first + length - 1)}{shown}"
        items.append(text)
        size += length
    gateway = str(make(draw(st.integers(low, low + width))))
    around = make(draw(st.integers(low, low + width)))
    network = str(ip_network(f"{around}/{around.max_prefixlen - draw(st.integers(0, 3))}", strict=False))
    return ",".join(items), size, version, gateway, draw(st.none() | st.just(network))


@given(bad_or_good_pools())
def test_every_pod_of_a_pool_is_accepted_or_every_pod_is_refused_alike(pool: tuple[str, int, int, str, str | None]) -> None:
    assert len(outcomes(*pool)) == 1


@given(st.sampled_from((4, 6)), st.integers(0, 2**32 - 1), st.integers(0, 2**64))
def test_the_unusable_blocks_are_exactly_the_addresses_no_pod_may_take(version: int, low: int, high: int) -> None:
    """Checked at every block's edges and at random addresses (IPv6 drawn over its whole space by the high bits)."""

    def blocked(address: IPv4Address | IPv6Address) -> bool:
        return any(address in block for block in UNUSABLE_BLOCKS[version])  # type: ignore[operator]

    make = IPv4Address if version == 4 else IPv6Address
    top = 2**32 if version == 4 else 2**128
    edges = [int(edge) + step for block in UNUSABLE_BLOCKS[version] for edge in (block[0], block[-1]) for step in (-1, 0, 1)]
    randoms = [low, low * 2**96 + high] if version == 6 else [low]
    for number in edges + randoms:
        if 0 <= number < top:
            address = make(number)
            assert blocked(address) == (source_address_problem(address) is not None), address


@given(st.sampled_from((4, 6)), st.integers(0, 40), st.integers(0, 40))
def test_a_span_is_checked_as_each_of_its_addresses_would_be(version: int, before: int, length: int) -> None:
    """Around each block's first address, the lowest bad address of a span is found without looking at every one."""
    make = IPv4Address if version == 4 else IPv6Address
    for block in UNUSABLE_BLOCKS[version]:
        first = max(int(block[0]) - before, 0)
        last = min(first + length, int(block[-1]))
        lowest = next((make(n) for n in range(first, last + 1) if source_address_problem(make(n))), None)
        found = unusable_address(make(first), make(last))
        assert (found[0] if found else None) == lowest
