"""The monitor's readiness (init/monitor.Keeper.ready): unready the moment SIGTERM arrives, even while a pass that
began before it is still under way (a review found /readyz kept answering 200 until the pass ended)."""

from __future__ import annotations

import asyncio

from egress_router.config.init_settings import load_init_settings
from egress_router.init.monitor import Keeper
from egress_router.init.nat_backend import decide
from egress_router.init.plan import build_plan


def test_sigterm_makes_the_monitor_unready_at_once() -> None:
    settings = load_init_settings(source="192.168.12.99", gateway="192.168.12.1", destination="80 tcp 203.0.113.25", mode="init")
    stop = asyncio.Event()
    keeper = Keeper(settings, build_plan(settings), decide("nftables", None), stop)
    keeper.problem = None  # a whole pass done: ready
    assert keeper.ready() is None
    stop.set()  # what the SIGTERM handler does; no pass needs to end first
    assert keeper.ready() == "draining: stopping on SIGTERM"
    keeper.stopping = True  # the watch ended; linger then clears `stop` to wait for a second signal
    stop.clear()
    assert keeper.ready() == "draining: stopping on SIGTERM"
