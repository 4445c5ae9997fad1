"""The frozen pydantic base shared by every value object that crosses a boundary."""

from __future__ import annotations

import functools
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel


class Frozen(BaseModel):
    """Immutable, snake_case fields that also accept camelCase aliases.

    ``_positional`` names the fields that may be given positionally, so that
    ``TaskRequest("SyncWorker")`` and ``TaskTrigger.Periodic(FIFTEEN_MINUTES)`` read
    like the KMP API they mirror.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        arbitrary_types_allowed=False,
    )
    _positional: ClassVar[tuple[str, ...]] = ()

    def __init__(self, /, *args: Any, **data: Any) -> None:
        if args:
            names = type(self)._positional
            if len(args) > len(names):
                raise TypeError(
                    f"{type(self).__name__} takes at most {len(names)} positional "
                    f"argument(s) ({', '.join(names) or 'none'}), got {len(args)}"
                )
            for name, value in zip(names, args, strict=False):
                if name in data or _camel(name) in data:
                    raise TypeError(f"{type(self).__name__} got {name!r} twice")
                data[name] = value
        super().__init__(**data)


MARK = "$kmpray"  # the key that marks a descriptor in step data (kmpray/artifacts.py)


def bytes_shown(value: Any) -> Any:
    """``value`` with each ``bytes`` in it (nested in dicts and lists) as a small descriptor,
    ``{"$kmpray": "bytes", "nbytes": n}``, as the JSON ``input`` of a chain step shows it:
    JSON has no bytes, and bytes need not be UTF-8 (pydantic's JSON mode decoded them as
    UTF-8, so a worker's binary output made ``kmpray info`` and the dashboard fail). The
    same object wherever it holds no bytes."""
    if isinstance(value, (bytes, bytearray)):
        return {MARK: "bytes", "nbytes": len(value)}
    if isinstance(value, dict):
        out: dict[Any, Any] | None = None
        for k, v in value.items():
            new = bytes_shown(v)
            if new is not v:
                if out is None:
                    out = dict(value)
                out[k] = new
        return value if out is None else out
    if isinstance(value, (list, tuple)):
        items = [bytes_shown(v) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


@functools.cache
def _camel(name: str) -> str:
    """A field's camelCase alias, worked out once per name (to_camel is a few regex
    substitutions, ~10 µs: it was most of building a ``TaskRequest`` positionally)."""
    return to_camel(name)


_FIELDS: dict[type[Any], tuple[frozenset[str], set[str]]] = {}


def trusted(cls: type[Any], values: dict[str, Any]) -> Any:
    """An instance of the frozen model ``cls`` from ``values`` that the engine made itself
    (every field given, already of its type): no validation, and none of
    ``model_construct``'s per-field default lookups, which cost ~4 µs per object on the
    dispatch path (a completion event and a result per task). Falls back to
    ``model_construct`` when a field is missing or the model has private attributes.

    Every instance of a class made here shares one set of field names as pydantic's
    ``__pydantic_fields_set__`` (every field is set): a set each was 216 bytes of every
    finished task's result kept in memory (``retain_finished_ms``), ~16 % of the row.
    Nothing writes to it: the models are frozen, and ``model_copy`` copies the set before
    adding to it."""
    known = _FIELDS.get(cls)
    if known is None:  # the class's field names (its model_fields property is slow per call)
        names = frozenset(cls.model_fields) if not cls.__private_attributes__ else frozenset()
        known = _FIELDS[cls] = (names, set(names))
    if values.keys() != known[0]:
        return cls.model_construct(**values)
    obj = object.__new__(cls)
    object.__setattr__(obj, "__dict__", values)
    object.__setattr__(obj, "__pydantic_fields_set__", known[1])
    object.__setattr__(obj, "__pydantic_extra__", None)
    object.__setattr__(obj, "__pydantic_private__", None)
    return obj


def one_line(exc: ValidationError, field: str, with_input: bool = False) -> str:
    """pydantic's complaint (several lines, with a URL) as one line naming the field:
    ``field.loc: msg``, with what it was if ``with_input``, and how many more there are."""
    first = exc.errors(include_url=False)[0]
    was = f" (was {first['input']!r:.60})" if with_input and "input" in first else ""
    msg = first["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's own ValueError
    return ".".join([field, *map(str, first["loc"])]) + f": {msg}{was}{more_errors(exc)}"


def more_errors(exc: ValidationError) -> str:
    return f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
