"""The undo log of `init`: every change to the pod records how to take itself back, so a failure
part-way through leaves the pod as it was found."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)


class Journal:
    """Undo steps in the order they must run (last change first)."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], Any]]] = []

    def record(self, what: str, undo: Callable[[], Any]) -> None:
        self._steps.append((what, undo))

    def __len__(self) -> int:
        return len(self._steps)

    def rollback(self) -> list[str]:
        """Undo everything; returns what could not be undone (each is logged)."""
        failed = []
        while self._steps:
            what, undo = self._steps.pop()
            try:
                undo()
                log.debug("rolled back: %s", what)
            except Exception as error:  # noqa: BLE001 - keep undoing the rest whatever happens
                failed.append(f"{what}: {describe(error)}")
                log.error("could not roll back %s: %s", what, describe(error))
        return failed


def describe(error: Exception) -> str:
    if isinstance(error, NetlinkError):
        return os.strerror(error.code) if error.code else str(error)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)
