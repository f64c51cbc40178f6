"""Zero-copy relaying between two TCP sockets with splice(2): the bytes never enter Python.

Each direction goes socket -> pipe -> socket inside the kernel. Reading from a side stops while its
pipe cannot be emptied into the other side (flow control), end-of-file becomes shutdown(SHUT_WR) on the
other side once the pipe is drained (half-close), and an error on either side resets the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
import struct

from egress_router.runtime.tunnel import IdleWatch

CHUNK = 1 << 20
FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
RETRY = (errno.EAGAIN, errno.EWOULDBLOCK)


def available() -> bool:
    return hasattr(os, "splice")


class _Direction:
    """Bytes from `src` to `dst` through one pipe."""

    def __init__(self, pump: SplicePump, index: int, src: socket.socket, dst: socket.socket) -> None:
        self.pump = pump
        self.index = index
        self.src = src
        self.dst = dst
        self.read_end, self.write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # the default pipe size works too, in smaller steps
            fcntl.fcntl(self.write_end, F_SETPIPE_SZ, CHUNK)
        self.buffered = 0
        self.eof = False
        self.done = False

    def start(self) -> None:
        self.pump.loop.add_reader(self.src.fileno(), self.readable)

    def readable(self) -> None:
        try:
            moved = os.splice(self.src.fileno(), self.write_end, CHUNK, flags=FLAGS)
        except OSError as error:
            if error.errno in RETRY:
                return
            self.pump.fail(error)
            return
        if moved == 0:
            self.eof = True
            self.pump.loop.remove_reader(self.src.fileno())
        else:
            self.buffered += moved
            self.pump.sent[self.index] += moved
        self.drain()

    def drain(self) -> None:
        while self.buffered:
            try:
                moved = os.splice(self.read_end, self.dst.fileno(), self.buffered, flags=FLAGS)
            except OSError as error:
                if error.errno in RETRY:
                    # the other side is full: stop reading until it takes more
                    self.pump.loop.remove_reader(self.src.fileno())
                    self.pump.loop.add_writer(self.dst.fileno(), self.writable)
                    return
                self.pump.fail(error)
                return
            self.buffered -= moved
        if self.eof and not self.done:
            self.done = True
            with contextlib.suppress(OSError):
                self.dst.shutdown(socket.SHUT_WR)
            self.pump.direction_done()

    def writable(self) -> None:
        self.pump.loop.remove_writer(self.dst.fileno())
        self.drain()
        if not self.buffered and not self.eof and not self.pump.finished.done():
            self.pump.loop.add_reader(self.src.fileno(), self.readable)

    def close(self) -> None:
        for fd in (self.read_end, self.write_end):
            os.close(fd)


class SplicePump:
    """Relay two connected sockets until both directions end, one fails, or nothing moves for `idle_timeout`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: socket.socket, server: socket.socket, idle_timeout: float) -> None:
        self.loop = loop
        self.sockets = (client, server)
        self.sent = [0, 0]  # client->server, server->client
        self.finished: asyncio.Future[str] = loop.create_future()
        self.directions = (_Direction(self, 0, client, server), _Direction(self, 1, server, client))
        self.idle = IdleWatch(loop, self.sent, idle_timeout, self.finish)

    def start(self) -> None:
        for direction in self.directions:
            direction.start()

    def direction_done(self) -> None:
        if all(d.done for d in self.directions):
            self.finish("both sides closed")

    def fail(self, error: OSError) -> None:
        reset = error.errno in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT)
        self.finish(f"{error.strerror or error}".lower(), reset=reset)

    def finish(self, why: str, *, reset: bool = False) -> None:
        if self.finished.done():
            return
        self.idle.cancel()
        for sock in self.sockets:
            fd = sock.fileno()
            if fd >= 0:
                self.loop.remove_reader(fd)
                self.loop.remove_writer(fd)
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        for direction in self.directions:
            direction.close()
        self.finished.set_result(why)
