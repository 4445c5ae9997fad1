"""The ``file://`` watcher of ContentUri triggers (kmpray/watch.py): what a poll reports,
and its bound. The scheduler runs it in a thread (a 10,000-file snapshot took 140-160 ms
on its event loop every second before session 41)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from kmpray.watch import MTIME_SLACK_MS, FileWatcher, snapshot


def _touch(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_poll_reports_each_added_changed_and_deleted_file_below_the_path_as_its_uri(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _touch(root / "a.jpg")
    _touch(root / "deep" / "b.jpg")
    _touch(root / "deep" / "c.jpg")
    watcher, uri = FileWatcher(), root.as_uri()
    assert watcher.poll({uri}) == []  # the first look is a baseline
    assert watcher.poll({uri}) == []  # nothing changed
    _touch(root / "deep" / "b.jpg", "longer")  # changed (size)
    (root / "deep" / "c.jpg").unlink()  # deleted
    _touch(root / "new dir" / "d é.jpg")  # added, with characters a URI escapes
    assert sorted(watcher.poll({uri})) == sorted([
        (root / "deep" / "b.jpg").as_uri(), (root / "deep" / "c.jpg").as_uri(),
        (root / "new dir" / "d é.jpg").as_uri()])
    one = root / "a.jpg"  # a single file watched
    assert watcher.poll({one.as_uri()}) == [] and watcher.poll({one.as_uri()}) == []
    os.utime(one, ns=(1, 1))
    assert watcher.poll({one.as_uri()}) == [one.as_uri()]


def test_a_directory_link_is_not_followed_and_a_missing_path_is_empty(tmp_path: Path) -> None:
    root = tmp_path / "w"
    _touch(root / "f")
    _touch(tmp_path / "elsewhere" / "g")
    (root / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    files, whole = snapshot(root)
    assert sorted(files) == [str(root / "f")] and whole
    assert snapshot(tmp_path / "missing") == ({}, True)


def test_a_path_over_the_bound_is_cut_short_and_said_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "many"
    for i in range(30):
        _touch(root / f"d{i % 3}" / f"f{i}")
    files, whole = snapshot(root, limit=10)
    assert not whole and len(files) < 10
    assert snapshot(root, limit=33) == (snapshot(root)[0], True)  # 30 files and 3 directories: all of them
    watcher = FileWatcher(limit=10)
    with caplog.at_level(logging.WARNING, logger="kmpray.watch"):
        watcher.poll({root.as_uri()})
        watcher.poll({root.as_uri()})
    said = [r.getMessage() for r in caplog.records if "more than 10 files" in r.getMessage()]
    assert len(said) == 1 and root.as_uri() in said[0]


def test_what_a_poll_reports_fires_a_trigger_however_its_file_uri_is_spelled(tmp_path: Path) -> None:
    """The watcher reports ``Path.as_uri()`` (percent-encoded); the trigger's URI is the
    user's text. A trigger on a path with an (unencoded) accent, or written ``file:/…`` or
    ``file://localhost/…``, never fired on a real change below it (found touring, session
    46; a space is refused at enqueue, so it comes as %20, as as_uri() writes it)."""
    from kmpray.triggers import uri_matches

    root = tmp_path / "photos-é"
    _touch(root / "a.jpg")
    for pattern in (f"file://{root}", f"file:{root}", f"file://localhost{root}/", root.as_uri()):
        watcher = FileWatcher()
        assert watcher.poll({pattern}) == []
        _touch(root / "a.jpg", "changed" + pattern)
        changed = watcher.poll({pattern})
        assert changed == [(root / "a.jpg").as_uri()], pattern
        assert uri_matches(pattern, changed[0], descendants=True), pattern


def test_at_the_first_look_a_file_modified_since_the_arming_is_a_change(tmp_path: Path) -> None:
    """A write right after ``enqueue`` (before the first poll), or while the scheduler was
    down, was taken for the baseline and never fired the trigger (until session 50)."""
    root = tmp_path / "inbox"
    _touch(root / "old.txt")
    _touch(root / "new.txt")
    os.utime(root / "old.txt", ns=(1_000_000_000_000, 1_000_000_000_000))  # 1,000,000 ms
    os.utime(root / "new.txt", ns=(2_000_000_000_000, 2_000_000_000_000))  # 2,000,000 ms
    uri = root.as_uri()
    assert FileWatcher().poll({uri: 2_000_000}) == [(root / "new.txt").as_uri()]  # at or after
    # ... or up to MTIME_SLACK_MS before: a coarse clock stamps a file up to a tick early
    assert FileWatcher().poll({uri: 2_000_000 + MTIME_SLACK_MS}) == [(root / "new.txt").as_uri()]
    assert FileWatcher().poll({uri: 2_000_001 + MTIME_SLACK_MS}) == []
    assert FileWatcher().poll({uri: None}) == []  # no instant (virtual time): a baseline only
    watcher = FileWatcher()
    both = sorted([(root / "old.txt").as_uri(), (root / "new.txt").as_uri()])
    assert sorted(watcher.poll({uri: 0})) == both
    assert watcher.poll({uri: 0}) == []  # the instant counts at the first look only


def test_each_watched_uri_comes_with_the_earliest_instant_a_task_on_it_was_armed() -> None:
    from kmpray import TaskTrigger

    from .conftest import Harness

    h = Harness()
    a, b, other = "file:///data/a", "file:///data/b", "content://media/x"
    h.core.submit("a1", TaskTrigger.ContentUri(a), "Ok")
    at = h.clock.now_ms()
    h.clock.set(at + 5_000)
    h.core.submit("a2", TaskTrigger.ContentUri(a), "Ok")
    h.core.submit("b1", TaskTrigger.ContentUri(b), "Ok")
    h.core.submit("o", TaskTrigger.ContentUri(other), "Ok")  # not a file: not watched
    assert h.core.watched_uris() == {a: at, b: at + 5_000}
    assert h.core.watched_uris(since=False) == {a: None, b: None}
    h.clock.set(at + 9_000)
    assert h.core.fire("content_uri", b + "/f") == 1
    h.step()  # b1 ran and was armed again: changes before that set it off already
    assert h.core.latest("b1").run_count == 1  # type: ignore[union-attr]
    assert h.core.watched_uris() == {a: at, b: at + 9_000}


def test_each_change_comes_with_its_instant_and_sets_off_only_tasks_armed_before_it(tmp_path: Path) -> None:
    """At a first look ``changes`` gives each file's modification time, and ``fire(...,
    at_ms=)`` skips a task armed after it: after a restart, the first look from the
    earliest arming on a path (an exact-path task's, armed long ago) no longer sets off
    again a task on the same path whose run already answered that change. A later look's
    changes come with no instant: a file copied in keeping an older time still counts."""
    from kmpray import TaskTrigger

    from .conftest import Harness

    root = tmp_path / "box"
    _touch(root / "f")
    os.utime(root / "f", ns=(5_000_000_000, 5_000_000_000))
    watcher = FileWatcher()
    assert watcher.changes({root.as_uri(): 0}) == [((root / "f").as_uri(), 5_000)]
    (root / "f").unlink()
    _touch(root / "copied")
    os.utime(root / "copied", ns=(1_000_000, 1_000_000))  # as `rsync -a` leaves it: long ago
    assert sorted(watcher.changes({root.as_uri(): 0})) == [((root / "copied").as_uri(), None),
                                                           ((root / "f").as_uri(), None)]

    h = Harness()
    uri = "file:///data/box"
    t0 = h.clock.now_ms()
    h.core.submit("below", TaskTrigger.ContentUri(uri), "Ok")
    h.core.submit("exact", TaskTrigger.ContentUri(uri, trigger_for_descendants=False), "Ok")
    before_both = t0 - MTIME_SLACK_MS - 1  # before either was armed, by more than the slack
    assert h.core.fire("content_uri", uri + "/f", at_ms=before_both) == 0
    h.clock.set(t0 + 5_000)
    assert h.core.fire("content_uri", uri + "/f", at_ms=t0 + 5_000) == 1  # "below" only
    h.clock.set(t0 + 5_001 + MTIME_SLACK_MS)
    assert [d.key for d in h.step()] == ["below"]  # its run ends after the change: armed again
    assert h.core.watched_uris() == {uri: t0}  # "exact" was armed at t0
    # A restarted scheduler's first look reports the same change (modified after t0):
    assert h.core.fire("content_uri", uri + "/f", at_ms=t0 + 5_000) == 0
    assert h.core.fire("content_uri", uri + "/g", at_ms=t0 + 6_000) == 1  # a later one does
    assert h.core.fire("content_uri", uri + "/g") == 1  # no instant (notify, virtual time): as before


def test_a_file_stamped_a_clock_tick_before_the_arming_still_sets_the_task_off(tmp_path: Path) -> None:
    """Linux before 6.13 stamps files from its coarse clock (the last tick, up to 10 ms
    behind): a file written 3 ms after ``enqueue`` could read as modified 1 ms before the
    task was armed. The first look took it for the baseline, and ``fire`` skipped the task
    as armed after the change: the trigger never fired. (The likely cause of one CI timeout
    in session 56, not proven: this machine's 6.18 kernel stamps finely.)"""
    from kmpray import TaskTrigger

    from .conftest import Harness

    h = Harness()
    root = tmp_path / "inbox"
    root.mkdir()
    armed = h.clock.now_ms()
    h.core.submit("inbox", TaskTrigger.ContentUri(root.as_uri()), "Ok")
    _touch(root / "a.txt")
    early = (armed - 4) * 1_000_000  # as a coarse clock stamps a write 3 ms after the arming
    os.utime(root / "a.txt", ns=(early, early))
    changed = FileWatcher().changes(h.core.watched_uris())
    assert changed == [((root / "a.txt").as_uri(), armed - 4)]
    assert sum(h.core.fire("content_uri", uri, at) for uri, at in changed) == 1
    h.clock.set(armed + 1)
    assert [d.key for d in h.step()] == ["inbox"]
    assert h.core.latest("inbox").run_count == 1  # type: ignore[union-attr]
