"""Shared fixtures: one local Ray for every integration test; each test its own namespace."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import in_turn


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--seed", default=None, help="replay one seed of tests/core/test_simulation.py")
    parser.addoption("--worker-starts", action="store_true",
                     help="count the Ray worker processes each test file starts (tests/worker_starts.py)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--worker-starts"):
        from tests.worker_starts import WorkerStarts

        config.pluginmanager.register(WorkerStarts(), "worker-starts")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Bytecode for kmpray's modules and the tests', written once before any process imports
    them. Under PYTHONDONTWRITEBYTECODE (set on this machine and in CI) Python reads .pyc
    files but never writes them, and an editable install has none: every Ray worker the
    suite starts (an engine is six or more) compiled kmpray's ~110 modules again, ~0.15 s
    of CPU each, ~0.5 s of each engine start on two busy cores (session 48)."""
    import compileall

    import kmpray.actors  # (binds kmpray too)
    import kmpray.bench

    packages = [*kmpray.__path__, *kmpray.actors.__path__, *kmpray.bench.__path__]
    roots = {Path(p) for p in packages} | {Path(__file__).parent}
    for root in sorted(roots):
        compileall.compile_dir(str(root), quiet=2)  # a read-only tree: skipped, imports compile as before


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # The actors on asyncio's own loop, as on a machine without uvloop: the test extras
    # install it (for tests/core/test_lane.py), and Ray would run every actor on it. Set
    # RAY_USE_UVLOOP=1 to run the suite on uvloop (session 45: all passed there too).
    os.environ.setdefault("RAY_USE_UVLOOP", "0")
    if not ray.is_initialized():
        # address="local": always a fresh instance, never a cluster left running on the machine.
        # Metrics reach the agent every 2 s, not Ray's 10 s: test_metrics waits for them.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 _system_config={"metrics_report_interval_ms": 2000})
    yield ray
    ray.shutdown()


class EngineFactory:
    """Connect engines in fresh namespaces; every one is shut down at teardown."""

    def __init__(self, tmp_path: Path, lean: bool = False) -> None:
        self.tmp_path = tmp_path
        self.lean = lean
        self.made: list[Any] = []

    def __call__(self, namespace: str | None = None, state_dir: Path | None = None, **kw: Any) -> Any:
        import kmpray

        ns = namespace or f"t-{uuid.uuid4().hex[:10]}"
        config = kw.get("config") or kmpray.EngineConfig()
        update: dict[str, Any] = {}
        if self.lean and "executors" not in config.model_fields_set:  # one light executor, not one per CPU
            update["executors"] = 1
        if shards := int(os.environ.get("KMPRAY_TEST_SHARDS", "0")):
            # the suite against a sharded engine: KMPRAY_TEST_SHARDS=2 pytest tests/integration
            update["scheduler_shards"] = shards
        if (cold_ms := os.environ.get("KMPRAY_TEST_FINISHED_IN_MEMORY_MS")) is not None:
            # finished rows out of memory at once: KMPRAY_TEST_FINISHED_IN_MEMORY_MS=0
            update["finished_in_memory_ms"] = int(cold_ms)
        if update:
            kw["config"] = config.model_copy(update=update)
        sched = kmpray.connect(namespace=ns, state_dir=str(state_dir or self.tmp_path / ns), **kw)
        self.made.append(sched)
        return sched

    def registered(self, **kw: Any) -> Any:
        """An engine as ``__call__`` makes it, with the test workers registered."""
        from tests.integration import workers

        sched = self(**kw)
        workers.register_all(sched)
        return sched

    def close(self) -> None:
        for sched in self.made:
            try:
                sched.shutdown()
            except Exception:
                pass


@pytest.fixture
def engines(ray_session: Any, tmp_path: Path) -> Iterator[EngineFactory]:
    """Engines for one test. Each starts one light executor unless its config names
    ``executors``: four processes, not five, to start (each ~0.5 s of CPU here; the suite
    started 708 worker processes in session 55 against 767 before). The module-shared
    engines below keep the default, one executor per CPU, so that path stays under test."""
    factory = EngineFactory(tmp_path, lean=True)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def module_engines(ray_session: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineFactory]:
    """Engines shared by the tests of one module that neither restart nor reconfigure
    them (each test uses its own ids): an engine's start is most of a short test's time."""
    factory = EngineFactory(tmp_path_factory.mktemp("engines"))
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def _shared_vengine(module_engines: EngineFactory) -> Any:
    return module_engines.registered(virtual_time=True)


@pytest.fixture
def svengine(_shared_vengine: Any) -> Iterator[Any]:
    """The module's shared virtual-time engine with the test workers registered (``in_turn``)."""
    yield from in_turn(_shared_vengine)


@pytest.fixture(scope="module")
def _shared_engine(module_engines: EngineFactory) -> Any:
    return module_engines.registered()


@pytest.fixture
def sengine(_shared_engine: Any) -> Iterator[Any]:
    """The module's shared real-time engine (test workers registered; ``in_turn``)."""
    yield from in_turn(_shared_engine)


@pytest.fixture
def vengine(engines: EngineFactory) -> Any:
    """A virtual-time engine with the test workers registered."""
    return engines.registered(virtual_time=True)
