"""python -m bench <name> [--quick] [--json PATH] [--address ADDR] [--plot]
python -m bench load --rate R ...  the load generator (load --help)
python -m bench chaos [--scenario NAME] [--shards N]  continuous chaos; NAME one of scheduler,
  executors, coordinators, mixed, pauses, storm, hard-restart, poison, misfire, long-runs, node-loss,
  soak, disk, io (default: every one); --shards N: every scenario but poison, misfire and long-runs
python -m bench plot [NAME ...]  PNGs from the saved JSON, without running anything
python -m bench peers [--install]  Huey, Dramatiq, Celery over Redis, raw Ray and kmpray side by side
python -m bench ab --rev REV [--pairs N] -- dispatch  REV's engine code against this one,
  alternating (in a git checkout)"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

BENCHMARKS = ["core", "dispatch", "latency", "submit", "timers", "memory", "chains", "recovery", "gates",
              "reads", "start", "bulk"]
ALIASES = {"single": "submit"}  # its name before it measured #14's figures


def main(argv: list[str] | None = None, prog: str = "python -m bench") -> int:
    """``prog``: how the user called it (``kmpray bench`` from the CLI), in the help and usage."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["load"]:
        from .load import main as load_main

        return load_main(argv[1:], prog=f"{prog} load")
    if argv[:1] == ["ab"]:
        from .ab import main as ab_main

        return ab_main(argv[1:])
    if argv[:1] == ["plot"]:
        from .plots import plot_saved

        for path in plot_saved(argv[1:]):
            print(f"  plot: {path}")
        return 0
    parser = argparse.ArgumentParser(prog=prog, description=(__doc__ or "").replace("python -m bench", prog),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=[*BENCHMARKS, "all", "load", "chaos", "peers"],
                        help="'load --help' for the load generator; chaos, peers are not in 'all'")
    parser.add_argument("--scenario", default=None, help="chaos: one scenario (default: every one)")
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    parser.add_argument("--json", default=None, help="write the result here instead of bench/results/")
    parser.add_argument("--address", default=None, help="a Ray cluster to run against (default: local)")
    parser.add_argument("--plot", action="store_true", help="also write PNGs (kmpray[bench])")
    parser.add_argument("--shards", type=int, default=1,
                        help="scheduler_shards (dispatch; chaos: all scenarios but poison, misfire "
                             "and long-runs)")
    parser.add_argument("--compare-shards", default=None,
                        help="dispatch: e.g. 1,2 - the same load on each count, same run (shard_speedup)")
    parser.add_argument("--no-lane", action="store_true",
                        help="dispatch: EngineConfig(local_lane=False), every run and result through "
                             "Ray's calls, as to executors on other nodes")
    parser.add_argument("--install", action="store_true",
                        help="peers: pip-install kmpray[peers] and apt-install redis-server first")
    argv = [ALIASES.get(a, a) for a in argv[:1]] + argv[1:]
    args = parser.parse_args(argv)
    names = BENCHMARKS if args.name == "all" else [args.name]
    for name in names:
        print(f"== {name}")
        module = importlib.import_module(f".{name}", __package__)
        extra: dict[str, Any] = {"scenario_name": args.scenario} if name == "chaos" else {}
        if name == "peers":
            extra["install_peers"] = args.install
        if name in ("dispatch", "chaos"):
            extra["shards"] = args.shards
        if name == "dispatch" and args.no_lane:
            extra["local_lane"] = False
        if name == "dispatch" and args.compare_shards:
            extra["compare_shards"] = [int(c) for c in args.compare_shards.split(",")]
        json_path = args.json if len(names) == 1 else None
        module.run(quick=args.quick, json_path=json_path, address=args.address, **extra)
        if args.plot:
            saved = [json_path] if json_path else None
            for path in _plot_paths(name, args.scenario, saved):
                print(f"  plot: {path}")
    return 0


def _plot_paths(name: str, scenario: str | None, saved: list[str] | None) -> list[Any]:
    """Draw what a run just wrote (a chaos run writes one JSON per scenario)."""
    from pathlib import Path

    from .common import RESULTS
    from .plots import plot_files

    if saved:
        return plot_files([Path(p) for p in saved])
    if name == "chaos":
        return plot_files(sorted(RESULTS.glob(f"chaos-{scenario}.json" if scenario else "chaos-*.json")))
    return plot_files([RESULTS / f"{name}.json"])


if __name__ == "__main__":
    sys.exit(main())
