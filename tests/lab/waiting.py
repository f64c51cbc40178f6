"""Waiting in lab tests: one way to poll until something happened, with a message that says what did not."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T | None], seconds: float = 6, what: str | Callable[[], str] = "did not happen in time") -> T:
    """Poll `check` every 0.1 s until it returns something true (returned) or `seconds` pass (an AssertionError with
    `what`, called when it is a function so it can show the state at the end). OSError counts as not yet."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            result = check()
            if result:
                return result
        except OSError:
            pass
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.1)
