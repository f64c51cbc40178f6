"""The running watch's edge (arp_claims.AddressGuard) with a stand-in socket and clock: a conflict ends only when a
probe that really went out, on a socket that was really listening, goes unanswered (a review found a failed send, or
a read error while a probe waited, ending the conflict and announcing against the live holder)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address

import pytest

from egress_router.init import arp_claims, metrics
from egress_router.init.claim import UNSPECIFIED, Claim, parse_arp
from egress_router.init.conflicts import ANSWER_TIME
from egress_router.observe.stats import Stats

ADDRESS = IPv4Address("192.168.12.99")
OURS, HOLDER, OTHER = b"\x0a\x00\x00\x00\x00\x01", b"\x0a\x00\x00\x00\x00\x02", b"\x0a\x00\x00\x00\x00\x03"


class FakeArp:
    """What AddressGuard uses of ArpSocket: a real descriptor for the loop's reader, frames sent, claims to hand out."""

    def __init__(self, sent: list[bytes], failures: list[str]) -> None:
        self.ends = socket.socketpair()
        self.mac = OURS
        self.sent, self.failures = sent, failures
        self.pending: list[Claim] = []

    def fileno(self) -> int:
        return self.ends[0].fileno()

    def send(self, frame: bytes) -> None:
        if self.failures and self.failures[0] == "send":
            self.failures.pop(0)
            raise OSError(100, "Network is down")
        self.sent.append(frame)

    def claims(self) -> list[Claim]:
        if self.failures and self.failures[0] == "read":
            self.failures.pop(0)
            raise OSError(100, "Network is down")
        found, self.pending = self.pending, []
        return found

    def close(self) -> None:
        for end in self.ends:
            end.close()


class Rig:
    """A guard on an event loop of its own, with a clock the test moves."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        monkeypatch.setattr(arp_claims.time, "monotonic", lambda: self.now)
        self.loop = asyncio.new_event_loop()
        self.sent: list[bytes] = []
        self.failures: list[str] = []
        self.sockets: list[FakeArp] = []
        self.guard = arp_claims.AddressGuard("macvlan0", ADDRESS, Stats(metrics.METRICS), opener=self.open)
        self.run(self.guard.check)  # the first check opens the watch

    def open(self, interface: str, ipv6: bool = False) -> FakeArp:
        made = FakeArp(self.sent, self.failures)
        self.sockets.append(made)
        return made

    def run(self, action: Callable[[], object]) -> None:
        """`action` on the loop, as the monitor calls the guard."""

        async def call() -> None:
            action()

        self.loop.run_until_complete(call())

    def hear(self, mac: bytes) -> None:
        def arrive() -> None:
            arp = self.guard.arp
            assert isinstance(arp, FakeArp)
            arp.pending.append(Claim(ADDRESS, mac))
            self.guard._readable()

        self.run(arrive)

    def check(self) -> None:
        self.run(self.guard.check)

    def kinds(self) -> list[str]:
        """What was sent, in order: probes (from 0.0.0.0) and announcements (from our address)."""
        packets = [parse_arp(frame) for frame in self.sent]
        return ["probe" if p is not None and p.sender_ip == UNSPECIFIED else "announcement" for p in packets]

    def close(self) -> None:
        self.run(self.guard.close)
        self.loop.close()


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    made = Rig(monkeypatch)
    yield made
    made.close()


def test_a_probe_unanswered_for_the_answer_time_ends_the_conflict_with_one_announcement(rig: Rig) -> None:
    rig.hear(HOLDER)
    assert rig.guard.reason() == "another host (MAC 0a:00:00:00:00:02) claims 192.168.12.99"
    rig.check()
    rig.now += ANSWER_TIME + 0.05
    rig.check()
    assert rig.kinds() == ["probe", "announcement"]
    assert rig.guard.reason() is None


def test_a_probe_that_could_not_be_sent_does_not_end_the_conflict(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.hear(HOLDER)
    rig.failures.append("send")
    with caplog.at_level(logging.WARNING):
        rig.check()  # the probe fails: the socket is closed, to be opened again
    assert "could not send an ARP probe for 192.168.12.99 on macvlan0" in caplog.text
    rig.now += ANSWER_TIME + 0.05
    rig.check()  # opened again: it probes, it does not announce against the holder
    assert rig.kinds() == ["probe"]
    assert len(rig.sockets) == 2
    assert rig.guard.reason() is not None
    rig.hear(HOLDER)  # the holder answers the probe that did go out
    rig.now += ANSWER_TIME + 0.05
    rig.check()
    assert rig.kinds() == ["probe", "probe"] and rig.guard.reason() is not None


def test_a_read_error_while_a_probe_waits_does_not_end_the_conflict(rig: Rig) -> None:
    rig.hear(HOLDER)
    rig.check()  # a probe goes out
    rig.failures.append("read")
    rig.run(rig.guard._readable)  # the holder's answer is lost with the socket (the link flapped)
    assert rig.guard.arp is None
    rig.now += ANSWER_TIME + 0.05
    rig.check()
    assert rig.kinds() == ["probe", "probe"]
    assert rig.guard.reason() is not None


def test_two_hosts_taking_turns_are_logged_once_each(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        for mac in (HOLDER, OTHER) * 20:
            rig.hear(mac)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("address conflict: another host (MAC 0a:00:00:00:00:02)")
    assert lines[1].startswith("address conflict goes on: now another host (MAC 0a:00:00:00:00:03)")
    assert rig.guard.conflicts[()] == 1  # one conflict
