from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress_router.config.errors import ConfigError
from egress_router.config.http_acl import parse_acl

LIST = """
# partner APIs
!10.0.0.0/8            # never the cluster's own networks
*.example.com
203.0.113.0/24
2001:db8::/32
!blocked.example.org
exact.example.org
127.0.0.1              # a local sidecar, explicitly
"""


def decide(acl_text: str, host: str | None, *addresses: str):  # type: ignore[no-untyped-def]
    return parse_acl(acl_text).decide(host, [ip_address(a) for a in addresses])


@pytest.mark.parametrize(
    ("host", "addresses", "allowed", "reason"),
    [
        ("api.example.com", ["198.51.100.7"], True, "line 4: *.example.com"),
        ("API.Example.COM.", ["198.51.100.7"], True, "line 4: *.example.com"),
        ("example.com", ["198.51.100.7"], False, "default deny"),  # the domain itself is not under itself
        ("evil.example.com", ["10.1.2.3"], False, "evil.example.com resolves to 10.1.2.3: line 3: !10.0.0.0/8"),
        ("api.example.com", ["198.51.100.7", "10.0.0.1"], False, "resolves to 10.0.0.1"),  # every address must pass
        (None, ["203.0.113.9"], True, "line 5: 203.0.113.0/24"),
        ("anything.test", ["203.0.113.9"], True, "line 5: 203.0.113.0/24"),
        (None, ["2001:db8::1"], True, "line 6: 2001:db8::/32"),
        ("blocked.example.org", ["198.51.100.1"], False, "line 7: !blocked.example.org"),
        ("exact.example.org", ["198.51.100.1"], True, "line 8: exact.example.org"),
        ("sub.exact.example.org", ["198.51.100.1"], False, "default deny"),
        (None, ["127.0.0.1"], True, "line 9: 127.0.0.1"),
        ("api.example.com", ["127.0.0.2"], False, "loopback"),
        ("api.example.com", ["169.254.169.254"], False, "link-local"),
        ("api.example.com", ["::ffff:127.0.0.1"], False, "loopback"),
        (None, ["0.0.0.0"], False, "default deny"),
    ],
)
def test_first_match_wins(host: str | None, addresses: list[str], allowed: bool, reason: str) -> None:
    decision = decide(LIST, host, *addresses)
    assert decision.allowed is allowed
    assert reason in decision.reason


def test_wildcard_allows_the_rest_but_not_special_addresses() -> None:
    text = "!*.internal.example\n*"
    assert decide(text, "x.org", "198.51.100.1").reason == "line 2: *"
    assert not decide(text, "a.internal.example", "198.51.100.1").allowed
    assert not decide(text, "metadata.x.org", "169.254.169.254").allowed
    assert not decide(text, None, "::1").allowed
    assert "x.org resolves to ::1: ::1 is loopback" in decide(text, "x.org", "::1").reason
    assert not decide(text, "x.org", "fe80::1").allowed
    assert not decide(text, "x.org").allowed  # nothing resolved


def test_names_denied_before_any_lookup() -> None:
    acl = parse_acl("!bad.org\nexample.com")
    assert acl.decide_before_lookup("BAD.org.") == acl.decide_before_lookup("bad.org")
    assert "line 1: !bad.org" in acl.decide_before_lookup("bad.org").reason  # type: ignore[union-attr]
    assert "default deny" in acl.decide_before_lookup("other.org").reason  # type: ignore[union-attr]
    assert acl.decide_before_lookup("example.com") is None
    assert parse_acl("10.0.0.0/8").decide_before_lookup("anything.org") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("*\nexample.com", 'line 2: Wildcard must be last rule, if present (wildcard on line 1): "example.com"'),
        ("example.com other.com", 'line 1: Bad destination: one rule a line: "example.com other.com"'),
        ("exa mple", "Bad destination"),
        ("ex_ample!.com", 'line 1: Bad destination: not a valid host name, address or CIDR: "ex_ample!.com"'),
        ("10.0.0.0/33", "not a valid address or CIDR"),
        ("10.0.0.1/8", "host bits set in CIDR (did you mean 10.0.0.0/8?)"),
        ("300.1.1.1", "not a valid address or CIDR"),
        ("1.2.3", "not a valid address"),
        ("*.*.example.com", "'*' may only be the first label"),
        ("ex*ample.com", "'*' may only stand alone"),
        ("!", "nothing after '!'"),
        ("!*", "'!*' is the default already"),
        ("-bad.example.com", "not a valid host name"),
    ],
)
def test_bad_lists(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_acl(text)
    assert message in str(caught.value)
    assert str(caught.value).startswith("EGRESS_HTTP_PROXY_DESTINATION")


@pytest.mark.parametrize("text", [None, "", "# nothing\n\n"])
def test_empty_list(text: str | None) -> None:
    with pytest.raises(ConfigError, match="EGRESS_HTTP_PROXY_DESTINATION: "):
        parse_acl(text)


@given(
    st.lists(
        st.one_of(
            st.text(max_size=20),
            st.sampled_from(
                [
                    "*",
                    "!",
                    "*.a.b",
                    "10.0.0.0/8",
                    "::/0",
                    "a.b",
                    "!x.y",
                    "!::ffff:10.0.0.0/104",
                    "[2001:db8::1]",
                    "!64:ff9b::/96",
                    "fe80::1%eth0",
                    "::ffff:1.2.3.4/120",
                ]
            ),
        ),
        max_size=8,
    ).map("\n".join)
)
def test_any_list_parses_or_explains(text: str) -> None:
    try:
        acl = parse_acl(text)
    except ConfigError as error:
        assert all(str(p).startswith("EGRESS_HTTP_PROXY_DESTINATION") for p in error.problems)
        return
    for address in ("198.51.100.1", "::ffff:10.1.2.3", "64:ff9b::10.1.2.3", "2001:db8::1"):
        acl.decide("a.b", [ip_address(address)])


@given(st.ip_addresses(), st.sampled_from(["x.example.com", None]))
def test_decide_is_total(address, host) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(parse_acl(LIST + "\n*").decide(host, [address]).reason, str)


V6_LIST = """
!2001:db8:bad::/48       # a denied IPv6 range inside an allowed one
2001:db8::/32
!::ffff:10.0.0.0/104     # written IPv4-mapped: the same rule as !10.0.0.0/8
!192.0.2.0/24
::1                      # a local sidecar over IPv6, explicitly
fe80::/10
*
"""


@pytest.mark.parametrize(
    ("host", "address", "allowed", "reason"),
    [
        (None, "2001:db8:bad::1", False, "2001:db8:bad::1: line 2: !2001:db8:bad::/48"),
        (None, "2001:db8:1::1", True, "line 3: 2001:db8::/32"),
        ("v6.example.com", "2001:db8:1::1", True, "line 3: 2001:db8::/32"),  # an address rule, whatever the name
        (None, "10.1.2.3", False, "10.1.2.3: line 4: !::ffff:10.0.0.0/104"),
        (None, "::ffff:10.1.2.3", False, "::ffff:a01:203 (IPv4 10.1.2.3): line 4: !::ffff:10.0.0.0/104"),
        ("x.test", "::ffff:192.0.2.7", False, "x.test resolves to ::ffff:c000:207 (IPv4 192.0.2.7): line 5: !192.0.2.0/24"),
        (
            "x.test",
            "64:ff9b::192.0.2.7",
            False,
            "x.test resolves to 64:ff9b::c000:207: line 5: !192.0.2.0/24 (it carries the IPv4 address 192.0.2.7)",
        ),
        ("x.test", "2002:c000:207::1", False, "line 5: !192.0.2.0/24 (it carries the IPv4 address 192.0.2.7)"),
        ("x.test", "::192.0.2.7", False, "line 5: !192.0.2.0/24 (it carries the IPv4 address 192.0.2.7)"),
        ("x.test", "64:ff9b::198.51.100.7", True, "line 8: *"),  # NAT64 to an address nothing denies
        (None, "::1", True, "line 6: ::1"),
        ("x.test", "::1", True, "line 6: ::1"),  # the address rule allows it, whatever the name
        ("x.test", "::2", True, "line 8: *"),  # ::0.0.0.2, IPv4-compatible: nothing denies 0.0.0.2
        (None, "fe80::1", True, "line 7: fe80::/10"),
        ("x.test", "::", False, ":: is loopback, link-local or unspecified"),
        ("x.test", "::ffff:127.0.0.1", False, "::ffff:7f00:1 (IPv4 127.0.0.1): 127.0.0.1 is loopback"),
        (
            "x.test",
            "64:ff9b::169.254.169.254",
            False,
            "64:ff9b::a9fe:a9fe carries the IPv4 address 169.254.169.254, which is loopback, link-local or unspecified",
        ),
    ],
)
def test_ipv6_rules_and_ipv6_spellings_of_ipv4(host: str | None, address: str, allowed: bool, reason: str) -> None:
    decision = decide(V6_LIST, host, address)
    assert decision.allowed is allowed
    assert reason in decision.reason


def test_a_name_with_both_families_needs_both_allowed() -> None:
    text = "!2001:db8:bad::/48\n*.example.com"
    assert decide(text, "a.example.com", "198.51.100.1", "2001:db8:1::1").allowed
    denied = decide(text, "a.example.com", "198.51.100.1", "2001:db8:bad::1")
    assert not denied.allowed and denied.reason == "a.example.com resolves to 2001:db8:bad::1: line 1: !2001:db8:bad::/48"


@pytest.mark.parametrize(
    ("text", "message"), [("2001:db8::1/32", "host bits set in CIDR (did you mean 2001:db8::/32?)"), ("2001:db8::/129", "not a valid")]
)
def test_bad_ipv6_rules(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        parse_acl(text)
