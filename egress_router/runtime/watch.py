"""Follow a mounted ConfigMap file: re-read it when it changes, keep the last good version on errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from egress_router.config.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")
INTERVAL = 1.0


@dataclass(frozen=True)
class ListFile:
    """A list variable's file and the text the running settings were parsed from."""

    path: str
    text: str


def _identity(path: str) -> tuple[int, int, int] | None:
    """What changes when Kubernetes swaps a ConfigMap's ..data link or an editor rewrites the file."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


class FileWatcher(Generic[T]):
    def __init__(
        self,
        path: str,
        variable: str,
        parse: Callable[[str], T],
        apply: Callable[[T], None],
        text: str,
        interval: float = INTERVAL,
        outcome: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self.outcome = outcome  # told "applied" or "rejected" for each new version (the reloads metric)
        # The content in force, not the file's identity when this watcher started: a worker that starts after
        # the file changed must still see the change (the text came from the parent, before it forked).
        self.text = text
        self.variable = variable
        self.parse = parse
        self.apply = apply
        self.interval = interval
        self.seen: tuple[int, int, int] | None = None  # so the first check reads the file
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()

    def check(self) -> bool:
        """Reload when the file changed; returns whether a new version was applied."""
        current = _identity(self.path)
        if current == self.seen:
            return False
        self.seen = current
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as error:
            log.error("%s: cannot read %s (%s); keeping the previous list", self.variable, self.path, error)
            self._tell("rejected")
            return False
        if text == self.text:
            return False
        self.text = text
        try:
            value = self.parse(text)
        except ConfigError as error:
            for problem in error.problems:
                log.error("%s; keeping the previous list", problem)
            self._tell("rejected")
            return False
        self.apply(value)
        log.info("%s: reloaded %s", self.variable, self.path)
        self._tell("applied")
        return True

    def _tell(self, result: str) -> None:
        if self.outcome is not None:
            self.outcome(result)


@contextlib.contextmanager
def following(
    list_file: ListFile | None,
    variable: str,
    parse: Callable[[str], T],
    apply: Callable[[T], None],
    outcome: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Follow `list_file` while the block runs (inside a running loop); no file given, nothing to follow."""
    if list_file is None:
        yield
        return
    watcher = FileWatcher(list_file.path, variable, parse, apply, list_file.text, outcome=outcome)
    watcher.start()
    try:
        yield
    finally:
        watcher.stop()


class SerialApply(Generic[T]):
    """Applies new lists one at a time, the latest winning: a change that arrives while one is being applied
    waits, changes in between are skipped, and a failure is logged as such (never a lost task's exception)."""

    def __init__(self, variable: str, apply: Callable[[T], Awaitable[None]]) -> None:
        self.variable = variable
        self.apply = apply
        self.pending: tuple[T] | None = None
        self.task: asyncio.Task[None] | None = None

    def submit(self, value: T) -> None:
        self.pending = (value,)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self.pending is not None:
            (value,), self.pending = self.pending, None
            try:
                await self.apply(value)
            except Exception as error:  # noqa: BLE001 - the running list stays; the reason must reach the log
                log.error("%s: applying the new list failed: %s: %s", self.variable, type(error).__name__, error)

    async def settle(self) -> None:
        """Wait for the change being applied, and any waiting one."""
        while self.task is not None and not self.task.done():
            await asyncio.shield(self.task)
