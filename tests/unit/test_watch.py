from pathlib import Path

from egress_router.config.dns_targets import parse_targets
from egress_router.runtime.watch import FileWatcher


def watcher(path: Path, started_with: str, applied: list) -> FileWatcher:  # type: ignore[type-arg]
    return FileWatcher(str(path), "EGRESS_DNS_PROXY_DESTINATION_FILE", parse_targets, applied.append, started_with)


def test_a_change_before_the_watcher_started_is_still_seen(tmp_path: Path) -> None:
    listing = tmp_path / "list"
    listing.write_text("80 b.example\n")  # changed after the settings were read, before this worker started
    applied: list = []  # type: ignore[type-arg]
    assert watcher(listing, "80 a.example\n", applied).check()
    assert applied[0][0].host == "b.example"


def test_unchanged_content_is_not_applied_again(tmp_path: Path) -> None:
    listing = tmp_path / "list"
    listing.write_text("80 a.example\n")
    applied: list = []  # type: ignore[type-arg]
    follower = watcher(listing, "80 a.example\n", applied)
    assert not follower.check()
    listing.write_text("80 a.example\n")  # rewritten, same content
    assert not follower.check() and applied == []


def test_a_bad_version_is_ignored_and_the_next_good_one_applied(tmp_path: Path) -> None:
    listing = tmp_path / "list"
    listing.write_text("80 a.example\n")
    applied: list = []  # type: ignore[type-arg]
    follower = watcher(listing, "80 a.example\n", applied)
    listing.write_text("80 a..example\n")
    assert not follower.check()
    listing.write_text("80 c.example 8080\n")
    assert follower.check() and applied[0][0].remote_port == 8080


def test_serial_apply_runs_one_at_a_time_latest_wins_and_logs_failures(caplog) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from egress_router.runtime.watch import SerialApply

    applied: list[str] = []
    running = 0

    async def apply(value: str) -> None:
        nonlocal running
        running += 1
        assert running == 1, "two reloads at once"
        await asyncio.sleep(0.01)
        running -= 1
        if value == "bad":
            raise RuntimeError("port 80 is taken")
        applied.append(value)

    async def main() -> None:
        reloads = SerialApply("EGRESS_DNS_PROXY_DESTINATION_FILE", apply)
        reloads.submit("first")
        await asyncio.sleep(0)
        reloads.submit("second")  # skipped: "third" arrives before it could start
        reloads.submit("third")
        await reloads.settle()
        reloads.submit("bad")
        await reloads.settle()
        reloads.submit("fourth")
        await reloads.settle()

    asyncio.run(main())
    assert applied == ["first", "third", "fourth"]
    assert "EGRESS_DNS_PROXY_DESTINATION_FILE: applying the new list failed: RuntimeError: port 80 is taken" in caplog.text
