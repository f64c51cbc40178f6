from pathlib import Path

from egress_router.config.dns_targets import parse_targets
from egress_router.watch import FileWatcher


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
