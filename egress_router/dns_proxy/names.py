"""The current addresses of one destination, kept fresh by re-resolving as the TTL runs out.

A failing DNS keeps the last good answer (for at most `stale_limit`); a name that does not resolve yet
is retried with backoff; addresses that refused or timed out are tried last for a while.
"""

from __future__ import annotations

import asyncio
import logging

from egress_router.config.addresses import IPAddress
from egress_router.config.dns_settings import DnsProxySettings
from egress_router.config.dns_targets import Target
from egress_router.dns_proxy.resolver import ResolveError, Resolver
from egress_router.observe.stats import Counter, count
from egress_router.runtime.egress_families import EgressFamilies
from egress_router.runtime.happy_eyeballs import interleave

log = logging.getLogger(__name__)
MAX_BACKOFF = 30.0
#: Ask again when this share of the TTL has passed, so the answer is refreshed before it expires.
REFRESH_AT = 0.9


class FollowedName:
    def __init__(
        self,
        target: Target,
        settings: DnsProxySettings,
        resolver: Resolver | None,
        ipv6: bool = False,
        lookups: Counter | None = None,
        families: EgressFamilies | None = None,
    ) -> None:
        self.target = target
        self.families = families  # None: every family
        self.lookups: Counter = lookups if lookups is not None else {}  # by result, for the metrics
        self.answered_at: float | None = None  # loop time of the last good answer
        self.stale = False  # the last lookup failed and the last good answer is still in use
        self.ipv6 = ipv6
        self.settings = settings
        self.resolver = resolver
        self.addresses: tuple[IPAddress, ...] = (target.address,) if target.address is not None else ()
        self.ready = asyncio.Event()
        if self.addresses:
            self.ready.set()
        self.good_until = float("inf")
        self.failed_until: dict[IPAddress, float] = {}
        self.turn = 0
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.target.address is None:
            self.task = asyncio.get_running_loop().create_task(self.follow())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def follow(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 1.0
        assert self.resolver is not None
        while True:
            try:
                answer = await self.resolver.addresses(self.target.host, ipv6=self.ipv6)
            except ResolveError as error:
                count(self.lookups, "negative" if error.negative else "failed")
                now = loop.time()
                if self.addresses and now > self.good_until:
                    log.warning(
                        "%s: %s; the last good answer is older than %g s, dropped", self.target.host, error, self.settings.stale_limit
                    )
                    self.addresses = ()
                    self.ready.clear()
                    self.stale = False
                elif self.addresses:
                    self.stale = True
                    log.warning("%s: %s; keeping %s", self.target.host, error, ", ".join(map(str, self.addresses)))
                else:
                    log.warning("%s: %s; port %d waits for it", self.target.host, error, self.target.local_port)
                delay = min(backoff, error.ttl if error.negative else backoff, MAX_BACKOFF)
                backoff = min(backoff * 2, MAX_BACKOFF)
            else:
                if answer.addresses != self.addresses:
                    log.info("%s: %s (ttl %d s)", self.target.host, ", ".join(map(str, answer.addresses)), answer.ttl)
                count(self.lookups, "ok")
                self.addresses = answer.addresses
                self.answered_at = loop.time()
                self.stale = False
                self.good_until = loop.time() + self.settings.stale_limit
                self.ready.set()
                backoff = 1.0
                delay = min(max(answer.ttl * REFRESH_AT, self.settings.min_ttl), self.settings.max_ttl)
            await asyncio.sleep(max(delay, self.settings.min_ttl))

    def order(self) -> list[IPAddress]:
        """Addresses to try for a new connection: next in turn first, the families alternating, recently failed ones last;
        none of a family the router has no egress route for (it would leave from the cluster's address)."""
        addresses = list(self.addresses) if self.families is None else self.families.keep(self.addresses)
        if not addresses:
            return []
        self.turn = (self.turn + 1) % len(addresses)
        rotated = interleave(addresses[self.turn :] + addresses[: self.turn])
        now = asyncio.get_running_loop().time()
        return sorted(rotated, key=lambda a: self.failed_until.get(a, 0.0) > now)

    def failed(self, address: IPAddress) -> None:
        self.failed_until[address] = asyncio.get_running_loop().time() + self.settings.avoid_failed_for
