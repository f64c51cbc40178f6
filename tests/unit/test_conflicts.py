"""The monitor's view of a conflict over its address: when it starts, what each check does, when it is over."""

from __future__ import annotations

from ipaddress import IPv4Address

from egress_router.init.claim import Claim
from egress_router.init.conflicts import ANSWER_TIME, ConflictWatch, Heard, Step

OURS = bytes.fromhex("0a0000000001")
OTHER = bytes.fromhex("0a0000000002")
THIRD = bytes.fromhex("0a0000000003")
ADDRESS = IPv4Address("192.168.12.99")


def test_no_conflict_no_action() -> None:
    watch = ConflictWatch(ADDRESS)
    assert watch.check(0.0) is Step.NOTHING
    assert watch.reason() is None


def test_what_is_not_a_conflict_while_holding() -> None:
    watch = ConflictWatch(ADDRESS)
    assert watch.heard(Claim(ADDRESS, OURS), OURS) is None  # ourselves
    assert watch.heard(Claim(ADDRESS, OTHER, probing=True), OURS) is None  # a host probing: our kernel answers it
    assert watch.heard(Claim(IPv4Address("192.168.12.1"), OTHER), OURS) is None  # someone else's address
    assert watch.conflict is None and watch.reason() is None


def test_a_conflict_lasts_while_the_other_host_answers_and_ends_with_one_announcement() -> None:
    watch = ConflictWatch(ADDRESS)
    assert watch.heard(Claim(ADDRESS, OTHER), OURS) is Heard.STARTED
    assert watch.reason() == "another host (MAC 0a:00:00:00:00:02) claims 192.168.12.99"
    assert watch.heard(Claim(ADDRESS, OTHER), OURS) is None  # the same conflict again: nothing new

    assert watch.check(10.0) is Step.PROBE
    assert watch.heard(Claim(ADDRESS, OTHER), OURS) is None  # its answer
    assert watch.check(10.0 + ANSWER_TIME) is Step.PROBE  # answered: still a conflict, probe again
    assert watch.reason() is not None
    assert watch.check(10.0 + 2 * ANSWER_TIME) is Step.OVER  # that probe went unanswered
    assert watch.reason() is None and watch.conflict is None
    assert watch.check(10.0 + 3 * ANSWER_TIME) is Step.NOTHING  # over means over: one announcement


def test_checks_closer_together_than_the_answer_time_wait_for_the_answer() -> None:
    watch = ConflictWatch(ADDRESS)
    watch.heard(Claim(ADDRESS, OTHER), OURS)
    assert watch.check(0.0) is Step.PROBE
    assert watch.check(0.05) is Step.NOTHING  # a check woken early (a new list file): the answer may still come
    assert watch.check(ANSWER_TIME - 0.01) is Step.NOTHING
    assert watch.check(ANSWER_TIME) is Step.OVER


def test_a_claim_before_the_probe_is_no_answer_to_it() -> None:
    watch = ConflictWatch(ADDRESS)
    watch.heard(Claim(ADDRESS, OTHER), OURS)
    assert watch.check(0.0) is Step.PROBE
    watch.heard(Claim(ADDRESS, OTHER), OURS)
    assert watch.check(ANSWER_TIME) is Step.PROBE
    assert watch.check(2 * ANSWER_TIME) is Step.OVER


def test_another_mac_taking_over_the_conflict_is_named() -> None:
    watch = ConflictWatch(ADDRESS)
    watch.heard(Claim(ADDRESS, OTHER), OURS)
    assert watch.heard(Claim(ADDRESS, THIRD), OURS) is Heard.MOVED
    assert watch.reason() == "another host (MAC 0a:00:00:00:00:03) claims 192.168.12.99"


def test_a_new_conflict_after_one_ended_starts_again() -> None:
    watch = ConflictWatch(ADDRESS)
    watch.heard(Claim(ADDRESS, OTHER), OURS)
    watch.check(0.0)
    assert watch.check(ANSWER_TIME) is Step.OVER
    assert watch.heard(Claim(ADDRESS, OTHER), OURS) is Heard.STARTED
    assert watch.check(5.0) is Step.PROBE  # a fresh conflict probes at its first check, whatever came before
