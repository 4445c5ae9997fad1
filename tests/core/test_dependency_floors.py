"""The dependency versions kmpray says it runs on. Until session 52 pyproject.toml asked for
``ray>=2.40`` and ``connect()`` failed on 2.40 (and on 2.52) inside the engine's actors, an
AttributeError in each actor's log; on a cluster the nodes' Ray is the image's, whatever
pip's floor says."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from kmpray.client.remote import MIN_RAY, require_ray_version
from kmpray.errors import EngineUnavailable

ROOT = Path(__file__).resolve().parents[2]


def test_every_ray_floor_in_pyproject_is_the_one_connect_checks() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    specs = [*project["dependencies"], *(d for deps in extras for d in deps)]
    floors = {m[1] for d in specs if (m := re.match(r"ray(?:\[[a-z,]+\])?>=([\d.]+)$", d))}
    assert [d for d in specs if d.startswith("ray")], specs
    assert floors == {".".join(map(str, MIN_RAY))}, floors


@pytest.mark.parametrize("old", ["2.40.0", "2.52.0", "2.53.0", "1.13.0", "nightly"])
def test_an_older_ray_is_refused_naming_both_versions(old: str) -> None:
    with pytest.raises(EngineUnavailable) as err:
        require_ray_version(old)
    assert f"Ray {old}" in str(err.value) and "ray>=2.54" in str(err.value)


@pytest.mark.parametrize("ok", ["2.54.0", "2.55.1", "2.60.0", "2.61.0rc1", "3.0.0.dev0"])
def test_the_floor_and_newer_pass(ok: str) -> None:
    require_ray_version(ok)  # returns; the refusals above are what can fail
    assert MIN_RAY == (2, 54)


def test_msgpack_runs_compiled_here_and_its_fallback_is_named_when_not() -> None:
    """msgpack 1.0.0 on Python 3.11 (no wheel) ran its pure-Python packer: ``bench core``
    91 against 45 µs a task (msgpack 1.1), without a word (session 52)."""
    import msgpack

    from kmpray import packing

    assert packing.ACCELERATED and packing.slow_packer_warning() is None
    why = packing.slow_packer_warning(accelerated=False)
    assert why is not None and f"msgpack {msgpack.version[0]}." in why and "msgpack>=1.1" in why
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "msgpack>=1.1" in project["dependencies"]
