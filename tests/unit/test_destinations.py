import contextlib
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress_router.config.destinations import PortRule, parse_destinations
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
    assert parsed.fallback == IPv4Address("203.0.113.50")


def test_fallback_alone_and_no_fallback() -> None:
    assert parse_destinations("203.0.113.50").rules == ()
    assert parse_destinations("80 tcp 203.0.113.25").fallback is None


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
    keys = [(r.local_port, r.protocol) for r in parsed.rules]
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
