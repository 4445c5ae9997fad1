"""Every message between the engine's actors, as named, typed records (one module).

They are NamedTuples: a record with field names at both ends. Adding a field is one edit
here, then the sender and the receiver. What travels in volume goes as plain lists
(``chain_to_wire``; the local lane's msgpack frames): Ray packs an argument's lists, dicts
and scalars with msgpack in C, but hands every tuple (a NamedTuple too) to a Python hook
and pickles it apart, ~5 µs a record here.

========================================  =========================================
SchedulerActor -> LightExecutor/Heavy     ``submit(runs, fence, acks) -> Taken``: Runs
                                          and results as lists (``run_to_wire``,
                                          ``done_to_wire``; ``submit_lane.ray_submit``)
                                          ``cancel(keys)``, ``cancel_cooperative(keys)``
executor -> SchedulerActor                ``report(done, progress, began)``: Done,
                                          Progress, Began as lists
                                          ``loop_blocked(...)`` / ``loop_unblocked(...)``
SchedulerActor -> executor (reconcile)    ``ping() -> Ping``, ``holding() -> Holding``
SchedulerActor -> ChainCoordinator        ``handle([Plan | Step, ...])`` as
                                          ``chain_to_wire`` lists, answered the same way
ChainCoordinator -> SchedulerActor        ``chain_actions([Promote | Cascade, ...])``
========================================  =========================================

On the scheduler's node the submits and reports go over the local lane instead, as the
same lists in msgpack (kmpray/lane.py; ``run_from_wire`` rebuilds a Run).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .models import ChainInfo

#: (task key, run id): one run of one task, everywhere.
RunKey = tuple[str, int]

#: Ends the request token of a retried enqueue call (client -> scheduler): only a retry
#: can find its call already applied, so only a retry costs a stored-answer lookup.
RETRY_MARK = "~retry"


class Run(NamedTuple):
    """One run handed to an executor."""

    key: str
    run_id: int
    worker: str  # registered worker class name
    version: int  # of its registration: executors cache classes by (name, version)
    input: str | None
    upstream: dict[str, Any] | None  # merged Success.data of its prerequisites
    previous_attempts: int
    timeout_ms: int | None
    start_at_ms: int | None  # handed over ahead of its due time: begin then (epoch ms)
    # The object store references of large upstream values the scheduler still holds, by
    # blake3 (kmpray/artifacts.py); one missing is read from its artifact instead.
    refs: dict[str, Any] | None = None
    # One hop per step: the chain task to begin here the moment this run succeeds, its
    # input merged here (InputMerger value ``then_merger``) from this run's output.
    then: Run | None = None
    then_merger: str = "OVERWRITE"
    enqueued_ms: int | None = None  # see Dispatch.enqueued_ms


_THEN = Run._fields.index("then")


def run_to_wire(run: Run) -> list[Any]:
    """A Run as the list of its fields, its ``then`` too: what the local lane's msgpack
    makes of it, and what the scheduler sends through Ray's submit call (to executors on
    other nodes), which would pickle each record apart (module docstring)."""
    fields: list[Any] = list(run)
    if run.then is not None:
        fields[_THEN] = run_to_wire(run.then)
    return fields


def run_from_wire(run: list[Any] | Run) -> Run:
    """A Run from the list of its fields (``run_to_wire``; the local lane's submits), its
    ``then`` too. A Run passes as it is."""
    if isinstance(run, Run):
        return run
    out = Run(*run)
    return out._replace(then=run_from_wire(out.then)) if out.then is not None else out


def done_to_wire(done: Done) -> list[Any]:
    """A Done as the list of its fields, its result and stored values too (their
    object-store references stay references: Ray's serializer keeps those, the local lane
    cannot carry them)."""
    key, run_id, result, stored, followed = done
    return [key, run_id, list(result), [list(s) for s in stored] if stored else None,
            list(followed) if followed else None]


def taken_from_wire(answer: tuple[str, list[Any]] | list[Any]) -> tuple[str, list[Done]]:
    """A submit's answer, ``(incarnation, done)``, with its results as records (through
    Ray they come as ``done_to_wire``'s lists)."""
    incarnation, done = answer
    return incarnation, [done_from_wire(d) for d in done]


def done_from_wire(done: list[Any] | Done) -> Done:
    """A Done from the list of its fields (``done_to_wire``; the local lane's reports and
    answers). A Done passes as it is."""
    if isinstance(done, Done):
        return done
    key, run_id, result, stored, followed = done
    return Done(key, run_id, result, [Stored(*s) for s in stored] if stored else None,
                tuple(followed) if followed else None)


class Fence(NamedTuple):
    """A batch's number under the scheduler's epoch: a blocked executor never begins a
    run from a batch at or below the fence the scheduler answered its report with."""

    epoch: str
    batch: int
    # The executor process the batch is for (the pool's last word on its incarnation). A
    # later process refuses it (``Misaddressed``): the fence the scheduler gave the earlier
    # one for its blocked loop, which may cover this batch, died with that process.
    to: str | None = None


class Misaddressed(Exception):
    """A batch sent to an executor process that has since been replaced by a new one;
    the scheduler runs it again (not counted as an attempt) and learns the new process."""


class Stored(NamedTuple):
    """A large value of a run's output, put in the object store by the executor."""

    digest: str  # blake3, as in the output's descriptor
    kind: str  # "ndarray" | "bytes" | "msgpack"
    nbytes: int
    ref: Any  # ray.ObjectRef
    saved: bool  # its artifact file is written (the executor is on the scheduler's node)
    where: str  # "Success.data['key']", for messages


class Done(NamedTuple):
    key: str
    run_id: int
    result: tuple[str, Any, Any]  # kmpray.results.to_wire
    stored: list[Stored] | None = None
    # The successor handed with this run began here: (its key, its run id, this executor).
    followed: tuple[str, int, int] | None = None


class Progress(NamedTuple):
    key: str
    run_id: int
    pct: int
    message: str | None


class Began(NamedTuple):
    """The run's worker is still going a moment after it began (a short run's Done says it)."""

    key: str
    run_id: int


class Ping(NamedTuple):
    incarnation: str  # the executor's process: a new one means what it held is gone
    running: int
    node: str
    lag_ms: float  # its event loop's lag now
    # Enqueue -> start (ms) of the runs that began here since the last ping (Run.enqueued_ms).
    start_waits: tuple[float, ...] = ()


class Taken(NamedTuple):
    """A submit's answer: the process that took the runs, and the results of those that
    ended at once (the scheduler acknowledges them with its next submit or ping)."""

    incarnation: str
    done: list[list[Any]]  # done_to_wire's lists (Ray's submit; the local lane answers TAKEN)


class Holding(NamedTuple):
    """For a restarted scheduler: runs taken and not reported, and which wait for a slot."""

    incarnation: str
    held: list[RunKey]
    waiting: list[RunKey]


# ---- chains: the scheduler owns task states, a coordinator each chain's plan. The
# coordinator's state only grows, so a late duplicate or a snapshot merged after a
# restart is harmless, and the scheduler applies an action only to the generation it
# names and to tasks still BLOCKED/unfinished.


class Plan(NamedTuple):
    """A chain was accepted (or replaced: a new ``gen``)."""

    chain_id: str
    gen: str
    steps: list[list[str]]
    mergers: dict[str, str]  # key -> InputMerger value, only non-default ones


class Step(NamedTuple):
    """A chain task finished."""

    chain_id: str
    gen: str
    step: int
    key: str
    state: str  # TaskState value
    data: dict[str, Any] | None


class Promote(NamedTuple):
    """Every task of ``step - 1`` succeeded: start ``step`` with these inputs."""

    chain_id: str
    gen: str
    step: int
    upstream: dict[str, dict[str, Any]]
    errors: dict[str, str]  # key -> why its inputs could not be merged (it fails)


class Cascade(NamedTuple):
    """A task failed or was cancelled: every task from ``from_step`` on ends the same way."""

    chain_id: str
    gen: str
    from_step: int
    state: str
    reason: str


ChainMessage = Plan | Step | Promote | Cascade

#: Each kind's tag in the wire form (its index).
CHAIN_KINDS: tuple[type[Plan], type[Step], type[Promote], type[Cascade]] = (Plan, Step, Promote, Cascade)
_CHAIN_TAG: dict[type, int] = {kind: tag for tag, kind in enumerate(CHAIN_KINDS)}


def chain_to_wire(msgs: Iterable[ChainMessage]) -> list[list[Any]]:
    """Chain messages for a Ray call, as plain lists (``[tag, *fields]``): every finished
    chain task is a Step, and 20,000 of them as NamedTuples cost the sender 95 ms of Ray's
    serializer here (its loop: the scheduler's), as lists 4 ms."""
    return [[_CHAIN_TAG[type(msg)], *msg] for msg in msgs]


def chain_from_wire(rows: Iterable[list[Any]]) -> list[ChainMessage]:
    """The records ``chain_to_wire`` sent."""
    return [CHAIN_KINDS[row[0]](*row[1:]) for row in rows]


# ---- a chain's info, to a client (``get_chain_info``, ``wait_chain``)

#: ``wait_chain``'s answer while the chain is unfinished: the client asks again.
UNFINISHED = "unfinished"


def chain_answer(info: ChainInfo | None) -> bytes | None:
    """A ChainInfo for a client: pickled, its TaskInfos with it, as ``list_tasks`` sends
    them. As a ``model_dump`` a 5,000-task chain held the scheduler's loop ~60 ms (and its
    client validated every TaskInfo again)."""
    return pickle.dumps(info, protocol=5) if info is not None else None


def chain_from_answer(raw: bytes | dict[str, Any] | None) -> ChainInfo | None:
    """``chain_answer``'s ChainInfo (a dict: an engine of an earlier version)."""
    from .models import ChainInfo

    if raw is None:
        return None
    if isinstance(raw, bytes):
        info = pickle.loads(raw)
        if not isinstance(info, ChainInfo):
            raise TypeError(f"not a ChainInfo: {type(info).__name__}")
        return info
    return ChainInfo.model_validate(raw)
