"""``python -m bench NAME --plot`` and ``python -m bench plot [NAME ...]``: a benchmark's
JSON as pictures, written next to it (matplotlib, the ``bench`` extra). What is drawn is
what the JSON holds, each figure against the baseline measured in the same run:

- dispatch: tasks/s, the engine (both durabilities) beside raw Ray tasks;
- latency: the CDF of enqueue -> worker start, the engine beside raw Ray at the same rate;
- timers: the CDF of timer lateness beside an asyncio baseline, with the p99 target;
- chains: ms per sequential step and fan-out tasks/s beside raw Ray;
- chaos-*: runs begun per second through the run with each kill and its recovery marked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .common import RESULTS


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bars(ax: Any, labels: list[str], values: list[float], unit: str, note: str | None = None) -> None:
    colours = ["#2563eb", "#60a5fa", "#9ca3af", "#d1d5db"][: len(values)]
    bars = ax.bar(labels, values, color=colours)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            f"{value:,.1f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax.set_ylabel(unit)
    if note:
        ax.set_title(note, fontsize=10)


def _cdf(ax: Any, curves: dict[str, list[float]], xlabel: str, target: float | None = None) -> None:
    levels = [i / 100 for i in range(101)]
    for name, points in curves.items():
        if points:
            ax.plot([max(p, 1e-3) for p in points], levels, label=name, drawstyle="steps-post")
    if target is not None:
        ax.axvline(target, color="#dc2626", linestyle="--", linewidth=1, label=f"target p99 {target:g} ms")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of samples")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")


def plot(name: str, result: dict[str, Any], json_path: Path) -> list[Path]:
    """The figures for one benchmark's result; [] when it has nothing to draw."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    r = result
    if name == "dispatch":
        labels = ["kmpray", "kmpray\ndurability=full", "raw Ray tasks"]
        values = [
            r["engine_tasks_per_s"],
            r.get("engine_durability_full_tasks_per_s") or 0,
            r["raw_ray_tasks_per_s"],
        ]
        _bars(ax, labels, values, "tasks / s", f"{r['tasks']:,} no-op tasks: {r['ratio']}x raw Ray")
    elif name == "latency" and r.get("cdf_ms"):
        _cdf(ax, r["cdf_ms"], f"enqueue -> worker start (ms), {r['rate_per_s']:,.0f} tasks/s")
    elif name == "timers" and r.get("cdf_ms"):
        _cdf(ax, r["cdf_ms"], f"timer lateness (ms), {r['timers']:,} timers", target=r.get("target_p99_ms"))
    elif name == "chains":
        plt.close(fig)
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
        _bars(
            left,
            ["kmpray", "in-process", "raw Ray"],
            [r["engine_ms_per_step"], r["in_process_ms_per_step"], r["raw_ray_ms_per_step"]],
            "ms per step",
            f"{r['sequential_steps']:,}-step chain",
        )
        _bars(
            right,
            ["kmpray", "raw Ray"],
            [r["engine_fanout_tasks_per_s"], r["raw_ray_fanout_tasks_per_s"]],
            "tasks / s",
            f"{r['parallel_width']:,}-wide step: {r['fanout_ratio']}x",
        )
    elif name.startswith("chaos") and r.get("timeline", {}).get("starts_per_s"):
        tl = r["timeline"]
        ax.plot(range(len(tl["starts_per_s"])), tl["starts_per_s"], color="#2563eb", label="runs begun / s")
        for n, (at, recovery) in enumerate(tl["kills"]):
            ax.axvspan(
                at,
                at + recovery,
                color="#dc2626",
                alpha=0.15,
                label="kill -> answers again" if n == 0 else None,
            )
            ax.axvline(at, color="#dc2626", linewidth=0.8)
        ax.set_xlabel("seconds into the run")
        ax.set_ylabel("runs begun / s")
        ax.set_title(
            f"{r['nemesis']}: {r['kills']} kills, lost {r['lost']}, executed twice {r['executed_twice']}",
            fontsize=10,
        )
        ax.legend(loc="upper left", framealpha=0.9)
    else:
        plt.close(fig)
        return []
    fig.tight_layout()
    out = json_path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return [out]


def plot_saved(names: list[str]) -> list[Path]:
    """Draw from the JSON already in bench/results/ (every one that has a figure if no names)."""
    return plot_files([RESULTS / f"{n}.json" for n in names] if names else sorted(RESULTS.glob("*.json")))


def plot_files(paths: list[Path]) -> list[Path]:
    written: list[Path] = []
    for path in paths:
        result = json.loads(path.read_text())
        written += plot(result.get("benchmark", path.stem), result, path)
    return written
