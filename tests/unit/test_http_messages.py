"""The HTTP proxy's pure pieces that the lab tests reach only through a whole exchange."""

from aiohttp.http_exceptions import BadHttpMessage, LineTooLong, TransferEncodingError

from egress_router.http_proxy import messages as m


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
