"""One line per event, on stderr, readable without a log shipper."""

from __future__ import annotations

import logging
import sys


def setup(debug: bool, command: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s egress-router {command} %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # libraries (pyroute2 logs every netlink message at debug) stay quiet
    logging.getLogger("egress_router").setLevel(logging.DEBUG if debug else logging.INFO)
