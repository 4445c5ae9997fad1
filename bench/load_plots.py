"""``bench load --plot``: the run as pictures (matplotlib, the ``kmpray[plot]`` extra),
written next to the JSON: rate over time, start latency over time, the latency CDF per
kind (corrected and uncorrected), and for --find-max the achieved-vs-requested curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .load_plan import CDF_LEVELS


def plot(result: dict[str, Any], json_path: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _pos: f"{v:g}")  # a log axis's ticks as 5, 10, 50, not in powers of ten

    stem = json_path.with_suffix("")
    written: list[Path] = []
    rows = result.get("timeline") or []
    if rows:
        t = [r["t_s"] for r in rows]
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
        top.plot(
            t, [r["requested"] for r in rows], label="requested (by intended time)", drawstyle="steps-post"
        )
        top.plot(t, [r["acknowledged"] for r in rows], label="acknowledged", drawstyle="steps-post")
        top.set_ylabel("operations / s")
        top.legend(loc="upper left")
        depth = [(r["t_s"], r["queue_depth"]) for r in rows if r["queue_depth"] is not None]
        if depth:  # sampled once a second when the engine answered in time: gaps are possible
            twin = top.twinx()
            twin.plot(
                [t for t, _ in depth],
                [d for _, d in depth],
                "o-",
                color="grey",
                alpha=0.6,
                markersize=3,
                label="queue depth",
            )
            twin.set_ylabel("queue depth (ready + in flight + gated)")
        bottom.plot(t, [r["start_p50_ms"] for r in rows], label="start p50 (corrected, all kinds)")
        bottom.plot(t, [r["start_p99_ms"] for r in rows], label="start p99 (corrected, all kinds)")
        bottom.set_ylabel("ms")
        bottom.set_xlabel("s since the schedule's start")
        bottom.set_yscale("log")
        bottom.yaxis.set_major_formatter(plain)
        bottom.yaxis.set_minor_formatter(plain)
        bottom.legend(loc="upper left")
        fig.suptitle(f"kmpray bench load: {result.get('profile', '')}")
        path = Path(f"{stem}-timeline.png")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    cdf = result.get("cdf_ms") or {}
    if cdf:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for n, (kind, curves) in enumerate(cdf.items()):
            for which, style in (("corrected", "-"), ("uncorrected", ":")):
                xs = curves.get(which) or []
                if xs:  # one colour per kind: solid corrected, dotted uncorrected
                    xs = [max(x, 0.01) for x in xs]
                    ax.plot(xs, CDF_LEVELS[: len(xs)], style, color=f"C{n}", label=f"{kind} {which}")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plain)
        ax.set_xlabel("enqueue -> start, ms")
        ax.set_ylabel("share of operations")
        ax.legend(loc="upper left", fontsize="small")
        ax.set_title("start latency CDF (corrected: from the intended send time)")
        path = Path(f"{stem}-cdf.png")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    curve = result.get("curve") or []
    if curve:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        pts = sorted(curve, key=lambda c: c["rate_per_s"])
        ax.plot(
            [c["rate_per_s"] for c in pts], [c["achieved_rate_per_s"] for c in pts], "o-", label="achieved"
        )
        ax.plot(
            [c["rate_per_s"] for c in pts],
            [c["rate_per_s"] for c in pts],
            "--",
            color="grey",
            label="requested",
        )
        if result.get("dispatch_capacity_per_s"):  # what the knee's share is of
            ax.axhline(result["dispatch_capacity_per_s"], color="tab:green", alpha=0.5,
                       label="bulk capacity (median over the run)")
        ax2 = ax.twinx()
        ax2.plot(
            [c["rate_per_s"] for c in pts],
            [c["p99_ms"] for c in pts],
            "s:",
            color="tab:red",
            label="corrected p99",
        )
        if result.get("slo_p99_ms") is not None:
            ax2.axhline(result["slo_p99_ms"], color="tab:red", alpha=0.3, label="p99 SLO")
        ax2.set_ylabel("corrected start p99, ms")
        ax.set_xlabel("requested operations / s")
        ax.set_ylabel("achieved operations / s")
        lines = ax.get_legend_handles_labels()
        more = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left")
        ax.set_title(
            f"the knee: max {result.get('max_rate_per_s')}/s at p99 <= {result.get('slo_p99_ms')} ms"
        )
        path = Path(f"{stem}-knee.png")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written
