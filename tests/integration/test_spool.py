"""The result spool (actors/spool.py) on its own, no Ray cluster needed: what a process
appends is read back once, in order, by incarnation or all at once; a damaged tail costs
only itself; a file a reader died holding is read by the next; answered results remove
the file; what cannot be spooled is left to Ray's call."""

from __future__ import annotations

import os
from pathlib import Path

from kmpray.actors.spool import Spool, take

from kmpray.protocol import Done, Progress


def _ok(key: str, run_id: int) -> Done:
    return Done(key, run_id, ("s", None, {"k": key}))


def test_results_are_read_back_once_by_incarnation_and_answered_ones_remove_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    a, b = Spool(folder, "11-a"), Spool(folder, "12-b")
    a.write([_ok("x", 1), Progress(("x", 1), 1, 0.5, None)])  # only results are spooled
    a.write([Done("y", 2, ("s", None, None), None, ("z", 3, 0))])  # its handed-on successor is dropped
    b.write([_ok("w", 4)])
    assert a.waiting == {("x", 1), ("y", 2)} and sorted(os.listdir(folder)) == ["11-a", "12-b"]
    got = take(folder, ["11-a", "13-gone", "../12-b"])  # a name that is no file, or a path, reads nothing
    assert [(d.key, d.run_id, d.followed) for d in got] == [("x", 1, None), ("y", 2, None)]
    assert got[0].result == ["s", None, {"k": "x"}]
    assert take(folder, ["11-a"]) == []  # read once
    a.write([_ok("v", 5)])  # the writer goes on in a new file
    assert sorted(d.key for d in take(folder)) == ["v", "w"]  # every process's
    assert os.listdir(folder) == []
    b.write([_ok("u", 6)])
    b.answered([("w", 4)])
    assert (folder / "12-b").exists()  # ("u", 6) still waits
    b.answered([("u", 6)])
    assert not (folder / "12-b").exists() and b.waiting == set()


def test_a_damaged_tail_and_a_reader_that_died_lose_nothing_before_them(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    s = Spool(folder, "21-c")
    s.write([_ok("a", 1)])
    s.write([_ok("b", 2)])
    with open(folder / "21-c", "ab") as f:
        f.write(b"\x91\x95\xa1")  # a batch cut short
    Spool(folder, "23-e").write([_ok("c", 3)])
    os.rename(folder / "23-e", folder / "23-e.5678abcd.reading")  # its reader died after the rename
    (folder / "24-f").touch()  # its process was killed between creating the file and writing to it
    assert sorted((d.key, d.run_id) for d in take(folder)) == [("a", 1), ("b", 2), ("c", 3)]
    assert os.listdir(folder) == []


def test_no_folder_or_unpackable_values_spool_nothing(tmp_path: Path) -> None:
    remote = Spool(None, "31-f")  # another node: no shared disk
    remote.write([_ok("a", 1)])
    assert remote.waiting == set()
    folder = tmp_path / "spool"
    s = Spool(folder, "32-g")
    s.write([Done("b", 2, ("s", None, {"v": object()}))])  # msgpack refuses it: Ray's call carries it
    s.write([Done("c", 3, ("s", None, None), [("k", b"ref")])])  # object-store references: not spooled
    assert s.waiting == set() and not folder.exists()


def test_a_heavy_worker_found_dead_has_its_spooled_result_applied_not_its_run_lost(tmp_path: Path) -> None:
    """The pool's side, with stand-ins (tests/integration/pool_standins.py): process
    B took run ("h", 1), spooled its result and died (the reconcile finds C answering). The
    spooled result is heard like a report before the run would be re-queued, so it is not
    lost (run again); with nothing spooled, it is, as before."""
    import asyncio
    from types import SimpleNamespace

    from kmpray.actors.blocked_loops import BlockedLoops
    from kmpray.actors.heavy_pool import HeavyPool

    from kmpray.config import EngineConfig

    from .pool_standins import Core, HeavyHandle

    def scenario(spooled: bool) -> tuple[list[tuple[str, int, bool]], list[tuple[str, int]]]:
        core, heard = Core(), []

        async def hear(done: list[Done], *_rest: object) -> None:
            heard.extend((d.key, d.run_id) for d in done)
            for d in done:
                heavy.free((d.key, d.run_id))

        host = SimpleNamespace(core=core, pool=SimpleNamespace(epoch="e1"), _kick=lambda: None,
                               _flush=lambda: None, _wire=lambda d: (d.key, d.run_id), _hear=hear)
        home = tmp_path / ("with" if spooled else "without")
        heavy = HeavyPool(host, "ns", EngineConfig(heavy_pool_size=1), BlockedLoops(),  # type: ignore[arg-type]
                          (str(home / "artifacts"), "A"))
        handle = HeavyHandle("B")
        slot = heavy.slots[0]
        slot.handle, slot.incarnation, slot.ready = handle, "B", True
        slot.run, slot.taker = ("h", 1), "B"
        heavy.where[("h", 1)] = 0
        if spooled:
            Spool(home / "spool", "B").write([_ok("h", 1)])
        handle.incarnation = "C"  # B died
        asyncio.run(heavy.reconcile(1.0))
        return core.lost, heard

    assert scenario(spooled=True) == ([], [("h", 1)])
    assert scenario(spooled=False) == ([("h", 1, True)], [])
