"""Where a benchmark writes its JSON without --json (bench/common.py): a checkout's
bench/results, an installed package's never (site-packages), the current directory's
kmpray-bench-results instead. Found touring, session 46."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import common


def test_a_checkout_writes_into_bench_results() -> None:
    here = Path(common.__file__)
    assert common.results_dir(here) == here.parent / "results"
    assert common.RESULTS == here.parent / "results"  # this checkout


def test_an_installed_package_writes_into_the_current_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "lib" / "python3.11" / "site-packages" / "kmpray" / "bench"
    site.mkdir(parents=True)
    (site / "common.py").write_text("")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert common.results_dir(site / "common.py") == work / "kmpray-bench-results"
