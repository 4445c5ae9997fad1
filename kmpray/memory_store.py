"""MemoryTaskStore: the TaskStore contract (kmpray/store.py) kept in dicts of encoded
rows, for the core's tests and the simulation (so the row codec is exercised too)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import msgpack

from .chain_record import ChainRecord
from .errors import DamagedRow
from .records import TaskRecord, decode, encode
from .store import QuarantinedRow, _chain_id, _task_key, decode_rows, spilling

_R = TypeVar("_R")


class MemoryTaskStore:
    """Same contract, kept in a dict of encoded rows (so the codec is exercised too)."""

    def __init__(self) -> None:
        self._rows: dict[str, bytes] = {}
        self._chains: dict[str, bytes] = {}
        self._meta: dict[str, bytes] = {}
        self._quarantine: dict[tuple[str, str], QuarantinedRow] = {}
        self._fresh: list[QuarantinedRow] = []
        self._outbox: dict[int, bytes] = {}
        self._outbox_seq = 0
        self._answers: dict[str, tuple[bytes, int]] = {}
        self._inputs: dict[str, str] = {}

    def load(self, cold: Callable[[TaskRecord], bool] | None = None) -> list[TaskRecord]:
        rows = self._load("tasks", self._rows, decode, _task_key)
        return rows if cold is None else [rec for rec in rows if not cold(rec)]

    def load_chains(self) -> list[ChainRecord]:
        return self._load("chains", self._chains, ChainRecord.decode, _chain_id)

    def _load(
        self, table: str, rows: dict[str, bytes], parse: Callable[[bytes], _R], key_of: Callable[[_R], str]
    ) -> list[_R]:
        good, bad = decode_rows(table, list(rows.items()), parse, key_of)
        for q, _raw in bad:
            del rows[q.key]
            self._quarantine[(table, q.key)] = q
            self._fresh.append(q)
        return good

    def read_tasks(self, keys: list[str]) -> dict[str, TaskRecord]:
        out: dict[str, TaskRecord] = {}
        for key in keys:
            blob = self._rows.get(key)
            if blob is not None:
                try:
                    out[key] = decode(blob)
                except DamagedRow:
                    continue
        return out

    def take_fresh_quarantine(self) -> list[QuarantinedRow]:
        fresh, self._fresh = self._fresh, []
        return fresh

    def quarantined(self) -> list[QuarantinedRow]:
        return sorted(self._quarantine.values(), key=lambda q: (q.at_ms, q.table, q.key))

    def drop_quarantined(self, key: str) -> int:
        gone = [k for k in self._quarantine if k[1] == key]
        for k in gone:
            del self._quarantine[k]
        return len(gone)

    def damage(self, key: str, blob: bytes, table: str = "tasks") -> None:
        """Overwrite a stored row with other bytes (tests and the simulation)."""
        (self._rows if table == "tasks" else self._chains)[key] = blob

    def write(
        self,
        put: Iterable[TaskRecord],
        delete: Iterable[str] = (),
        chains: Iterable[ChainRecord] = (),
        delete_chains: Iterable[str] = (),
        events: Sequence[bytes] = (),
        answers: Sequence[tuple[str, bytes, int]] = (),
        acked: int | None = None,
    ) -> list[int]:
        if acked:
            self.ack_events(acked)
        for token, answer, at_ms in answers:
            self._answers[token] = (answer, at_ms)
        for key in delete:
            self._rows.pop(key, None)
            self._inputs.pop(key, None)
        with spilling(put) as (recs, spilled):
            rows = {rec.key: encode(rec) for rec in recs}
        self._rows.update(rows)
        self._inputs.update((rec.key, text) for rec, text in spilled)
        for key in delete_chains:
            self._chains.pop(key, None)
        for chain in chains:
            self._chains[chain.id] = chain.encode()
        seqs = []
        for body in events:
            self._outbox_seq += 1
            self._outbox[self._outbox_seq] = body
            seqs.append(self._outbox_seq)
        return seqs

    def read_input(self, key: str) -> str | None:
        return self._inputs.get(key)

    def answer(self, token: str) -> bytes | None:
        found = self._answers.get(token)
        return found[0] if found else None

    def forget_answers(self, before_ms: int) -> int:
        old = [t for t, (_a, at) in self._answers.items() if at < before_ms]
        for token in old:
            del self._answers[token]
        return len(old)

    def pending_events(self) -> list[tuple[int, bytes]]:
        return sorted(self._outbox.items())

    def ack_events(self, upto: int) -> None:
        for seq in [s for s in self._outbox if s <= upto]:
            del self._outbox[seq]

    def get_meta(self, key: str) -> object | None:
        raw = self._meta.get(key)
        return msgpack.unpackb(raw, raw=False) if raw is not None else None

    def put_meta(self, key: str, value: object) -> None:
        self._meta[key] = msgpack.packb(value, use_bin_type=True)

    def sync_if_quiet(self, max_rows: int) -> bool:
        return False  # nothing to sync

    def close(self) -> None:
        pass
