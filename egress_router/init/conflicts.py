"""While the router holds EGRESS_SOURCE: when another host claiming it starts a conflict, and when it is over.

Pure state, fed with the Claims that arrive (`heard`) and asked at each check interval what to do (`check`).
A conflict starts with the first claim of our address from another MAC. From then on every check sends a probe;
the conflict is over when a probe has gone unanswered for ANSWER_TIME (the other host is gone or let the
address go), and then the router announces the address once, so the LAN's ARP caches point at it again.
Nothing else is done during a conflict: announcing against a host that still holds the address would only make
the LAN's caches flip between the two.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from egress_router.config.addresses import IPAddress
from egress_router.init.claim import Claim, conflicts_while_holding, mac_text

#: How long a probe's answer may take before its silence ends a conflict (answers take milliseconds on a LAN).
ANSWER_TIME = 1.0


class Heard(enum.Enum):
    STARTED = "started"  # no conflict before this claim
    MOVED = "moved"  # a conflict already, now with another MAC


class Step(enum.Enum):
    NOTHING = "nothing"
    PROBE = "probe"  # send a probe for our address
    OVER = "over"  # the conflict ended: announce our address once


@dataclass
class ConflictWatch:
    address: IPAddress
    conflict: Claim | None = None
    probed_at: float | None = None  # when the probe now waiting for its answer was sent
    answered: bool = False  # the other host claimed the address since that probe
    macs: set[bytes] = field(default_factory=set)  # every other MAC heard during this conflict (each logged once)

    def heard(self, claim: Claim, ours: bytes) -> Heard | None:
        """A claim arrived; what changed, if anything."""
        if not conflicts_while_holding(claim, self.address, ours):
            return None
        self.answered = True
        if self.conflict is None:
            self.conflict = claim
            self.probed_at = None
            self.macs = {claim.mac}
            return Heard.STARTED
        if claim.mac != self.conflict.mac:
            self.conflict = claim
            new = claim.mac not in self.macs  # two hosts taking turns: a line for each, not one per frame
            self.macs.add(claim.mac)
            return Heard.MOVED if new else None
        return None

    def deaf(self) -> None:
        """Nothing could be heard for a while (the socket failed and is opened again): a probe waiting for its answer
        proves nothing then, and must not end the conflict; the next check probes again."""
        self.probed_at = None

    def check(self, now: float) -> Step:
        """At each check interval (and no more often than ANSWER_TIME probes while one waits for its answer)."""
        if self.conflict is None:
            return Step.NOTHING
        if self.probed_at is not None:
            if now - self.probed_at < ANSWER_TIME:
                return Step.NOTHING
            if not self.answered:
                self.conflict, self.probed_at = None, None
                return Step.OVER
        self.probed_at, self.answered = now, False
        return Step.PROBE

    def reason(self) -> str | None:
        """Why the router is not ready: None while nobody else claims the address."""
        if self.conflict is None:
            return None
        return f"another host (MAC {mac_text(self.conflict.mac)}) claims {self.address}"
