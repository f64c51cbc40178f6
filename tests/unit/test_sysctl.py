"""The sysctl edge against a directory shaped like /proc/sys (the same files, without root)."""

from pathlib import Path

import pytest

from egress_router.errors import ApplyError
from egress_router.init.journal import Journal
from egress_router.init.sysctl import raise_sysctl, set_sysctl


def conf(root: Path, interface: str, name: str, value: str) -> Path:
    path = root / "net" / "ipv6" / "conf" / interface / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")
    return path


def test_a_setting_is_written_once_and_a_rollback_puts_the_old_value_back(tmp_path: Path) -> None:
    path = conf(tmp_path, "macvlan0", "accept_ra", "1")
    journal = Journal()
    assert set_sysctl(journal, "net.ipv6.conf.macvlan0.accept_ra", "0", root=str(tmp_path))
    assert path.read_text() == "0"
    assert not set_sysctl(journal, "net.ipv6.conf.macvlan0.accept_ra", "0", root=str(tmp_path))  # init again: nothing to do
    assert len(journal) == 1
    assert journal.rollback() == []
    assert path.read_text() == "1"


def test_a_slash_in_the_key_is_a_dot_in_the_interface_name(tmp_path: Path) -> None:
    path = conf(tmp_path, "eth1.100", "autoconf", "1")
    assert set_sysctl(Journal(), "net.ipv6.conf.eth1/100.autoconf", "0", root=str(tmp_path))
    assert path.read_text() == "0"


def test_an_interface_without_ipv6_settings_is_nothing_to_do_when_they_are_optional(tmp_path: Path) -> None:
    """A kernel without IPv6 (or booted with ipv6.disable=1) has no net/ipv6 at all: an IPv4-only router is fine there."""
    journal = Journal()
    assert not set_sysctl(journal, "net.ipv6.conf.macvlan0.accept_ra", "0", root=str(tmp_path), missing_ok=True)
    assert len(journal) == 0 and not (tmp_path / "net").exists()


def test_a_missing_setting_that_is_needed_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ApplyError, match=r"^cannot set net\.ipv4\.ip_forward=1 in .*/net/ipv4/ip_forward: No such file or directory$"):
        set_sysctl(Journal(), "net.ipv4.ip_forward", "1", root=str(tmp_path))


@pytest.mark.parametrize(("before", "after"), [("0", "1"), ("1", "1"), ("2", "2"), ("3", "3")])
def test_a_minimum_raises_only_a_lower_value_and_a_rollback_lowers_it_again(tmp_path: Path, before: str, after: str) -> None:
    """accept_dad 2 (also off on a duplicate link-local) and dad_transmits 3 are someone's choice: kept."""
    path = conf(tmp_path, "macvlan0", "accept_dad", before)
    journal = Journal()
    assert raise_sysctl(journal, "net.ipv6.conf.macvlan0.accept_dad", 1, root=str(tmp_path)) == (before != after)
    assert path.read_text().strip() == after
    assert journal.rollback() == []
    assert path.read_text().strip() == before


def test_a_minimum_of_an_interface_without_ipv6_is_nothing_to_do(tmp_path: Path) -> None:
    journal = Journal()
    assert not raise_sysctl(journal, "net.ipv6.conf.macvlan0.accept_dad", 1, root=str(tmp_path))
    assert len(journal) == 0
