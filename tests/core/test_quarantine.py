"""A damaged store row is contained: quarantined with its reason, never decoded with
anything but msgpack, and every healthy row is served as before (issue #19)."""

from __future__ import annotations

import os
import pickle
import shutil
import sqlite3
import uuid
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kmpray import Constraints, TaskRequest, TaskState, TaskTrigger
from kmpray.errors import StoreRefused
from kmpray.event_log import SqliteEventLog
from kmpray.records import TaskRecord, decode, encode
from kmpray.store import SCHEMA_VERSION, SqliteTaskStore

from .conftest import START, Harness, task


class _Canary:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (open, (self.path, "w"))


def _rec(key: str, **kw: object) -> TaskRecord:
    fields: dict[str, object] = dict(
        key=key, name=key, worker="Ok", trigger=TaskTrigger.OneTime(60_000), constraints=Constraints(),
        state=TaskState.ENQUEUED, created_at_ms=START, updated_at_ms=START, next_run_at_ms=START + 60_000,
    )
    fields.update(kw)
    return TaskRecord(**fields)  # type: ignore[arg-type]


def _store_with(tmp_path: Path, keys: list[str]) -> Path:
    path = tmp_path / "tasks.db"
    store = SqliteTaskStore(path)
    store.write([_rec(k) for k in keys])
    store.close()
    return path


def _fresh_copy(src: Path) -> Path:
    """A copy of a closed store under a new name (no WAL or shm files of an earlier copy)."""
    path = src.with_name(f"copy-{uuid.uuid4().hex[:8]}.db")
    shutil.copy(src, path)
    return path


def _overwrite(path: Path, key: str, blob: bytes) -> None:
    conn = sqlite3.connect(path)
    conn.execute("UPDATE tasks SET row = ? WHERE key = ?", (blob, key))
    conn.commit()
    conn.close()


def test_a_pickle_and_random_bytes_are_quarantined_and_the_healthy_rows_load(tmp_path: Path) -> None:
    path = _store_with(tmp_path, ["t1", "t2", "t3", "t4", "t5"])
    canary = tmp_path / "canary"
    _overwrite(path, "t2", pickle.dumps(_Canary(str(canary))))
    _overwrite(path, "t4", os.urandom(200))
    store = SqliteTaskStore(path)
    assert sorted(r.key for r in store.load()) == ["t1", "t3", "t5"]
    rows = {q.key: q for q in store.quarantined()}
    assert set(rows) == {"t2", "t4"} and {q.table for q in rows.values()} == {"tasks"}
    assert rows["t2"].reason.startswith("not msgpack") or "checksum" in rows["t2"].reason
    assert rows["t4"].size == 200 and len(rows["t4"].head) == 64  # 32 bytes in hex
    assert [q.key for q in store.take_fresh_quarantine()] == ["t2", "t4"]
    assert not canary.exists()
    store.close()
    again = SqliteTaskStore(path)  # moved, not re-read: the next start is clean
    assert sorted(r.key for r in again.load()) == ["t1", "t3", "t5"]
    assert again.take_fresh_quarantine() == [] and len(again.quarantined()) == 2
    assert again.drop_quarantined("t2") == 1 and [q.key for q in again.quarantined()] == ["t4"]


def _sealed(row: object) -> bytes:
    from kmpray.records import seal

    return seal(msgpack.packb(row, use_bin_type=True))


GOOD = msgpack.unpackb(encode(_rec("k"))[:-4], raw=False)


@pytest.mark.parametrize(
    ("row", "why"),
    [
        ([1, 2, 3], "not a map"),
        ({k: v for k, v in GOOD.items() if k != "w"}, "missing field"),
        ({**GOOD, "t": {"kind": "sometimes"}}, "trigger: Input tag 'sometimes' found using 'kind'"),
        ({**GOOD, "s": "SLEEPING"}, "unknown state"),
        ({**GOOD, "a": "three"}, "field 'a' is str"),
        ({**GOOD, "zz": 1}, "unknown field"),
        ({**GOOD, "a": -1}, "out of range"),
        ({**GOOD, "c": {"max_retries": -5}}, "constraints.max_retries: Input should be greater than"),
        ({**GOOD, "r": {"kind": "success", "data": 7}}, "ValidationError"),
        ({**GOOD, "k": "other"}, "stored under 'k' but names 'other'"),
    ],
)
def test_rows_of_the_wrong_shape_are_quarantined_naming_what_is_wrong(tmp_path: Path, row: object, why: str) -> None:
    path = _store_with(tmp_path, ["k", "ok"])
    _overwrite(path, "k", _sealed(row))
    store = SqliteTaskStore(path)
    assert [r.key for r in store.load()] == ["ok"]
    (q,) = store.quarantined()
    assert q.key == "k" and why in q.reason


def test_one_flipped_byte_is_caught_by_the_row_checksum() -> None:
    blob = bytearray(encode(_rec("k", input="hello")))
    blob[blob.index(b"hello")] ^= 0x01  # still valid msgpack, a different input
    with pytest.raises(ValueError, match="checksum mismatch"):
        decode(bytes(blob))


def test_rows_written_before_checksums_still_load() -> None:
    legacy = encode(_rec("k", input="x"))[:-4]
    assert decode(legacy).input == "x"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 19), st.integers(0, 10_000), st.integers(1, 255)), min_size=1,
                      max_size=6))
def test_byte_flips_in_rows_quarantine_exactly_the_damaged_rows(tmp_path: Path, flips: list[tuple[int, int, int]]) -> None:
    src = tmp_path / "src.db"
    if not src.exists():
        _store_with(tmp_path, [f"t{i}" for i in range(20)])
        shutil.move(tmp_path / "tasks.db", src)
    path = _fresh_copy(src)
    conn = sqlite3.connect(path)
    original = dict(conn.execute("SELECT key, row FROM tasks"))
    blobs = dict(original)
    for n, offset, mask in flips:
        key = f"t{n}"
        blob = bytearray(blobs[key])
        blob[offset % len(blob)] ^= mask
        blobs[key] = bytes(blob)
    damaged = {k for k in blobs if blobs[k] != original[k]}  # two equal flips cancel out
    conn.executemany("UPDATE tasks SET row = ? WHERE key = ?", [(b, k) for k, b in blobs.items()])
    conn.commit()
    conn.close()
    store = SqliteTaskStore(path)
    loaded = {r.key: r for r in store.load()}
    assert set(loaded) == {f"t{i}" for i in range(20)} - damaged
    assert {q.key for q in store.quarantined()} == damaged
    for key, rec in loaded.items():
        assert rec.info() == _rec(key).info()  # served exactly as written
    store.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=8))
@example(flips=[(0.984375, 1), (0.2683943303394405, 4)])  # a broken page met while quarantining a row
@example(flips=[(0.048696944587725895, 128)])  # a table's name not UTF-8 any more, met by the schema check
def test_byte_flips_anywhere_in_the_file_never_serve_garbage_or_run_code(
    tmp_path: Path, flips: list[tuple[float, int]]
) -> None:
    """Whatever is hit (rows, pages, the header), the store either opens and serves only
    rows equal to what was written, or refuses with one clear line."""
    src = tmp_path / "src.db"
    canary = tmp_path / "canary"
    if not src.exists():
        store = SqliteTaskStore(tmp_path / "tasks.db")
        store.write([_rec(f"t{i}", input="x" * 40) for i in range(30)])
        store.write([_rec("p", input=pickle.dumps(_Canary(str(canary))).hex())])
        store.close()
        shutil.move(tmp_path / "tasks.db", src)
    path = _fresh_copy(src)
    data = bytearray(path.read_bytes())
    for where, mask in flips:
        data[int(where * len(data))] ^= mask
    path.write_bytes(bytes(data))
    try:
        store = SqliteTaskStore(path)
        loaded = store.load()
    except StoreRefused as exc:
        assert str(path) in str(exc) and "Move the file aside" in str(exc)
    else:
        for rec in loaded:
            expected = _rec(rec.key, input="x" * 40) if rec.key != "p" else None
            if expected is not None:
                assert rec.info() == expected.info()
        store.close()
    assert not canary.exists()


def test_a_file_that_is_not_sqlite_is_refused_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(StoreRefused) as err:
        SqliteTaskStore(path)
    text = str(err.value)
    assert "\n" not in text and str(path) in text and "not a readable SQLite database" in text


def test_a_truncated_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    store = SqliteTaskStore(path)
    store.write([_rec(f"t{i}", input="x" * 200) for i in range(300)])
    store.close()
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(StoreRefused, match="damaged beyond its rows|not a readable"):
        SqliteTaskStore(path).load()


def test_a_store_from_a_newer_kmpray_is_refused(tmp_path: Path) -> None:
    path = _store_with(tmp_path, ["a"])
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(StoreRefused, match=rf"newer kmpray \(schema 99; this one reads {SCHEMA_VERSION}\)"):
        SqliteTaskStore(path)


def test_a_sqlite_file_of_something_else_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreRefused, match="not a kmpray store .unknown tables: invoices"):
        SqliteTaskStore(path)
    with pytest.raises(StoreRefused, match="not a kmpray store"):
        SqliteEventLog(path)


def test_a_damaged_meta_value_reads_as_absent_and_is_quarantined(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "tasks.db")
    store.put_meta("virtual_now", 5)
    store._conn.execute("UPDATE meta SET value = ? WHERE key = 'virtual_now'", (b"\xc1",))
    assert store.get_meta("virtual_now") is None
    assert [(q.table, q.key) for q in store.quarantined()] == [("meta", "virtual_now")]


# ------------------------------------------------------------------ restore


def test_a_chain_with_a_damaged_task_row_fails_naming_it_and_keeps_its_healthy_tasks(h: Harness) -> None:
    h.core.submit_chain("c", "REPLACE", [[task("Ok", "a")], [task("Ok", "b1"), task("Ok", "b2")], [task("Ok", "z")]])
    h.step()  # a succeeds, b1 and b2 become due
    h.flush()
    h.store.damage("b1", b"\x00garbage")
    h.restart()
    h.step()
    info = h.core.chain_info("c")
    assert info is not None
    states = {t.id: t.state for step in info.steps for t in step}
    assert states == {"a": TaskState.SUCCEEDED, "b1": TaskState.FAILED, "b2": TaskState.SUCCEEDED,
                      "z": TaskState.FAILED}
    assert info.state is TaskState.FAILED
    b1 = h.core.tasks["b1"].info()
    assert b1.result is not None and "stored row damaged" in b1.result.message
    assert "'b1'" in h.core.tasks["z"].info().result.message  # type: ignore[union-attr]
    completions = [e for e in h.events if getattr(e, "task_id", None) == "b1"]
    assert completions and completions[-1].success is False


def test_work_appended_after_a_damaged_row_fails_with_the_prerequisite_named(h: Harness) -> None:
    h.core.submit("x", TaskTrigger.OneTime(60_000), "Ok")
    h.core.submit("x", TaskTrigger.OneTime(), "Ok", constraints=Constraints(existing_work_policy="APPEND"))
    h.flush()
    h.store.damage("x", b"\xff" * 10)
    h.restart()
    assert h.state("x") == "FAILED"  # the newest under the name: x#2
    appended = h.core.tasks["x#2"]
    assert appended.state is TaskState.FAILED and "'x'" in appended.result.message  # type: ignore[union-attr]
    assert h.core.pending == 0


def test_a_damaged_chain_row_fails_the_chains_unfinished_tasks(h: Harness) -> None:
    h.core.submit_chain("c", "REPLACE", [[task("Ok", "a")], [task("Ok", "b")]])
    h.step()
    h.store.damage("c", b"\x93\x01\x02\x03", table="chains")
    h.restart()
    assert h.core.tasks["a"].state is TaskState.SUCCEEDED
    b = h.core.tasks["b"]
    assert b.state is TaskState.FAILED and "chain's stored row 'c' was damaged" in b.result.message  # type: ignore[union-attr]
    h.step()
    assert [d.key for d in h.runs].count("b") == 0


def test_healthy_tasks_run_after_a_restore_that_quarantined_others(h: Harness) -> None:
    for n in range(5):
        h.core.submit(f"t{n}", TaskTrigger.OneTime(60_000), "Ok")
    h.flush()
    h.store.damage("t1", b"\x80junk")
    h.store.damage("t3", msgpack.packb({"k": "t3"}))
    h.restart()
    h.advance(60_000)
    assert sorted(d.key for d in h.runs) == ["t0", "t2", "t4"]
    assert {q.key for q in h.store.quarantined()} == {"t1", "t3"}
    assert h.state("t1") == "FAILED"  # shown, with why, instead of silently gone
    assert TaskRequest  # the chain builder stays importable alongside (no Ray)
