"""Guards on the layout the design promises: a pure core, and `import kmpray` without Ray."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import kmpray

PACKAGE = Path(kmpray.__file__).parent
# The client facade (kmpray/client/: connect, BackgroundTaskScheduler, subscriptions), the
# CLI and the demo may reach Ray and the actors (lazily); every other module of kmpray/ is
# the pure core.
FACADE = {"cli.py", "demo.py"}
CORE = sorted(
    p for p in PACKAGE.rglob("*.py")
    if p.name not in FACADE and not {"examples", "client"} & set(p.relative_to(PACKAGE).parts)
)


def _imported(path: Path) -> set[str]:
    """What a module imports anywhere in its code, as ``ray`` or ``actors`` (the actors
    install as ``kmpray.actors``; the checkout's top-level name counts too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        elif isinstance(node, ast.ImportFrom) and node.module:  # relative: from .actors / ..actors
            modules = [node.module] if node.module.split(".")[0] == "actors" else []
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "ray":
                names.add("ray")
            elif parts[0] == "actors" or parts[:2] == ["kmpray", "actors"]:
                names.add("actors")
    return names


def test_no_core_module_imports_ray_or_the_actors_anywhere_in_its_code() -> None:
    offenders = {p.relative_to(PACKAGE).as_posix(): sorted(_imported(p)) for p in CORE}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert len(CORE) > 20  # the scan really looked at the core


def test_importing_kmpray_and_its_core_loads_no_ray() -> None:
    """Nor numpy: the engine's actors (eight processes per engine) import it only once step
    data holds arrays (kmpray/artifacts.py); it is ~50 ms of each one's start."""
    modules = ", ".join(f"kmpray.{p.relative_to(PACKAGE).with_suffix('').as_posix().replace('/', '.')}"
                        for p in CORE if p.name != "__init__.py")
    code = (f"import sys, kmpray, {modules}; "
            f"print(sorted(m for m in ('ray', 'actors', 'kmpray.actors', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def _state_assignments(path: Path) -> list[int]:
    """Lines that assign a ``.state`` attribute (``x.state = ...``, ``x.state += ...``)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        lines += [t.lineno for t in targets if isinstance(t, ast.Attribute) and t.attr == "state"]
    return lines


def test_only_the_state_machine_changes_a_tasks_state() -> None:
    actors = Path(__file__).parents[2] / "actors"
    modules = sorted(PACKAGE.rglob("*.py")) + sorted(actors.glob("*.py"))
    found = {p.name: _state_assignments(p) for p in modules}
    assert found["lifecycle.py"]  # the scan sees the assignments where they belong
    assert {name: lines for name, lines in found.items() if lines and name != "lifecycle.py"} == {}


def test_no_module_exceeds_500_lines() -> None:
    """A module that outgrows this hides more than one concern (split it, as engine.py was).
    The engine's, and since session 58 the tests' and the benchmarks' too (four test
    modules of 532-600 lines were split by theme then)."""
    root = Path(__file__).parents[2]
    sizes = {p.relative_to(root).as_posix(): len(p.read_text().splitlines())
             for folder in ("kmpray", "actors", "tests", "bench") for p in (root / folder).rglob("*.py")}
    assert len(sizes) > 200 and "tests/core/test_layout.py" in sizes and "bench/load.py" in sizes
    assert {name: n for name, n in sizes.items() if n > 500} == {}


def test_the_facade_reaches_the_actors_under_the_package_name() -> None:
    """Installing kmpray claims no generic import name: the actors are kmpray.actors."""
    facade = sorted((PACKAGE / "client").glob("*.py"))
    assert any("actors" in _imported(p) for p in facade)
    for p in facade + sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(p.read_text())
        tops = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        tops |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module}
        assert not tops & {"actors", "bench"}, p
