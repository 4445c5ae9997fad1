"""TaskInfo/ChainInfo for terminals (plain text) and notebooks and the dashboard (HTML,
chains drawn as SVG)."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any

from .millis import utc_text

# Rows are TaskInfo/ChainInfo (models.py renders itself through these functions); typed
# loosely here so that the two modules do not import each other.
TaskInfo = Any
ChainInfo = Any

COLUMNS = ("id", "worker", "state", "attempts", "runs", "progress", "next run", "waiting for", "result")


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return utc_text(ms)


def _result(info: TaskInfo) -> str:
    r = info.result
    if r is None:
        return "-"
    if r.kind == "success":
        return "Success" + (f" {r.data}" if r.data else "")
    if r.kind == "failure":
        return f"Failure: {r.message}"
    return f"Retry: {r.reason or ''}"


def task_line(i: TaskInfo) -> str:
    """``h1 (SyncWorker): SUCCEEDED, attempt 1, 1 run, 100% - Success {'n': 3}``: what a
    terminal shows of one task (its waiting reason while it waits)."""
    parts = [f"attempt {i.run_attempt_count}", f"{i.run_count} run{'s' if i.run_count != 1 else ''}"]
    if i.progress is not None:
        parts.append(f"{i.progress}%")
    line = f"{i.id} ({i.worker_class_name}): {i.state.value}, " + ", ".join(parts)
    if i.result is not None:
        line += f" - {_result(i)[:120]}"
    if i.waiting_for is not None:
        line += f" - {i.waiting_for.message[:120]}"
    return line


def rows(infos: Sequence[TaskInfo]) -> list[tuple[str, ...]]:
    return [
        (
            i.id,
            i.worker_class_name,
            i.state.value,
            str(i.run_attempt_count),
            str(i.run_count),
            "-" if i.progress is None else f"{i.progress}%",
            _when(i.next_run_at_ms),
            i.waiting_for.message[:60] if i.waiting_for is not None else "-",
            _result(i)[:60],
        )
        for i in infos
    ]


QUALIFIED = "kmpray.workers."  # built-in workers answer to their simple and this qualified name


def worker_names(names: Sequence[str]) -> str:
    """Registered worker names for a person: a built-in's qualified alias
    (``kmpray.workers.HttpSyncWorker``) folded into one note, not listed beside its simple name."""
    simple = set(names)
    shown = [n for n in names if not (n.startswith(QUALIFIED) and n[len(QUALIFIED):] in simple)]
    folded = len(names) - len(shown)
    note = f" (the {folded} built-ins also as {QUALIFIED}<name>)" if folded else ""
    return (", ".join(shown) or "-") + note


def tasks_text(infos: Sequence[TaskInfo]) -> str:
    body = rows(infos)
    widths = [max(len(c), *(len(r[n]) for r in body)) if body else len(c) for n, c in enumerate(COLUMNS)]
    line = "  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(out)


def tasks_html(infos: Sequence[TaskInfo]) -> str:
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in rows(infos))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def chain_text(chain: ChainInfo) -> str:
    parts = [f"chain {chain.id}: {chain.state.value}"]
    for n, step in enumerate(chain.steps, 1):
        parts.append(f"step {n}\n{tasks_text(step)}")
    return "\n".join(parts)


def chain_html(chain: ChainInfo) -> str:
    """A notebook's view: the DAG drawn (``chain_svg``), then a table per step."""
    parts = [f"<p><b>chain {html.escape(chain.id)}</b>: {chain.state.value}</p>", chain_svg(chain)]
    for n, step in enumerate(chain.steps, 1):
        parts.append(f"<p>step {n}</p>{tasks_html(step)}")
    return "".join(parts)


#: Node colours by state: the dashboard's page and notebooks draw chains alike.
STATE_COLOURS = {
    "ENQUEUED": "#7b8794", "BLOCKED": "#9f7aea", "RUNNING": "#3b82f6",
    "SUCCEEDED": "#16a34a", "FAILED": "#dc2626", "CANCELLED": "#d97706",
}
#: Past these, a chain is drawn in part and says how much is left out.
SVG_MAX_STEPS, SVG_MAX_TASKS = 40, 12
_W, _H, _GAP_X, _GAP_Y = 120, 40, 28, 8


def chain_svg(chain: ChainInfo) -> str:
    """The chain as an SVG DAG: one column per step, one node per task coloured by its
    state, with its attempt when retried and a progress bar while it reports progress;
    every task of a step joined to every task of the next (the step is the barrier)."""
    steps = chain.steps[:SVG_MAX_STEPS]
    pos: dict[str, tuple[int, int]] = {}
    for n, step in enumerate(steps):
        for m, t in enumerate(step[:SVG_MAX_TASKS]):
            pos[t.id] = (10 + n * (_W + _GAP_X), 10 + m * (_H + _GAP_Y))
    edges = []
    for before, after in pairwise(steps):
        for a in before[:SVG_MAX_TASKS]:
            for b in after[:SVG_MAX_TASKS]:
                (ax, ay), (bx, by) = pos[a.id], pos[b.id]
                edges.append(f'<line x1="{ax + _W}" y1="{ay + _H // 2}" x2="{bx}" y2="{by + _H // 2}" '
                             'stroke="#9aa5b1" stroke-width="1.2"/>')
    nodes = []
    for step in steps:
        for t in step[:SVG_MAX_TASKS]:
            x, y = pos[t.id]
            state = t.state.value
            label = state if t.run_attempt_count <= 1 else f"{state} · attempt {t.run_attempt_count}"
            bar = ""
            if t.progress is not None and state == "RUNNING":
                done = _W * t.progress // 100
                bar = f'<rect x="{x}" y="{y + _H - 4}" width="{done}" height="4" fill="#fff"/>'
            nodes.append(
                f'<g class="node" data-id="{html.escape(t.id)}" data-state="{state}">'
                f"<title>{html.escape(task_line(t))}</title>"
                f'<rect x="{x}" y="{y}" width="{_W}" height="{_H}" rx="5" fill="{STATE_COLOURS[state]}"/>'
                f'<text x="{x + 6}" y="{y + 15}" fill="#fff">{html.escape(t.id[:18])}</text>'
                f'<text x="{x + 6}" y="{y + 30}" fill="#fff" font-size="10">{label}</text>{bar}</g>'
            )
    width = 20 + len(steps) * (_W + _GAP_X)
    tall = max((min(len(s), SVG_MAX_TASKS) for s in steps), default=1)
    height = 30 + tall * (_H + _GAP_Y)
    left_out = len(chain.steps) - len(steps) + sum(max(0, len(s) - SVG_MAX_TASKS) for s in steps)
    caption = f"chain {html.escape(chain.id)}: {chain.state.value}" + (
        f" ({left_out} not drawn)" if left_out else "")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="kmpray-chain" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">'
        + "".join(edges) + "".join(nodes)
        + f'<text x="10" y="{height - 6}" class="chain-state" fill="#1f2933">{caption}</text></svg>'
    )


def chain_progress(chain: ChainInfo) -> tuple[int, str]:
    """How far a chain is (0-100: finished tasks, plus running ones by their progress) and
    a line of its steps for a progress bar: ``✓`` done, ``✗`` ended with a failure or
    cancel, ``2/3`` part done, ``▶`` begun, ``·`` not begun: ``✓ ✓ 2/3 · ·``."""
    total = sum(len(s) for s in chain.steps) or 1
    weight = 0.0
    marks = []
    for step in chain.steps:
        finished = [t for t in step if t.state.is_finished]
        weight += len(finished) + sum((t.progress or 0) / 100 for t in step if t.state.value == "RUNNING")
        if len(finished) == len(step):
            marks.append("✓" if all(t.state.value == "SUCCEEDED" for t in step) else "✗")
        elif finished:
            marks.append(f"{len(finished)}/{len(step)}")
        elif any(t.state.value == "RUNNING" for t in step):
            marks.append("▶")
        else:
            marks.append("·")
    return min(100, int(100 * weight / total)), " ".join(marks)


#: How many of a step's unfinished tasks ``chain_explain`` explains (each is a call to the
#: scheduler; a 5,000-wide step would be 5,000), the rest counted.
CHAIN_EXPLAIN_TASKS = 5


def chain_explain(chain: ChainInfo, task_text: Callable[[str], str]) -> str:
    """Why a chain is (not) finished: its state and steps (``✓ ▶ ·``), each task that ended
    it early (failed or cancelled) with its result, and for the first step not finished,
    ``task_text`` (the task's own ``explain``) of each of its unfinished tasks; the steps
    after it wait for that one."""
    _pct, marks = chain_progress(chain)
    lines = [f"chain {chain.id}: {chain.state.value}, {len(chain.steps)} steps: {marks}"]
    for n, step in enumerate(chain.steps, 1):
        for t in step:
            if t.state.is_finished and t.state.value != "SUCCEEDED":
                lines.append(f"step {n}: {task_line(t)}")
        waiting = [t for t in step if not t.state.is_finished]
        if waiting:
            later = len(chain.steps) - n
            after = f" ({later} later step{'s wait' if later != 1 else ' waits'} for it)" if later else ""
            lines.append(f"step {n} of {len(chain.steps)} is not finished{after}:")
            shown = waiting[:CHAIN_EXPLAIN_TASKS]
            lines += ["  " + line for t in shown for line in task_text(t.id).splitlines()]
            if len(waiting) > len(shown):
                lines.append(f"  ... and {len(waiting) - len(shown)} more unfinished in step {n}")
            break
    return "\n".join(lines)
