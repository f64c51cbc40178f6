"""Requests the proxy must refuse, with the status it must give: one table for the lab (real sockets, through
the whole process) and the unit tests (fake transports, no root). The origin is 127.0.0.1:8000, CONNECT is
allowed to port 8000 only, and the list is `!*.blocked.test` then `127.0.0.1`."""

from __future__ import annotations

REFUSED = [
    ("CL.TE", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", 400),
    (
        "TE.CL",
        b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "two different Content-Length",
        b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    ("Content-Length list", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
    ("Content-Length with sign", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", 400),
    ("Content-Length in hex", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello", 400),
    ("obs-fold", b"GET http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n", 400),
    ("whitespace before colon", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    (
        "bad chunk size",
        b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk size overflow",
        b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    ("TE xchunked", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    (
        "TE chunked then identity",
        b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("TE chunked, gzip", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    ("TE gzip, chunked", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("NUL in a header", b"GET http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
    ("bare LF line ends", b"GET http://127.0.0.1:8000/ HTTP/1.1\nHost: a\n\n", 400),
    ("space in the target", b"GET http://127.0.0.1:8000/a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("origin-form to a proxy", b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n", 400),
    ("https URL in a plain request", b"GET https://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("userinfo in URL", b"GET http://user:pw@127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("CONNECT without port", b"CONNECT 127.0.0.1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    ("CONNECT with a URL", b"CONNECT http://127.0.0.1:8000/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    ("CONNECT to a port not allowed", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n", 403),
    ("denied by the list", b"GET http://x.blocked.test/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 403),
    ("not in the list", b"GET http://198.51.100.1/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 403),
    ("TE in HTTP/1.0", b"POST http://127.0.0.1:8000/ HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE with vertical tab", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n", 400),
    ("tab before colon", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n", 400),
    ("quoted chunked", b'POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: "chunked"\r\n\r\n0\r\n\r\n', 400),
    (
        "bare LF after chunk size",
        b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
        400,
    ),
    (
        "empty chunk extension",
        b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "space after chunk size",
        b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk longer than its size",
        b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    ("negative Content-Length", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    (
        "overflowing Content-Length",
        b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        400,
    ),
    ("space in a header name", b"GET http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nX Y: 1\r\n\r\n", 400),
    ("bare CR in a value", b"GET http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400),
    ("lower-case method", b"get http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    ("HTTP/2.0 request line", b"GET http://127.0.0.1:8000/ HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    ("no Host in HTTP/1.1", b"GET http://127.0.0.1:8000/ HTTP/1.1\r\n\r\n", 400),
    ("two Host headers", b"GET http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
]
