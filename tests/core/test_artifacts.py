"""Step data beyond msgpack (kmpray/artifacts.py): descriptors, splitting, joining, files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from kmpray.artifacts import (
    MARK,
    ArtifactDir,
    descriptors,
    from_stored,
    is_plain,
    join,
    public,
    split,
    to_json,
)
from kmpray.errors import InvalidParameters

KIB = 1024


def roundtrip(
    data: dict[str, Any], inline: int = 64 * KIB, cap: int = 1024 * KIB
) -> tuple[dict[str, Any], Any]:
    """Split, keep the large values as the object store would, join back."""
    wire, blobs = split(data, inline, cap, 1 << 40)
    msgpack.packb(wire, use_bin_type=True)  # the wire data is plain msgpack, always
    held = {b.digest: from_stored(b.kind, b.value) for b in blobs}
    return wire, join(wire, lambda d: held[d["blake3"]])


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(10, dtype=np.float64),
        np.zeros((3, 4, 5), dtype=np.int8),
        np.array([True, False]),
        np.array([1 + 2j], dtype=np.complex128),
        np.arange(12, dtype=">u4").reshape(3, 4),  # big-endian
        np.zeros(0, dtype=np.float32),
        np.array([(1, 2.0)], dtype=[("a", "<i4"), ("b", "<f8")]),  # structured, no objects
        np.arange(100_000, dtype=np.float64),  # large: by reference
        np.arange(40_000, dtype=np.int64).reshape(200, 200)[:, ::2],  # not contiguous
    ],
)
def test_arrays_come_back_equal_and_read_only(arr: np.ndarray) -> None:
    wire, back = roundtrip({"a": arr, "nested": {"list": [arr, 1]}})
    for got in (back["a"], back["nested"]["list"][0]):
        assert isinstance(got, np.ndarray) and got.dtype == arr.dtype and got.shape == arr.shape
        assert np.array_equal(got, arr) and not got.flags.writeable
    assert back["nested"]["list"][1] == 1
    desc = wire["a"]
    assert desc[MARK] == "ndarray" and desc["shape"] == list(arr.shape) and desc["nbytes"] == arr.nbytes
    assert ("blake3" in desc) == (arr.nbytes > 64 * KIB)  # large by reference, small inline


def test_digest_is_the_artifact_files_blake3_and_names_content(tmp_path: Path) -> None:
    import blake3

    a = np.ones(20_000)
    wire, blobs = split({"x": a, "y": a, "z": a.copy(), "w": a + 1}, 64 * KIB, 1024 * KIB, 1 << 40)
    assert wire["x"]["blake3"] == wire["y"]["blake3"] == wire["z"]["blake3"] != wire["w"]["blake3"]
    assert len(blobs) == 3  # one object returned twice is one blob; equal content is one file
    folder = ArtifactDir(tmp_path)
    assert [folder.write(b) > 0 for b in blobs] == [True, False, True]
    for blob in blobs:
        assert blake3.blake3(folder.path(blob.digest, "ndarray").read_bytes()).hexdigest() == blob.digest
    # The digest covers dtype and shape (the .npy header), not only the bytes.
    w2, _ = split({"x": a.reshape(100, 200)}, 64 * KIB, 1024 * KIB, 1 << 40)
    assert w2["x"]["blake3"] != wire["x"]["blake3"]


@pytest.mark.parametrize("mb", [8, 9, 20])  # whole 8 MiB chunks, a tail to pad, several chunks
def test_large_files_are_written_and_hashed_in_one_pass(tmp_path: Path, mb: int) -> None:
    import blake3

    arr = np.random.default_rng(mb).integers(0, 255, size=mb * 1024 * 1024 + 13, dtype=np.uint8)
    wire, blobs = split({"a": arr}, 64 * KIB, 1024 * KIB, 1 << 40, hashed=False)
    assert wire["a"]["blake3"] is None
    size = ArtifactDir(tmp_path).write(blobs[0])
    path = ArtifactDir(tmp_path).path(wire["a"]["blake3"], "ndarray")
    assert size == path.stat().st_size and blake3.blake3(path.read_bytes()).hexdigest() == wire["a"]["blake3"]
    back = np.load(path, allow_pickle=False)
    assert np.array_equal(back, arr)
    other = {"a": arr}
    w3, b3 = split(other, 64 * KIB, 1024 * KIB, 1 << 40)  # hashed up front: the same digest
    assert w3["a"]["blake3"] == wire["a"]["blake3"]


def test_plain_data_is_left_as_before() -> None:
    data = {"s": "x" * 100_000, "b": b"\x00\xff" * 10, "n": [1, 2.5, None, True]}
    assert is_plain(data, 1024 * KIB) and is_plain(None, 1)
    wire, blobs = split(data, 64 * KIB, 1024 * KIB, 1 << 40)
    assert wire == data and blobs == []  # under the output cap nothing moves
    assert not is_plain({"a": np.zeros(1)}, 1024 * KIB)


def test_output_over_the_row_cap_moves_its_largest_values_out() -> None:
    data = {"big": b"\x01" * 900 * KIB, "list": list(range(100_000)), "small": "kept"}
    wire, back = roundtrip(data, cap=1024 * KIB)
    # 1.2 MB in all: moving the 900 KB value is enough; the 300 KB list stays in the row.
    assert wire["big"][MARK] == "bytes" and wire["list"] == data["list"] and wire["small"] == "kept"
    assert back == data
    wire, back = roundtrip(data, cap=200 * KIB)
    assert wire["big"][MARK] == "bytes" and wire["list"][MARK] == "msgpack" and back == data


def test_numpy_scalars_become_python_values() -> None:
    wire, back = roundtrip({"f": np.float32(1.5), "i": np.int64(7), "b": np.bool_(True)})
    assert back == {"f": 1.5, "i": 7, "b": True} and type(back["i"]) is int


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"o": np.array([object(), 1], dtype=object)}, ["Success.data['o']", "dtype object", "pickle"]),
        ({"s": {1, 2}}, ["Success.data['s']", "set", "not msgpack-serializable"]),
        ({"d": {"x": [np.array([{}], dtype=object)]}}, ["Success.data['d']['x'][0]", "object"]),
        ({MARK: 1}, ["reserved"]),
        ({"d": {MARK: "ndarray"}}, ["Success.data['d']", "reserved"]),
    ],
)
def test_values_that_cannot_be_stored_without_pickle_name_their_key(
    data: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(InvalidParameters) as err:
        split(data, 64 * KIB, 1024 * KIB, 1 << 40)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_an_output_over_max_artifact_bytes_names_key_type_and_cap() -> None:
    with pytest.raises(InvalidParameters) as err:
        split({"ok": np.zeros(10_000), "huge": np.zeros(50_000)}, 1 * KIB, 1024 * KIB, 200_000)
    msg = str(err.value)
    assert "Success.data['huge']" in msg and "float64" in msg and "max_artifact_bytes (200000 bytes)" in msg


def test_public_view_and_json_input_carry_descriptors_not_payload() -> None:
    wire, _ = split(
        {"small": np.arange(3), "big": np.zeros(100_000), "raw": b"ab", "n": 1}, 64 * KIB, 1024 * KIB, 1 << 40
    )
    shown = public(wire)
    assert "b" not in shown["small"] and shown["small"]["shape"] == [3] and shown["big"] == wire["big"]
    assert shown["raw"] == b"ab" and shown["n"] == 1 and "b" in wire["small"]  # wire itself untouched
    text = to_json(wire)
    assert len(text) < 600
    parsed = json.loads(text)
    assert parsed["raw"] == {MARK: "bytes", "nbytes": 2} and parsed["big"]["nbytes"] == 800_000
    assert [d["blake3"] for d in descriptors(wire)] == [wire["big"]["blake3"]]
    plain = {"x": [1, {"y": 2}]}
    assert public(plain) is plain


def test_artifact_files_round_trip_without_pickle(tmp_path: Path) -> None:
    folder = ArtifactDir(tmp_path / "artifacts", durability="full")
    data = {
        "a": np.arange(50_000, dtype=np.int32).reshape(250, 200),
        "b": b"\x07" * 100_000,
        "m": list(range(30_000)),
    }
    wire, blobs = split(data, 1 * KIB, 64 * KIB, 1 << 40)
    for blob in blobs:
        assert folder.write(blob) > 0 and folder.write(blob) == 0  # written once
    names = sorted(p.suffix for p in folder.root.iterdir())
    assert names == [".bin", ".msgpack", ".npy"]
    back = join(wire, lambda d: from_stored(d[MARK], folder.read(d)))
    assert np.array_equal(back["a"], data["a"]) and not back["a"].flags.writeable
    assert back["b"] == data["b"] and back["m"] == data["m"]
    # An .npy that would need pickle is refused, never loaded.
    evil = folder.path("0" * 64, "ndarray")
    np.save(evil, np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        folder.read({MARK: "ndarray", "blake3": "0" * 64})
    with pytest.raises(ValueError):
        folder.path("../escape", "ndarray")


def test_sweep_removes_what_no_row_refers_to_after_the_grace(tmp_path: Path) -> None:
    folder = ArtifactDir(tmp_path / "a")
    wire, blobs = split({"x": np.zeros(10_000), "y": np.ones(10_000)}, 1 * KIB, 64 * KIB, 1 << 40)
    for blob in blobs:
        folder.write(blob)
    keep = wire["x"]["blake3"]
    assert folder.sweep({keep}, grace_s=3600) == (0, 0)  # young files stay: a report may be on its way
    old = time.time() - 7200
    for p in folder.root.iterdir():
        os.utime(p, (old, old))
    files, freed = folder.sweep({keep}, grace_s=3600)
    assert files == 1 and freed > 80_000
    assert [p.name.split(".")[0] for p in folder.root.iterdir()] == [keep]
    assert folder.total_bytes() > 80_000


def test_bytes_stay_bytes_in_python_and_are_descriptors_in_json() -> None:
    """TaskInfo crosses from the scheduler in python mode (bytes stay bytes); JSON views
    (kmpray info / events, the dashboard) show any bytes as descriptors, UTF-8 or not."""
    from kmpray import TaskCompletionEvent
    from kmpray._model import bytes_shown
    from kmpray.results import Success

    data = {"bin": b"\xff\x00", "nested": {"l": [b"a", 1]}, "n": 1}
    ok = Success(data=data)
    assert ok.model_dump()["data"] == data
    assert ok.model_dump(mode="json")["data"] == {
        "bin": {MARK: "bytes", "nbytes": 2}, "nested": {"l": [{MARK: "bytes", "nbytes": 1}, 1]}, "n": 1}
    assert json.loads(ok.model_dump_json())["data"]["bin"] == {MARK: "bytes", "nbytes": 2}
    event = TaskCompletionEvent("W", True, output_data=data)
    assert event.model_dump(mode="json")["output_data"]["bin"] == {MARK: "bytes", "nbytes": 2}
    assert event.model_dump()["output_data"] == data
    plain = {"x": [1, {"y": "z"}]}
    assert bytes_shown(plain) is plain and bytes_shown(None) is None


def test_too_deep_counts_dict_and_list_levels_subclasses_too() -> None:
    from kmpray.artifacts import MAX_DATA_DEPTH, too_deep

    def nested(levels: int, make: Any = dict) -> Any:
        top = inner = make()
        for _ in range(levels - 1):
            inner["n"] = make()
            inner = inner["n"]
        return top

    assert MAX_DATA_DEPTH == 100
    assert too_deep(nested(100)) is None and too_deep({"flat": list(range(10_000))}) is None
    assert "Success.data: dicts and lists nested deeper than 100 levels" in too_deep(nested(101))
    assert too_deep({"l": [1, [2, [3]]]}, limit=4) is None and too_deep({"l": [1, [2, [3]]]}, limit=3)
    assert too_deep(nested(150, type("D", (dict,), {}))) is not None  # msgpack packs dict subclasses too
    assert too_deep({"t": (1, (2,))}, "output_data", limit=2).startswith("output_data: ")
