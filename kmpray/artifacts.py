"""Step data that is not plain msgpack: numpy arrays, bytes, large values.

A run's ``Success.data`` may hold numpy arrays (any non-object dtype, any shape),
``bytes`` and anything msgpack takes, nested in dicts and lists. Before it leaves the
executor, ``split`` turns it into *wire data*: plain msgpack in which

- a small array (at most ``inline_data_bytes``) is a descriptor carrying its ``.npy``
  bytes (``"b"``): it lives in the store row like any other value;
- a large array is a descriptor naming its content (``"sha256"``): the array itself goes
  to Ray's object store once, and to a content-addressed file under
  ``state_dir/artifacts`` before the step counts as SUCCEEDED (``ArtifactDir``);
- bytes and other msgpack values stay in the row as they always did, unless the output
  would pass ``max_output_bytes``: then its largest top-level values go the arrays' way.

Descriptors are dicts under the key ``"$kmpray"``, so the scheduler, the chain rules, the
mergers and the store see plain msgpack and never the values. ``public`` is what users see
in ``TaskInfo.result.data``, events and the JSON ``input`` (no payload bytes); ``join``
puts the real values back (arrays read-only). Nothing here is ever unpickled: arrays are
written and read as ``.npy`` with ``allow_pickle=False``, other values as msgpack.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from .errors import InvalidParameters

MARK = "$kmpray"
_EXT = {"ndarray": ".npy", "bytes": ".bin", "msgpack": ".msgpack"}


@dataclass(frozen=True, slots=True)
class Blob:
    """A large value of one output: what goes to the object store and the artifact folder."""

    digest: str
    kind: str  # "ndarray" | "bytes" | "msgpack"
    value: Any  # the array (C-contiguous), the bytes, or the packed msgpack bytes
    nbytes: int
    where: str  # "Success.data['key']..." for messages


def is_plain(data: dict[str, Any] | None, max_output_bytes: int) -> bool:
    """True when ``data`` needs no splitting: plain msgpack under the output cap (the
    common case, and exactly what was accepted before arrays were)."""
    if data is None:
        return True
    try:
        return len(msgpack.packb(data, use_bin_type=True)) <= max_output_bytes
    except (TypeError, ValueError, OverflowError):
        return False


def _describe_type(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"numpy array of {value.dtype} {list(value.shape)}"
    return type(value).__name__


def split(
    data: dict[str, Any], inline_limit: int, max_output_bytes: int, max_artifact_bytes: int
) -> tuple[dict[str, Any], list[Blob]]:
    """Wire data for ``data`` and its large values. Arrays over ``inline_limit`` always go
    large; other values (bytes, msgpack) only when the output would pass
    ``max_output_bytes`` otherwise: then its largest top-level values, biggest first.
    Raises InvalidParameters naming the key, its type and the limit for a value that
    cannot be stored without pickle or is too big."""
    if MARK in data:
        raise InvalidParameters(f"Success.data: the key {MARK!r} is reserved for kmpray's descriptors")
    blobs: dict[str, Blob] = {}
    total = [0]

    def large(kind: str, value: Any, nbytes: int, where: str, digest: str, shown: object) -> dict[str, Any]:
        if digest not in blobs:
            total[0] += nbytes
            if total[0] > max_artifact_bytes:
                raise InvalidParameters(
                    f"{where}: {_describe_type(shown)} of {nbytes} bytes takes this output past "
                    f"max_artifact_bytes ({max_artifact_bytes} bytes)"
                )
            blobs[digest] = Blob(digest, kind, value, nbytes, where)
        return {MARK: kind, "nbytes": nbytes, "sha256": digest}

    def walk(value: Any, where: str) -> Any:
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise InvalidParameters(
                    f"{where}: numpy array of dtype {value.dtype} holds Python objects; only arrays of "
                    f"non-object dtypes can be stored without pickle"
                )
            arr = np.ascontiguousarray(value)
            head = {MARK: "ndarray", "dtype": str(arr.dtype), "shape": list(arr.shape)}
            if arr.nbytes <= inline_limit:
                buf = io.BytesIO()
                np.lib.format.write_array(buf, arr, allow_pickle=False)
                return {**head, "nbytes": arr.nbytes, "b": buf.getvalue()}
            h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
            h.update(arr.reshape(-1).view(np.uint8).data if arr.size else b"")
            return {**head, **large("ndarray", arr, arr.nbytes, where, h.hexdigest(), arr)}
        if isinstance(value, np.generic):  # numpy scalars: their Python value
            if value.dtype.hasobject:
                raise InvalidParameters(f"{where}: numpy object scalar cannot be stored without pickle")
            return walk(value.item(), where)
        if isinstance(value, (bytearray, memoryview)):
            return bytes(value)
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            for k, v in value.items():
                if k == MARK:
                    raise InvalidParameters(f"{where}: the key {MARK!r} is reserved for kmpray's descriptors")
                out[k] = walk(v, f"{where}[{k!r}]")
            return out
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    wire = {k: walk(v, f"Success.data[{k!r}]") for k, v in data.items()}
    sizes: dict[Any, int] = {}
    for k, v in wire.items():
        try:
            sizes[k] = len(msgpack.packb(v, use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidParameters(
                f"Success.data[{k!r}]: {type(data[k]).__name__} is not msgpack-serializable ({exc}); "
                f"return numpy arrays, bytes or plain values (str, int, float, bool, None, lists, dicts)"
            ) from None
    over = sum(sizes.values()) - max_output_bytes
    for k in sorted(sizes, key=sizes.__getitem__, reverse=True):
        if over <= 0 or sizes[k] <= inline_limit:
            break
        if _is_desc(wire[k]):
            continue
        where = f"Success.data[{k!r}]"
        v = wire[k]
        if isinstance(v, bytes):
            wire[k] = large("bytes", v, len(v), where, hashlib.sha256(v).hexdigest(), v)
        else:
            packed = msgpack.packb(v, use_bin_type=True)
            wire[k] = large(
                "msgpack", packed, len(packed), where, hashlib.sha256(packed).hexdigest(), data[k]
            )
        over -= sizes[k]
    return wire, list(blobs.values())


def _is_desc(value: object) -> bool:
    return isinstance(value, dict) and MARK in value


def descriptors(data: Any) -> list[dict[str, Any]]:
    """Every descriptor of a large value (one with ``sha256``) in wire data."""
    out: list[dict[str, Any]] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if MARK in value:
                if "sha256" in value:
                    out.append(value)
                return
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(data)
    return out


def has_descriptors(data: Any) -> bool:
    if isinstance(data, dict):
        return MARK in data or any(has_descriptors(v) for v in data.values())
    if isinstance(data, list):
        return any(has_descriptors(v) for v in data)
    return False


def public(data: Any) -> Any:
    """What users see in TaskInfo, events and ``input``: descriptors without payload bytes."""
    if isinstance(data, dict):
        if MARK in data:
            return {k: v for k, v in data.items() if k != "b"}
        return {k: public(v) for k, v in data.items()} if has_descriptors(data) else data
    if isinstance(data, list):
        return [public(v) for v in data] if has_descriptors(data) else data
    return data


def _json_default(value: object) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {MARK: "bytes", "nbytes": len(value)}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_json(data: dict[str, Any]) -> str:
    """The JSON ``input`` of a chain step: arrays and bytes as small descriptors."""
    return json.dumps(public(data), default=_json_default)


def decode_inline(desc: dict[str, Any]) -> np.ndarray:
    arr = np.lib.format.read_array(io.BytesIO(desc["b"]), allow_pickle=False)
    arr.flags.writeable = False
    return arr


def from_stored(kind: str, value: Any) -> Any:
    """The user's value from what the object store or an artifact holds (arrays read-only:
    a successor shares them, zero-copy, with every other reader on the node)."""
    if kind == "msgpack":
        return msgpack.unpackb(value, raw=False, strict_map_key=False)
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    return value


def join(data: Any, fetch: Callable[[dict[str, Any]], Any]) -> Any:
    """Wire data with the real values put back: ``fetch(descriptor)`` gives a large one."""
    if isinstance(data, dict):
        if MARK in data:
            if "b" in data:
                return decode_inline(data)
            return fetch(data)
        return {k: join(v, fetch) for k, v in data.items()} if has_descriptors(data) else data
    if isinstance(data, list):
        return [join(v, fetch) for v in data] if has_descriptors(data) else data
    return data


class ArtifactDir:
    """Content-addressed files: ``<sha256>.npy`` (arrays, ``allow_pickle=False``), ``.bin``
    (bytes), ``.msgpack`` (other values). Written to a temporary name, then renamed, so a
    reader sees a whole file or none; with ``durability="full"`` fsynced before the rename."""

    def __init__(self, root: str | Path, durability: str = "normal") -> None:
        self.root = Path(root)
        self.fsync = durability == "full"

    def path(self, digest: str, kind: str) -> Path:
        if kind not in _EXT or not digest.isalnum():
            raise ValueError(f"not an artifact: {kind!r} {digest!r}")
        return self.root / f"{digest}{_EXT[kind]}"

    def has(self, digest: str, kind: str) -> bool:
        return self.path(digest, kind).exists()

    def write(self, blob: Blob) -> int:
        """Write one blob (once: an existing file holds the same content). Returns bytes written."""
        target = self.path(blob.digest, blob.kind)
        if target.exists():
            return 0
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{blob.digest}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                if blob.kind == "ndarray":
                    np.lib.format.write_array(f, blob.value, allow_pickle=False)
                else:
                    f.write(blob.value)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, target)
            if self.fsync:
                fd = os.open(self.root, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return target.stat().st_size

    def read(self, desc: dict[str, Any]) -> Any:
        """The stored value (an array memory-mapped read-only), or FileNotFoundError."""
        kind = desc[MARK]
        path = self.path(desc["sha256"], kind)
        if kind == "ndarray":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        return path.read_bytes()

    def total_bytes(self) -> int:
        if not self.root.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.root.iterdir() if p.is_file())

    def sweep(self, live: set[str], grace_s: float) -> tuple[int, int]:
        """Remove files whose digest no row refers to (older than ``grace_s``: a file just
        written for a result not yet reported is kept). Returns (files, bytes) removed."""
        if not self.root.is_dir():
            return 0, 0
        now = time.time()
        files = freed = 0
        for p in self.root.iterdir():
            digest = p.name.split(".")[0] if not p.name.startswith(".") else p.name.split(".")[1]
            if digest in live:
                continue
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                if now - st.st_mtime < grace_s:
                    continue
                p.unlink()
                files += 1
                freed += st.st_size
        return files, freed
