"""Choosing the NAT backend (EGRESS_NAT_BACKEND), without root."""

from __future__ import annotations

from pathlib import Path

import pytest

from egress_router.config.errors import ConfigError
from egress_router.config.init_settings import load_init_settings
from egress_router.init import nat, nat_backend
from egress_router.init.nat_backend import decide

REDIRECT = {"source": "192.168.12.99", "gateway": "192.168.12.1", "destination": "80 tcp 203.0.113.25", "mode": "init"}


def test_auto_takes_legacy_iptables_where_it_is_and_nftables_otherwise() -> None:
    assert decide("auto", None).name == "iptables"
    chosen = decide("auto", "no legacy iptables in the kernel (/proc/net/ip_tables_names missing)")
    assert chosen.name == "nftables"
    assert chosen.why == "EGRESS_NAT_BACKEND=auto: no legacy iptables in the kernel (/proc/net/ip_tables_names missing)"


@pytest.mark.parametrize("choice", ["iptables", "nftables"])
def test_an_explicit_choice_is_taken_as_given(choice: str) -> None:
    assert decide(choice, "whatever auto would have seen") == nat_backend.Backend(choice, f"EGRESS_NAT_BACKEND={choice}")


def test_the_default_is_auto_and_case_does_not_matter() -> None:
    assert load_init_settings(**REDIRECT).nat_backend == "auto"
    assert load_init_settings(**REDIRECT, nat_backend="NFTables").nat_backend == "nftables"


def test_an_unknown_backend_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_init_settings(**REDIRECT, nat_backend="pf")
    assert str(caught.value) == 'EGRESS_NAT_BACKEND: unknown NAT backend (must be one of auto, iptables, nftables): "pf"'


def test_the_kernel_check_only_reads_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    present = tmp_path / "ip_tables_names"
    present.write_text("nat\nmangle\n")
    monkeypatch.setattr(nat, "TABLE_NAMES", {"ipv4": str(present), "ipv6": str(tmp_path / "ip6_tables_names")})
    assert nat.legacy_tables("ipv4") == {"nat", "mangle"}
    assert nat.legacy_tables("ipv6") == set()
    assert nat_backend.legacy_problem(["ipv4", "ipv6", "ipv4"]) == f"no legacy iptables in the kernel ({tmp_path}/ip6_tables_names missing)"
    monkeypatch.setattr(nat, "image_problem", lambda: "cannot load python-iptables")
    assert nat_backend.legacy_problem(["ipv4"]) == "cannot load python-iptables"


def test_unit_test_mode_decides_without_probing(monkeypatch: pytest.MonkeyPatch) -> None:
    from egress_router.init.plan import build_plan

    def probe(*_: object) -> str:
        raise AssertionError("unit-test mode must not probe the kernel")

    monkeypatch.setattr(nat, "kernel_problem", probe)
    monkeypatch.setattr(nat_backend.nft, "problem", probe)
    plan = build_plan(load_init_settings(**{**REDIRECT, "mode": "unit-test"}))
    assert nat_backend.resolve("nftables", plan, check=False).name == "nftables"


class Edge:
    """A backend's edge that records what it was asked to do."""

    def __init__(self, name: str, calls: list[str], holds: bool) -> None:
        self.name, self.calls, self.holds = name, calls, holds

    def apply_chains(self, chains: object, journal: object = None) -> bool:
        self.calls.append(f"{self.name} apply")
        return True

    def remove_chains(self, chains: object, journal: object = None) -> bool:
        self.calls.append(f"{self.name} remove")
        return self.holds

    def counters(self, chains: object) -> None:
        return None

    def render(self, chains: object) -> str:
        return self.name


@pytest.mark.parametrize("chosen", ["iptables", "nftables"])
def test_installing_through_one_backend_removes_our_chains_from_the_other(monkeypatch: pytest.MonkeyPatch, chosen: str) -> None:
    from egress_router.init.plan import mark_chains

    calls: list[str] = []
    edges = {name: Edge(name, calls, holds=False) for name in ("iptables", "nftables")}
    monkeypatch.setattr(nat_backend, "EDGES", edges)
    other = "nftables" if chosen == "iptables" else "iptables"
    assert nat_backend.Backend(chosen, "test").install(mark_chains())
    assert calls == [f"{chosen} apply", f"{other} remove"]  # the new rules first: never a moment without them
    assert nat_backend.Backend(chosen, "test").render(mark_chains()) == chosen


def test_unit_test_mode_prints_the_rules_in_the_chosen_syntax_and_names_the_backend() -> None:
    from click.testing import CliRunner

    from egress_router.cli import main

    env = {"EGRESS_SOURCE": "192.168.12.99", "EGRESS_GATEWAY": "192.168.12.1", "EGRESS_DESTINATION": "80 tcp 203.0.113.25"}
    env |= {"EGRESS_ROUTER_MODE": "unit-test", "EGRESS_NAT_BACKEND": "nftables"}
    result = CliRunner().invoke(main, ["init"], env=env)
    assert result.exit_code == 0, result.output
    assert '\t\tiifname "eth0" tcp dport 80 counter dnat to 203.0.113.25' in result.stdout
    assert "-A EGRESS-ROUTER" not in result.stdout
    assert result.stdout.splitlines()[-1] == "nat    backend nftables (EGRESS_NAT_BACKEND=nftables)"
    by_option = CliRunner().invoke(
        main, ["init", "--nat-backend", "nftables"], env={k: v for k, v in env.items() if k != "EGRESS_NAT_BACKEND"}
    )
    assert by_option.stdout == result.stdout
