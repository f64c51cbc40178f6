"""A lab server that answers every TCP connection and UDP datagram with the client address it saw.

Run: python -m egress_router.lab.whoami tcp:203.0.113.25:80 udp:203.0.113.25:53 tcp:2001:db8:113::25:80 ...
It prints "ready" once every socket is bound, then one JSON object per answer goes to the peer.
TCP connections receive the answer line, then whatever they send is echoed back until they close.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from functools import partial


def answer(proto: str, local: tuple[str, int], peer: tuple[str, int]) -> bytes:
    seen = {"proto": proto, "server": local[0], "port": local[1], "client": peer[0], "client_port": peer[1]}
    return (json.dumps(seen) + "\n").encode()


async def _tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(answer("tcp", writer.get_extra_info("sockname"), writer.get_extra_info("peername")))
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, local: tuple[str, int]) -> None:
        self.local = local

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(answer("udp", self.local, addr), addr)  # type: ignore[attr-defined]


async def serve(specs: list[str]) -> None:
    loop = asyncio.get_running_loop()
    for spec in specs:
        proto, _, address = spec.partition(":")
        host, _, port_text = address.rpartition(":")  # an IPv6 host has colons of its own
        port = int(port_text)
        if proto == "tcp":
            await asyncio.start_server(_tcp, host, port, reuse_address=True)
        else:
            await loop.create_datagram_endpoint(partial(_Udp, (host, port)), local_addr=(host, port))
    print("ready", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1:]))
