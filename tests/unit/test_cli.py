"""The CLI without root: unit-test mode, option/variable equivalence, error formatting."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from egress_router.cli import main

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
        ("http-proxy", {"EGRESS_HTTP_PROXY_DESTINATION": "*\nexample.com"}, "Wildcard must be last rule, if present"),
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
    assert result.stderr.splitlines() == [
        "egress-router monitor: error: EGRESS_SOURCE: unspecified (set it to the reserved egress IPv4 address, e.g. 192.168.12.99)",
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
