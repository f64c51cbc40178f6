"""The HTTP proxy's pure pieces that the lab tests reach only through a whole exchange."""

import string
from ipaddress import IPv4Address, IPv6Address

from aiohttp.http_exceptions import BadHttpMessage, LineTooLong, TransferEncodingError
from hypothesis import example, given
from hypothesis import strategies as st

from egress_router.config.hostnames import host_name_problem
from egress_router.http_proxy import messages as m
from tests.unit.proxy_harness import Harness


def test_error_text_is_the_telling_line_not_aiohttps_preamble() -> None:
    assert str(LineTooLong(b"X-Big: aaa...", 65536)).splitlines()[0] == "400, message:"  # what used to be shown
    assert m.error_text(LineTooLong(b"X-Big: aaa...", 65536)).startswith("Got more than 65536 bytes when reading")
    assert m.error_text(TransferEncodingError("Invalid character in chunk size:\n\n  b'zz'\n  ^")) == "Invalid character in chunk size"
    assert m.error_text(BadHttpMessage("")) == "BadHttpMessage"  # nothing to say: at least what kind of error
    assert m.error_text(ValueError()) == "ValueError"


def test_error_response_says_how_the_connection_goes_on() -> None:
    def connection(response: bytes) -> list[bytes]:
        return [line for line in response.split(b"\r\n\r\n", 1)[0].split(b"\r\n") if line.lower().startswith(b"connection:")]

    assert connection(m.error_response(403, "no")) == [b"Connection: close"]
    assert connection(m.error_response(403, "no", close=False)) == []  # HTTP/1.1: kept open unless said otherwise
    assert connection(m.error_response(403, "no", close=False, announce_keep_alive=True)) == [b"Connection: keep-alive"]  # HTTP/1.0
    assert connection(m.error_response(403, "no", close=True, announce_keep_alive=True)) == [b"Connection: close"]


# Properties of every parser in messages.py. Where one found a bug, the case is named next to it.

HOP_BY_HOP_NAMES = sorted(m.HOP_BY_HOP)
END_TO_END_NAMES = ["Accept", "User-Agent", "Content-Type", "Content-Length", "X-Custom", "Cookie", "Cache-Control", "Via"]

letters_digits = st.sampled_from(string.ascii_letters + string.digits)
#: A DNS label as a client writes it: a letter first (so no name is all digits), no hyphen last, any case.
labels = st.builds(
    lambda first, rest, last: (first + rest + last).rstrip("-"),
    st.sampled_from(string.ascii_letters),
    st.text(alphabet=string.ascii_letters + string.digits + "-_", max_size=20),
    st.text(alphabet=string.ascii_letters + string.digits, max_size=1),
)
names = st.lists(labels, min_size=1, max_size=4).map(".".join)
hosts = names | st.ip_addresses(v=4).map(str) | st.ip_addresses(v=6).map(str)
paths = st.text(alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%", max_size=30).map(lambda p: "/" + p)
queries = st.none() | st.text(alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/?%", max_size=20)
ports = st.integers(1, 65535)
#: Text that looks enough like a request target to reach the parsers' deep branches.
target_ish = st.text(alphabet="htpsHTPS:/[]@.%?#-_0123456789abcdefABCDEF \t\x00" + "é", max_size=40) | st.builds(
    lambda scheme, middle, rest: scheme + middle + rest,
    st.sampled_from(["http://", "HTTP://", "https://", "http:/", "", "//"]),
    st.text(alphabet="[]:@.%0123456789abcdef-", max_size=25),
    st.sampled_from(["", "/", "/p?q", "#f", ":", ":80"]),
)


def bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def expected_target(host: str, port: int, path: str = "") -> m.RequestTarget:
    address = m.literal_address(host)
    return m.RequestTarget(host if address else host.lower(), address, port, path)


def well_formed(target: m.RequestTarget) -> None:
    """What every parsed target is: a host that is an address literal or a name, never empty, a port in range."""
    assert target.host and 1 <= target.port <= 65535
    assert target.address == m.literal_address(target.host)
    assert (":" in target.host) == (target.address is not None and target.address.version == 6)  # "a:b:443" is no name
    assert target.host.isascii() and target.host.isprintable() and " " not in target.host
    if target.address is None:
        assert host_name_problem(target.host) is None  # a name a resolver reads as a name, never as an address


@example("http://0x7f.1/")  # found: a name that resolvers read as 127.0.0.1
@example("http://./")  # found: "." was taken for a name, the empty one
@example("http://h\x7f/")  # found: a control character was taken as part of a name
@given(st.text() | target_ish)
def test_absolute_targets_parse_or_explain(raw: str) -> None:
    target = m.parse_absolute_target(raw)
    if isinstance(target, str):
        assert target
        return
    well_formed(target)
    assert target.path.startswith("/")
    assert m.parse_connect_target(target.authority) == m.RequestTarget(target.host, target.address, target.port)


@given(hosts, st.none() | ports, paths | st.just(""), queries)
def test_an_absolute_target_parses_back_to_what_built_it(host: str, port: int | None, path: str, query: str | None) -> None:
    raw = f"http://{bracketed(host)}{'' if port is None else f':{port}'}{path}{'' if query is None else f'?{query}'}"
    wanted = (path or "/") + (f"?{query}" if query else "")
    assert m.parse_absolute_target(raw) == expected_target(host, port or 80, wanted)


@given(hosts, ports)
def test_authority_and_host_header(host: str, port: int) -> None:
    target = expected_target(host, port, "/")
    assert target.authority == f"{bracketed(target.host)}:{port}"
    assert target.host_header == (bracketed(target.host) if port == 80 else target.authority)  # port 80 goes without saying
    assert m.parse_absolute_target(f"http://{target.host_header}/") == m.RequestTarget(target.host, target.address, port, "/")


@given(hosts, ports)
def test_connect_takes_host_and_port(host: str, port: int) -> None:
    assert m.parse_connect_target(f"{bracketed(host)}:{port}") == expected_target(host, port)


@given(hosts, st.one_of(st.just("0"), st.integers(65536, 99999).map(str), st.just(""), st.just("08o"), st.just("4431" * 2)))
def test_connect_refuses_a_port_out_of_range(host: str, port: str) -> None:
    assert m.parse_connect_target(f"{bracketed(host)}:{port}") == "CONNECT needs host:port"


@given(hosts, ports, st.sampled_from(["/", "/x", "?q", "#f", " ", "\t", ":1"]), st.sampled_from(["", "http://", "//", "u@", " ", "["]))
def test_connect_refuses_anything_more_than_host_and_port(host: str, port: int, after: str, before: str) -> None:
    assert m.parse_connect_target(f"{before}{bracketed(host)}:{port}{after}") == "CONNECT needs host:port"
    assert m.parse_connect_target(bracketed(host)) == "CONNECT needs host:port"


@example("a:" + "9" * 5000)  # found: int() of more than 4300 digits raised ValueError out of the parser
@example(".:443")  # found: "." was taken for a name, the empty one
@example("h\t:443")  # found: a tab (any control character) was taken as part of a name
@example("a:b:443")
@given(st.text() | target_ish)
def test_connect_targets_parse_or_explain(raw: str) -> None:
    target = m.parse_connect_target(raw)
    if isinstance(target, str):
        assert target == "CONNECT needs host:port"
        return
    well_formed(target)
    assert target.path == ""
    hostport, _, port_text = raw.rpartition(":")
    assert int(port_text) == target.port
    assert hostport == bracketed(target.host) or hostport.lower().rstrip(".") == target.host
    assert m.parse_connect_target(target.authority) == target


@given(st.text())
def test_literal_address_is_total(text: str) -> None:
    address = m.literal_address(text)
    assert address is None or m.literal_address(str(address)) == address


@given(st.ip_addresses())
def test_literal_address_reads_every_address(address: IPv4Address | IPv6Address) -> None:
    assert m.literal_address(str(address)) == address
    assert m.literal_address(f"[{address}]") is None  # brackets belong to URLs, not to addresses


def any_case(name: str) -> st.SearchStrategy[bytes]:
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda upper: "".join(c.upper() if u else c.lower() for c, u in zip(name, upper, strict=True)).encode()
    )


header_names = st.sampled_from(HOP_BY_HOP_NAMES + END_TO_END_NAMES + ["Host"]).flatmap(any_case)
header_values = st.binary(max_size=12).map(lambda v: v.replace(b"\r", b"").replace(b"\n", b""))
connection_values = st.lists(st.sampled_from(END_TO_END_NAMES + HOP_BY_HOP_NAMES + ["host", "close"]).flatmap(any_case), max_size=3).map(
    lambda tokens: b" , ".join(tokens)
)
headers = st.lists(
    st.one_of(st.tuples(header_names, header_values), st.tuples(any_case("Connection"), connection_values)),
    max_size=10,
)


@example([(b"Connection", b"content-length"), (b"Content-Length", b"5")], None)  # found: the length went, so the body
# would have been read by the server as the next request (and the response queue of a pooled connection shifted)
@example([(b"Connection", b"host")], "example.com")  # found: the Host the proxy writes itself was taken away
@given(headers, st.none() | hosts.map(bracketed))
def test_forwarded_headers_are_end_to_end_in_order(raw: list[tuple[bytes, bytes]], host_header: str | None) -> None:
    named = {token.strip().lower() for name, value in raw if name.lower() == b"connection" for token in value.split(b",")}
    kept = m.forwarded_headers(raw, host_header)
    if host_header is not None:
        assert kept[0] == (b"Host", host_header.encode())
        kept = kept[1:]
        assert all(name.lower() != b"host" for name, _ in kept)
    for name, _ in kept:
        assert name.lower() not in m.HOP_BY_HOP_BYTES
        assert name.lower() not in named or name.lower() == b"content-length"  # the one option a Connection may not remove
    end_to_end = [
        (name, value)
        for name, value in raw
        if name.lower() not in m.HOP_BY_HOP_BYTES
        and (name.lower() not in named or name.lower() == b"content-length")
        and not (host_header is not None and name.lower() == b"host")
    ]
    assert kept == end_to_end


@example(b"HTTP/1.1 200 caf\xe9")  # found: a latin-1 reason phrase (aiohttp gives "caf\udce9") raised UnicodeEncodeError
@example(b"HTTP/1.1 200 \xe2\x82\xac")  # found: and a UTF-8 one ("\u20ac") too
@given(st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")))
def test_head_sends_the_first_line_as_it_came(first_line: bytes) -> None:
    as_aiohttp_gives_it = first_line.decode("utf-8", "surrogateescape")
    assert m.head(as_aiohttp_gives_it, []) == first_line + b"\r\n\r\n"


@given(
    st.text(
        st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=40
    ),  # a first line is one line: parsed fields, never CR/LF
    st.lists(st.tuples(header_names, header_values), max_size=5),
    st.lists(st.tuples(st.just("X-A"), st.text("ab", max_size=3))),
)
def test_head_is_first_line_then_header_lines_then_blank(
    first_line: str, raw: list[tuple[bytes, bytes]], extra: list[tuple[str, str]]
) -> None:
    text = m.head(first_line, raw, extra)
    assert text.endswith(b"\r\n\r\n")
    lines = text[: -len(b"\r\n\r\n")].split(b"\r\n")
    assert lines[1:] == [name + b": " + value for name, value in raw] + [f"{n}: {v}".encode() for n, v in extra]


@given(st.sampled_from(sorted(m.REASONS)) | st.integers(100, 599), st.text(), st.booleans(), st.booleans())
def test_error_response_is_well_formed(status: int, reason: str, close: bool, announce: bool) -> None:
    response = m.error_response(status, reason, close=close, announce_keep_alive=announce)
    head_bytes, body = response.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head_bytes.decode("ascii").split("\r\n")
    assert status_line == f"HTTP/1.1 {status} {m.REASONS.get(status, 'Error')}"
    fields = dict(line.split(": ", 1) for line in header_lines)
    assert int(fields["Content-Length"]) == len(body)
    assert fields.get("Connection") == ("close" if close else "keep-alive" if announce else None)
    assert body.endswith(b"\n") and b"\n" not in body[:-1] and b"\r" not in body  # one line, even for "a\nb" (found)
    assert body.decode().startswith(f"egress-router: {m.REASONS.get(status, 'Error').lower()}: ")


def dechunk(data: bytes) -> tuple[bytes, bytes]:
    """A chunked body's bytes, and what follows its last chunk."""
    body = b""
    while True:
        size_line, data = data.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            assert data.startswith(b"\r\n")
            return body, data[2:]
        body, data = body + data[:size], data[size:]
        assert data.startswith(b"\r\n")
        data = data[2:]


@example([b"", b"after"])  # found: an empty piece made "0\r\n\r\n", the last chunk, and the rest followed the body
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_chunks_carry_the_pieces_and_only_the_last_one_ends_the_body(pieces: list[bytes]) -> None:
    body, rest = dechunk(b"".join(m.chunk(piece) for piece in pieces) + m.LAST_CHUNK)
    assert (body, rest) == (b"".join(pieces), b"")


@example(Exception(":"))  # found: the reason was empty
@given(
    st.one_of(
        st.text().map(Exception),
        st.text().map(BadHttpMessage),
        st.text().map(TransferEncodingError),
        st.builds(LineTooLong, st.binary(max_size=20), st.integers(1, 10**6)),
    )
)
def test_error_text_is_one_telling_line(error: Exception) -> None:
    text = m.error_text(error)
    assert text and text == text.strip() and len(text.splitlines()) == 1
    assert not text.startswith("400, message:")


# The two bugs above that a client or server could reach, through a whole proxy (tests/unit/proxy_harness.py).


def test_a_connection_option_naming_the_length_does_not_smuggle_the_body_as_a_request() -> None:
    h = Harness()
    smuggled = b"GET /admin HTTP/1.1\r\nHost: origin.test\r\n\r\n"
    h.client().send(
        b"POST http://origin.test/a HTTP/1.1\r\nHost: origin.test\r\nConnection: content-length, host\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(smuggled), smuggled)
    )
    h.settle()
    sent = h.server().take()
    h.close()
    assert sent == b"POST /a HTTP/1.1\r\nHost: origin.test\r\nContent-Length: %d\r\n\r\n%b" % (len(smuggled), smuggled)


def test_a_reason_phrase_in_any_encoding_is_passed_on_as_it_came() -> None:
    h = Harness()
    client = h.client()
    client.send(b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n")
    h.settle()
    h.server().send(b"HTTP/1.1 404 Non trouv\xe9\r\nContent-Length: 2\r\n\r\nno")
    h.settle()
    answer = client.take()
    h.close()
    assert answer == b"HTTP/1.1 404 Non trouv\xe9\r\nContent-Length: 2\r\n\r\nno"
