"""Connecting to one of several addresses (RFC 8305): the order, the staggering, the winner, the losers.

Attempts are coroutines on an event loop whose clock moves only by hand, so every delay is exact and no socket is used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from ipaddress import ip_address
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress_router.config.addresses import IPAddress
from egress_router.runtime.happy_eyeballs import ATTEMPT_DELAY, first_to_connect, interleave
from tests.unit.proxy_harness import ManualClockLoop

A4, B4, C4 = (ip_address(f"203.0.113.{n}") for n in (1, 2, 3))
A6, B6 = (ip_address(f"2001:db8::{n}") for n in (1, 2))


def test_interleave_alternates_families_from_the_first_one() -> None:
    assert interleave([A6, B6, A4, B4, C4]) == [A6, A4, B6, B4, C4]
    assert interleave([A4, B4, A6]) == [A4, A6, B4]
    assert interleave([A4, B4]) == [A4, B4]
    assert interleave([]) == []


@given(st.lists(st.ip_addresses(), unique=True, max_size=8))
def test_interleave_keeps_every_address_and_each_familys_order(addresses: list[IPAddress]) -> None:
    merged = interleave(addresses)
    assert sorted(map(str, merged)) == sorted(map(str, addresses))
    for version in (4, 6):
        assert [a for a in merged if a.version == version] == [a for a in addresses if a.version == version]
    if addresses:
        assert merged[0] == addresses[0]
        both = 2 * min(sum(a.version == 4 for a in addresses), sum(a.version == 6 for a in addresses))
        assert all(merged[i].version != merged[i + 1].version for i in range(both - 1))  # alternating while both last


class Race:
    """Fake connection attempts: each address answers after `after[address]` seconds, or fails with `fails[address]`."""

    def __init__(self, loop: ManualClockLoop) -> None:
        self.loop = loop
        self.after: dict[IPAddress, float] = {}
        self.fails: dict[IPAddress, OSError] = {}
        self.started: list[tuple[float, IPAddress]] = []
        self.failed: list[tuple[IPAddress, str]] = []
        self.discarded: list[str] = []
        self.cancelled: list[IPAddress] = []
        self.outpaced: list[IPAddress] = []

    async def attempt(self, address: IPAddress) -> str:
        self.started.append((self.loop.time(), address))
        try:
            await asyncio.sleep(self.after.get(address, 3600))
        except asyncio.CancelledError:
            self.cancelled.append(address)
            raise
        if address in self.fails:
            raise self.fails[address]
        return f"connection to {address}"

    def run(self, addresses: list[IPAddress], steps: list[float]) -> asyncio.Task[Any]:
        task = self.loop.create_task(
            first_to_connect(
                addresses,
                self.attempt,
                lambda a, e: self.failed.append((a, type(e).__name__)),
                self.discarded.append,
                outpaced=self.outpaced.append,
            )
        )
        self.spin()
        for step in steps:
            self.loop.now += step
            self.spin()
        return task

    def spin(self) -> None:
        async def turns() -> None:
            for _ in range(20):
                await asyncio.sleep(0)

        self.loop.run_until_complete(turns())


@pytest.fixture
def race() -> Iterator[Race]:
    loop = ManualClockLoop()
    asyncio.set_event_loop(loop)
    yield Race(loop)
    for task in asyncio.all_tasks(loop):
        task.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    asyncio.set_event_loop(None)


def test_a_silent_first_address_gets_company_after_the_delay(race: Race) -> None:
    race.after[A4] = 0.0  # answers at once, once asked
    task = race.run([A6, A4], [ATTEMPT_DELAY])
    assert task.result() == (A4, f"connection to {A4}")
    assert race.started == [(1000.0, A6), (1000.0 + ATTEMPT_DELAY, A4)]
    assert race.cancelled == [A6] and race.failed == []
    assert race.outpaced == [A6]  # asked first, not answered yet: a caller may try it last next time


def test_an_attempt_that_fails_starts_the_next_at_once(race: Race) -> None:
    race.after[A6], race.fails[A6] = 0.01, ConnectionRefusedError()
    race.after[A4] = 0.01
    task = race.run([A6, A4], [0.01, 0.01])
    assert task.result()[0] == A4
    assert race.started == [(1000.0, A6), (1000.01, A4)]  # not at 1000.25
    assert race.failed == [(A6, "ConnectionRefusedError")]


def test_nothing_is_started_early_when_the_first_answers_in_time(race: Race) -> None:
    race.after[A6] = 0.1
    task = race.run([A6, A4, B4], [0.1])
    assert task.result()[0] == A6 and [a for _, a in race.started] == [A6]
    assert race.outpaced == []


def test_every_failure_is_told_and_none_is_returned(race: Race) -> None:
    for address in (A6, A4, B6):
        race.after[address], race.fails[address] = 0.1, OSError(101, "Network is unreachable")
    race.fails[B6] = TimeoutError()
    task = race.run([A6, A4, B6], [0.1, 0.1, 0.1])
    assert task.result() is None
    assert race.failed == [(A6, "OSError"), (A4, "OSError"), (B6, "TimeoutError")]


def test_a_connection_made_in_the_same_turn_as_the_winner_is_discarded(race: Race) -> None:
    race.after[A6] = 0.3  # asked at 0, answers at 0.3
    race.after[A4] = 0.05  # asked at 0.25, answers at 0.3 too
    task = race.run([A6, A4], [0.25, 0.05])
    winner = task.result()
    assert winner[0] in (A6, A4)
    assert race.discarded == [f"connection to {A4 if winner[0] == A6 else A6}"]


def test_a_single_address_needs_no_task(race: Race) -> None:
    race.fails[A4], race.after[A4] = ConnectionRefusedError(), 0.0
    task = race.run([A4], [])
    assert task.result() is None and race.failed == [(A4, "ConnectionRefusedError")]
    assert race.run([], []).result() is None


def test_cancelling_the_race_cancels_every_attempt(race: Race) -> None:
    task = race.run([A6, A4, B4], [ATTEMPT_DELAY, ATTEMPT_DELAY])
    task.cancel()
    race.spin()
    assert task.cancelled() and sorted(map(str, race.cancelled)) == sorted(map(str, [A6, A4, B4]))


def test_a_bug_in_an_attempt_is_not_taken_for_a_failed_connection(race: Race) -> None:
    async def broken(address: IPAddress) -> str:
        raise ValueError("bug")

    task = race.loop.create_task(first_to_connect([A6, A4], broken, lambda a, e: None, lambda c: None))
    race.spin()
    with pytest.raises(ValueError, match="bug"):
        task.result()
