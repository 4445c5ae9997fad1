"""bench ab (bench/ab.py): two revisions' engine code alternate, the checked-out code is put
back after every run of the other revision (also when that run fails), and each figure is
summarised per revision. A stand-in runner and checkout: no git, no Ray."""

from __future__ import annotations

from typing import Any

import pytest

from bench.ab import compare, order


def test_revisions_alternate_and_the_code_is_put_back_after_each_run_of_the_other() -> None:
    assert order(3) == ["rev", "now", "now", "rev", "rev", "now"]
    checked_out = ["HEAD"]
    seen: list[str] = []
    rates = iter([100.0, 120.0, 130.0, 90.0, 110.0, 125.0])

    def checkout(rev: str) -> None:
        checked_out.append(rev)

    def runner(args: list[str]) -> dict[str, Any]:
        assert args == ["dispatch", "--quick"]
        seen.append(checked_out[-1])
        rate = next(rates)
        return {"engine_tasks_per_s": rate, "ratio": 5.0, "shards": 1, "note": "text", "ok": True,
                "cpu_us_per_task": {"executors": rate / 10, "all": None}}

    result = compare("abc123", 3, ["dispatch", "--quick"], runner=runner, checkout=checkout)
    assert seen == ["abc123", "HEAD", "HEAD", "abc123", "abc123", "HEAD"]
    assert checked_out[-1] == "HEAD" and checked_out.count("abc123") == 3
    rate = result["figures"]["engine_tasks_per_s"]
    assert rate["rev"] == [100.0, 90.0, 110.0] and rate["now"] == [120.0, 130.0, 125.0]
    assert rate["median_rev"] == 100.0 and rate["median_now"] == 125.0 and rate["now_over_rev"] == 1.25
    # numbers only; nested figures under dotted keys
    assert set(result["figures"]) == {"engine_tasks_per_s", "ratio", "shards", "cpu_us_per_task.executors"}
    assert result["figures"]["cpu_us_per_task.executors"]["median_now"] == 12.5


def test_a_failing_run_of_the_other_revision_still_puts_the_code_back() -> None:
    checked_out = ["HEAD"]

    def runner(args: list[str]) -> dict[str, Any]:
        raise RuntimeError("the benchmark failed")

    with pytest.raises(RuntimeError):
        compare("abc123", 1, ["dispatch"], runner=runner, checkout=checked_out.append)
    assert checked_out == ["HEAD", "abc123", "HEAD"]


def test_kmpray_bench_ab_passes_the_benchmark_on_though_click_drops_the_double_dash(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """click takes ``--`` for its own end of options and drops it: ``kmpray bench ab --rev R
    -- dispatch`` printed the usage and did nothing (ab looked for the ``--``). The
    benchmark now starts at the first argument after ab's own options, ``--`` or not."""
    import kmpray.bench.ab as ab
    from click.testing import CliRunner

    from kmpray.cli import main

    seen: list[tuple[str, int, list[str]]] = []
    monkeypatch.setattr(ab, "_git", lambda *a: "")  # a clean tree
    monkeypatch.setattr(ab, "compare", lambda rev, pairs, bench: seen.append((rev, pairs, bench)) or {"figures": {}})
    monkeypatch.setattr(ab, "write", lambda name, result, path: tmp_path / "ab.json")
    for argv in (["--rev", "abc", "--pairs", "1", "--", "dispatch", "--quick"],
                 ["--rev", "abc", "--pairs", "1", "dispatch", "--quick"]):
        result = CliRunner().invoke(main, ["bench", "ab", *argv])
        assert result.exit_code == 0, result.output
        assert ab.main(argv) == 0
    assert seen == [("abc", 1, ["dispatch", "--quick"])] * 4
    assert ab.main(["--rev", "abc", "--"]) == 2 and len(seen) == 4  # no benchmark: the usage, nothing run
