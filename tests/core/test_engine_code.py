"""connect() on an engine started by other kmpray code (kmpray/client/remote.py
``check_engine_code``): refused clearly where Ray could not load its actor classes, a
warning where only the version differs. No Ray: stand-in handles with the method
signatures Ray keeps on a handle."""

from __future__ import annotations

import inspect
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from kmpray import EngineUnavailable, __version__
from kmpray.client.remote import check_engine_code

TRACE = inspect.Parameter("_ray_trace_ctx", inspect.Parameter.KEYWORD_ONLY, default=None)
# As Ray keeps them: the real class's register_workers(self, items), and the stand-in Ray
# makes of a class it could not unpickle (every method ``(*args, **kwargs)``, the first
# parameter dropped as ``self``).
LOADED = [inspect.Parameter("items", inspect.Parameter.POSITIONAL_OR_KEYWORD), TRACE]
STAND_IN = [inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)]


def _handle(register_workers: list[inspect.Parameter] | None) -> Any:
    sigs = {"ready": [TRACE]} if register_workers is None else {"register_workers": register_workers}
    return SimpleNamespace(_ray_method_signatures=sigs)


def test_a_handle_ray_could_not_load_the_class_of_is_refused_naming_both_versions() -> None:
    with pytest.raises(EngineUnavailable) as exc:
        check_engine_code(_handle(STAND_IN), {"engine_version": "9.9.9"})
    assert "could not load the engine's actor classes" in str(exc.value)
    assert f"engine: kmpray 9.9.9, here: kmpray {__version__}" in str(exc.value)
    with pytest.raises(EngineUnavailable, match="engine: kmpray code from before engines said their version"):
        check_engine_code(_handle(STAND_IN), {})  # an engine from before the version was said


def test_the_same_code_passes_in_silence_and_another_version_is_warned_of(caplog: Any) -> None:
    with caplog.at_level(logging.WARNING, logger="kmpray"):
        check_engine_code(_handle(LOADED), {"engine_version": __version__})
        check_engine_code(SimpleNamespace(), {"engine_version": __version__})  # no signatures kept: no check
        assert caplog.records == []
        check_engine_code(_handle(LOADED), {"engine_version": "0.0.9"})
        check_engine_code(_handle(LOADED), {})  # older code, whatever its version number
    assert [r.getMessage() for r in caplog.records] == [
        f"the engine runs kmpray 0.0.9, this client kmpray {__version__}: connect with the same version",
        "the engine runs kmpray code from before engines said their version, this client kmpray "
        f"{__version__}: connect with the same version"]
