"""A lab origin server: tells the client what it saw, echoes bodies, serves sized bodies, over HTTP and HTTPS.

Run: python -m egress_router.lab.http_server --http 0.0.0.0:8000 [--http [::]:8000] [--https 0.0.0.0:8443 --cert C --key K]
Prints "ready" once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl

from aiohttp import web

PATTERN = bytes(range(256)) * 256  # 64 KiB


def pattern(size: int) -> bytes:
    """Deterministic bytes so a client can check a download byte for byte."""
    whole, rest = divmod(size, len(PATTERN))
    return PATTERN * whole + PATTERN[:rest]


async def seen(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "client": request.remote,
            "client_port": request.transport.get_extra_info("peername")[1] if request.transport else None,
            "server": request.transport.get_extra_info("sockname")[0] if request.transport else None,
            "method": request.method,
            "path": request.path_qs,
            "host": request.headers.get("Host"),
            "headers": {k: v for k, v in request.headers.items()},
            "body_length": len(body),
            "tls": request.secure,
        }
    )


async def echo(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    async for data in request.content.iter_any():
        await response.write(data)
    await response.write_eof()
    return response


async def sized(request: web.Request) -> web.Response:
    return web.Response(body=pattern(int(request.match_info["size"])), content_type="application/octet-stream")


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.match_info["seconds"]))
    return web.Response(text="slow\n")


def app() -> web.Application:
    application = web.Application(client_max_size=1024**3)
    application.router.add_route("*", "/echo", echo)
    application.router.add_get("/bytes/{size:\\d+}", sized)
    application.router.add_get("/slow/{seconds}", slow)
    application.router.add_route("*", "/{tail:.*}", seen)
    return application


async def main(args: argparse.Namespace) -> None:
    runner = web.AppRunner(app(), access_log=None)
    await runner.setup()
    for spec in args.http:
        host, port = spec.rsplit(":", 1)
        host = host.strip("[]")  # [::]:8000
        await web.TCPSite(runner, host, int(port)).start()
    if args.https:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
        for spec in args.https:
            host, port = spec.rsplit(":", 1)
            host = host.strip("[]")
            await web.TCPSite(runner, host, int(port), ssl_context=context).start()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", action="append", default=[])
    parser.add_argument("--https", action="append", default=[])
    parser.add_argument("--cert")
    parser.add_argument("--key")
    asyncio.run(main(parser.parse_args()))
