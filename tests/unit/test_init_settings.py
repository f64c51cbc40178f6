import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress_router.config.errors import ConfigError
from egress_router.config.init_settings import MacvlanRequest, Mode, load_init_settings

BASE = {"source": "192.168.12.99", "gateway": "192.168.12.1", "destination": "80 tcp 203.0.113.25", "mode": "init"}


def load(**changes: str | None):  # type: ignore[no-untyped-def]
    return load_init_settings(**{**BASE, **changes})


def messages(**changes: str | None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(**changes)
    return [str(p) for p in caught.value.problems]


def test_defaults() -> None:
    settings = load(mode=None)
    assert settings.mode is Mode.LEGACY
    assert settings.interface == "macvlan0"
    assert settings.macvlan is None
    assert not settings.debug
    assert settings.probe_time == 1.0


@pytest.mark.parametrize("mode", ["http-proxy", "dns-proxy"])
def test_proxy_modes_need_no_destination(mode: str) -> None:
    settings = load(mode=mode, destination=None)
    assert settings.destinations is None
    assert not settings.mode.installs_nat


@pytest.mark.parametrize("mode", ["init", "legacy", "unit-test"])
def test_redirect_modes_need_a_destination(mode: str) -> None:
    assert messages(mode=mode, destination=None)[0].startswith("EGRESS_DESTINATION: unspecified")


def test_unknown_mode() -> None:
    assert messages(mode="proxy") == [
        'EGRESS_ROUTER_MODE: unknown mode (must be one of init, legacy, http-proxy, dns-proxy, unit-test): "proxy"'
    ]


def test_all_problems_at_once() -> None:
    found = messages(source="1.2.3", gateway=None, destination="0 tcp 1.2.3.4", interface="a/b", macvlan_mode="weird")
    assert [m.split(":")[0] for m in found] == [
        "EGRESS_SOURCE",
        "EGRESS_GATEWAY",
        "EGRESS_DESTINATION line 1",
        "EGRESS_INTERFACE",
        "EGRESS_MACVLAN_MODE",
    ]


def test_gateway_must_differ_from_source() -> None:
    assert messages(gateway="192.168.12.99") == ['EGRESS_GATEWAY: must differ from EGRESS_SOURCE: "192.168.12.99"']


@pytest.mark.parametrize(("name", "reason"), [("eth0", "cluster interface"), ("x" * 16, "longer than 15"), ("a b", "not a valid")])
def test_bad_interface(name: str, reason: str) -> None:
    (message,) = messages(interface=name)
    assert message.startswith("EGRESS_INTERFACE: ") and reason in message


def test_macvlan_request() -> None:
    settings = load(interface="net1", macvlan_master="ens3", macvlan_mode="Private")
    assert settings.interface == "net1"
    assert settings.macvlan == MacvlanRequest("ens3", "private", "/proc/1/ns/net")
    assert messages(macvlan_master="ens3", host_netns="proc/1/ns/net") == [
        'EGRESS_HOST_NETNS: must be an absolute path to a network namespace file: "proc/1/ns/net"'
    ]


def test_blank_is_unset_for_every_option_with_a_default() -> None:
    blank = load(mode=" ", interface="", macvlan_master="ens3", macvlan_mode="\t", host_netns=" ", probe_time=" ")
    assert blank == load(mode=None, macvlan_master="ens3")


@pytest.mark.parametrize(("text", "seconds"), [("100ms", 0.1), ("250ms", 0.25), ("2s", 2.0), ("10s", 10.0), ("7", 7.0)])
def test_probe_time(text: str, seconds: float) -> None:
    assert load(probe_time=text).probe_time == seconds


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("50ms", "must be from 100ms to 10s"),
        ("11s", "must be from 100ms to 10s"),
        ("1m", "must be from 100ms to 10s"),
        ("0", "must be more than zero"),
        ("soon", "not a duration (use e.g. 30, 30s, 500ms, 5m, 1h)"),
    ],
)
def test_bad_probe_time(text: str, reason: str) -> None:
    assert messages(probe_time=text) == [f'EGRESS_ROUTER_PROBE_TIME: {reason}: "{text}"']


def test_debug_is_any_non_empty_value() -> None:
    assert load(debug="1").debug and load(debug="false").debug
    assert not load(debug=" ").debug


@given(
    st.fixed_dictionaries(
        {
            k: st.one_of(st.none(), st.text(max_size=20))
            for k in (
                "source",
                "gateway",
                "destination",
                "mode",
                "interface",
                "macvlan_master",
                "macvlan_mode",
                "host_netns",
                "metrics_port",
                "probe_time",
            )
        }
    )
)
def test_any_environment_loads_or_lists_problems(values: dict[str, str | None]) -> None:
    try:
        load_init_settings(**values)
    except ConfigError as error:
        assert all(str(p).startswith("EGRESS_") for p in error.problems)


def test_dual_stack_settings() -> None:
    settings = load(
        source="192.168.12.99/24, 2001:db8:12::99/64",
        gateway="2001:db8:12::1,192.168.12.1",
        destination="80 tcp 203.0.113.25\n80 tcp 2001:db8::25\n203.0.113.50\n2001:db8::50",
    )
    assert settings.sources.families == ("ipv4", "ipv6") and str(settings.gateways.ipv6) == "2001:db8:12::1"
    assert settings.destinations is not None and settings.destinations.families == ("ipv4", "ipv6")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"gateway": "2001:db8:12::1"},
            [
                "EGRESS_GATEWAY: no IPv4 gateway for EGRESS_SOURCE's IPv4 address 192.168.12.99 (give one next hop of each family, comma-separated, e.g. 192.168.12.1,2001:db8::1)",
                'EGRESS_GATEWAY: 2001:db8:12::1 is an IPv6 gateway but EGRESS_SOURCE has no IPv6 address (it has IPv4); each gateway must match a source\'s family: "2001:db8:12::1"',
            ],
        ),
        (
            {"source": "192.168.12.99,192.168.12.98"},
            [
                "EGRESS_SOURCE_INDEX: unspecified: EGRESS_SOURCE is a pool of 2 addresses; set EGRESS_SOURCE_INDEX to this pod's place in it (0-1), or run the pods as a StatefulSet, whose HOSTNAME ends in the ordinal"  # two of one family: a pool (issue 11)
            ],
        ),
        (
            {"destination": "80 tcp 2001:db8::25"},
            [
                'EGRESS_DESTINATION line 1: 2001:db8::25 is an IPv6 destination, but this router is IPv4-only (EGRESS_SOURCE has no IPv6 address): "80 tcp 2001:db8::25"'
            ],
        ),
        (
            {"source": "2001:db8:12::99", "gateway": "2001:db8:12::1"},
            [
                'EGRESS_DESTINATION line 1: 203.0.113.25 is an IPv4 destination, but this router is IPv6-only (EGRESS_SOURCE has no IPv4 address): "80 tcp 203.0.113.25"'
            ],
        ),
    ],
    ids=["gateway-of-the-wrong-family", "two-sources-of-one-family", "ipv6-destination-ipv4-router", "ipv4-destination-ipv6-router"],
)
def test_family_mistakes(changes: dict[str, str], expected: list[str]) -> None:
    assert messages(**changes) == expected


def test_proxy_modes_check_families_but_need_no_destination() -> None:
    assert load(mode="http-proxy", destination=None, source="2001:db8:12::99", gateway="fe80::1").sources.families == ("ipv6",)


@pytest.mark.parametrize("index", ["0", "1", "2"])
def test_a_pool_holding_the_gateway_is_one_problem_in_every_pod(index: str) -> None:
    """Ordinal 0 takes the gateway itself: its pod too says it once, in the pool's words."""
    assert messages(source="192.168.12.1-192.168.12.3/24", source_index=index) == [
        'EGRESS_GATEWAY: must differ from every address of the pool in EGRESS_SOURCE (192.168.12.1-192.168.12.3/24 holds it): "192.168.12.1"'
    ]


@pytest.mark.parametrize(
    ("networks", "expected"),
    [
        (
            "192.168.12.100/32",
            'EGRESS_CLUSTER_NETWORKS: contains EGRESS_SOURCE 192.168.12.100, which must stay on the egress interface: "192.168.12.100/32"',
        ),
        (
            "192.168.12.64/26",
            'EGRESS_CLUSTER_NETWORKS: contains EGRESS_SOURCE 192.168.12.99, which must stay on the egress interface: "192.168.12.64/26"',
        ),
    ],
)
def test_a_cluster_network_holding_any_address_of_the_pool_is_refused_in_every_pod(networks: str, expected: str) -> None:
    found = [
        messages(source="192.168.12.99-192.168.12.101/24", gateway="192.168.12.254", cluster_networks=networks, source_index=str(index))
        for index in range(3)
    ]
    assert found == [[expected]] * 3
