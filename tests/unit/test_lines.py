from hypothesis import given
from hypothesis import strategies as st

from egress_router.config.lines import meaningful_lines, parse_port


def test_comments_blank_lines_and_tabs() -> None:
    lines = list(meaningful_lines("# head\n\n a\tb  # tail\n#\n   c"))
    assert [(line.number, line.fields) for line in lines] == [(3, ("a", "b")), (5, ("c",))]


def test_ports() -> None:
    assert parse_port("1") == 1 and parse_port("65535") == 65535
    for bad in ("0", "65536", "+1", "1.0", "", "٣", "000001"):
        assert parse_port(bad) is None


@given(st.text())
def test_port_parser_is_total(text: str) -> None:
    port = parse_port(text)
    assert port is None or (1 <= port <= 65535 and str(port) == text.lstrip("0"))
