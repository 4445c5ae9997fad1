"""What holds a due task back, or sets one off, other than time: device states pushed by
the ConstraintOracle (constraints, Doze, device-state triggers), content-change events,
worker classes not registered again after a restart (parked runs), and runs with no
executor room on the nodes allowed to run them. A mixin of ``SchedulerCore`` (engine.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .device import DeviceState, in_trigger_state, is_gated, satisfies, transitions
from .enums import TaskState
from .records import TaskRecord
from .triggers import DEVICE_TRIGGER_KINDS, ContentUri, uri_matches
from .watch import MTIME_SLACK_MS

if TYPE_CHECKING:
    from .core_protocol import Core


class Conditions:
    def eligible_nodes(self: Core, rec: TaskRecord) -> tuple[str, ...] | None:
        """The nodes this task may run on now; None when it may run anywhere."""
        if not self.devices:
            return None
        kind = rec.trigger.kind
        device_trigger = kind in DEVICE_TRIGGER_KINDS
        if not (device_trigger or is_gated(rec.constraints) or any(s.doze for s in self.devices.values())):
            return None  # (Doze gates every task: the nodes scanned last, for a task not gated itself)
        return tuple(
            node
            for node, state in self.devices.items()
            if satisfies(rec.constraints, state) and (not device_trigger or in_trigger_state(kind, state))
        )

    def set_devices(
        self: Core, states: dict[str, DeviceState], seen_before: dict[str, DeviceState] | None = None
    ) -> list[str]:
        """New device states (every node): fire device triggers on transitions, release
        tasks whose gate opened. Returns the trigger kinds that fired. ``seen_before``: the
        states a restarted scheduler last saw (kept in its store), for a node this core has
        not seen yet: a transition while it was down fires once after, as a missed period
        runs once; a node seen for the first time fires nothing."""
        fired: list[str] = []
        before = self.devices if not seen_before else {**seen_before, **self.devices}
        for node, state in states.items():
            fired += transitions(before.get(node), state)
        self.devices = dict(states)
        for kind in dict.fromkeys(fired):
            self.fire(kind)
        self.release_unplaced()
        for key in list(self._gated):
            rec = self.tasks.get(key)
            if rec is None or rec.state is not TaskState.ENQUEUED or rec.ready_seq != -1:
                self._gated.discard(key)
            elif self.eligible_nodes(rec) != ():
                self._gated.discard(key)
                self._make_ready(rec)
        return fired

    def gated_on_falling_due(
        self: Core, rec: TaskRecord, memo: dict[tuple[int, str], tuple[str, ...] | None]
    ) -> bool:
        """``rec`` falls due (its timer fired, or a chain's first step is admitted): if no
        node satisfies it now it goes straight to the gated set (True), where the dispatch
        turn would put it on its first look, but only after taking it off the ready queue,
        which is in due order: a mass of gated work falling due at once (2,000 a turn) held
        back every timer due after it. ``memo``: eligibility by constraints object and
        trigger kind, for one batch (the rows of one request share their constraints). A
        worker not registered is left to the dispatch turn, which parks or fails it."""
        if not self.is_registered(rec.worker):
            return False
        shared = (id(rec.constraints), rec.trigger.kind)
        if shared not in memo:
            memo[shared] = self.eligible_nodes(rec)
        if memo[shared] != ():
            return False
        self._wait_at_gate(rec)
        return True

    def _wait_at_gate(self: Core, rec: TaskRecord) -> None:
        """``rec`` is due, yet no node satisfies its constraints now: it waits, off the ready
        queue, for a device state change (``set_devices`` releases it)."""
        rec.ready_seq = rec.timer_seq = -1
        self._gated.add(rec.key)
        self.note(rec.key, "due, but no node satisfies its constraints: waits for a device state change")

    def unplaced(self: Core, key: str, run_id: int,
                 why: str = "no executor room on the nodes that satisfy it: waits for capacity there") -> None:
        """A run had no executor room on its nodes (or, a suspect, no executor to run alone
        on yet): undo the dispatch, wait for capacity."""
        self.run_lost(key, run_id, bounced=True)
        rec = self.tasks.get(key)
        if rec is not None and rec.state is TaskState.ENQUEUED:
            if not rec.noted_wait:  # once per spell of waiting, not per try
                rec.noted_wait = True
                self.note(key, why)
            rec.timer_seq = -1  # not on a timer: it waits for release_unplaced
            self._unplaced.add(key)

    def suspects_waiting(self: Core) -> bool:
        """A suspect run (see ``run_lost``) waits for an executor to run alone on."""
        for key in self._unplaced:
            rec = self.tasks.get(key)
            if rec is not None and rec.crashes and rec.state is TaskState.ENQUEUED:
                return True
        return False

    def release_unplaced(self: Core) -> None:
        """Capacity freed up somewhere: unplaced runs try again."""
        for key in self._unplaced:
            rec = self.tasks.get(key)
            if rec is not None and rec.state is TaskState.ENQUEUED and rec.ready_seq == -1:
                self._make_ready(rec)
        self._unplaced.clear()

    def parked(self: Core) -> dict[str, int]:
        return {worker: len(keys) for worker, keys in self._parked.items()}

    def unpark(self: Core, worker: str) -> int:
        """``worker`` is registered again: its waiting runs become ready."""
        n = 0
        for key in self._parked.pop(worker, {}):
            rec = self.tasks.get(key)
            if rec is not None and rec.state is TaskState.ENQUEUED and rec.ready_seq == -1:
                self._make_ready(rec)
                n += 1
        return n

    def watched_uris(self: Core, since: bool = True) -> dict[str, int | None]:
        """The ``file://`` URIs of armed ContentUri tasks (for the file watcher), each with
        the earliest instant one of them was last armed (its row's last change: submitted,
        or back to ENQUEUED after a run): a file modified since has not set it off yet.
        ``since=False`` (virtual time, whose instants are not the files'): None."""
        out: dict[str, int | None] = {}
        for key in self._armed.get("content_uri", ()):
            rec = self.tasks.get(key)
            trig = None if rec is None else rec.trigger
            if rec is None or not isinstance(trig, ContentUri) or not trig.uri_string.startswith("file:"):
                continue
            uri = trig.uri_string
            if not since:
                out[uri] = None
            elif (at := out.get(uri)) is None or rec.updated_at_ms < at:
                out[uri] = rec.updated_at_ms  # the earliest arming on the path
        return out

    def fire(self: Core, kind: str, uri: str | None = None, at_ms: int | None = None) -> int:
        """A device-state transition or content change: queue each armed task once.
        ``at_ms``: when the change happened (a watched file's modification time), if known
        on this clock: a task armed after it (its row changed since; by more than the
        MTIME_SLACK_MS a coarse file time may read early, watch.py) is not set off."""
        now = self.clock.now_ms()
        n = 0
        for key in list(self._armed.get(kind, ())):
            rec = self.tasks.get(key)
            if rec is None or rec.state.is_finished:
                continue
            trig = rec.trigger
            if isinstance(trig, ContentUri) and (
                uri is None or not uri_matches(trig.uri_string, uri, trig.trigger_for_descendants)
            ):
                continue
            if at_ms is not None and rec.updated_at_ms > at_ms + MTIME_SLACK_MS:
                continue  # armed (or began its run) after the change: not one for it
            n += 1
            if rec.state is TaskState.RUNNING:
                if not rec.refire:  # stored: a restart before the run ends must not lose it
                    rec.refire = True  # (until session 50 it was in memory only)
                    self._touch(rec, now)
            elif rec.state is TaskState.ENQUEUED and rec.next_run_at_ms is None:
                self._set_timer(rec, now, now)
            # already queued or blocked: the change coalesces into that run
        return n


__all__ = ["Conditions"]
