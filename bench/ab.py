"""python -m bench ab --rev REV [--pairs N] [--json PATH] [--] BENCH ARGS...

One benchmark of the engine's code at ``REV`` against the code checked out now, in
alternating pairs (REV, now; then now, REV; ...), each run a fresh process and a fresh Ray.
This VM's speed swings 20-35 % within an hour (raw Ray's own rate with it), so two runs of
one revision at different times compare the hour, not the code; alternating puts both
revisions in the same spells. Each numeric top-level figure of the benchmark's JSON is
reported per run, with the median per revision and the ratio of the medians.

``REV``'s ``kmpray/`` and ``actors/`` are checked out in place for its runs (the editable
install and Ray's workers import from this tree, so a second worktree would not be what
they run), and the checked-out ones are put back after every run, whatever happens: the
tree must have no uncommitted change there first, or nothing runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import write

ROOT = Path(__file__).resolve().parent.parent
ENGINE_CODE = ["kmpray", "actors"]  # what a revision's run takes from that revision

#: Runs one benchmark (its arguments) and returns its JSON.
Runner = Callable[[list[str]], dict[str, Any]]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def _checkout(rev: str) -> None:
    _git("checkout", rev, "--", *ENGINE_CODE)


def order(pairs: int) -> list[str]:
    """Which revision runs when: "rev" and "now" alternately, each pair reversed from the last."""
    out: list[str] = []
    for i in range(pairs):
        out += ["rev", "now"] if i % 2 == 0 else ["now", "rev"]
    return out


def _run_bench(args: list[str]) -> dict[str, Any]:
    subprocess.run(["ray", "stop", "--force"], capture_output=True, check=False)
    with tempfile.TemporaryDirectory(prefix="kmpray-ab-") as folder:
        out = Path(folder) / "result.json"
        subprocess.run([sys.executable, "-m", "bench", *args, "--json", str(out)], cwd=ROOT, check=True)
        return json.loads(out.read_text())  # type: ignore[no-any-return]


def flat(result: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A benchmark's JSON with nested figures as dotted keys (``cpu_us_per_task.executors``)."""
    out: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def compare(rev: str, pairs: int, bench_args: list[str], runner: Runner = _run_bench,
            checkout: Callable[[str], None] = _checkout) -> dict[str, Any]:
    """The alternating runs and their summary; ``checkout("HEAD")`` after each run of ``rev``."""
    runs: dict[str, list[dict[str, Any]]] = {"rev": [], "now": []}
    for which in order(pairs):
        if which == "rev":
            checkout(rev)
            try:
                runs["rev"].append(flat(runner(bench_args)))
            finally:
                checkout("HEAD")
        else:
            runs["now"].append(flat(runner(bench_args)))
    keys = [k for k, v in runs["now"][0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    figures: dict[str, Any] = {}
    for key in keys:
        if not all(isinstance(r.get(key), (int, float)) for w in runs for r in runs[w]):
            continue  # not a number in every run
        per = {w: [float(r[key]) for r in runs[w]] for w in runs}
        medians = {w: statistics.median(vals) for w, vals in per.items()}
        figures[key] = {"rev": per["rev"], "now": per["now"], "median_rev": medians["rev"],
                        "median_now": medians["now"],
                        "now_over_rev": round(medians["now"] / medians["rev"], 3) if medians["rev"] else None}
    return {"rev": rev, "now": _git("rev-parse", "--short", "HEAD").strip(), "pairs": pairs,
            "bench": bench_args, "order": order(pairs), "figures": figures}


def parse(argv: list[str]) -> argparse.Namespace | None:
    """ab's own options, then the benchmark and its arguments (``bench``), after ``--`` or
    not: ``kmpray bench ab`` gets its arguments from click, which drops the ``--``. None
    when no benchmark is named."""
    parser = argparse.ArgumentParser(prog="python -m bench ab")
    parser.add_argument("--rev", required=True, help="the revision to compare the checked-out code with")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--json", default=None, help="the comparison's JSON (default bench/results/ab.json)")
    parser.add_argument("bench", nargs=argparse.REMAINDER, help="the benchmark and its arguments")
    args = parser.parse_args(argv)
    if args.bench[:1] == ["--"]:
        args.bench = args.bench[1:]
    return args if args.bench else None


def main(argv: list[str]) -> int:
    args = parse(argv) if argv else None
    if args is None:
        print(__doc__)
        return 2
    if _git("status", "--porcelain", "--", *ENGINE_CODE).strip():
        print("bench ab: kmpray/ or actors/ has uncommitted changes; commit or stash them first")
        return 2
    result = compare(args.rev, args.pairs, args.bench)
    for key, f in result["figures"].items():
        print(f"  {key:40s} {args.rev}: {f['rev']}  now: {f['now']}  now/rev {f['now_over_rev']}")
    print(f"  wrote {write('ab', result, args.json)}")
    return 0
