"""What the SchedulerActor accepts: work (``enqueue_many``, ``enqueue_chain``) and worker
classes (``register_workers``). Enqueue calls carry the client's request token: the
answer is stored in the same transaction as the work it applied, so a call retried
after a scheduler restart (applied, but the answer lost with the process) is answered
again instead of being applied twice, which would run finished one-time work again.
A mixin of SchedulerActor (scheduler.py): the attributes below are the actor's."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgpack

from kmpray import intake
from kmpray.chain_intake import ChainIntake
from kmpray.effects import Outcome
from kmpray.engine import SchedulerCore
from kmpray.enums import ScheduleResult
from kmpray.errors import StoreWriteFailed
from kmpray.protocol import RETRY_MARK
from kmpray.store import SqliteTaskStore
from kmpray.timing import CANCEL_ACK_TIMEOUT_S, INTAKE_SLICE
from kmpray.validation import shown

from .awake import wait_awake
from .background import background
from .names import ORACLE, base_namespace, lookup
from .retry import call_with_retry

log = logging.getLogger("kmpray.scheduler")

T = TypeVar("T")
SLICE_MARK = "@"  # an enqueue_many answer's part from item n on is stored under "<token>@<n>"


#: One item's answer to ``enqueue_many``: [ScheduleResult value, reason]. A list, not a
#: tuple: through Ray (a client on another node) each tuple is pickled apart (kmpray/protocol.py).
Answer = list[Any]


class SchedulerIntake:
    namespace: str
    core: SchedulerCore
    store: SqliteTaskStore
    rejections: deque[tuple[float, str, str, str]]  # (when, id, result, reason)
    known: set[str]
    _blobs: dict[str, tuple[int, bytes]]
    _answers: list[tuple[str, bytes, int]]
    messages: Counter[str]
    _commit_due: asyncio.Future[None] | None  # the turn's shared commit, once a call asked for it
    _taking_in: dict[str, asyncio.Future[Any]]  # calls taken in slice by slice, by token
    _ready: asyncio.Future[None]
    _cancel_acks: list[asyncio.Future[None]]

    if TYPE_CHECKING:  # the actor's
        def _flush(self) -> None: ...
        def _kick(self) -> None: ...

    def _answered(self, token: str | None) -> tuple[str | None, Any]:
        """The call's token (without the retry mark) and, for a retry of a call already
        applied, its answer. A first try is never looked up: it cannot have been applied."""
        if token is None or not token.endswith(RETRY_MARK):
            return token, None
        token = token[: -len(RETRY_MARK)]
        raw = self._stored(token)
        if raw is None:
            return token, None
        log.warning("enqueue call %s was retried after it was applied: answered again, not applied twice",
                    token)
        self.messages["retries_answered"] += 1
        return token, msgpack.unpackb(raw, raw=False)

    def _stored(self, key: str) -> bytes | None:
        raw = self.store.answer(key)
        if raw is None:  # or applied in this very turn, its commit still to come (see _durable)
            raw = next((a for t, a, _ms in reversed(self._answers) if t == key), None)
        return raw

    def _answer(self, token: str | None, answer: Any) -> None:
        if token is not None:
            self._answers.append((token, msgpack.packb(answer, use_bin_type=True), int(time.time() * 1000)))

    async def register_workers(self, items: list[tuple[str, bytes]]) -> list[int]:
        """Worker classes by name, in one message (connect() registers the built-in
        workers so): one registry call and at most two store writes for the lot.
        Returns each one's version."""
        await self._ready
        last: int | None = None
        entries: list[tuple[str, int, bytes]] = []
        for name, blob in items:
            current = self._blobs.get(name)
            if current is not None and current[1] == blob:
                version = current[0]
            else:
                # Versions only grow, across restarts too: an executor caches classes by
                # (name, version), so a number must never name two different classes.
                if last is None:
                    stored = self.store.get_meta("worker_version")
                    last = max([stored if isinstance(stored, int) else 0,
                                *(v for v, _b in self._blobs.values())])
                last += 1
                version = last
                self._blobs[name] = (version, blob)
            entries.append((name, version, blob))
        if last is not None:
            self.store.put_meta("worker_version", last)
        new = {name for name, _blob in items} - self.known
        if new:
            self.known |= new
            self.store.put_meta("known_workers", sorted(self.known))
        await self._classes_held(entries)
        return [version for _name, version, _blob in entries]

    async def _classes_held(self, entries: list[tuple[str, int, bytes]]) -> None:
        """Classes now in ``_blobs`` (registered, or taken back after a restart:
        class_recovery.py): to the registry too (actors/registry.py), and their parked tasks
        made ready."""
        registry = lookup(ORACLE, base_namespace(self.namespace))
        await call_with_retry(lambda: registry.put_classes.remote(self.namespace, entries))
        unparked = [name for name, _v, _b in entries if self.core.unpark(name)]  # each, then wake once
        if unparked:
            self._kick()

    async def enqueue_many(
        self, items: list[dict[str, Any]], token: str | None = None
    ) -> list[Answer]:
        """Enqueue a batch; ``token`` names the client's call, so a retry of a call this
        scheduler (or the one before a restart) already applied gets its answer again.

        A batch over ``INTAKE_SLICE`` items is taken in slices, each committed with its part
        of the answer (under ``token``, then ``token@start``) before the next is taken in:
        the loop serves everything else in between. A retry after a restart is answered for
        the slices a commit stored and applies only the rest; a retry while the first try is
        still being taken in waits for that try's answer."""
        await self._ready
        self.messages["enqueue_calls"] += 1
        token, answered = self._answered(token)
        going = self._taking_in.get(token) if token is not None else None
        if going is not None:  # this call's first try is still being taken in, slice by slice
            return await asyncio.shield(going)

        def failed(why: str) -> list[Answer]:
            return [[ScheduleResult.FAILED_UNKNOWN.value, why] for _ in items]

        out: list[Answer] = []
        if answered is not None:
            out += [[r, why] for r, why in answered]
            while len(out) < len(items):  # the slices committed after the first, in turn
                raw = self._stored(f"{token}{SLICE_MARK}{len(out)}")
                if raw is None:
                    break
                out += [[r, why] for r, why in msgpack.unpackb(raw, raw=False)]
            if len(out) >= len(items):
                return await self._durable(out, failed)
        if token is None or len(items) - len(out) <= INTAKE_SLICE:
            self._take_in(items, len(out), len(items), token, out)
            return await self._durable(out, failed)

        async def slices() -> list[Answer]:
            for start in range(len(out), len(items), INTAKE_SLICE):
                self._take_in(items, start, min(len(items), start + INTAKE_SLICE), token, out)
                answer = await self._durable(out, failed)
                if answer is not out:  # the store write failed: nothing more is taken in
                    break
            return answer

        return await self._first_try(token, slices())

    async def _first_try(self, token: str | None, work: Awaitable[T]) -> T:
        """``work``, the first try of the call ``token`` names, taken in over several turns:
        a retry of that call arriving meanwhile waits for its answer (``_taking_in``)
        instead of applying it again."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if token is not None:
            self._taking_in[token] = done
        try:
            answer = await work
            done.set_result(answer)
            return answer
        except asyncio.CancelledError:
            done.cancel()
            raise
        except Exception as exc:
            done.set_exception(exc)
            raise
        finally:
            if token is not None:
                self._taking_in.pop(token, None)
            if done.done() and not done.cancelled():
                done.exception()  # retrieved: no "never retrieved" warning when no retry waited

    def _take_in(self, items: list[dict[str, Any]], start: int, end: int, token: str | None,
                 out: list[Answer]) -> None:
        """``items[start:end]`` into the core, their outcomes onto ``out`` and, under the
        call's token, into the answer stored with them (``token@start`` after the first)."""
        part = []
        for item in items[start:end]:
            outcome = intake.submit(self.core, item)
            if outcome.result is not ScheduleResult.SUCCESS:
                self._rejected("enqueue", item.get("id"), outcome)
            part.append([outcome.result.value, outcome.reason])
        out += part
        self._answer(token if start == 0 or token is None else f"{token}{SLICE_MARK}{start}", part)

    async def enqueue_chain(
        self, payload: dict[str, Any], token: str | None = None
    ) -> tuple[str, str | None]:
        """Enqueue a chain, whole or not at all. A chain of more than ``INTAKE_SLICE`` tasks
        is checked in slices (kmpray/chain_intake.py: what needs no state), the loop serving
        everything else in between, then admitted and inserted in one turn: until session
        47 a 99,000-task chain was one turn of ~1-2 s, and timers due meanwhile ran that late.
        A retry of a call still being checked waits for that call's answer."""
        await self._ready
        self.messages["enqueue_calls"] += 1
        token, answered = self._answered(token)

        def failed(why: str) -> tuple[str, str | None]:
            return ScheduleResult.FAILED_UNKNOWN.value, why

        if answered is not None:
            return await self._durable((answered[0], answered[1]), failed)
        going = self._taking_in.get(token) if token is not None else None
        if going is not None:  # this call's first try is still being checked, slice by slice
            return await asyncio.shield(going)
        chain = intake.chain_intake(self.core, payload)
        chain_id = payload.get("id") if isinstance(payload, dict) else None
        if chain.remaining <= INTAKE_SLICE:
            chain.check(INTAKE_SLICE)
            return await self._chain_admitted(chain, chain_id, token, failed)

        async def slices() -> tuple[str, str | None]:
            while chain.remaining:
                chain.check(INTAKE_SLICE)
                if chain.remaining:
                    await asyncio.sleep(0)  # the loop serves everything else between two slices
            return await self._chain_admitted(chain, chain_id, token, failed)

        return await self._first_try(token, slices())

    async def _chain_admitted(self, chain: ChainIntake, chain_id: object, token: str | None,
                              failed: Callable[[str], tuple[str, str | None]]) -> tuple[str, str | None]:
        outcome = chain.admit()
        if outcome.result is not ScheduleResult.SUCCESS:
            self._rejected("chain", chain_id, outcome)
        self._answer(token, (outcome.result.value, outcome.reason))
        return await self._durable((outcome.result.value, outcome.reason), failed)

    def _rejected(self, what: str, task_id: object, outcome: Outcome) -> None:
        """A rejection, logged and kept for ``rejections()``: the id as sent if it could be
        one (ids are at most ``max_id_length``), else cut (``shown``), never the whole of
        a 100,000-character id in the log and in memory."""
        text = str(task_id)
        rid = text if len(text) <= self.core.config.max_id_length else shown(task_id)
        self.rejections.append((time.time(), rid, outcome.result.value, outcome.reason or ""))
        log.warning("%s %s: %s: %s", what, shown(task_id), outcome.result.value, outcome.reason)

    async def _durable(self, answer: T, failed: Callable[[str], T]) -> T:
        """``answer`` once this turn's commit is durable, ``failed(reason)`` if it failed:
        nothing is acknowledged that is not stored. A retry answered from an answer still
        waiting for this turn's commit waits for it too (a stored answer: an empty commit)."""
        try:
            await self._commit()
        except StoreWriteFailed as exc:
            return failed(str(exc))
        except Exception as exc:
            return failed(f"store write failed: {exc}")
        return answer

    async def _commit(self) -> None:
        """Group commit: every enqueue call that arrives in one turn of the event loop is
        stored in one transaction, written after the turn's calls have run; each call
        answers once that transaction is durable (raises if the write failed). The
        dispatch loop is woken to hand the new runs over, in one batch per turn too."""
        if self._commit_due is None:
            loop = asyncio.get_running_loop()
            self._commit_due = loop.create_future()
            loop.call_soon(self._commit_now)
        await self._commit_due

    def _commit_now(self) -> None:
        due, self._commit_due = self._commit_due, None
        assert due is not None
        try:
            self._flush()
        except StoreWriteFailed as exc:  # logged once, where it failed
            due.set_exception(exc)
        except Exception as exc:
            log.exception("store write failed")
            due.set_exception(exc)
        else:
            # Runs cancelled on executors (a REPLACE of running or handed-over work): answered
            # once those executors have the cancels, as cancel() is, so the old work never
            # begins after the answer (it could, in the milliseconds before: session 53).
            if self._cancels_pending():
                background(self._answer_after_cancels(due), "an enqueue answer waiting for cancels")
            else:
                due.set_result(None)
        self._kick()

    async def _cancels_delivered(self) -> None:
        """Until the executors have the cancels sent so far: a run queued on its executor
        (or a chain step handed over with a cancelled run, one hop per step) could
        otherwise begin after the cancel was answered. Bounded: an executor that is down
        has nothing to begin. The bound counts only time this process was awake
        (actors/awake.py): stopped right after it sent a cancel, it woke with a clock-time
        bound run out and answered before the cancel had even left."""
        pending = self._cancels_pending()
        if pending:
            await wait_awake(pending, CANCEL_ACK_TIMEOUT_S)

    def _cancels_pending(self) -> list[asyncio.Future[None]]:
        """The cancels sent to executors (``_flush``) that they have not answered yet."""
        return [a for a in self._cancel_acks if not a.done()]

    async def _answer_after_cancels(self, due: asyncio.Future[None]) -> None:
        try:
            await self._cancels_delivered()
        finally:
            due.set_result(None)
