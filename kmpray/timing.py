"""Every fixed cadence and timeout of the engine's loops, in one table.

What a user may tune is an ``EngineConfig`` field instead (``config.py``: timer lead,
loop block threshold, probe interval, event linger, heavy timeouts, retention, ...).
The README's "Timing" table lists both, with the loop that owns each.
"""

from __future__ import annotations

# ---- SchedulerActor (actors/scheduler.py)
#: The longest its dispatch loop sleeps towards the next due time before it reads the
#: wall clock again. Due times are wall-clock instants and asyncio sleeps on the
#: monotonic clock, which stands still while the machine is suspended (a laptop's lid
#: closed) and ignores the wall clock's steps (NTP): a loop sleeping straight to a due
#: time 10 minutes off ran an Exact task an hour late after an hour's suspend.
WALL_CLOCK_RECHECK_S = 1.0
#: Its reconcile loop: ping every executor and heavy worker, notice deaths, restarts
#: and nodes joining or leaving, re-queue lost runs.
RECONCILE_S = 1.0
#: The scheduler, executors and broker publish their metrics this often (actors/metrics.py).
METRICS_S = 2.0
#: How often the scheduler looks for tasks waiting too long (warn_long_waits) at most:
#: every wait_warning_ms / 10, between RECONCILE_S and this (each look costs ~1.6 us per
#: gated, unplaced or parked task: 0.17 s at 100,000 gated tasks).
WAIT_CHECK_MAX_S = 10.0
#: How long a ping may take before that executor counts as unreachable (it gets no new
#: runs until it answers again; its runs are re-run only on proof of loss).
PING_TIMEOUT_S = 10.0  # the default of EngineConfig.ping_timeout_s
#: The same, for an executor whose loop a worker blocks (it cannot answer: only a restart
#: or death is worth seeing, without holding up the round).
BLOCKED_PING_TIMEOUT_S = 0.5
#: Forget finished rows older than ``EngineConfig.retain_finished_ms`` this often.
PRUNE_S = 60.0
#: Finished rows past ``EngineConfig.finished_in_memory_ms`` leave memory every RECONCILE_S,
#: this many at a time (~5 ms of the loop; other calls run between chunks), at most
#: EVICT_CHUNKS chunks a round (400,000 rows a second: far above any rate they come at).
EVICT_CHUNK = 2_000
EVICT_CHUNKS = 200
#: An ``enqueue_many`` call is taken in this many items at a time, each slice committed
#: (with its part of the call's answer) before the next: the scheduler's loop serves other
#: calls, reports and timers in between. Taken whole, 300,000 gated items held it over
#: 6 s (Exact timers due meanwhile ran 2.9-6.3 s late; now <= 0.18 s); a slice is ~10-40 ms.
INTAKE_SLICE = 1_000
#: The shortest timer an actor sets to wait for an instant. uvloop (which Ray runs every
#: actor on when it is installed) rounds a shorter one down to 0: an executor's wait for a
#: run's due time then ended at once, and Exact tasks began up to ~0.9 ms before their due
#: time (session 45); asyncio's own loop rounds up to whole milliseconds by itself.
MIN_TIMER_S = 0.001
#: One pump turn fires at most this many due timers, and passes over at most this many
#: ready runs it cannot hand out (gated, parked, failed at the gate); the loop comes back
#: for the rest after serving what waits (engine.py ``turn_budget``, real time only). A
#: 99,000-task gated chain's first step was one turn of ~1 s (its timers, then each run
#: looked at and set aside), and everything else waited for it.
TURN_BUDGET = 2_000
#: A client sends an ``enqueue_many`` of more items as several calls of this many, one after
#: another (kmpray/client/routing.py). One message of a million items (~110 MB) went through
#: Ray (over the lane's 64 MiB frame), and Exact tasks due meanwhile ran up to 2.6 s late
#: (its decoding in one piece, most likely); 50,000 items are ~5.5 MB over the lane,
#: decoded in ~50 ms, and the same tasks ran within 0.18 s.
ENQUEUE_CALL_ITEMS = 50_000
#: Under durability="normal" a store file's WAL reaches the disk only at a checkpoint, which
#: SQLite makes after ~1,000 pages of writes: at a few tasks a minute that is hours or days
#: of acknowledged work an OS crash or power loss could take back. The scheduler and the
#: broker look this often: if something but at most QUIET_SYNC_ROWS rows were written
#: since, they checkpoint (and so sync) at once, ~1 ms here; under more load SQLite's own
#: checkpoints come within seconds.
QUIET_SYNC_S = 1.0
QUIET_SYNC_ROWS = 2_000
#: How far behind the oracle's copy of an actor subscription's cursor may be (what a broker
#: restart pushes again): at most this while events flow, and this soon after they stop.
SUBSCRIBER_SAVE_S = 1.0
SUBSCRIBER_IDLE_SAVE_S = 0.2
#: An actor subscription's close() is answered once the oracle dropped its copy, waiting
#: this long at most for an oracle that restarts (well within the client's CALL_TIMEOUT_S).
UNSUBSCRIBE_WAIT_S = 30.0
#: Python's cyclic garbage collector, in the scheduler: everything alive is frozen (taken
#: out of the collector's scans) every RECONCILE_S, so a full collection scans only what
#: is new instead of every task in memory (66 ms pauses every few seconds at 30,000
#: tasks, the p99 of a 3,000 tasks/s load). The young generations are collected just
#: before each freeze, so little cyclic garbage is ever frozen. Everything is unfrozen
#: and collected whole at most this often, and only once the process grew by
#: GC_FULL_GROWTH since the last whole collection (``full_collection_due``): a whole
#: collection holds the loop ~0.1 s per 100,000 tasks held (0.75-0.95 s at a million),
#: and one every 10 minutes over a steady table found ~30 objects to free.
GC_FULL_S = 600.0
GC_FULL_GROWTH = 0.2
#: ``advance_time``: re-check that runs in flight settled at least this often.
SETTLE_POLL_S = 0.5

# ---- LightExecutor and HeavyWorker (actors/executor.py)
#: A run still going this long after its worker began is reported RUNNING on its own
#: (a shorter run's result says it, with no message of its own).
STARTED_NOTICE_S = 0.02
#: A submit answers with the results of its runs that end within this long (actors/replies.py):
#: a short run costs no report call of its own. A run ending later reports on its own.
REPLY_WINDOW_S = 0.002
#: One hop per step: a run is handed over with up to this many chain steps after it, each
#: to begin on the same executor when the one before succeeds (engine.py _handed_with).
#: Past it, one ordinary round trip through the scheduler starts the next stretch.
HAND_ON_DEPTH = 32
#: A large upstream value (kmpray/artifacts.py) not fetched from the object store in this
#: long is read from its artifact instead (its node may have gone without Ray saying so yet).
FETCH_TIMEOUT_S = 60.0
#: An artifact file no row refers to is removed by the sweep once it is this old: a file
#: written for a result still on its way to the scheduler (a restart between) is kept.
ARTIFACT_GRACE_S = 600.0
#: A run about to begin while a "blocked loop" report awaits its fence asks again after this.
FENCE_POLL_S = 0.005
#: The watch thread's wait for the scheduler's answer to a blocked-loop report, per try.
BLOCK_REPORT_TIMEOUT_S = 30.0
BLOCK_REPORT_TRIES = 20
BLOCK_REPORT_RETRY_S = 0.5

# ---- HeavyPool (actors/heavy_pool.py)
#: A heavy worker restarting is asked again after this.
HEAVY_RESTART_POLL_S = 0.2
#: A heavy worker asked for this long ago and not placed, with room for it in the cluster
#: in all: its task's waiting_for says the room is held by others, not "(starting)".
HEAVY_SLOW_PLACE_S = 10.0
#: A cancelled heavy run is checked for having ended this often (up to the cancel grace).
HEAVY_CANCEL_POLL_S = 0.05
#: A heavy worker ending its process for a timed-out run's thread still going
#: (actors/stray_threads.py) first waits this long at most for that run's result to be
#: acknowledged.
STRAY_ACK_WAIT_S = 10.0
#: ...and then this long at most for the scheduler to hear of the exit (``heavy_exiting``).
STRAY_SAY_S = 2.0
#: ``cancel()`` returns once the executors holding the cancelled runs have them (so nothing
#: handed over with them begins after it), or after this (an executor that is down).
CANCEL_ACK_TIMEOUT_S = 5.0
#: An executor's event loop that went this long without its heartbeat stood still (its
#: process stopped, a frozen VM, or a worker holding the loop): a ``cancel()`` may have
#: given up waiting for it meanwhile and returned. Until CANCEL_ACK_TIMEOUT_S after, a run
#: that succeeds there does not begin the chain step handed with it; the scheduler hands
#: that on as it would any other, knowing of the cancel (actors/executor_data.py ``_follow``).
#: Only a stand-still longer than CANCEL_ACK_TIMEOUT_S less the cancel's delivery can let a
#: step begin after the answer: this leaves seconds of margin.
STOOD_STILL_S = 2.0

# ---- ChainCoordinator (actors/chain_coordinator.py)
#: Each coordinator re-reads its chains from the scheduler this often (a lost message or
#: a restart on either side converges within one period).
RESYNC_S = 30.0
#: ``advance_time`` waits for a coordinator's resync (its snapshot answered, its actions
#: not yet delivered) at most this long after the snapshot: one that died half-way is not
#: waited for again (actors/virtual_time.py).
RESYNC_WAIT_S = 10.0

# ---- ConstraintOracle (actors/constraint_oracle.py); its interval is EngineConfig.probe_interval_s
#: One node's device-state probe may take this long before its last state is kept.
PROBE_TIMEOUT_S = 30.0

# ---- Calls between actors and from the client (actors/retry.py, actors/names.py, client.py)
#: A call to an actor being re-created is retried after FIRST_DELAY_S, doubling up to MAX_DELAY_S.
RETRY_FIRST_DELAY_S = 0.05
RETRY_MAX_DELAY_S = 1.0
#: A named actor being (re)created is looked up again after this.
LOOKUP_POLL_S = 0.05
# ---- Work stealing (actors/stealing.py): runs queued behind an executor's busy slots
#: A run queued on an executor this long, not begun, while another has free slots, is
#: asked back; the scheduler looks at most this often.
STEAL_AFTER_S = 0.2
STEAL_CHECK_S = 0.05

#: A client call to the scheduler gives up after this.
CALL_TIMEOUT_S = 120.0
#: A subscription whose broker has not answered a poll for this long says so, once (it
#: goes on asking: a restarting broker answers again; one whose engine stopped never does).
BROKER_SILENT_S = 10.0
#: An enqueue call's answer is kept this long by its request token, so a client retrying
#: it (the scheduler restarted before answering) gets the answer, not a second enqueue.
#: A client stops retrying CALL_TIMEOUT_S after its first try, which came before the
#: answer was stored: twice that covers every retry. (It was 600 s: the soak showed the
#: answers as the one table still growing after 10 minutes.)
ANSWER_RETENTION_S = 2 * CALL_TIMEOUT_S
#: ``shutdown()`` asks executors to stop beginning runs before it kills them; it waits at most this.
STOP_WAIT_S = 1.0
#: A store file another process holds is waited for this long before it is refused
#: (``EngineConfig.store_lock_wait_s``, kmpray/store_files.py): a killed scheduler's process
#: is gone within about a second here, and its lock with it. A live process of another
#: engine on this machine is refused without the wait.
STORE_LOCK_WAIT_S = 15.0
#: A scheduler whose store write failed (a full disk) ends this long after it, once its
#: callers have their FAILED_UNKNOWN answers, and Ray starts it again from the store; one
#: that cannot write at its start says why to every call for this long, then tries again.
STORE_FAILED_RESTART_S = 0.5
STORE_FAILED_RETRY_S = 10.0
#: ... or sooner, once a disk that was full has room again (actors/store_room.py), looked at this often.
STORE_ROOM_CHECK_S = 0.25
#: A store SQLite finds damaged is read again this many times, this far apart, before it is
#: refused (kmpray/store_files.py ``sound_read_again``): a failing disk's short read looks
#: like a broken page, but does not read the same way each time.
STORE_READ_AGAIN_LOOKS, STORE_READ_AGAIN_S = 3, 0.5
#: ``wait()`` long-polls the scheduler in chunks of at most this.
WAIT_CHUNK_S = 30.0

# ---- The local lane (kmpray/lane.py): clients' and executors' sides alike
#: A lane lost (its connection broke, its scheduler restarted) is looked up again after this.
LANE_LOST_RECHECK_S = 1.0
#: No lane for this process (another node, the lane off): asked again after this.
LANE_NONE_RECHECK_S = 30.0
#: The look-up (the scheduler's ``lane()`` through Ray) and the connection may take this long;
#: past it, the call goes through Ray.
LANE_CONNECT_TIMEOUT_S = 5.0

#: The scheduler gives freed C-heap pages back to the OS (``malloc_trim``) after this many
#: characters of large inputs went through it (their strings are freed, their pages kept).
TRIM_AFTER_INPUT_CHARS = 64 * 1024 * 1024


def trim_due(spilled: int, trimmed_at: int, spilled_round_before: int) -> bool:
    """Should the scheduler give freed heap pages back now (``malloc_trim``): more than
    ``TRIM_AFTER_INPUT_CHARS`` of large inputs went through since the last trim
    (``TaskStore.spilled_chars``: ``spilled`` now, ``trimmed_at`` then), and none came in
    the last housekeeping round (``spilled_round_before``), so the burst is over and its
    strings are freed. Until session 57 it trimmed as soon as the count passed the line:
    in the round the burst's rows were written, while their strings were still alive, so
    nothing came back, and the count then stayed under the line: after 1,000 inputs of
    1 MiB the scheduler kept 7.7x its memory. (A steady stream of them never trims: glibc
    reuses the freed pages for the next ones.)"""
    return spilled - trimmed_at > TRIM_AFTER_INPUT_CHARS and spilled == spilled_round_before


def full_collection_due(since_s: float, rss: int | None, rss_after_last: int | None) -> bool:
    """Is a whole garbage collection of the scheduler due: ``since_s`` after the last one,
    the process at ``rss`` bytes now and ``rss_after_last`` right after it (None where
    the OS does not say: then on time alone, as before)."""
    if since_s < GC_FULL_S:
        return False
    if rss is None or rss_after_last is None:
        return True
    return rss >= rss_after_last * (1 + GC_FULL_GROWTH)
