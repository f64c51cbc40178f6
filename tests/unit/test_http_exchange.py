"""The pure decisions of one exchange (egress_router/http_proxy/exchange.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress_router.http_proxy import exchange as x

versions = st.sampled_from([(1, 0), (1, 1)])
methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"])
statuses = st.integers(min_value=200, max_value=599)


@pytest.mark.parametrize(
    ("version", "te", "status"),
    [
        ((1, 1), None, None),
        ((1, 0), None, None),
        ((1, 1), "chunked", None),
        ((2, 0), None, 505),
        ((0, 9), None, 505),
        ((1, 0), "chunked", 400),
    ],
)
def test_versions_and_http_1_0_framing(version: tuple[int, int], te: str | None, status: int | None) -> None:
    answer = x.version_problem(version, te)
    assert (answer.status if answer else None) == status


@pytest.mark.parametrize(
    ("te", "status"), [(None, None), ("chunked", None), (" Chunked ", None), ("gzip, chunked", 501), ("identity", 501)]
)
def test_only_chunked_transfer_coding_is_passed_on(te: str | None, status: int | None) -> None:
    answer = x.framing_problem(te)
    assert (answer.status if answer else None) == status
    if answer:
        assert answer.close and te in answer.reason


def test_a_denied_request_keeps_the_connection_only_without_a_body_or_close() -> None:
    assert not x.denied("no", has_body=False, client_asked_close=False).close
    assert x.denied("no", has_body=True, client_asked_close=False).close
    assert x.denied("no", has_body=False, client_asked_close=True).close


def test_connect_ports() -> None:
    assert x.connect_port_problem(443, frozenset({443})) is None
    answer = x.connect_port_problem(22, frozenset({8443, 443}))
    assert answer is not None and answer.status == 403 and "EGRESS_HTTP_PROXY_CONNECT_PORTS=443,8443" in answer.reason


@given(statuses, versions)
def test_interim_responses(status: int, version: tuple[int, int]) -> None:
    assert not x.is_interim(status)
    assert x.is_interim(100) and x.is_interim(103) and not x.is_interim(101)
    assert x.forward_interim(version) is (version == (1, 1))


@given(methods, versions, statuses, st.booleans(), st.booleans())
def test_response_framing(method: str, version: tuple[int, int], status: int, chunked: bool, has_length: bool) -> None:
    framing = x.response_framing(method, version, status, chunked=chunked, has_length=has_length)
    if method == "HEAD" or status in (204, 304):
        assert framing == x.ResponseFraming(body=False, rechunk=False, ends_with_close=False)
        return
    assert framing.body
    length_known = has_length and not chunked
    assert framing.rechunk is (not length_known and version == (1, 1))  # never chunked to an HTTP/1.0 client
    assert framing.ends_with_close is (not length_known and version == (1, 0))
    assert framing.cut_needs_reset is framing.ends_with_close


@given(st.booleans(), st.booleans(), st.booleans(), versions, st.booleans())
def test_keep_alive(asked_close: bool, draining: bool, upload_complete: bool, version: tuple[int, int], ends_with_close: bool) -> None:
    framing = x.ResponseFraming(body=True, rechunk=False, ends_with_close=ends_with_close)
    keep = x.keep_client(client_asked_close=asked_close, draining=draining, upload_complete=upload_complete, framing=framing)
    assert keep is not (asked_close or draining or not upload_complete or ends_with_close)
    header = x.connection_header(keep, version)
    if not keep:
        assert header == ("Connection", "close")
    else:
        assert header == (("Connection", "keep-alive") if version == (1, 0) else None)


@given(st.integers(1, 2), st.booleans(), st.booleans(), st.booleans(), st.booleans(), methods)
def test_a_request_is_retried_only_once_and_only_when_safe(
    attempt: int, reused: bool, lost: bool, answered: bool, has_body: bool, method: str
) -> None:
    retry = x.may_retry(attempt=attempt, reused=reused, lost=lost, answered=answered, has_body=has_body, method=method)
    if retry:
        assert attempt == 1 and reused and lost and not answered and not has_body and method != "POST" and method != "PATCH"
    if attempt == 1 and reused and lost and not answered and not has_body and method == "GET":
        assert retry


@given(st.booleans(), st.booleans(), st.booleans(), st.booleans())
def test_only_cleanly_ended_server_connections_are_pooled(complete: bool, upload: bool, asked_close: bool, lost: bool) -> None:
    assert x.reusable(complete=complete, upload_complete=upload, server_asked_close=asked_close, lost=lost) is (
        complete and upload and not asked_close and not lost
    )


@given(st.booleans(), st.text(alphabet="0123456789", max_size=6) | st.none())
def test_request_has_body(chunked: bool, length: str | None) -> None:
    assert x.request_has_body(chunked, length) is (chunked or int(length or 0) > 0)
