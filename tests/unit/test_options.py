"""The option kinds every command's table is made of: unset means the default, errors name the variable."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress_router.config import dns_settings, http_settings, init_settings, options
from egress_router.config.errors import Collector, ConfigError
from egress_router.config.options import Choice, Count, Duration, Port, Ports, Switch, Valued, parse_each
from egress_router.config.values import parse_duration, render_duration

EVERY_VALUED = {
    option.variable: option
    for table in (init_settings.INIT_OPTIONS, init_settings.MONITOR_OPTIONS, http_settings.OPTIONS, dns_settings.OPTIONS)
    for option in table
    if isinstance(option, Valued)
}


@pytest.mark.parametrize("option", EVERY_VALUED.values(), ids=list(EVERY_VALUED))
def test_unset_or_blank_is_the_default(option: Valued[Any]) -> None:
    assert option.parse(None) == option.parse("") == option.parse(" \t") == option.default_value()


@pytest.mark.parametrize(
    ("seconds", "text"), [(10.0, "10s"), (60.0, "1m"), (300.0, "5m"), (3600.0, "1h"), (5400.0, "90m"), (0.5, "500ms"), (1.5, "1500ms")]
)
def test_durations_are_written_in_the_largest_whole_unit(seconds: float, text: str) -> None:
    assert render_duration(seconds) == text


@given(st.floats(min_value=1e-12, max_value=1e12, allow_nan=False) | st.integers(1, 10**9).map(lambda ms: ms / 1000))
def test_a_written_duration_parses_back_to_itself(seconds: float) -> None:
    assert parse_duration(render_duration(seconds), "X") == seconds


@pytest.mark.parametrize(
    ("option", "text", "message"),
    [
        (Duration("t", "X_TIMEOUT", "", default=1.0), "soon", 'X_TIMEOUT: not a duration (use e.g. 30, 30s, 500ms, 5m, 1h): "soon"'),
        (Duration("t", "X_TIMEOUT", "", default=1.0), " 0ms ", 'X_TIMEOUT: must be more than zero: "0ms"'),
        (Count("n", "X_COUNT", "", default=4, maximum=256), "257", 'X_COUNT: must be a whole number from 1 to 256: "257"'),
        # int() refuses a text of more than 4300 digits with a ValueError of its own: it must read as too large
        (Count("n", "X_COUNT", "", default=4), "9" * 5000, "X_COUNT: must be a whole number from 1 to 10000000"),
        (Port("p", "X_PORT", "", default=80), "65536", 'X_PORT: invalid port 65536 (must be 1-65535): "65536"'),
        (Ports("p", "X_PORTS", "", default=frozenset({443})), "443, 0x50", 'X_PORTS: invalid port 0x50 (must be 1-65535): "443, 0x50"'),
        (Switch("s", "X_SPLICE", "", default=False), "Maybe", 'X_SPLICE: must be on or off: "maybe"'),
        (
            init_settings.MODE,
            "Init",
            'EGRESS_ROUTER_MODE: unknown mode (must be one of init, legacy, http-proxy, dns-proxy, unit-test): "Init"',
        ),
        (
            init_settings.MACVLAN_MODE,
            "L2",
            'EGRESS_MACVLAN_MODE: unknown macvlan mode (must be one of bridge, private, vepa, passthru): "l2"',
        ),
    ],
)
def test_errors_name_the_variable_and_the_text(option: Valued[Any], text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        option.parse(text)
    assert str(caught.value).startswith(message)


def test_given_values_are_read_stripped() -> None:
    assert init_settings.MACVLAN_MODE.parse(" VEPA ") == "vepa"
    assert Switch("s", "X", "", default=False).parse("ON")
    assert Ports("p", "X", "", default=frozenset()).parse("80,443 8443") == frozenset({80, 443, 8443})
    assert Ports("p", "X", "", default=frozenset()).render(frozenset({8443, 80})) == "80,8443"


def test_parse_each_reports_every_problem_and_refuses_unknown_names() -> None:
    found = Collector()
    values = parse_each(found, http_settings.TUNING, {"listen_port": "0", "workers": "2", "idle_timeout": "never"})
    assert values["workers"] == 2 and "listen_port" not in values
    assert [problem.variable for problem in found.problems] == ["EGRESS_HTTP_PROXY_LISTEN_PORT", "EGRESS_HTTP_PROXY_IDLE_TIMEOUT"]
    with pytest.raises(TypeError, match="unknown option"):
        parse_each(found, http_settings.TUNING, {"listen_prot": "8080"})


def test_choices_are_the_modes() -> None:
    assert init_settings.MODE.choices == tuple(mode.value for mode in init_settings.Mode)
    assert isinstance(init_settings.MODE, Choice) and init_settings.Mode(init_settings.MODE.default_value()) is init_settings.Mode.LEGACY


def test_a_delay_may_be_zero_where_a_timeout_may_not() -> None:
    delay = options.SHUTDOWN_DELAY
    assert delay.parse("0") == delay.parse("0ms") == 0.0 and delay.render(0.0) == "0s" and delay.parse("2500ms") == 2.5
    assert delay.parse(None) == 5.0
    with pytest.raises(ConfigError, match='^EGRESS_SHUTDOWN_DELAY: must be zero or more: "-1s"$'):
        delay.parse("-1s")
    with pytest.raises(ConfigError, match='^X_TIMEOUT: must be more than zero: "0"$'):
        Duration("t", "X_TIMEOUT", "", default=1.0).parse("0")


def test_every_long_running_command_takes_the_shutdown_delay() -> None:
    for table in (init_settings.MONITOR_OPTIONS, http_settings.OPTIONS, dns_settings.OPTIONS, init_settings.INIT_OPTIONS):
        assert options.SHUTDOWN_DELAY in table
