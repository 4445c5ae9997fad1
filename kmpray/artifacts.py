"""Step data that is not plain msgpack: numpy arrays, bytes, large values.

A run's ``Success.data`` may hold numpy arrays (any non-object dtype, any shape),
``bytes`` and anything msgpack takes, nested in dicts and lists. Before it leaves the
executor, ``split`` turns it into *wire data*: plain msgpack in which

- a small array (at most ``inline_data_bytes``) is a descriptor carrying its ``.npy``
  bytes (``"b"``): it lives in the store row like any other value;
- a large array is a descriptor naming its content (``"blake3"``): the array itself goes
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
import errno
import io
import json
import mmap
import os
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3
import msgpack

if TYPE_CHECKING:
    import numpy as np

from ._model import MARK as MARK  # re-exported: the descriptors are this module's
from ._model import bytes_shown
from .errors import InvalidParameters


def _numpy() -> Any:
    """numpy if this process has imported it, else None: no value can be an array before
    it has. The engine's actors import it only when step data holds arrays (it is ~50 ms
    of each actor process's start, and an engine starts eight)."""
    return sys.modules.get("numpy")

_EXT = {"ndarray": ".npy", "bytes": ".bin", "msgpack": ".msgpack"}


@dataclass(slots=True)
class Blob:
    """A large value of one output: what goes to the object store and the artifact folder.
    Its digest is the blake3 of its artifact file's bytes (``b3sum`` checks a file),
    set in ``desc`` once computed (``seal``): the executor hashes while it writes."""

    kind: str  # "ndarray" | "bytes" | "msgpack"
    value: Any  # the array (C-contiguous), the bytes, or the packed msgpack bytes
    nbytes: int
    where: str  # "Success.data['key']..." for messages
    desc: dict[str, Any]  # the descriptor in the wire data

    @property
    def digest(self) -> str:
        return str(self.desc["blake3"])

    def parts(self) -> list[memoryview]:
        """The artifact file's bytes, in order (an array's .npy header, then its data)."""
        if self.kind != "ndarray":
            return [memoryview(self.value)]
        import numpy as np

        head = io.BytesIO()
        meta = np.lib.format.header_data_from_array_1_0(self.value)
        try:
            np.lib.format.write_array_header_1_0(head, meta)
        except ValueError:  # a header too big for format 1.0 (many structured fields)
            np.lib.format.write_array_header_2_0(head, meta)
        data = self.value.reshape(-1).view(np.uint8).data if self.value.size else memoryview(b"")
        return [head.getbuffer(), data]

    def seal(self, digest: str) -> None:
        self.desc["blake3"] = digest

    def hash(self) -> str:
        h = blake3.blake3()
        for part in self.parts():
            h.update(part)
        self.seal(h.hexdigest())
        return self.digest


# How deep dicts and lists may nest in a result's data or an event's output_data. Ray
# serialises an async actor method's return value on a fiber with a small stack: a
# scheduler with max_concurrency=10_000 died (SIGSEGV, heap corruption) returning a value
# nested ~500 deep, and again at each restart as the client asked again. Well below that.
MAX_DATA_DEPTH = 100
_CONTAINERS = (dict, list, tuple)


def too_deep(data: Any, where: str = "Success.data", limit: int = MAX_DATA_DEPTH) -> str | None:
    """Why ``data`` nests dicts/lists deeper than ``limit``, or None. Walks containers only."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        items = value.values() if isinstance(value, dict) else value
        if not any(issubclass(t, _CONTAINERS) for t in set(map(type, items))):  # ~12 ns an item, in C
            continue
        for v in items:
            if isinstance(v, _CONTAINERS):
                if depth >= limit:
                    return (f"{where}: dicts and lists nested deeper than {limit} levels "
                            f"(the engine's messages cannot carry more)")
                stack.append((v, depth + 1))
    return None


def check_event(event: Any) -> None:
    """An event to emit whose output_data nests too deep is refused, naming it: the broker
    would hand it to every subscriber, and die answering a poll (both buses call this)."""
    data = getattr(event, "output_data", None)
    if data and (why := too_deep(data, "output_data")):
        raise InvalidParameters(why)


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
    np = _numpy()
    if np is not None and isinstance(value, np.ndarray):
        return f"numpy array of {value.dtype} {list(value.shape)}"
    return type(value).__name__


def split(
    data: dict[str, Any], inline_limit: int, max_output_bytes: int, max_artifact_bytes: int, hashed: bool = True
) -> tuple[dict[str, Any], list[Blob]]:
    """Wire data for ``data`` and its large values. Arrays over ``inline_limit`` always go
    large; other values (bytes, msgpack) only when the output would pass
    ``max_output_bytes`` otherwise: then its largest top-level values, biggest first.
    Raises InvalidParameters naming the key, its type and the limit for a value that
    cannot be stored without pickle or is too big. ``hashed=False``: the large values'
    digests are left to the caller (``Blob.seal``; the executor hashes while writing)."""
    if MARK in data:
        raise InvalidParameters(f"Success.data: the key {MARK!r} is reserved for kmpray's descriptors")
    blobs: dict[int, Blob] = {}  # by id of the value: one object returned twice is one blob
    np = _numpy()
    total = [0]

    def large(kind: str, value: Any, nbytes: int, where: str, shown: object, head: dict[str, Any]) -> dict[str, Any]:
        found = blobs.get(id(value))
        if found is not None:
            return found.desc
        total[0] += nbytes
        if total[0] > max_artifact_bytes:
            raise InvalidParameters(
                f"{where}: {_describe_type(shown)} of {nbytes} bytes takes this output past "
                f"max_artifact_bytes ({max_artifact_bytes} bytes)"
            )
        desc = {**head, MARK: kind, "nbytes": nbytes, "blake3": None}
        blob = blobs[id(value)] = Blob(kind, value, nbytes, where, desc)
        if hashed:
            blob.hash()
        return desc

    def walk(value: Any, where: str) -> Any:
        if np is None:
            pass  # no arrays in this process
        elif isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise InvalidParameters(
                    f"{where}: numpy array of dtype {value.dtype} holds Python objects; only arrays of "
                    f"non-object dtypes can be stored without pickle"
                )
            arr = value if value.flags.c_contiguous else np.ascontiguousarray(value)
            head = {MARK: "ndarray", "dtype": str(arr.dtype), "shape": list(arr.shape)}
            if arr.nbytes <= inline_limit:
                buf = io.BytesIO()
                np.lib.format.write_array(buf, arr, allow_pickle=False)
                return {**head, "nbytes": arr.nbytes, "b": buf.getvalue()}
            return large("ndarray", arr, arr.nbytes, where, arr, head)
        elif isinstance(value, np.generic):  # numpy scalars: their Python value
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
            wire[k] = large("bytes", v, len(v), where, v, {})
        else:
            packed = msgpack.packb(v, use_bin_type=True)
            wire[k] = large("msgpack", packed, len(packed), where, data[k], {})
        over -= sizes[k]
    return wire, list(blobs.values())


def _is_desc(value: object) -> bool:
    return isinstance(value, dict) and MARK in value


def descriptors(data: Any) -> list[dict[str, Any]]:
    """Every descriptor of a large value (one with ``blake3``) in wire data."""
    out: list[dict[str, Any]] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if MARK in value:
                if "blake3" in value:
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
        # Only nested containers are walked: flat data (the common case) costs one pass.
        return MARK in data or any(has_descriptors(v) for v in data.values() if isinstance(v, (dict, list)))
    if isinstance(data, list):
        return any(has_descriptors(v) for v in data if isinstance(v, (dict, list)))
    return False


def _map_descriptors(data: Any, swap: Callable[[dict[str, Any]], Any]) -> Any:
    """``data`` with every descriptor replaced by ``swap(descriptor)``, in one pass; the
    same object (not a copy) wherever nothing was replaced, so plain data costs one walk."""
    if isinstance(data, dict):
        if MARK in data:
            return swap(data)
        out: dict[Any, Any] | None = None
        for k, v in data.items():
            new = _map_descriptors(v, swap)
            if new is not v:
                if out is None:
                    out = dict(data)
                out[k] = new
        return data if out is None else out
    if isinstance(data, list):
        items = [_map_descriptors(v, swap) for v in data]
        return data if all(a is b for a, b in zip(items, data, strict=True)) else items
    return data


def public(data: Any) -> Any:
    """What users see in TaskInfo, events and ``input``: descriptors without payload bytes
    (``data`` itself when it holds none: at once when empty, as most results are)."""
    if not data:
        return data
    return _map_descriptors(data, lambda d: {k: v for k, v in d.items() if k != "b"} if "b" in d else d)


def _json_default(value: object) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes_shown(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_json(data: dict[str, Any]) -> str:
    """The JSON ``input`` of a chain step: arrays and bytes as small descriptors."""
    return json.dumps(public(data), default=_json_default)


def decode_inline(desc: dict[str, Any]) -> np.ndarray:
    import numpy as np

    arr = np.lib.format.read_array(io.BytesIO(desc["b"]), allow_pickle=False)
    arr.flags.writeable = False
    return arr


def from_stored(kind: str, value: Any) -> Any:
    """The user's value from what the object store or an artifact holds (arrays read-only:
    a successor shares them, zero-copy, with every other reader on the node)."""
    if kind == "msgpack":
        return msgpack.unpackb(value, raw=False, strict_map_key=False)
    np = _numpy()
    if np is not None and isinstance(value, np.ndarray):
        value.flags.writeable = False
    return value


def join(data: Any, fetch: Callable[[dict[str, Any]], Any]) -> Any:
    """Wire data with the real values put back: ``fetch(descriptor)`` gives a large one."""
    return _map_descriptors(data, lambda d: decode_inline(d) if "b" in d else fetch(d))


_CHUNK = 8 << 20  # bytes per write: a page-aligned buffer, reused


def _stream(path: Path, parts: list[memoryview], fsync: bool) -> tuple[str, int]:
    """Write ``parts`` to a new file and hash them in one pass. With O_DIRECT where the file
    system takes it: a fresh file's page cache costs a VM like this one ~300 MB/s to fill
    (first-touch faults), O_DIRECT from a reused aligned buffer ~1.8 GB/s, and the bytes
    are on disk, not only in memory. Returns (blake3, size)."""
    h = blake3.blake3()
    size = sum(len(p) for p in parts)
    direct = getattr(os, "O_DIRECT", 0)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | direct, 0o644)
    try:
        if direct and size >= _CHUNK:
            try:
                return _stream_direct(fd, parts, h, size, fsync)
            except OSError as exc:  # EINVAL: the file system refused direct I/O after all
                if exc.errno != errno.EINVAL:
                    raise
                h = blake3.blake3()
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.close(fd)
                fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        elif direct:  # small: buffered is fine (and needs no alignment)
            os.close(fd)
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        for part in parts:
            h.update(part)
            view = part
            while len(view):
                view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
        return h.hexdigest(), size
    finally:
        os.close(fd)


def _stream_direct(fd: int, parts: list[memoryview], h: Any, size: int, fsync: bool) -> tuple[str, int]:
    """Two page-aligned buffers: one is written (a thread; the GIL is released) while the
    next is filled and hashed here, so hashing and disk overlap."""
    bufs = [mmap.mmap(-1, _CHUNK), mmap.mmap(-1, _CHUNK)]
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="kmpray-artifact") as writer:
            pending: Future[None] | None = None
            turn, fill = 0, 0
            for part in parts:
                off = 0
                while off < len(part):
                    n = min(_CHUNK - fill, len(part) - off)
                    piece = part[off : off + n]
                    bufs[turn][fill : fill + n] = piece
                    h.update(piece)
                    fill += n
                    off += n
                    if fill == _CHUNK:
                        if pending is not None:
                            pending.result()  # the other buffer is free again
                        pending = writer.submit(_write_all, fd, memoryview(bufs[turn]))
                        turn, fill = 1 - turn, 0
            if pending is not None:
                pending.result()
            if fill:
                pad = -fill % 4096  # whole blocks, then cut back to the real size
                with memoryview(bufs[turn]) as view:
                    _write_all(fd, view[: fill + pad])
                os.ftruncate(fd, size)
        if fsync:
            os.fsync(fd)
        return h.hexdigest(), size
    finally:
        for buf in bufs:
            buf.close()


def _write_all(fd: int, view: memoryview) -> None:
    while len(view):
        view = view[os.write(fd, view) :]


class ArtifactDir:
    """Content-addressed files: ``<blake3>.npy`` (arrays, ``allow_pickle=False``), ``.bin``
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
        """Write one blob, hashing it on the way (the digest names the file and is sealed
        into its descriptor; a digest already set must match). Once per content: a file
        that exists holds the same bytes. Returns the bytes written (0: it existed)."""
        known = blob.desc.get("blake3")
        if known and self.has(known, blob.kind):
            return 0
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{uuid.uuid4().hex}.tmp"
        try:
            digest, size = _stream(tmp, blob.parts(), self.fsync)
            if known and known != digest:
                raise ValueError(f"{blob.where}: content does not match its digest {known[:12]}…")
            blob.seal(digest)
            target = self.path(digest, blob.kind)
            if target.exists():
                return 0
            os.replace(tmp, target)
            if self.fsync:
                fd = os.open(self.root, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            return size
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def read(self, desc: dict[str, Any]) -> Any:
        """The stored value (an array memory-mapped read-only), or FileNotFoundError."""
        kind = desc[MARK]
        path = self.path(desc["blake3"], kind)
        if kind == "ndarray":
            import numpy as np

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
