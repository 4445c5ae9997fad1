"""FileCompressionWorker in-process (no Ray): a link to a file outside the base directory
is refused, not zipped; and the zipping runs in a thread, not on the executor's loop."""

from __future__ import annotations

import asyncio
import json
import threading
import zipfile
from pathlib import Path

import pytest

from kmpray import EngineConfig, WorkerContext
from kmpray.results import Failure, Success
from kmpray.workers.files import FileCompressionWorker


def _run(base: Path, cfg: dict[str, object], progress: list[int] | None = None) -> tuple[object, int]:
    threads = progress if progress is not None else []
    ctx = WorkerContext("t", 0, engine_config=EngineConfig(files_base_dir=str(base)),
                        progress_sink=lambda pct, msg: threads.append(threading.get_ident()))

    async def run() -> tuple[object, int]:
        return await FileCompressionWorker().do_work(json.dumps(cfg), ctx), threading.get_ident()

    return asyncio.run(run())


def test_a_link_out_of_the_base_directory_is_refused_naming_it_and_nothing_is_written(tmp_path: Path) -> None:
    """Each path must resolve inside files_base_dir; a link inside the source directory to
    a file outside it was followed, and its content zipped (the tour zipped /etc/hostname)."""
    base, outside = tmp_path / "base", tmp_path / "secret.txt"
    (base / "src").mkdir(parents=True)
    (base / "src" / "a.txt").write_text("mine")
    outside.write_text("not yours")
    (base / "src" / "leak.txt").symlink_to(outside)
    (base / "src" / "inside.txt").symlink_to(base / "src" / "a.txt")  # a link that stays inside: fine
    refused, _ = _run(base, {"inputPath": "src", "outputPath": "out.zip"})
    assert isinstance(refused, Failure) and not (base / "out.zip").exists()
    assert refused.message == (f"inputPath: 'leak.txt' is a link to {str(outside)!r}, outside the allowed "
                               f"base directory {str(base)!r} (leave it out with excludePatterns)")
    done, _ = _run(base, {"inputPath": "src", "outputPath": "out.zip", "excludePatterns": ["leak.txt"]})
    assert isinstance(done, Success)
    with zipfile.ZipFile(base / "out.zip") as zf:
        assert sorted(zf.namelist()) == ["a.txt", "inside.txt"] and zf.read("inside.txt") == b"mine"


def test_the_zipping_runs_off_the_event_loop(tmp_path: Path) -> None:
    base = tmp_path / "base"
    (base / "src").mkdir(parents=True)
    for i in range(3):
        (base / "src" / f"f{i}").write_bytes(b"x" * 1000)
    progress: list[int] = []
    done, loop_thread = _run(base, {"inputPath": "src"}, progress)
    assert isinstance(done, Success) and done.data["originalSize"] == 3000
    assert len(progress) == 3 and loop_thread not in progress  # reported from the zipping thread


def test_an_output_path_that_is_the_input_file_is_refused_and_the_file_kept(tmp_path: Path) -> None:
    """``outputPath`` naming the input file (itself or through a link) opened the zip for
    writing over it before reading it: the run reported Success and the zip held an empty
    member, the original gone (found touring, session 46)."""
    (tmp_path / "a.txt").write_text("precious data")
    (tmp_path / "link.txt").symlink_to(tmp_path / "a.txt")
    for out in ("a.txt", str(tmp_path / "a.txt"), "link.txt"):
        refused, _ = _run(tmp_path, {"inputPath": "a.txt", "outputPath": out, "deleteOriginal": True})
        assert isinstance(refused, Failure), refused
        assert refused.message == f"outputPath: {out!r} is the input file itself; the zip would overwrite it"
        assert (tmp_path / "a.txt").read_text() == "precious data"
    done, _ = _run(tmp_path, {"inputPath": "a.txt", "outputPath": "a.zip"})
    assert isinstance(done, Success) and zipfile.ZipFile(tmp_path / "a.zip").read("a.txt") == b"precious data"


def test_an_output_path_that_is_a_directory_fails_at_once_naming_it(tmp_path: Path) -> None:
    """ZipFile raised IsADirectoryError, and the run was retried as if it might pass."""
    (tmp_path / "a.txt").write_text("data")
    (tmp_path / "out").mkdir()
    refused, _ = _run(tmp_path, {"inputPath": "a.txt", "outputPath": "out"})
    assert isinstance(refused, Failure) and not refused.should_retry
    assert refused.message == "outputPath: 'out' is a directory; name the zip file"


def test_a_zip_that_fails_halfway_leaves_no_partial_file_and_the_previous_zip_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The zip was written in place: a run that failed halfway (a full disk, a file gone)
    left a truncated archive at ``outputPath``, over the previous good one, for whoever
    looked there; downloads already went through a part file."""
    (tmp_path / "src").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "src" / name).write_text(name * 1000)
    done, _ = _run(tmp_path, {"inputPath": "src", "outputPath": "out.zip"})
    assert isinstance(done, Success)
    before = (tmp_path / "out.zip").read_bytes()
    real_write = zipfile.ZipFile.write

    def write(self: zipfile.ZipFile, filename: object, arcname: str | None = None, *args: object) -> None:
        if arcname == "b.txt":
            raise OSError(28, "No space left on device")
        real_write(self, filename, arcname, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(zipfile.ZipFile, "write", write)
    with pytest.raises(OSError, match="No space left"):
        _run(tmp_path, {"inputPath": "src", "outputPath": "out.zip", "deleteOriginal": True})
    assert (tmp_path / "out.zip").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zip", "src"]  # no part file left either
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == ["a.txt", "b.txt"]
