"""EngineConfig refuses what Ray would refuse later, inside the engine, naming the field."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from kmpray import EngineConfig


@pytest.mark.parametrize(("fields", "why"), [
    ({"heavy_num_cpus": math.inf}, "heavy_num_cpus must be a finite amount >= 0, got inf"),
    ({"heavy_num_cpus": -1}, "heavy_num_cpus must be a finite amount >= 0"),
    ({"heavy_num_cpus": 0.00001}, "finer than Ray's resource step (0.0001)"),
    ({"heavy_resources": {"CPU": 1}}, "give CPUs as heavy_num_cpus"),
    ({"heavy_resources": {"x": math.nan}}, "heavy_resources['x'] must be a finite amount >= 0, got nan"),
    ({"heavy_resources": {"x": -2}}, "heavy_resources['x'] must be a finite amount"),
    ({"heavy_resources": {"x": 0.00005}}, "heavy_resources['x'] = 5e-05 is finer"),
    ({"heavy_resources": {"": 1}}, "resource name must not be empty"),
])
def test_heavy_worker_resources_ray_would_refuse_are_refused_at_config(fields: dict, why: str) -> None:
    """Before: accepted, then Ray refused each heavy worker's options inside the scheduler's
    dispatch turn, every turn (light tasks stopped running too)."""
    with pytest.raises(ValidationError) as info:
        EngineConfig(**fields)
    assert why in str(info.value) and next(iter(fields)) in str(info.value)


def test_heavy_worker_resources_ray_accepts_are_kept() -> None:
    config = EngineConfig(heavy_num_cpus=0.25, heavy_resources={"GPU": 0.5, "heavy": 1, "off": 0})
    assert (config.heavy_num_cpus, config.heavy_resources) == (0.25, {"GPU": 0.5, "heavy": 1, "off": 0})
    assert EngineConfig(heavy_num_cpus=0).heavy_num_cpus == 0
