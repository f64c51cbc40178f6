"""The metrics' plain counters, their merging across workers, the Prometheus text and the supervisor's probes."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from egress_router.observe.exposition import SnapshotCollector, registry_of, render
from egress_router.observe.reports import SILENT_LIMIT, Reports, SupervisorEndpoints, send_report
from egress_router.observe.stats import Metric, Stats, by_name, merge, without_gauges

METRICS = (
    Metric("t_requests_total", "counter", "requests", ("code",)),
    Metric("t_open", "gauge", "open now"),
    Metric("t_seconds", "histogram", "durations", (), (0.1, 1.0)),
)


def stats(requests: dict[str, int], open_now: int, durations: list[float]) -> Stats:
    made = Stats(METRICS)
    for code, n in requests.items():
        made.add("t_requests_total", (code,), n)
    made.computed("t_open", lambda: {(): open_now})
    for value in durations:
        made.observe("t_seconds", (), value)
    return made


def scrape(read: dict[str, dict[tuple[str, ...], object]]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = render(registry_of(SnapshotCollector("test", by_name(METRICS), lambda: read))).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_a_snapshot_is_json_and_renders_as_prometheus_text() -> None:
    snapshot = stats({"200": 3, "403": 1}, 2, [0.05, 0.5, 5.0]).snapshot()
    assert json.loads(json.dumps(snapshot)) == snapshot
    found = scrape(merge([snapshot]))
    assert found[("t_requests_total", (("code", "200"),))] == 3
    assert found[("t_open", ())] == 2
    assert found[("t_seconds_bucket", (("le", "0.1"),))] == 1  # cumulative buckets
    assert found[("t_seconds_bucket", (("le", "1.0"),))] == 2
    assert found[("t_seconds_bucket", (("le", "+Inf"),))] == 3
    assert found[("t_seconds_count", ())] == 3 and found[("t_seconds_sum", ())] == 5.55
    assert found[("egress_router_build_info", (("mode", "test"), ("version", "0.1.0")))] == 1


counts = st.dictionaries(st.sampled_from(["200", "404", "502"]), st.integers(0, 1000), max_size=3)


@given(st.lists(st.tuples(counts, st.integers(0, 50), st.lists(st.floats(0, 100), max_size=5)), max_size=4))
def test_merging_workers_adds_every_series(workers: list[tuple[dict[str, int], int, list[float]]]) -> None:
    merged = merge([stats(*worker).snapshot() for worker in workers])
    for code in ("200", "404", "502"):
        total = sum(requests.get(code, 0) for requests, _, _ in workers)
        assert merged.get("t_requests_total", {}).get((code,), 0) == total
    assert merged.get("t_open", {}).get((), 0) == sum(open_now for _, open_now, _ in workers)
    observed = sum(len(durations) for _, _, durations in workers)
    assert sum(merged.get("t_seconds", {}).get((), [0])[:-1]) == observed


def test_an_exited_workers_counts_stay_but_not_its_gauges() -> None:
    reports = Reports(by_name(METRICS), workers=2)
    for pid, requests in ((11, 5), (12, 7)):
        reports.latest[pid] = (time.monotonic(), stats({"200": requests}, 1, []).snapshot(), None)
    reports.exited(11)
    reports.latest[13] = (time.monotonic(), stats({"200": 2}, 1, []).snapshot(), None)  # its replacement
    merged = reports.merged()
    assert merged["t_requests_total"][("200",)] == 14
    assert merged["t_open"][()] == 2
    assert without_gauges(stats({}, 1, []).snapshot(), by_name(METRICS)).keys() == {"t_requests_total", "t_seconds"}


def test_the_supervisors_probes() -> None:
    reports = Reports(by_name(METRICS), workers=2)
    assert reports.ready() == "0 of 2 workers ready"
    reports.latest[11] = (time.monotonic(), {}, None)
    assert reports.ready() == "1 of 2 workers ready"
    reports.latest[12] = (time.monotonic() - SILENT_LIMIT - 1, {}, None)
    assert reports.health() == f"worker(s) 12 silent for over {SILENT_LIMIT:g} s (event loop stuck)"
    assert reports.ready() == reports.health()
    reports.latest[12] = (time.monotonic(), {}, "port 5432 not listening")
    assert reports.health() is None and reports.ready() == "port 5432 not listening"
    reports.latest[12] = (time.monotonic(), {}, None)
    assert reports.ready() is None
    reports.stop()
    assert reports.ready() == "draining: stopping on SIGTERM"


def test_a_report_read_after_its_worker_was_reaped_is_dropped() -> None:
    reports = Reports(by_name(METRICS), workers=1)
    reports.receiver.setblocking(False)
    worker = stats({"200": 5}, 0, [])
    send_report(reports.sender, worker, lambda: None)
    reports.receive()
    worker.add("t_requests_total", ("200",), 2)
    send_report(reports.sender, worker, lambda: None)  # its last report, still in the socket when it is reaped
    reports.exited(os.getpid())
    reports.receive()
    assert reports.merged()["t_requests_total"][("200",)] == 5  # what it had reported, once; not 5 + 7
    assert reports.latest == {}


def test_the_supervisors_news_come_in_order_with_the_reports() -> None:
    """A worker's last report, still unread when it is reaped, is read before the news of its exit: counted once."""
    endpoints = SupervisorEndpoints(0, "test", by_name(METRICS), workers=1)
    reports = endpoints.reports
    reports.receiver.setblocking(False)
    worker = stats({"200": 5}, 1, [])
    send_report(reports.sender, worker, lambda: None)
    worker.add("t_requests_total", ("200",), 2)
    send_report(reports.sender, worker, lambda: None)  # its last report
    endpoints.exited(os.getpid())  # the supervisor reaped it
    endpoints.stop()
    reports.receive()
    assert reports.merged()["t_requests_total"][("200",)] == 7 and reports.latest == {}
    assert "t_open" not in reports.merged()  # its gauges went with it
    assert reports.ready() == "draining: stopping on SIGTERM"


def test_a_report_too_large_for_a_datagram_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    receiver, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    huge = Stats(METRICS)
    for code in range(100_000):
        huge.add("t_requests_total", (str(code),))
    send_report(sender, huge, lambda: None)
    assert "cannot send this worker's metrics to the supervisor" in caplog.text
    receiver.close()
    sender.close()


def test_relayed_bytes_count_while_they_flow_and_never_go_back() -> None:
    stats = Stats([Metric("relayed_bytes_total", "counter", "bytes", ("port", "direction"))])
    relayed = stats.relayed("relayed_bytes_total")
    assert stats.relayed("relayed_bytes_total") is relayed  # one keeper per counter, however many users
    sent = [0, 0]
    relayed.start(("53",), sent)
    sent[0], sent[1] = 5, 7
    while_flowing = merge([stats.snapshot()])["relayed_bytes_total"]
    relayed.end(sent)
    relayed.end(sent)  # a second end counts nothing
    assert while_flowing == merge([stats.snapshot()])["relayed_bytes_total"] == {("53", "in"): 5, ("53", "out"): 7}
