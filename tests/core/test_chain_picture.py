"""kmpray/display.py: a chain drawn as an SVG DAG (notebooks' ``ChainInfo._repr_html_`` and
the dashboard): columns per step, nodes coloured by state, retries and progress shown, big
chains cut; and the worker names `kmpray status` and the demo print."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from kmpray import ChainInfo, TaskInfo, TaskState
from kmpray.display import STATE_COLOURS, SVG_MAX_STEPS, chain_svg

SVG = "{http://www.w3.org/2000/svg}"


def task(tid: str, state: TaskState, attempts: int = 1, progress: int | None = None) -> TaskInfo:
    return TaskInfo(id=tid, worker_class_name="W", state=state, run_attempt_count=attempts, progress=progress)


def nodes(svg: str) -> dict[str, ET.Element]:
    root = ET.fromstring(svg)  # well-formed XML, or this raises
    return {g.get("data-id"): g for g in root.iter(f"{SVG}g") if g.get("class") == "node"}  # type: ignore[misc]


def test_steps_are_columns_with_state_colours_retries_progress_and_every_edge() -> None:
    chain = ChainInfo(id="c<1>", state=TaskState.RUNNING, steps=[
        [task("a", TaskState.SUCCEEDED)],
        [task("p1", TaskState.SUCCEEDED), task("p2", TaskState.RUNNING, attempts=3, progress=50)],
        [task("z", TaskState.BLOCKED, attempts=0)],
    ])
    svg = chain_svg(chain)
    drawn = nodes(svg)
    assert list(drawn) == ["a", "p1", "p2", "z"]
    assert {k: g.get("data-state") for k, g in drawn.items()} == {
        "a": "SUCCEEDED", "p1": "SUCCEEDED", "p2": "RUNNING", "z": "BLOCKED"}
    fill = {k: g.find(f"{SVG}rect").get("fill") for k, g in drawn.items()}  # type: ignore[union-attr]
    assert fill["a"] == STATE_COLOURS["SUCCEEDED"] and fill["p2"] == STATE_COLOURS["RUNNING"]
    x = {k: float(g.find(f"{SVG}rect").get("x")) for k, g in drawn.items()}  # type: ignore[union-attr, arg-type]
    assert x["a"] < x["p1"] == x["p2"] < x["z"]  # one column per step
    texts = ["".join(t.itertext()) for t in drawn["p2"].iter(f"{SVG}text")]
    assert texts == ["p2", "RUNNING · attempt 3"]
    bars = drawn["p2"].findall(f"{SVG}rect")
    assert len(bars) == 2 and float(bars[1].get("width")) == float(bars[0].get("width")) / 2  # type: ignore[arg-type]
    assert len(drawn["a"].findall(f"{SVG}rect")) == 1  # finished: no bar
    assert len(ET.fromstring(svg).findall(f"{SVG}line")) == 4  # a->p1, a->p2, p1->z, p2->z
    assert "chain c&lt;1&gt;: RUNNING" in svg  # ids are escaped
    assert svg in chain._repr_html_() and "<table>" in chain._repr_html_()


def test_a_long_chain_is_drawn_in_part_and_says_so() -> None:
    steps = [[task(f"s{i}", TaskState.SUCCEEDED)] for i in range(SVG_MAX_STEPS + 10)]
    svg = chain_svg(ChainInfo(id="long", state=TaskState.SUCCEEDED, steps=steps))
    assert len(nodes(svg)) == SVG_MAX_STEPS and "(10 not drawn)" in svg


def test_a_chain_s_progress_counts_finished_tasks_and_running_ones_by_their_progress() -> None:
    from kmpray.display import chain_progress

    chain = ChainInfo(id="c", state=TaskState.RUNNING, steps=[
        [task("a", TaskState.SUCCEEDED)],
        [task("p1", TaskState.SUCCEEDED), task("p2", TaskState.RUNNING, progress=50), task("p3", TaskState.ENQUEUED)],
        [task("x", TaskState.FAILED), task("y", TaskState.CANCELLED)],
        [task("z", TaskState.BLOCKED, attempts=0)],
    ])
    pct, steps = chain_progress(chain)
    assert pct == int(100 * (1 + 1 + 0.5 + 2) / 7)  # 64
    assert steps == "✓ 1/3 ✗ ·"
    running = ChainInfo(id="r", state=TaskState.RUNNING, steps=[[task("a", TaskState.RUNNING, progress=20)]])
    assert chain_progress(running) == (20, "▶")


def test_a_chain_explains_itself_by_its_first_unfinished_step_and_what_ended_it() -> None:
    """``explain(chain_id)`` (``kmpray why``): the steps, then each unfinished task of the
    first step not finished, by its own explanation; the steps after it are only counted."""
    from kmpray.display import CHAIN_EXPLAIN_TASKS, chain_explain
    from kmpray.results import Failure

    asked: list[str] = []

    def text(tid: str) -> str:
        asked.append(tid)
        return f"task {tid}: ENQUEUED\nwaiting for: constraints unmet"

    running = ChainInfo(id="c", state=TaskState.RUNNING, steps=[
        [task("a", TaskState.SUCCEEDED)],
        [task("p1", TaskState.SUCCEEDED), task("p2", TaskState.ENQUEUED, attempts=0)],
        [task("z", TaskState.BLOCKED, attempts=0)],
        [task("y", TaskState.BLOCKED, attempts=0)],
    ])
    assert chain_explain(running, text).splitlines() == [
        "chain c: RUNNING, 4 steps: ✓ 1/2 · ·",
        "step 2 of 4 is not finished (2 later steps wait for it):",
        "  task p2: ENQUEUED",
        "  waiting for: constraints unmet",
    ]
    assert asked == ["p2"]  # not the finished p1, nor the blocked later steps
    asked.clear()
    wide = ChainInfo(id="w", state=TaskState.RUNNING, steps=[
        [task(f"t{i}", TaskState.ENQUEUED, attempts=0) for i in range(CHAIN_EXPLAIN_TASKS + 3)]])
    lines = chain_explain(wide, text).splitlines()
    assert asked == [f"t{i}" for i in range(CHAIN_EXPLAIN_TASKS)]  # one scheduler call each, bounded
    assert lines[-1] == "  ... and 3 more unfinished in step 1"
    failed = ChainInfo(id="c", state=TaskState.FAILED, steps=[
        [TaskInfo(id="a", worker_class_name="W", state=TaskState.FAILED, run_attempt_count=3,
                  result=Failure(message="disk full"))],
        [task("z", TaskState.CANCELLED, attempts=0)],
    ])
    lines = chain_explain(failed, text).splitlines()
    assert lines[0] == "chain c: FAILED, 2 steps: ✗ ✗"
    assert lines[1].startswith("step 1: a (W): FAILED, attempt 3") and "Failure: disk full" in lines[1]
    assert lines[2].startswith("step 2: z (W): CANCELLED") and len(lines) == 3


def test_worker_names_fold_the_built_ins_qualified_aliases() -> None:
    """`kmpray status` and the demo listed each built-in twice (14 names for 9 workers)."""
    from kmpray.display import worker_names
    from kmpray.workers import BUILTIN_WORKERS

    names = sorted([*BUILTIN_WORKERS, "SyncWorker"])
    shown = worker_names(names)
    simple = [n for n in BUILTIN_WORKERS if "." not in n]
    note = f" (the {len(simple)} built-ins also as kmpray.workers.<name>)"
    assert shown == ", ".join(sorted([*simple, "SyncWorker"])) + note
    assert worker_names(["kmpray.workers.Alone"]) == "kmpray.workers.Alone" and worker_names([]) == "-"
