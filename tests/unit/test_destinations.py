import contextlib
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress_router.config.addresses import IPV4, IPV6
from egress_router.config.destinations import Fallback, PortRule, parse_destinations
from egress_router.config.errors import ConfigError


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_destinations(text)
    return [str(p) for p in caught.value.problems]


def test_full_grammar() -> None:
    text = """
    # redirect web and DNS
    80   tcp  203.0.113.25
    8080\tTCP\t203.0.113.26   80   # trailing comment
    53 udp 203.0.113.27
    53 tcp 203.0.113.27
    9000 Sctp 203.0.113.28 9001

    203.0.113.50   # fallback
    """
    parsed = parse_destinations(text)
    assert parsed.rules == (
        PortRule(80, "tcp", IPv4Address("203.0.113.25"), None, 3),
        PortRule(8080, "tcp", IPv4Address("203.0.113.26"), 80, 4),
        PortRule(53, "udp", IPv4Address("203.0.113.27"), None, 5),
        PortRule(53, "tcp", IPv4Address("203.0.113.27"), None, 6),
        PortRule(9000, "sctp", IPv4Address("203.0.113.28"), 9001, 7),
    )
    assert parsed.fallbacks.ipv4 == Fallback(IPv4Address("203.0.113.50"), 9) and parsed.fallbacks.ipv6 is None
    assert parsed.families == (IPV4,)


def test_fallback_alone_and_no_fallback() -> None:
    assert parse_destinations("203.0.113.50").rules == ()
    assert parse_destinations("80 tcp 203.0.113.25").fallbacks.values() == ()


def test_error_names_variable_line_and_text() -> None:
    assert problems("80 tcp 203.0.113.25\n\n800000 tcp 203.0.113.25") == [
        'EGRESS_DESTINATION line 3: invalid port 800000 (must be 1-65535): "800000 tcp 203.0.113.25"'
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0 tcp 203.0.113.25", "invalid port 0"),
        ("65536 tcp 203.0.113.25", "invalid port 65536"),
        ("-1 tcp 203.0.113.25", "invalid port -1"),
        ("80 tcp 203.0.113.25 99999", "invalid port 99999"),
        ("http tcp 203.0.113.25", "invalid port http"),
        ("80 icmp 203.0.113.25", "invalid protocol 'icmp'"),
        ("80 tcp 203.0.113.256", "octet 256 out of range"),
        ("80 tcp 203.0.113", "not an IPv4 address"),
        ("80 tcp example.com", "value 'example.com' is invalid"),
        ("80 tcp 010.0.0.1", "leading zero"),
        ("80 tcp 0.0.0.0", "unspecified"),
        ("80 tcp 127.0.0.1", "loopback"),
        ("80 tcp 224.0.0.1", "multicast"),
        ("80 tcp", "got 2 fields"),
        ("80 tcp 203.0.113.25 81 extra", "got 5 fields"),
        ("203.0.113.300", "octet 300 out of range"),
    ],
)
def test_bad_lines(text: str, reason: str) -> None:
    (message,) = problems(text)
    assert message.startswith("EGRESS_DESTINATION line 1: ")
    assert reason in message
    assert message.endswith(f'"{text}"')


def test_duplicate_local_port_per_protocol() -> None:
    assert problems("80 tcp 203.0.113.25\n80 udp 203.0.113.25\n80 TCP 203.0.113.26") == [
        'EGRESS_DESTINATION line 3: localport 80/tcp is already used on line 1: "80 TCP 203.0.113.26"'
    ]


def test_fallback_must_be_last_and_single() -> None:
    assert problems("203.0.113.50\n80 tcp 203.0.113.25") == [
        'EGRESS_DESTINATION line 2: fallback IP must be the last line (fallback given on line 1): "80 tcp 203.0.113.25"'
    ]
    assert "fallback IP must be the last line" in problems("203.0.113.50\n203.0.113.51")[0]


def test_ipv6_destinations() -> None:
    parsed = parse_destinations("80 tcp 2001:db8::5\n8080 tcp 2001:DB8::6 80\n2001:db8::50", families=(IPV6,))
    assert parsed.rules == (
        PortRule(80, "tcp", IPv6Address("2001:db8::5"), None, 1),
        PortRule(8080, "tcp", IPv6Address("2001:db8::6"), 80, 2),
    )
    assert parsed.fallbacks.ipv6 == Fallback(IPv6Address("2001:db8::50"), 3) and parsed.families == (IPV6,)


def test_dual_stack_a_port_once_per_family_and_a_fallback_per_family() -> None:
    text = "80 tcp 203.0.113.25\n80 tcp 2001:db8::25\n53 udp 2001:db8::27\n203.0.113.50\n2001:db8::50"
    parsed = parse_destinations(text, families=(IPV4, IPV6))
    assert [(r.local_port, r.family) for r in parsed.rules] == [(80, IPV4), (80, IPV6), (53, IPV6)]
    assert [r.line_no for r in parsed.rules_for(IPV6)] == [2, 3]
    assert [str(f.address) for f in parsed.fallbacks.values()] == ["203.0.113.50", "2001:db8::50"]
    assert problems("80 tcp 2001:db8::25\n80 TCP 2001:db8::26") == [
        'EGRESS_DESTINATION line 2: localport 80/tcp is already used for IPv6 on line 1: "80 TCP 2001:db8::26"'
    ]
    assert problems("2001:db8::50\n203.0.113.50\n2001:db8::51") == [
        'EGRESS_DESTINATION line 3: fallback IP must be the last line (fallback given on line 1): "2001:db8::51"'
    ]
    assert problems("2001:db8::50\n203.0.113.50\n80 tcp 203.0.113.25") == [
        'EGRESS_DESTINATION line 3: fallback IP must be the last line (fallback given on line 2): "80 tcp 203.0.113.25"'
    ]


def test_a_destination_of_a_family_the_router_lacks() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_destinations("80 tcp 203.0.113.25\n443 tcp 2001:db8::5 8443\n2001:db8::50", families=(IPV4,))
    assert [str(p) for p in caught.value.problems] == [
        "EGRESS_DESTINATION line 2: 2001:db8::5 is an IPv6 destination, but this router is IPv4-only (EGRESS_SOURCE has no IPv6"
        ' address): "443 tcp 2001:db8::5 8443"',
        "EGRESS_DESTINATION line 3: 2001:db8::50 is an IPv6 destination, but this router is IPv4-only (EGRESS_SOURCE has no IPv6"
        ' address): "2001:db8::50"',
    ]
    with pytest.raises(ConfigError, match="203.0.113.25 is an IPv4 destination, but this router is IPv6-only"):
        parse_destinations("80 tcp 203.0.113.25", families=(IPV6,))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("80 tcp ::1", "loopback"),
        ("80 tcp ff02::1", "multicast"),
        ("80 tcp ::", "unspecified"),
        ("80 tcp ::ffff:203.0.113.25", "IPv4-mapped"),
        ("80 tcp [2001:db8::5]", "not an IPv6 address"),
        ("80 tcp 2001:db8::5:80", None),  # eight groups: a valid address, not an address and a port
        ("80 tcp 2001:db8::5%eth0", "no %zone"),
    ],
)
def test_bad_ipv6_lines(text: str, reason: str | None) -> None:
    if reason is None:
        assert parse_destinations(text).rules[0].address == IPv6Address("2001:db8::5:80")
        return
    (message,) = problems(text)
    assert message.startswith("EGRESS_DESTINATION line 1: value '") and reason in message


def test_every_problem_is_reported_at_once() -> None:
    found = problems("0 tcp 203.0.113.25\n80 xyz 203.0.113.25\n80 tcp 1.2.3")
    assert [m.split(":")[0] for m in found] == ["EGRESS_DESTINATION line 1", "EGRESS_DESTINATION line 2", "EGRESS_DESTINATION line 3"]


@pytest.mark.parametrize("text", [None, "", "  \n\t\n", "# only a comment\n  # another"])
def test_empty_list(text: str | None) -> None:
    (message,) = problems(text)  # type: ignore[arg-type]
    assert message.startswith("EGRESS_DESTINATION: ")


# properties ----------------------------------------------------------------------------------

FIELD = st.one_of(
    st.integers(-5, 70000).map(str),
    st.sampled_from(["tcp", "udp", "sctp", "TCP", "icmp", "#", "203.0.113.25", "1.2.3.4.5", "256.1.1.1", "::1", ""]),
    st.text(max_size=8),
)
LINE = st.lists(FIELD, max_size=6).map(" ".join)


@given(st.lists(LINE, max_size=8).map("\n".join))
def test_any_input_parses_or_gives_a_located_error(text: str) -> None:
    try:
        parsed = parse_destinations(text)
    except ConfigError as error:
        for problem in error.problems:
            assert problem.variable == "EGRESS_DESTINATION"
            assert str(problem).startswith("EGRESS_DESTINATION")
            if problem.line_no is not None:
                assert problem.text is not None and problem.text in text.splitlines()[problem.line_no - 1]
        return
    keys = [(r.local_port, r.protocol, r.family) for r in parsed.rules]
    assert len(keys) == len(set(keys))
    assert all(1 <= r.local_port <= 65535 for r in parsed.rules)


@given(st.text())
def test_arbitrary_text_never_crashes(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_destinations(text)


VALID_RULE = st.tuples(
    st.integers(1, 65535),
    st.sampled_from(["tcp", "udp", "sctp", "Tcp", "UDP"]),
    st.ip_addresses(v=4).filter(
        lambda a: not (a.is_unspecified or a.is_loopback or a.is_multicast or a.is_reserved or str(a) == "255.255.255.255")
    ),
    st.one_of(st.none(), st.integers(1, 65535)),
    st.sampled_from([" ", "\t", "  \t "]),
)


@given(st.lists(VALID_RULE, max_size=10, unique_by=lambda r: (r[0], r[1].lower())))
def test_valid_rules_round_trip(rules: list) -> None:
    text = (
        "\n".join(sep.join([str(port), proto, str(addr)] + ([str(remote)] if remote else [])) for port, proto, addr, remote, sep in rules)
        or "# nothing"
    )
    if not rules:
        return
    parsed = parse_destinations(text)
    assert [(r.local_port, r.protocol, r.address, r.remote_port) for r in parsed.rules] == [
        (port, proto.lower(), addr, remote) for port, proto, addr, remote, _ in rules
    ]


VALID_RULE6 = st.tuples(
    st.integers(1, 65535),
    st.sampled_from(["tcp", "udp", "sctp"]),
    st.ip_addresses(v=6).filter(
        lambda a: not (a.is_unspecified or a.is_loopback or a.is_multicast or a.is_reserved or a.ipv4_mapped is not None)
    ),
    st.one_of(st.none(), st.integers(1, 65535)),
)


@given(
    st.lists(
        st.one_of(VALID_RULE6, VALID_RULE.map(lambda r: r[:4])),
        min_size=1,
        max_size=10,
        unique_by=lambda r: (r[0], r[1].lower(), r[2].version),
    )
)
def test_dual_stack_rules_round_trip(rules: list) -> None:
    text = "\n".join(" ".join([str(port), proto, str(addr)] + ([str(remote)] if remote else [])) for port, proto, addr, remote in rules)
    parsed = parse_destinations(text, families=(IPV4, IPV6))
    assert [(r.local_port, r.protocol, r.address, r.remote_port) for r in parsed.rules] == [
        (port, proto.lower(), addr, remote) for port, proto, addr, remote in rules
    ]
    for family in (IPV4, IPV6):
        assert all(r.family == family for r in parsed.rules_for(family))
