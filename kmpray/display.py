"""Tables of TaskInfo/ChainInfo for terminals (plain text) and notebooks (HTML)."""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any

# Rows are TaskInfo/ChainInfo (models.py renders itself through these functions); typed
# loosely here so that the two modules do not import each other.
TaskInfo = Any
ChainInfo = Any

COLUMNS = ("id", "worker", "state", "attempts", "runs", "progress", "next run", "waiting for", "result")


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


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
    parts = [f"<p><b>chain {html.escape(chain.id)}</b>: {chain.state.value}</p>"]
    for n, step in enumerate(chain.steps, 1):
        parts.append(f"<p>step {n}</p>{tasks_html(step)}")
    return "".join(parts)
