"""The store and restore: what a SchedulerActor rebuilds after a kill or a restart."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from kmpray import Constraints, ExistingWorkPolicy, QualityOfService, TaskState, TaskTrigger
from kmpray.engine import Dispatch, SchedulerCore
from kmpray.event_log import MemoryEventLog, SqliteEventLog
from kmpray.records import TaskRecord, decode, encode
from kmpray.restore import RUN_IDS_PER_START
from kmpray.results import Failure, Success
from kmpray.store import WAL_SIZE_LIMIT, SqliteTaskStore

from ..sqlite_files import main_file_rows
from .conftest import START, Harness

triggers = st.one_of(
    st.integers(0, 10**9).map(TaskTrigger.OneTime),
    st.integers(1_000, 10**9).map(TaskTrigger.Periodic),
    st.integers(0, 10**13).map(TaskTrigger.Exact),
    st.booleans().map(lambda d: TaskTrigger.ContentUri("content://x/y", d)),
    st.sampled_from([TaskTrigger.BatteryLow, TaskTrigger.DeviceIdle]),
)


@given(
    trigger=triggers,
    state=st.sampled_from(list(TaskState)),
    inp=st.none() | st.text(st.characters(exclude_categories=['Cs']), max_size=50),
    qos=st.sampled_from(list(QualityOfService)),
    retries=st.integers(0, 100),
    result=st.none()
    | (st.none() | st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**64 - 1))).map(lambda d: Success(data=d))
    | st.tuples(st.text(min_size=1, max_size=20), st.booleans()).map(lambda t: Failure(*t)),
)
def test_record_codec_round_trips(trigger, state, inp, qos, retries, result) -> None:  # type: ignore[no-untyped-def]
    rec = TaskRecord(
        key="k#2", name="k", worker="W", trigger=trigger,
        constraints=Constraints(qos=qos, max_retries=retries), state=state,
        created_at_ms=START, updated_at_ms=START + 1, input=inp, run_attempt_count=3,
        result=result, prereqs=("k",), anchor_ms=START, period=7, run_id=9,
    )
    back = decode(encode(rec))
    assert back.info() == rec.info()
    assert (back.prereqs, back.anchor_ms, back.period, back.run_id) == (("k",), START, 7, 9)


_OPTIONAL = {"i": "input", "is": "input_stored", "a": "run_attempt_count", "rc": "run_count", "p": "progress",
             "nx": "next_run_at_ms", "dl": "deadline_ms", "ch": "chain_id", "an": "anchor_ms", "pe": "period",
             "ri": "run_id", "rf": "refire", "st": "step", "up": "upstream", "cr": "crashes"}
_VALUES = {"input": "x", "input_stored": 70_000, "run_attempt_count": 2, "run_count": 5, "progress": 40,
           "next_run_at_ms": START + 9, "deadline_ms": START + 99, "chain_id": "c", "anchor_ms": START,
           "period": 3, "run_id": 12, "refire": True, "step": 1, "upstream": {"a": 1}, "crashes": 1}


@given(st.sets(st.sampled_from(sorted(_VALUES))))
def test_a_row_is_encoded_as_its_set_fields_in_a_fixed_order(present: set[str]) -> None:
    """encode() writes the optional fields one by one (no dict built and filtered per row):
    the bytes stay exactly what the filtered dict gave, and they decode back."""
    import msgpack

    from kmpray.records import seal

    rec = TaskRecord(key="k", name="k", worker="W", trigger=TaskTrigger.OneTime(), constraints=Constraints(),
                     state=TaskState.ENQUEUED, created_at_ms=START, updated_at_ms=START,
                     **{f: _VALUES[f] for f in present})
    row = {"k": "k", "n": "k", "w": "W", "s": "ENQUEUED", "c0": START, "u": START}
    row.update({short: getattr(rec, f) for short, f in _OPTIONAL.items() if getattr(rec, f)})
    assert encode(rec) == seal(msgpack.packb(row, use_bin_type=True))
    back = decode(encode(rec))
    assert {f: getattr(back, f) for f in present} == {f: _VALUES[f] for f in present}


def test_sqlite_store_persists_batches_and_deletes(tmp_path: Path) -> None:
    h = Harness()
    h.core.submit("a", TaskTrigger.OneTime(), "Ok")
    h.core.submit("b", TaskTrigger.Periodic(60_000), "Ok")
    store = SqliteTaskStore(tmp_path / "s.db")
    fx = h.drain()
    store.write(fx.persist.values(), fx.delete)
    store.write([], ["a"])
    store.close()
    again = SqliteTaskStore(tmp_path / "s.db")
    assert [r.key for r in again.load()] == ["b"]
    again.put_meta("registered", ["Ok"])
    assert again.get_meta("registered") == ["Ok"]


def _stored(path: Path, n: int, input_chars: int) -> SqliteTaskStore:
    """A store at ``path`` with ``n`` tasks written in one transaction, inputs this long."""
    h = Harness()
    for i in range(n):
        h.core.submit(f"t{i}", TaskTrigger.OneTime(), "Ok", "x" * input_chars or None)
    store = SqliteTaskStore(path)
    fx = h.drain()
    store.write(fx.persist.values(), fx.delete)
    return store


def test_the_wal_shrinks_back_after_one_large_transaction(tmp_path: Path) -> None:
    """A prune of thousands of rows is one transaction: the WAL grows past its usual size for
    it, and must not keep that size for good (the soak's store grew by such steps)."""
    store = _stored(tmp_path / "s.db", 3000, 2000)
    wal = tmp_path / "s.db-wal"
    assert wal.stat().st_size > 2 * WAL_SIZE_LIMIT  # the large transaction
    store.write([], [f"t{i}" for i in range(3000)])  # its prune: also large
    for i in range(30):  # the next writes after the checkpoints reset the WAL
        store.put_meta("tick", i)
    assert wal.stat().st_size <= WAL_SIZE_LIMIT
    assert store.load() == [] and store.get_meta("tick") == 29


def test_restore_runs_in_flight_work_again_and_keeps_the_rest(h: Harness) -> None:
    h.core.submit("running", TaskTrigger.OneTime(), "Ok")
    h.core.tick()
    h.core.take_ready(10)
    h.core.submit("later", TaskTrigger.OneTime(initial_delay_ms=60_000), "Ok")
    h.core.submit("done", TaskTrigger.Exact(START), "Ok")
    h.core.submit("p", TaskTrigger.Periodic(60_000), "Ok")
    h.flush()
    h.restart()
    assert h.state("running") == "ENQUEUED"  # at-least-once: the interrupted run runs again
    assert {d.key for d in h.step()} == {"running", "done", "p"}
    assert h.state("later") == "ENQUEUED"
    assert [d.key for d in h.advance(60_000)] == ["later", "p"]
    assert h.core.pending == 1  # only the periodic task never finishes
    assert h.state("p") == "ENQUEUED"


def test_restore_keeps_unique_names_and_append_chains(h: Harness) -> None:
    keep = Constraints(existing_work_policy=ExistingWorkPolicy.APPEND)
    h.core.submit("u", TaskTrigger.OneTime(initial_delay_ms=100), "Ok")
    h.core.submit("u", TaskTrigger.OneTime(), "Ok", constraints=keep)
    h.restart()
    assert h.state("u") == "BLOCKED"
    h.core.submit("u", TaskTrigger.OneTime(), "Ok", constraints=keep)
    assert h.core.latest("u").key == "u#3"  # type: ignore[union-attr]
    h.advance(100)
    assert [d.key for d in h.runs] == ["u", "u#2", "u#3"]


def test_restore_keeps_an_append_line_of_ten_or_more_made_in_one_millisecond_in_order(h: Harness) -> None:
    """Found by the simulation run longer than CI runs it: appends made in one millisecond
    (one enqueue_many) were restored by creation time, then key, so "u#10" came before
    "u#9"; the next APPEND followed "u#9", and "u#10" and "u#11" then ran at once."""
    append = Constraints(existing_work_policy=ExistingWorkPolicy.APPEND)
    h.core.submit("u", TaskTrigger.OneTime(initial_delay_ms=100), "Ok")
    for _ in range(9):  # u#2 .. u#10, all in this millisecond
        h.core.submit("u", TaskTrigger.OneTime(), "Ok", constraints=append)
    h.restart()
    assert h.core.names["u"][-2:] == ["u#9", "u#10"]
    h.core.submit("u", TaskTrigger.OneTime(), "Ok", constraints=append)
    assert h.core.tasks["u#11"].prereqs == ("u#10",)
    h.advance(100)  # one after another: a work starts only once the one before succeeded
    assert [d.key for d in h.runs] == ["u"] + [f"u#{n}" for n in range(2, 12)]


def test_restore_with_a_fresh_core_counts_pending(h: Harness) -> None:
    for i in range(5):
        h.core.submit(f"t{i}", TaskTrigger.OneTime(initial_delay_ms=10), "Ok")
    h.flush()
    core = SchedulerCore(h.clock, h.core.platform)
    core.restore(h.store.load())
    assert core.pending == 5 and core.next_due_ms() == START + 10


def test_prune_forgets_old_finished_work_only(h: Harness) -> None:
    h.core.submit("old", TaskTrigger.OneTime(), "Ok")
    h.step()
    h.core.submit("live", TaskTrigger.Periodic(60_000), "Ok")
    h.clock.set(START + h.core.config.retain_finished_ms + 1)
    assert h.core.prune() == 1
    assert h.core.latest("old") is None and h.core.latest("live") is not None
    h.flush()
    assert "old" not in {r.key for r in h.store.load()}


def test_prune_forgets_a_pruned_names_append_numbering_as_a_restart_does(h: Harness) -> None:
    append = Constraints(existing_work_policy=ExistingWorkPolicy.APPEND)
    for _ in range(3):  # a, a#2, a#3
        h.core.submit("a", TaskTrigger.OneTime(), "Ok", constraints=append)
    for _ in range(3):
        h.step()  # one after another
    assert h.state("a#3") == "SUCCEEDED"
    assert [r.key for r in h.core.tasks.values() if r.name == "a"] == ["a", "a#2", "a#3"]
    h.clock.set(START + h.core.config.retain_finished_ms + 1)
    assert h.core.prune() == 1 and "a" not in h.core._append_seq  # no entry per name ever appended
    h.core.submit("a", TaskTrigger.OneTime(), "Ok", constraints=append)
    h.core.submit("a", TaskTrigger.OneTime(), "Ok", constraints=append)
    assert [r.key for r in h.core.tasks.values() if r.name == "a"] == ["a", "a#2"]


def test_event_logs_hand_out_increasing_cursors(tmp_path: Path) -> None:
    for log in (SqliteEventLog(tmp_path / "e.db"), MemoryEventLog()):
        assert log.append([b"a", b"b"]) == [1, 2]
        assert log.append([b"c"]) == [3]
        assert log.read(1, 10) == [(2, b"b"), (3, b"c")]
        log.trim(keep=1)
        assert log.read(0, 10) == [(3, b"c")] and log.first_cursor() == 3
        assert log.append([b"d"]) == [4]


def test_event_logs_keep_the_newest_completions_and_progress_by_separate_counts(tmp_path: Path) -> None:
    """A flood of progress events never pushes a completion out of the log: each kind
    keeps its own newest N (the broker's event_retention and progress_retention)."""
    for log in (SqliteEventLog(tmp_path / "e.db"), MemoryEventLog()):
        # c1, then 6 progress events, c2, 2 more progress events, c3 (cursors 1..11).
        bodies = [b"c1", *(b"p%d" % i for i in range(6)), b"c2", b"p6", b"p7", b"c3"]
        flags = [b.startswith(b"p") for b in bodies]
        assert log.append(bodies[:5], progress=flags[:5]) == [1, 2, 3, 4, 5]
        assert log.append(bodies[5:], [None] * 6, 0, flags[5:]) == [6, 7, 8, 9, 10, 11]
        log.trim(keep=3)  # every completion stays
        log.trim(keep=2, progress=True)  # the newest 2 progress events
        assert [b for _c, b in log.read(0, 100)] == [b"c1", b"c2", b"p6", b"p7", b"c3"], log
        assert log.first_cursor() == 1
        log.trim(keep=1)
        log.trim(keep=5, progress=True)
        assert log.read(0, 100) == [(9, b"p6"), (10, b"p7"), (11, b"c3")]
        assert log.append([b"c4"]) == [12]  # no flags: a completion, cursors go on
        log.trim(keep=1)
        log.trim(keep=0, progress=True)
        assert log.read(0, 100) == [(12, b"c4")] and log.first_cursor() == 12


def test_an_event_log_written_before_progress_was_counted_apart_opens_and_counts_its_rows_as_completions(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE events (cursor INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL)")
    db.executemany("INSERT INTO events (body) VALUES (?)", [(b"old1",), (b"old2",)])
    db.commit()
    db.close()
    log = SqliteEventLog(path)
    assert log.append([b"p"], progress=[True]) == [3]
    log.trim(keep=0, progress=True)
    log.trim(keep=2)
    assert log.read(0, 10) == [(1, b"old1"), (2, b"old2")]


def test_runs_of_a_known_worker_wait_for_its_registration_after_a_restart(h: Harness) -> None:
    known = {"Ok"}
    h.core.submit("a", TaskTrigger.OneTime(), "Ok")
    h.flush()
    registered: dict[str, bool] = {}
    core = SchedulerCore(h.clock, h.core.platform, None, registered.__contains__, known.__contains__)
    core.restore(h.store.load())
    core.tick()
    assert core.take_ready(10) == [] and core.parked() == {"Ok": 1}
    assert core.latest("a").state is TaskState.ENQUEUED  # type: ignore[union-attr]
    registered["Ok"] = True
    assert core.unpark("Ok") == 1
    [d] = core.take_ready(10)
    assert d.key == "a"
    never = core.submit("b", TaskTrigger.OneTime(), "NeverSeen")
    assert never.result.value == "REJECTED_INVALID_PARAMS"


def test_restore_never_reuses_the_id_of_a_run_that_was_not_stored(h: Harness) -> None:
    h.core.submit("a", TaskTrigger.OneTime(), "Ok")
    h.core.tick()
    [lost] = h.core.take_ready(1)  # dispatched; RUNNING is not written to the store
    h.restart()
    [again] = h.step()
    assert again.key == "a" and again.run_id > lost.run_id


def test_a_restarted_scheduler_adopts_runs_executors_still_hold(h: Harness) -> None:
    for name in ("quiet", "talking", "unheld"):
        h.core.submit(name, TaskTrigger.OneTime(), "Ok")
    h.core.tick()
    quiet, talking, unheld = h.core.take_ready(10)  # dispatches are not stored...
    h.core.progress(talking.key, talking.run_id, 50, None)  # ...a run's progress is
    h.restart()
    held = [(quiet.key, quiet.run_id), (talking.key, talking.run_id)]
    assert h.core.adopt(held, waiting={(quiet.key, quiet.run_id)}) == held
    assert h.state("quiet") == h.state("talking") == "RUNNING"
    # Shown as users see it: "quiet" still waits for an executor slot, "talking" runs.
    assert h.core.latest("quiet").info().state is TaskState.ENQUEUED  # type: ignore[union-attr]
    assert h.core.latest("talking").info().state is TaskState.RUNNING  # type: ignore[union-attr]
    assert h.core.latest("talking").run_attempt_count == 1  # type: ignore[union-attr]
    assert [d.key for d in h.step()] == ["unheld"]  # only the run nobody holds runs again
    assert h.core.complete(quiet.key, quiet.run_id, Success())  # the held runs' reports count
    assert h.core.complete(talking.key, talking.run_id, Success())
    assert h.state("quiet") == h.state("talking") == "SUCCEEDED"
    assert h.core.adopt(held) == []  # only right after a restore


def test_adoption_ignores_runs_whose_end_was_stored(h: Harness) -> None:
    retry = Constraints(max_retries=3, backoff_delay_ms=10_000)
    h.core.submit("again", TaskTrigger.OneTime(), "Flaky", constraints=retry)
    h.core.submit("done", TaskTrigger.OneTime(), "Ok")
    h.core.tick()
    again, done = h.core.take_ready(10)
    h.core.complete(again.key, again.run_id, Failure("later", should_retry=True))
    h.core.complete(done.key, done.run_id, Success())
    h.restart()  # the executor had not heard that its reports arrived: it still lists both
    assert h.core.adopt([(again.key, again.run_id), (done.key, done.run_id)]) == []
    assert h.state("again") == "ENQUEUED" and h.state("done") == "SUCCEEDED"
    assert [d.key for d in h.advance(10_000)] == ["again"]
    assert h.core.latest("again").run_attempt_count == 2  # type: ignore[union-attr]


def _restarted(h: Harness, starts: int, held: list[tuple[str, int]] | None = None) -> list[tuple[str, int]]:
    """A restart as the actor does it: the store's ``starts``-th scheduler, its run floor set
    before anything is dispatched, then the runs executors answered holding adopted."""
    adopted: list[tuple[str, int]] = []

    def start(core: SchedulerCore) -> None:
        core.run_floor = starts * RUN_IDS_PER_START
        adopted.extend(core.adopt(held or []))

    h.restart(adopt=start)
    return adopted


def _dispatch(h: Harness) -> list[Dispatch]:
    """The actor's turns: what came in is committed, then what is due is handed out (a
    dispatch is not written)."""
    h.flush()
    h.core.tick()
    out = h.core.take_ready(10)
    h.flush()
    return out


def test_two_restarts_before_a_row_is_written_again_never_hand_out_a_run_id_twice(h: Harness) -> None:
    """A dispatch is not stored, nor is a restore's skip of its id. Two restarts while a run
    was out (no executor answering for it) used to give the next dispatch that very run's
    id, so its late report counted for the new run, and after a REPLACE for the new work
    (the simulation's device-trigger schedule found it: seed 1100 of 1,000 steps)."""
    h.core.run_floor = RUN_IDS_PER_START
    h.core.submit("x", TaskTrigger.OneTime(), "Ok", input="old")
    [first] = _dispatch(h)
    _restarted(h, 2)  # the executor running `first` did not answer in time
    [second] = _dispatch(h)
    _restarted(h, 3)  # nor did the one running `second`
    replace = Constraints(existing_work_policy=ExistingWorkPolicy.REPLACE)
    h.core.submit("x", TaskTrigger.OneTime(), "Ok", input="new", constraints=replace)
    [new] = _dispatch(h)
    assert new.input == "new" and new.run_id not in (first.run_id, second.run_id)
    assert not h.core.complete("x", second.run_id, Success(data={"work": "old"}))  # a stale run's report
    assert not h.core.complete("x", first.run_id, Success(data={"work": "old"}))
    assert h.state("x") == "RUNNING"
    assert h.core.complete("x", new.run_id, Success(data={"work": "new"}))
    assert h.core.latest("x").result.data == {"work": "new"}  # type: ignore[union-attr]


def test_after_two_restarts_the_latest_run_an_executor_holds_is_adopted(h: Harness) -> None:
    """The run the last scheduler handed out is the task's current one; an older one still
    held (its executor was slow to answer across the first restart) is stale."""
    h.core.run_floor = RUN_IDS_PER_START
    h.core.submit("y", TaskTrigger.OneTime(), "Ok")
    [first] = _dispatch(h)
    _restarted(h, 2)
    [second] = _dispatch(h)
    held = [(first.key, first.run_id), (second.key, second.run_id)]
    assert _restarted(h, 3, held) == [(second.key, second.run_id)]
    assert not h.core.complete("y", first.run_id, Success())
    assert h.core.complete("y", second.run_id, Success()) and h.state("y") == "SUCCEEDED"


def test_restore_reads_rows_without_writing_them_back_and_shares_equal_triggers(h: Harness) -> None:
    later = TaskTrigger.OneTime(60_000)
    net = Constraints(requires_network=True)
    for i in range(3):
        h.core.submit(f"t{i}", later, "Ok", constraints=net)
    h.core.submit("now", TaskTrigger.OneTime(), "Ok")
    h.core.tick()
    h.core.take_ready(10)  # "now" is in flight: interrupted by the restart
    h.flush()
    core = SchedulerCore(h.clock, h.core.platform)
    core.restore(h.store.load())
    assert set(core.drain().persist) == {"now"}  # only what changed: RUNNING -> ENQUEUED
    assert core.next_due_ms() == START and core.pending == 4
    t0, t1 = core.latest("t0"), core.latest("t1")
    assert t0.trigger is t1.trigger and t0.constraints is t1.constraints  # type: ignore[union-attr]
    assert t0.trigger == later and t0.constraints == net  # type: ignore[union-attr]


def test_a_version_1_store_opens_and_gains_the_outbox_and_the_inputs(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "tasks.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE tasks (key TEXT PRIMARY KEY, row BLOB NOT NULL)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = SqliteTaskStore(path)
    assert store.load() == [] and store.write([], events=[b"x"]) == [1]
    assert store.read_input("x") is None
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 4


def test_durability_sets_each_store_files_synchronous_mode(tmp_path: Path) -> None:
    """durability="full" fsyncs every commit of both files (SQLite synchronous=FULL = 2);
    the default "normal" (1) survives process crashes only; anything else is refused."""
    from kmpray.config import EngineConfig

    assert EngineConfig().durability == "normal"
    for mode, level in (("normal", 1), ("full", 2)):
        tasks = SqliteTaskStore(tmp_path / f"{mode}-tasks.db", mode)
        events = SqliteEventLog(tmp_path / f"{mode}-events.db", mode)
        assert tasks._conn.execute("PRAGMA synchronous").fetchone()[0] == level
        assert events._conn.execute("PRAGMA synchronous").fetchone()[0] == level
        assert tasks._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    import pydantic
    import pytest

    with pytest.raises(pydantic.ValidationError, match="durability"):
        EngineConfig(durability="paranoid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="durability"):
        SqliteTaskStore(tmp_path / "x.db", "off")


def test_a_quiet_store_syncs_what_it_wrote_at_the_next_look(tmp_path: Path) -> None:
    """Under synchronous=NORMAL a commit reaches the disk at the WAL's next checkpoint, which
    SQLite makes after ~1,000 pages: a light load's writes would wait hours for it. The
    scheduler looks every second (sync_if_quiet): a few rows written are checkpointed."""
    h = Harness()
    h.core.submit("a", TaskTrigger.OneTime(), "Ok", None)
    store = SqliteTaskStore(tmp_path / "s.db")
    fx = h.drain()
    store.write(fx.persist.values(), fx.delete)
    rows = "SELECT key FROM tasks"
    assert main_file_rows(store.path, tmp_path, rows) == []  # in the WAL only
    assert store.sync_if_quiet(2000)
    assert main_file_rows(store.path, tmp_path, rows) == [("a",)]
    assert not store.sync_if_quiet(2000)  # nothing written since
    store.put_meta("m", 1)
    assert store.sync_if_quiet(2000)
    assert main_file_rows(store.path, tmp_path, "SELECT key FROM meta") == [("m",)]
    store.close()


def test_a_busy_store_leaves_syncing_to_sqlites_own_checkpoints(tmp_path: Path) -> None:
    store = _stored(tmp_path / "s.db", 5, 0)
    assert not store.sync_if_quiet(3)  # 5 rows (and the commit) > 3: busy, left alone
    assert main_file_rows(store.path, tmp_path, "SELECT key FROM tasks") == []
    store.put_meta("m", 1)  # the count starts again after each look
    assert store.sync_if_quiet(3)
    assert len(main_file_rows(store.path, tmp_path, "SELECT key FROM tasks")) == 5
    store.close()
    full = SqliteTaskStore(tmp_path / "f.db", durability="full")
    full.put_meta("m", 1)
    assert not full.sync_if_quiet(3)  # every commit is synced already
    full.close()


def test_a_quiet_event_log_syncs_what_it_appended(tmp_path: Path) -> None:
    log = SqliteEventLog(tmp_path / "e.db")
    assert log.append([b"one", b"two"]) == [1, 2]
    cursors = "SELECT cursor FROM events ORDER BY cursor"
    assert main_file_rows(tmp_path / "e.db", tmp_path, cursors) == []
    assert log.sync_if_quiet(2000)
    assert main_file_rows(tmp_path / "e.db", tmp_path, cursors) == [(1,), (2,)]
    assert not log.sync_if_quiet(2000)
    assert not MemoryEventLog().sync_if_quiet(2000)
    log.close()


def test_a_quiet_sync_empties_the_wal_and_never_waits_on_a_reader(tmp_path: Path) -> None:
    """The WAL is reused from its start after a checkpoint but keeps its largest size (a
    prune's transaction): the soak's store files crept up by it. A quiet sync truncates it;
    a reader elsewhere (someone's sqlite3 shell) does not hold the scheduler's loop: the
    sync then checkpoints what it can and returns at once."""
    import sqlite3
    import time

    store = _stored(tmp_path / "s.db", 300, 1000)
    wal = tmp_path / "s.db-wal"
    assert wal.stat().st_size > 300 * 1000
    assert store.sync_if_quiet(2000)
    assert wal.stat().st_size == 0 and len(store.load()) == 300
    store.put_meta("m", 1)
    reader = sqlite3.connect(str(tmp_path / "s.db"))
    reader.execute("BEGIN")
    assert reader.execute("SELECT value FROM meta WHERE key = 'm'").fetchone() is not None  # a snapshot held
    store.put_meta("m", 2)
    began = time.monotonic()
    assert store.sync_if_quiet(2000)
    assert time.monotonic() - began < 5  # the store's own busy timeout is 30 s
    assert wal.stat().st_size > 0  # not truncated under the reader...
    assert store._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000  # ...and the timeout is back
    reader.execute("ROLLBACK")
    reader.close()
    store.put_meta("m", 3)
    assert store.sync_if_quiet(2000) and wal.stat().st_size == 0
    assert main_file_rows(store.path, tmp_path, "SELECT key FROM meta") == [("m",)]
    store.close()
