"""The CLI without root: unit-test mode, option/variable equivalence, error formatting."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from egress_router.cli import main
from egress_router.config import dns_settings, http_settings, init_settings
from egress_router.config.options import Choice, Computed, Count, Duration, Option, Port, PortOrOff, Ports, Switch, Text, Valued

ENV = {
    "EGRESS_SOURCE": "192.168.12.99",
    "EGRESS_GATEWAY": "192.168.12.1",
    "EGRESS_DESTINATION": "80 tcp 203.0.113.25",
    "EGRESS_ROUTER_MODE": "unit-test",
}


def invoke(args: list[str], env: dict[str, str | None] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, args, env=env or {})


def test_unit_test_mode_prints_the_plan() -> None:
    result = invoke(["init"], ENV)
    assert result.exit_code == 0, result.output
    assert "-A EGRESS-ROUTER-DNAT -i eth0 -p tcp -m tcp --dport 80 -j DNAT --to-destination 203.0.113.25" in result.stdout


def test_unit_test_mode_keeps_the_metrics_port_from_the_fallback_only_when_it_is_set() -> None:
    """It shows what an init container does: that serves nothing, so it reserves only the port it is given."""
    env = {**ENV, "EGRESS_DESTINATION": "9191 tcp 203.0.113.25\n203.0.113.50"}
    result = invoke(["init"], env)
    assert result.exit_code == 0, result.output
    assert "RETURN" not in result.stdout and "--dport 9191 -j DNAT --to-destination 203.0.113.25" in result.stdout
    result = invoke(["init"], {**env, "EGRESS_DESTINATION": "203.0.113.50", "EGRESS_METRICS_PORT": "9191"})
    assert "-A EGRESS-ROUTER-DNAT -i eth0 -p tcp -m tcp --dport 9191 -j RETURN" in result.stdout
    result = invoke(["init"], {**env, "EGRESS_METRICS_PORT": "9191"})
    assert result.exit_code == 1 and "EGRESS_METRICS_PORT: port 9191 is redirected by EGRESS_DESTINATION line 1 too" in result.stderr


def test_options_equal_environment_variables() -> None:
    by_option = invoke(
        ["init", "--source", "192.168.12.99", "--gateway", "192.168.12.1", "--destination", "80 tcp 203.0.113.25", "--mode", "unit-test"]
    )
    assert by_option.exit_code == 0
    assert by_option.stdout == invoke(["init"], ENV).stdout


def test_help_names_every_variable() -> None:
    text = invoke(["init", "--help"]).output
    for variable in (
        "EGRESS_SOURCE",
        "EGRESS_GATEWAY",
        "EGRESS_DESTINATION",
        "EGRESS_DESTINATION_FILE",
        "EGRESS_ROUTER_MODE",
        "EGRESS_ROUTER_DEBUG",
        "EGRESS_INTERFACE",
        "EGRESS_MACVLAN_MASTER",
        "EGRESS_MACVLAN_MODE",
        "EGRESS_HOST_NETNS",
    ):
        assert variable in text


def test_errors_are_one_line_each_without_traceback() -> None:
    result = invoke(["init"], {**ENV, "EGRESS_SOURCE": "1.2.3.4.5", "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n99999 udp 203.0.113.25"})
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        'egress-router init: error: EGRESS_SOURCE: not an IPv4 address (expected A.B.C.D): "1.2.3.4.5"',
        'egress-router init: error: EGRESS_DESTINATION line 2: invalid port 99999 (must be 1-65535): "99999 udp 203.0.113.25"',
    ]
    assert result.stdout == ""


def test_destination_file(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.write_text("# from a ConfigMap\n443 tcp 203.0.113.26\n")
    result = invoke(["init"], {**ENV, "EGRESS_DESTINATION": None, "EGRESS_DESTINATION_FILE": str(rules)})
    assert result.exit_code == 0, result.output
    assert "--dport 443 -j DNAT --to-destination 203.0.113.26" in result.stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EGRESS_DESTINATION_FILE": "/x"}, "EGRESS_DESTINATION_FILE: set either EGRESS_DESTINATION or EGRESS_DESTINATION_FILE, not both"),
        (
            {"EGRESS_DESTINATION": None, "EGRESS_DESTINATION_FILE": "/nonexistent"},
            "EGRESS_DESTINATION_FILE: cannot read the file: No such file or directory",
        ),
    ],
)
def test_destination_file_errors(env: dict[str, str | None], message: str) -> None:
    result = invoke(["init"], {**ENV, **env})
    assert result.exit_code == 1
    assert message in result.stderr


@pytest.mark.parametrize(
    ("command", "env", "message"),
    [
        (
            "dns-proxy",
            {"EGRESS_DNS_PROXY_DESTINATION": "80 a.example\n80 b.example"},
            'EGRESS_DNS_PROXY_DESTINATION line 2: localport 80 is already used on line 1: "80 b.example"',
        ),
        ("dns-proxy", {"EGRESS_DNS_PROXY_DESTINATION": "99999 a.example"}, "EGRESS_DNS_PROXY_DESTINATION line 1: invalid port 99999"),
        ("dns-proxy", {"EGRESS_DNS_PROXY_DESTINATION": "80 a..example"}, "value 'a..example' is invalid"),
        ("dns-proxy", {"EGRESS_DNS_PROXY_DESTINATION": "# nothing"}, "EGRESS_DNS_PROXY_DESTINATION: no destination given"),
        (
            "dns-proxy",
            {"EGRESS_DNS_PROXY_DESTINATION": "80 a.example", "EGRESS_DNS_PROXY_MIN_TTL": "10m"},
            "must not exceed EGRESS_DNS_PROXY_MAX_TTL",
        ),
        (
            "dns-proxy",
            {"EGRESS_DNS_PROXY_DESTINATION": "5432 db.example\n80 fe80::5 8080"},
            "EGRESS_DNS_PROXY_DESTINATION line 2: value 'fe80::5' is invalid: a link-local address needs the interface it is on (fe80::5%net1): \"80 fe80::5 8080\"",
        ),
        ("http-proxy", {"EGRESS_HTTP_PROXY_DESTINATION": "*\nexample.com"}, "Wildcard must be last rule, if present"),
        (
            "http-proxy",
            {"EGRESS_HTTP_PROXY_DESTINATION": "!2001:db8::1/32"},
            'EGRESS_HTTP_PROXY_DESTINATION line 1: Bad destination: host bits set in CIDR (did you mean 2001:db8::/32?): "!2001:db8::1/32"',
        ),
        ("http-proxy", {"EGRESS_HTTP_PROXY_DESTINATION": "!bad host"}, "Bad destination: one rule a line"),
        (
            "http-proxy",
            {"EGRESS_HTTP_PROXY_DESTINATION": "*", "EGRESS_HTTP_PROXY_IDLE_TIMEOUT": "soon"},
            "EGRESS_HTTP_PROXY_IDLE_TIMEOUT: not a duration",
        ),
    ],
)
def test_proxy_list_errors_stop_the_start(command: str, env: dict[str, str], message: str) -> None:
    result = invoke([command], env)
    assert result.exit_code == 1
    assert message in result.stderr
    assert all(line.startswith(f"egress-router {command}: error: ") for line in result.stderr.splitlines())


def test_mode_from_environment() -> None:
    from egress_router.cli import command_from_environment

    assert command_from_environment({"EGRESS_DNS_PROXY_DESTINATION": "80 a.example"}) == "dns-proxy"
    assert command_from_environment({"EGRESS_HTTP_PROXY_DESTINATION_FILE": "/etc/list"}) == "http-proxy"
    assert command_from_environment({"EGRESS_SOURCE": "192.0.2.1"}) is None


def test_monitor_validates_like_init() -> None:
    result = invoke(
        ["monitor"], {"EGRESS_GATEWAY": "192.168.12.1", "EGRESS_DESTINATION": "80 tcp 203.0.113.25", "EGRESS_ROUTER_MONITOR_INTERVAL": "0"}
    )
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [  # every problem at once, init's first
        "egress-router monitor: error: EGRESS_SOURCE: unspecified (set it to the reserved egress address, e.g. 192.168.12.99; dual-stack: 192.168.12.99,2001:db8::99)",
        'egress-router monitor: error: EGRESS_ROUTER_MONITOR_INTERVAL: must be more than zero: "0"',
    ]


def test_an_internal_error_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from egress_router import cli
    from egress_router.config import init_settings

    def broken(**_: object) -> None:
        raise RuntimeError("something we did not foresee")

    monkeypatch.setattr(init_settings, "load_init_settings", broken)
    monkeypatch.setattr(cli, "load_init_settings", broken)
    monkeypatch.setattr(sys, "argv", ["egress-router", "init"])
    monkeypatch.delenv("EGRESS_ROUTER_DEBUG", raising=False)
    with pytest.raises(SystemExit) as caught:
        cli.run()
    assert caught.value.code == 70
    err = capsys.readouterr().err
    assert (
        err.strip()
        == "egress-router: internal error: RuntimeError: something we did not foresee (set EGRESS_ROUTER_DEBUG=1 for the traceback)"
    )


#: Each command: its table of options, its loader, and the least the loader needs (init's macvlan master, so that
#: the macvlan options reach the settings too).
REDIRECT = {"source": "192.168.12.99", "gateway": "192.168.12.1", "destination": "80 tcp 203.0.113.25"}
COMMANDS: dict[str, tuple[tuple[Option, ...], Callable[..., Any], dict[str, str]]] = {
    "init": (init_settings.INIT_OPTIONS, init_settings.load_init_settings, {**REDIRECT, "macvlan_master": "ens3"}),
    "monitor": (init_settings.MONITOR_OPTIONS, init_settings.load_monitor_settings, REDIRECT),
    "http-proxy": (http_settings.OPTIONS, http_settings.load_http_settings, {"destination": "*"}),
    "dns-proxy": (dns_settings.OPTIONS, dns_settings.load_dns_settings, {"destination": "5432 db.example.com"}),
}
WITH_DEFAULTS = [
    pytest.param(command, option, id=f"{command}{option.flag}")
    for command, (table, _, _) in COMMANDS.items()
    for option in table
    if isinstance(option, Valued) and option.shown_default is not None
]


def help_of(command: str) -> str:
    """`egress-router <command> --help` on one line (click would break words at hyphens to wrap them)."""
    result = CliRunner().invoke(main, [command, "--help"], env={}, terminal_width=10_000, max_content_width=10_000)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def written(option: Valued[Any]) -> str:
    """The default as a value the loader reads: what --help shows, or for a computed one what it computes here."""
    default = option.default
    return option.render(default.compute()) if isinstance(default, Computed) else str(option.shown_default)


def another(option: Valued[Any]) -> str:
    """A valid value other than the default, to show the loader reads the option at all."""
    value = option.default_value()
    if isinstance(option, Choice):
        return next(choice for choice in option.choices if choice != value)
    if isinstance(option, Switch):
        return option.render(not value)
    if isinstance(option, Ports):
        return option.render(value | {1})
    if isinstance(option, Text):
        return value + "1"
    if isinstance(option, Duration):
        return option.render(value * 2)
    if isinstance(option, PortOrOff):
        return "off"
    assert isinstance(option, Count | Port), f"{option.flag}: a kind this test does not know yet"
    return option.render(value - 1 if value == getattr(option, "maximum", 65535) else value + 1)


@pytest.mark.parametrize(("command", "option"), WITH_DEFAULTS)
def test_help_shows_the_default_the_loader_uses(command: str, option: Valued[Any]) -> None:
    _, load, needed = COMMANDS[command]
    assert f"{option.flag} TEXT {option.help} (default {option.shown_default}). [env var: {option.variable}]" in help_of(command)
    assert load(**needed) == load(**needed, **{option.name: written(option)})  # unset means what --help says
    assert load(**needed) != load(**needed, **{option.name: another(option)})  # and the loader reads it


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_every_variable_of_the_table_and_no_other(command: str) -> None:
    table, _, _ = COMMANDS[command]
    text = help_of(command)
    for option in table:
        assert f"{option.flag} TEXT {option.help}" in text and f"[env var: {option.variable}]" in text
    assert sorted(re.findall(r"\[env var: (\w+)\]", text)) == sorted(option.variable for option in table)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_sentences_leave_the_default_to_the_table(command: str) -> None:
    table, _, _ = COMMANDS[command]
    for option in table:
        assert "default" not in option.help.lower(), f"{option.flag}: the table adds the default; the sentence must not say one"
        if isinstance(option, Choice):
            assert all(choice in option.help for choice in option.choices), f"{option.flag}: name every choice"


def test_durations_in_help_are_written_as_a_user_would() -> None:
    assert [option.shown_default for option in http_settings.TUNING if isinstance(option, Duration)] == [
        "10s",
        "1m",
        "1h",
        "10s",
        "5s",
        "30s",
    ]
    assert "(default one per CPU)" in help_of("http-proxy")


@pytest.mark.parametrize(("command", "option"), WITH_DEFAULTS)
def test_the_readme_states_the_same_default(command: str, option: Valued[Any]) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    shown = option.shown_default
    ways = (f"| {shown} |", f"default `{shown}`", f"`{shown}` (default)", f"(default {shown})")
    lines = [line for line in readme.splitlines() if f"`{option.variable}`" in line]
    assert any(way in line for line in lines for way in ways), f"README: no line gives {option.variable} the default {shown}"
