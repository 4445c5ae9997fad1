"""A deterministic simulation of the pure core under a seeded fault schedule (#13).

The real SchedulerCore, ChainCoordinatorCore and a store run in virtual time, driven the
way the actors drive them, while a seeded schedule of faults acts: scheduler restarts
(restore from the store, adoption of the runs executors still hold), executor loss,
coordinator restarts, reports delayed, duplicated and reordered, clock jumps, and a
store reopened from its encoded rows, device states changing on two nodes (gated work,
device-trigger work), content changes notified (ContentUri work), heavy work in its own
queue. After every step and at the end the invariants hold: no accepted
task is lost, at most one result is counted per run, finished-run counts never go back, a
unique name has at most one live (non-BLOCKED) work, chain and APPEND barriers are
respected at every dispatch, and a run goes only to a node whose state (as last pushed)
meets its task's constraints (a device trigger's: is in that state, entered since the work
was submitted), and content work runs only after a matching change.

200 seeds of 120 steps run in CI, and 42 of 1,000 steps (long histories: a name appended
to ten times and more, prunes of names replaced long before); a failure names its seed and
its length and replays identically with ``pytest tests/core/test_simulation.py --seed N``
(both lengths). Sweeping more seeds by hand costs ~0.2 s per long seed.
"""

from __future__ import annotations

import pytest

from .simulation import LONG_REGRESSIONS, LONG_SEEDS, LONG_STEPS, SEEDS, STEPS, Sim


def run(seed: int, steps: int = STEPS) -> Sim:
    sim = Sim(seed)
    try:
        for _ in range(steps):
            sim.step()
        sim.run_to_end()
        sim.final_check()
    except AssertionError as exc:
        tail = "\n  ".join(sim.trace[-15:])
        raise AssertionError(
            f"seed {seed}: {exc}\n  last actions:\n  {tail}\n"
            f"replay ({steps} steps): pytest tests/core/test_simulation.py --seed {seed}"
        ) from None
    return sim


def seeds(config: pytest.Config) -> list[int]:
    chosen = config.getoption("--seed")
    return [int(chosen)] if chosen is not None else list(range(SEEDS))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" in metafunc.fixturenames:
        metafunc.parametrize("seed", seeds(metafunc.config))
    if "long_seed" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--seed")
        metafunc.parametrize("long_seed", [int(chosen)] if chosen is not None else [*range(LONG_SEEDS), *LONG_REGRESSIONS])


def test_the_core_keeps_its_invariants_under_a_seeded_fault_schedule(seed: int) -> None:
    sim = run(seed)
    assert sim.step_no >= STEPS


def test_the_core_keeps_its_invariants_over_long_histories(long_seed: int) -> None:
    """1,000 steps: what 120 do not reach. Found two things the short runs never did: an
    APPEND line of ten or more made in one millisecond restored out of order (fixed in
    restore.py), and this file's own count of runs forgetting appended keys deleted long
    before their name was pruned."""
    sim = run(long_seed, LONG_STEPS)
    assert sim.step_no >= LONG_STEPS


def test_a_seed_replays_identically() -> None:
    a, b = run(7), run(7)
    assert a.trace == b.trace and a.counted == b.counted
