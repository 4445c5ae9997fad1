"""python -m bench <name> [--quick] [--json PATH] [--address ADDR]  |  python -m bench load --rate R ...
python -m bench chaos [--scenario scheduler|executors|hard-restart|poison|misfire|long-runs|node-loss|soak] [--quick]"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = ["dispatch", "latency", "single", "timers", "memory", "chains", "recovery", "gates"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["load"]:
        from .load import main as load_main

        return load_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("name", choices=[*BENCHMARKS, "all", "load", "chaos"],
                        help="'load --help' for the load generator; chaos is not part of 'all'")
    parser.add_argument("--scenario", default=None, help="chaos: one scenario (default: every one)")
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    parser.add_argument("--json", default=None, help="write the result here instead of bench/results/")
    parser.add_argument("--address", default=None, help="a Ray cluster to run against (default: local)")
    args = parser.parse_args(argv)
    names = BENCHMARKS if args.name == "all" else [args.name]
    for name in names:
        print(f"== {name}")
        module = importlib.import_module(f".{name}", __package__)
        extra = {"scenario_name": args.scenario} if name == "chaos" else {}
        json_path = args.json if len(names) == 1 else None
        module.run(quick=args.quick, json_path=json_path, address=args.address, **extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
