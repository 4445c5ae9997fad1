"""Guards on the layout the design promises: a pure core, and `import kmpray` without Ray."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import kmpray

PACKAGE = Path(kmpray.__file__).parent
# The client facade (connect, BackgroundTaskScheduler), the CLI and the demo may reach Ray
# and the actors (lazily); every other module of kmpray/ is the pure core.
FACADE = {"client.py", "cli.py", "demo.py"}
CORE = sorted(p for p in PACKAGE.rglob("*.py") if p.name not in FACADE and "examples" not in p.parts)


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_core_module_imports_ray_or_the_actors_anywhere_in_its_code() -> None:
    offenders = {p.relative_to(PACKAGE).as_posix(): sorted(_imported(p) & {"ray", "actors"}) for p in CORE}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert len(CORE) > 20  # the scan really looked at the core


def test_importing_kmpray_and_its_core_loads_no_ray() -> None:
    modules = ", ".join(f"kmpray.{p.relative_to(PACKAGE).with_suffix('').as_posix().replace('/', '.')}"
                        for p in CORE if p.name != "__init__.py")
    code = f"import sys, kmpray, {modules}; print(sorted(m for m in ('ray', 'actors') if m in sys.modules))"
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

