"""Connecting to one of several addresses of both families, as RFC 8305 ("Happy Eyeballs v2") describes, without
its DNS part: the proxies resolve first, check every address, then connect to exactly those.

Why: with a dual-stack destination whose IPv6 path is broken (a black hole, not a refusal), trying one address
after the other would cost a whole connect timeout before IPv4 is tried, on every new connection. Here the families
alternate and the next attempt starts after ATTEMPT_DELAY while the earlier ones keep trying, or at once when one
fails; the first connection made wins and the others are cancelled (or closed, if they connected in the same turn).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import Any, TypeVar

from egress_router.config.addresses import IPAddress

#: RFC 8305 5: "Connection Attempt Delay", recommended 250 ms.
ATTEMPT_DELAY = 0.25

T = TypeVar("T")


def interleave(addresses: Sequence[IPAddress]) -> list[IPAddress]:
    """The addresses with their families alternating (RFC 8305 4), the first address's family first, each
    family in its own order; so a broken family costs one attempt, not one per address."""
    if not addresses:
        return []
    first = [a for a in addresses if a.version == addresses[0].version]
    other = [a for a in addresses if a.version != addresses[0].version]
    merged: list[IPAddress] = []
    for index in range(max(len(first), len(other))):
        merged += first[index : index + 1] + other[index : index + 1]
    return merged


async def first_to_connect(
    addresses: Sequence[IPAddress],
    attempt: Callable[[IPAddress], Coroutine[Any, Any, T]],
    failed: Callable[[IPAddress, OSError | TimeoutError], None],
    discard: Callable[[T], None],
    delay: float = ATTEMPT_DELAY,
    outpaced: Callable[[IPAddress], None] = lambda address: None,
) -> tuple[IPAddress, T] | None:
    """The first address `attempt` connects to, with its connection; None when every attempt failed.

    `attempt` bounds its own time (its connect timeout raises TimeoutError); each OSError or TimeoutError is told
    to `failed`; a connection made after the winner's goes to `discard`; `outpaced` hears of the addresses still
    trying when another won (asked earlier, answered later: a caller may try them last next time). Anything else
    raised is a bug and propagates.
    """
    if len(addresses) == 1:  # the common case: no task, no timer
        try:
            return addresses[0], await attempt(addresses[0])
        except (OSError, TimeoutError) as error:
            failed(addresses[0], error)
            return None
    loop = asyncio.get_running_loop()
    waiting = list(addresses)
    running: dict[asyncio.Task[T], IPAddress] = {}
    try:
        while waiting or running:
            if waiting:
                address = waiting.pop(0)
                running[loop.create_task(attempt(address))] = address
            done, _ = await asyncio.wait(running, timeout=delay if waiting else None, return_when=asyncio.FIRST_COMPLETED)
            winner = _ended(done, running, failed, discard)
            if winner is not None:
                for address in running.values():
                    outpaced(address)
                return winner
        return None
    finally:
        for task in running:  # attempts still under way (or done in the same turn as the winner)
            task.cancel()
            task.add_done_callback(partial(_discard, discard))


def _ended(
    done: set[asyncio.Task[T]],
    running: dict[asyncio.Task[T], IPAddress],
    failed: Callable[[IPAddress, OSError | TimeoutError], None],
    discard: Callable[[T], None],
) -> tuple[IPAddress, T] | None:
    """Attempts that ended in this turn: failures told, the first connection kept, any other discarded."""
    winner: tuple[IPAddress, T] | None = None
    for task in done:
        address = running.pop(task)
        problem = task.exception()
        if problem is None:
            if winner is None:
                winner = (address, task.result())
            else:
                discard(task.result())
        elif isinstance(problem, OSError):  # TimeoutError is one too
            failed(address, problem)
        else:
            raise problem
    return winner


def _discard(discard: Callable[[T], None], task: asyncio.Task[T]) -> None:
    """A stopped attempt: if it connected before it could be stopped, that connection is not wanted."""
    if not task.cancelled() and task.exception() is None:
        discard(task.result())
