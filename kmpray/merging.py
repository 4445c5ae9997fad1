"""Input mergers: how prerequisites' ``Success.data`` becomes a dependent's input."""

from __future__ import annotations

from typing import Any

from .enums import InputMerger
from .errors import InvalidParameters


def merge(merger: InputMerger, outputs: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Merge prerequisite outputs in prerequisite order.

    OVERWRITE: a later prerequisite's key wins. ARRAY (Android's ArrayCreatingInputMerger):
    every key maps to a list of the values; a list value is concatenated; values of one
    key must share a type, else InvalidParameters names the key.
    """
    merged: dict[str, Any] = {}
    if merger is InputMerger.OVERWRITE:
        for out in outputs:
            if out:
                merged.update(out)
        return merged
    kinds: dict[str, type] = {}
    for out in outputs:
        for key, value in (out or {}).items():
            items = value if isinstance(value, list) else [value]
            for item in items:
                kind = type(item)
                if item is not None and kinds.setdefault(key, kind) is not kind:
                    raise InvalidParameters(
                        f"ARRAY merger: key {key!r} has values of different types "
                        f"({kinds[key].__name__} and {kind.__name__})"
                    )
            merged.setdefault(key, []).extend(items)
    return merged
