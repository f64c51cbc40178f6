"""The HTTP proxy byte for byte, through fake transports (tests/unit/proxy_harness.py): no root, no sockets.

The lab tests (tests/lab/test_http_*.py) prove the same behaviour end to end with real clients; these make
every corner case cheap: smuggling shapes, limits, timeouts, 1xx, keep-alive, pipelining, retries, cut bodies.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from egress_router.http_proxy.server import State
from tests.http_cases import REFUSED
from tests.unit.proxy_harness import Harness, ok, status_of

GET = b"GET http://origin.test/a?b=1 HTTP/1.1\r\nHost: origin.test\r\n\r\n"


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness(max_header_size="8192", header_timeout="1s", idle_timeout="2s", max_connections="40")
    yield harness
    harness.close()


def log_line(h: Harness, needle: str) -> str:
    return next(line for line in h.log_lines() if needle in line)


# requests ------------------------------------------------------------------------------------------


def test_a_request_goes_out_in_origin_form_with_hop_by_hop_headers_dropped(h: Harness) -> None:
    client = h.client()
    client.send(
        b"GET http://origin.test/a?b=1 HTTP/1.1\r\nHost: evil.test\r\nConnection: X-Secret\r\nX-Secret: 1\r\n"
        b"Proxy-Authorization: Basic eDp5\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Kept: yes\r\n\r\n"
    )
    server = h.server()
    assert server.address == ("203.0.113.10", 80)
    assert server.take() == b"GET /a?b=1 HTTP/1.1\r\nHost: origin.test\r\nX-Kept: yes\r\n\r\n"
    server.send(ok(b"hello", "Keep-Alive: timeout=5\r\n"))
    h.settle()
    assert client.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    assert not client.closed
    line = log_line(h, "status=200")
    assert 'method=GET target="http://origin.test/a?b=1"' in line and "in=0 out=5" in line


@pytest.mark.parametrize(("name", "raw", "status"), REFUSED, ids=[case[0] for case in REFUSED])
def test_ambiguous_or_forbidden_requests_are_refused(h: Harness, name: str, raw: bytes, status: int) -> None:
    client, response = h.ask(raw)
    assert status_of(response) == status, response
    assert b"\nHTTP/" not in response  # nothing smuggled behind it
    body = response.split(b"\r\n\r\n", 1)[1]
    assert body.startswith(b"egress-router: ") and body.count(b"\n") == 1  # one line that says why
    assert h.servers == []  # no server was asked anything
    assert client.closed == (status != 403 or b"Connection: close" in response)
    assert f"status={status}" in h.log_lines()[-1]


def test_a_header_line_too_long_gets_431(h: Harness) -> None:
    client = h.client()
    client.send(b"GET http://origin.test/ HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 6000 + b"\r\n\r\n")
    h.settle()
    assert status_of(client.take()) == 431 and client.closed


def test_a_head_too_large_in_total_gets_431_even_before_it_ends(h: Harness) -> None:
    client = h.client()
    client.send(b"GET http://origin.test/ HTTP/1.1\r\nHost: a\r\n")
    for i in range(12):
        client.send(f"X-H{i}: {'b' * 900}\r\n".encode())
    h.settle()
    response = client.take()
    assert status_of(response) == 431 and b"larger than 8192 bytes" in response and client.closed


def test_too_many_header_fields_get_431(h: Harness) -> None:
    client, response = h.ask(
        b"GET http://origin.test/ HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(300)) + b"\r\n"
    )
    assert status_of(response) == 431 and b"too many header fields" in response


def test_a_slow_head_gets_408_at_the_header_timeout(h: Harness) -> None:
    client = h.client()
    client.send(b"GET http://origin.test/ HTTP/1.1\r\n")
    h.advance(0.6)
    client.send(b"Host: a\r\n")
    h.advance(0.3)
    assert client.take() == b"" and h.connection(client).state is State.HEAD
    h.advance(0.2)  # 1.1 s after the first byte
    response = client.take()
    assert status_of(response) == 408 and b"within 1 s" in response and client.closed


def test_a_silent_connection_is_closed_without_a_word(h: Harness) -> None:
    client = h.client()
    h.advance(0.9)
    assert not client.closed
    h.advance(0.2)
    assert client.closed and client.take() == b""


def test_an_idle_keep_alive_connection_is_closed_at_the_idle_timeout(h: Harness) -> None:
    client = h.client()
    client.send(GET)
    h.server().send(ok())
    h.settle()
    assert status_of(client.take()) == 200
    assert h.connection(client).state is State.IDLE
    h.advance(1.9)
    assert not client.closed
    h.advance(0.2)
    assert client.closed and client.take() == b""


def test_connections_beyond_the_limit_get_503(h: Harness) -> None:
    held = [h.client() for _ in range(40)]
    extra = h.client()
    response = extra.take()
    assert status_of(response) == 503 and b"EGRESS_HTTP_PROXY_MAX_CONNECTIONS=40" in response and extra.closed
    assert not any(client.closed for client in held)


def test_pipelined_requests_are_answered_in_order_on_one_server_connection(h: Harness) -> None:
    client = h.client()
    client.send(b"".join(b"GET http://origin.test/p%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(3)))
    server = h.server()
    for i in range(3):
        assert server.take().startswith(b"GET /p%d " % i)
        server.send(ok(b"r%d" % i))
        h.settle()
    assert client.take() == ok(b"r0") + ok(b"r1") + ok(b"r2")
    assert len(h.servers) == 1


def test_expect_100_continue_is_passed_on_to_http_1_1_clients_only(h: Harness) -> None:
    for version, sees_100 in ((b"1.1", True), (b"1.0", False)):
        client = h.client()
        client.send(b"POST http://origin.test/e HTTP/" + version + b"\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        server = h.server()
        server.take()
        server.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        h.settle()
        assert (client.take() == b"HTTP/1.1 100 Continue\r\n\r\n") is sees_100
        client.send(b"hello")
        h.settle()
        assert server.take() == b"hello"
        server.send(ok(b"done"))
        h.settle()
        assert status_of(client.take()) == 200


# responses -----------------------------------------------------------------------------------------


def test_a_chunked_response_is_dechunked_and_closed_for_an_http_1_0_client(h: Harness) -> None:
    client = h.client()
    client.send(b"GET http://origin.test/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    h.server().send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    h.settle()
    assert client.take() == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello world"
    assert client.closed and not client.aborted


def test_http_1_0_keep_alive_is_announced_when_kept(h: Harness) -> None:
    client = h.client()
    client.send(b"GET http://origin.test/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    h.server().send(ok())
    h.settle()
    assert client.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello"
    assert not client.closed


def test_a_body_without_length_is_rechunked_for_http_1_1_clients(h: Harness) -> None:
    client = h.client()
    client.send(GET)
    server = h.server()
    server.send(b"HTTP/1.1 200 OK\r\n\r\nhel")
    h.settle()
    server.send(b"lo")
    server.hang_up()
    h.settle()
    assert client.take() == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"
    assert not client.closed


def test_head_and_304_responses_have_no_body(h: Harness) -> None:
    client = h.client()
    client.send(b"HEAD http://origin.test/ HTTP/1.1\r\nHost: a\r\n\r\n")
    h.server().send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    h.settle()
    assert client.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    client.send(GET)
    h.server().send(b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n")
    h.settle()
    assert client.take() == b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"
    assert len(h.servers) == 1  # both on one pooled connection


CUT = [
    # what the server sends and how it ends, what the client gets after the head, how the client's copy ends, the logged reason
    (b"Content-Length: 10\r\n\r\nhello", "hang_up", b"hello", "closed", "server closed mid-body"),
    (b"Content-Length: 10\r\n\r\nhello", "reset", b"hello", "closed", "server reset mid-body"),
    (b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "hang_up", b"5\r\nhello\r\n", "closed", "server closed mid-body"),
    (b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", b"zz\r\n", b"5\r\nhello\r\n", "closed", "bad response body from the server"),
    (b"\r\nhello", "reset", b"5\r\nhello\r\n", "closed", "server reset mid-body"),
]


@pytest.mark.parametrize(("rest", "ending", "body", "how", "reason"), CUT)
def test_a_body_the_server_cuts_short_ends_the_client_copy_at_once(
    h: Harness, rest: bytes, ending: str | bytes, body: bytes, how: str, reason: str
) -> None:
    client = h.client()
    client.send(GET)
    server = h.server()
    server.send(b"HTTP/1.1 200 OK\r\n" + rest)
    h.settle()
    if isinstance(ending, bytes):
        server.send(ending)
    else:
        getattr(server, ending)()
    h.settle()
    head, _, received = client.take().partition(b"\r\n\r\n")
    assert status_of(head) == 200 and received == body  # no more than came: missing bytes or no last chunk
    assert client.closed and not client.aborted
    line = log_line(h, "status=200")
    assert reason in line and "out=5" in line
    assert h.proxy.connections == set()  # the slot is free


def test_a_body_that_ends_with_the_connection_is_reset_when_cut(h: Harness) -> None:
    client = h.client()
    client.send(b"GET http://origin.test/ HTTP/1.0\r\n\r\n")
    server = h.server()
    server.send(b"HTTP/1.1 200 OK\r\n\r\nhello")
    h.settle()
    server.reset()
    h.settle()
    assert client.take().endswith(b"\r\n\r\nhello")
    assert client.aborted  # only a reset tells an HTTP/1.0 client its body was cut


def test_a_server_silent_mid_body_is_cut_at_the_idle_timeout(h: Harness) -> None:
    client = h.client()
    client.send(GET)
    server = h.server()
    server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
    h.settle()
    h.advance(1.5)
    server.send(b"!")
    h.advance(1.5)
    assert not client.closed  # a byte came 1.5 s ago
    h.advance(0.6)
    assert client.take().endswith(b"hello!") and client.closed
    assert "no bytes from the server for 2 s mid-body" in log_line(h, "status=200")


def test_a_slow_client_is_not_taken_for_a_silent_server(h: Harness) -> None:
    client = h.client()
    client.send(GET)
    server = h.server()
    server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
    h.settle()
    client.fill()  # the client stops reading
    for _ in range(3):
        server.send(b"x" * 100_000)
        h.settle()
    assert not server.reading  # back-pressure reached the server
    h.advance(10)
    assert not client.closed
    client.drain()
    h.settle()
    assert server.reading
    assert len(client.take()) > 300_000


def test_an_oversized_response_head_gets_a_clear_502(h: Harness) -> None:
    client = h.client()
    client.send(GET)
    h.server().send(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 900) for i in range(12)) + b"\r\n")
    h.settle()
    response = client.take()
    assert status_of(response) == 502 and b"response head from the server larger than 8192 bytes" in response


def test_an_ambiguous_response_is_not_passed_on(h: Harness) -> None:
    client = h.client()
    client.send(GET)
    h.server().send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    h.settle()
    response = client.take()
    assert status_of(response) == 502 and b"bad response from the server" in response and b"hello" not in response


def test_a_silent_server_gets_504_at_the_idle_timeout(h: Harness) -> None:
    client = h.client()
    client.send(GET)
    h.server()
    h.advance(2.1)
    response = client.take()
    assert status_of(response) == 504 and b"no response from the server within 2 s" in response


# servers and names ---------------------------------------------------------------------------------


def test_a_refused_server_gets_502_with_the_reason(h: Harness) -> None:
    h.refused.add(("203.0.113.10", 80))
    client = h.client()
    client.send(GET)
    h.settle()
    assert b"203.0.113.10 port 80: connection refused" in client.take()


def test_an_unanswered_connect_gets_504_at_the_connect_timeout() -> None:
    h = Harness(connect_timeout="3s")
    try:
        h.silent.add(("203.0.113.10", 80))
        client = h.client()
        client.send(GET)
        h.settle()
        h.advance(3.1)
        assert status_of(client.take()) == 504
    finally:
        h.close()


def test_a_name_that_does_not_resolve_gets_502_and_says_so(h: Harness) -> None:
    client, response = h.ask(b"GET http://nowhere.test/ HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_of(response) == 502 and b"cannot resolve nowhere.test: Name or service not known" in response


def test_a_denied_request_without_a_body_keeps_the_connection(h: Harness) -> None:
    client = h.client()
    client.send(b"GET http://198.51.100.1/ HTTP/1.1\r\nHost: a\r\n\r\n")
    h.settle()
    assert status_of(client.take()) == 403 and not client.closed
    client.send(b"POST http://198.51.100.1/ HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
    h.settle()
    response = client.take()
    assert status_of(response) == 403 and b"Connection: close" in response and client.closed


def test_server_connections_are_pooled_and_a_stale_one_is_retried_once(h: Harness) -> None:
    first = h.client()
    first.send(GET)
    h.server().send(ok())
    h.settle()
    second = h.client()
    second.send(GET)
    stale = h.server(0)
    assert len(h.servers) == 1 and stale.take().startswith(b"GET /a?b=1")
    stale.hang_up()  # its keep-alive timeout struck just as the request came
    fresh = h.server()
    assert len(h.servers) == 2 and fresh.take().startswith(b"GET /a?b=1")
    fresh.send(ok())
    h.settle()
    assert status_of(second.take()) == 200


def test_a_request_with_a_body_is_never_sent_twice(h: Harness) -> None:
    first = h.client()
    first.send(GET)
    h.server().send(ok())
    h.settle()
    client = h.client()
    client.send(b"POST http://origin.test/ HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\ndata")
    h.server().hang_up()
    h.settle()
    assert status_of(client.take()) == 502 and len(h.servers) == 1


# uploads, clients that leave, CONNECT, SIGTERM -----------------------------------------------------


def test_a_chunked_upload_is_passed_on_byte_exact(h: Harness) -> None:
    client = h.client()
    client.send(b"POST http://origin.test/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    server = h.server()
    client.send(b"2\r\nde\r\n0\r\n\r\n")
    h.settle()
    assert server.take().endswith(b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    server.send(ok())
    h.settle()
    assert "in=5 out=5" in log_line(h, "status=200")


@pytest.mark.parametrize("how", ["send_eof", "reset"])
def test_a_client_that_leaves_mid_upload_is_logged_499_at_once(h: Harness, how: str) -> None:
    client = h.client()
    client.send(b"POST http://origin.test/ HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
    server = h.server()
    getattr(client, how)()
    h.settle()
    line = log_line(h, "status=499")
    assert 'rule="client went away"' in line and "in=10" in line
    assert server.aborted


def test_a_client_that_leaves_mid_download_is_logged_with_the_bytes_sent(h: Harness) -> None:
    client = h.client()
    client.send(GET)
    server = h.server()
    server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
    h.settle()
    client.reset()
    h.settle()
    assert "out=40" in log_line(h, "status=499") and server.aborted


def test_connect_tunnels_bytes_both_ways_and_passes_half_closes(h: Harness) -> None:
    client = h.client()
    client.send(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\nearly")
    client.send_eof()  # before the tunnel is even up
    server = h.server()
    assert client.take() == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert server.take() == b"early" and server.eof_written
    server.send(b"reply")
    server.send_eof()
    h.settle()
    assert client.take() == b"reply" and client.closed and server.closed
    line = log_line(h, "method=CONNECT")
    assert "status=200" in line and "in=5 out=5" in line and "both sides closed" in line


def test_connect_to_a_port_not_allowed_gets_403(h: Harness) -> None:
    client, response = h.ask(b"CONNECT origin.test:22 HTTP/1.1\r\nHost: origin.test:22\r\n\r\n")
    assert status_of(response) == 403 and b"EGRESS_HTTP_PROXY_CONNECT_PORTS=443,8000" in response and client.closed


def test_sigterm_closes_idle_connections_now_and_busy_ones_after_their_response(h: Harness) -> None:
    idle, busy = h.client(), h.client()
    busy.send(GET)
    server = h.server()
    h.proxy.drain()
    h.settle()
    assert idle.closed and not busy.closed
    server.send(ok())
    h.settle()
    response = busy.take()
    assert status_of(response) == 200 and b"Connection: close" in response and busy.closed


# found in review ------------------------------------------------------------------------------------


def test_a_refusal_after_a_request_does_not_count_that_request_again(h: Harness) -> None:
    client = h.client()
    client.send(GET)
    h.server().send(ok(b"x" * 100))
    h.settle()
    assert status_of(client.take()) == 200
    client.send(b"GET http://origin.test/ HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
    h.settle()
    assert status_of(client.take()) == 400
    assert "in=0 out=0" in h.log_lines()[-1]
    assert h.proxy.bytes[("out",)] == 100
    assert ("other", "400", "deny") in h.proxy.requests


def test_bytes_for_a_connect_pipelined_behind_a_request_go_to_the_tunnel(h: Harness) -> None:
    client = h.client()
    client.send(GET + b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
    server = h.server()
    client.send(b"\x16\x03\x01 a TLS hello")
    h.settle()
    server.send(ok())
    h.settle()
    assert client.take() == ok() + b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert h.server().take() == b"\x16\x03\x01 a TLS hello"


def test_a_status_a_server_makes_up_is_counted_as_other(h: Harness) -> None:
    client = h.client()
    for code in (200, 777):
        client.send(GET)
        h.server().send(f"HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n".encode())
        h.settle()
    assert ("GET", "200", "allow") in h.proxy.requests and ("GET", "other", "allow") in h.proxy.requests


def test_a_malformed_request_behind_a_busy_one_is_answered_after_it_in_order(h: Harness) -> None:
    client = h.client()
    client.send(GET)
    server = h.server()
    server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
    h.settle()
    client.send(b"GET http://origin.test/ HTTP/1.1\r\nBad Header\r\n\r\n")  # pipelined, mid-response
    h.settle()
    assert client.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345"  # nothing wedged into the body
    server.send(b"67890")
    h.settle()
    answered = client.take()
    assert answered.startswith(b"67890HTTP/1.1 400 ") and client.closed
    assert [line.split("status=")[1][:3] for line in h.log_lines()] == ["200", "400"]


def test_a_pipelining_client_cannot_make_the_proxy_queue_without_bound(h: Harness) -> None:
    client = h.client()
    client.send(GET * 40)
    h.settle()
    assert not client.reading  # held at MAX_QUEUED parsed requests
    for _ in range(40):
        h.server().send(ok())
        h.settle()
    assert client.reading and client.take().count(b"HTTP/1.1 200 OK") == 40


def test_bytes_waiting_for_a_tunnel_are_bounded_then_passed_on(h: Harness) -> None:
    h.silent.add(("203.0.113.10", 443))
    client = h.client()
    client.send(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
    for _ in range(3):
        client.send(b"x" * 30000)
    h.settle()
    assert not client.reading and h.connection(client).pending_bytes == 90000


def test_bytes_held_for_a_tunnel_are_released_when_it_is_up(h: Harness) -> None:
    client = h.client()
    client.send(GET + b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
    server = h.server()
    client.send(b"y" * 70000)
    h.settle()
    assert not client.reading
    server.send(ok())
    h.settle()
    assert client.reading and h.server().take() == b"y" * 70000


def test_a_connect_whose_server_hangs_up_before_the_tunnel_gets_502_and_a_log_line(h: Harness) -> None:
    real_open = h.open

    async def open_then_hang_up(factory, host, port):  # type: ignore[no-untyped-def]
        transport, upstream = await real_open(factory, host, port)
        transport.hang_up()
        return transport, upstream

    h.proxy.pool.open_connection = open_then_hang_up
    client, response = h.ask(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
    assert status_of(response) == 502 and b"closed the connection before the tunnel was up" in response
    assert "status=502" in log_line(h, "method=CONNECT")


def test_a_half_closed_client_is_closed_once_answered_not_at_the_idle_timeout(h: Harness) -> None:
    client = h.client()
    client.send(GET)
    client.send_eof()
    h.server().send(ok())
    h.settle()
    assert status_of(client.take()) == 200 and client.closed


def test_tunnel_bytes_count_while_they_flow_and_its_lifetime_has_its_own_histogram(h: Harness) -> None:
    client = h.client()
    client.send(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
    server = h.server()
    client.send(b"a" * 10)
    server.send(b"b" * 20)
    h.settle()
    bytes_now = h.proxy.stats.snapshot()["egress_router_http_bytes_total"]
    assert sorted(bytes_now) == [[["in"], 10], [["out"], 20]]
    client.hang_up()
    h.settle()
    taken = h.proxy.stats.snapshot()
    assert sorted(taken["egress_router_http_bytes_total"]) == [[["in"], 10], [["out"], 20]]  # not counted twice
    for histogram in ("egress_router_http_tunnel_duration_seconds", "egress_router_http_request_duration_seconds"):
        (series,) = taken[histogram]
        assert sum(series[1][:-1]) == 1  # one observation each: the tunnel's lifetime, the CONNECT until it was up
