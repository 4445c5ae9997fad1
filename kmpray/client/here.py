"""``kmpray.connect()`` inside worker code: the engine running it (a task that enqueues
tasks), made once per executor or heavy-worker process.

Finding that engine takes several blocking Ray calls (its actors by name, its shard
count, its description): made on the first ``connect()`` in an ``async def do_work``,
they held that executor's event loop ~0.5 s (every other run there waited, the engine
logged the worker as blocking its loop, and Ray warned of a blocking ``ray.get`` inside an
async actor), though ``await kmpray.connect().enqueue_async(...)`` is what the README
tells such workers to write. Each executor now makes the connection in a thread of its
own as it starts (``warm``); ``connect()`` then finds it made.
"""

from __future__ import annotations

import logging
import threading

from ..errors import EngineUnavailable
from ..timing import CALL_TIMEOUT_S
from .facade import BackgroundTaskScheduler

log = logging.getLogger("kmpray.client")

_HERE: dict[str, BackgroundTaskScheduler] = {}  # namespace -> the connection to the engine running this
_MAKING = threading.Lock()


def engine_running_this(namespace: str) -> BackgroundTaskScheduler:
    """Inside worker code (an executor or heavy worker process of engine ``namespace``): a
    connection to that engine, made once per process. It starts no engine, registers no
    class, and leaves ``kmpray.TaskEventBus`` the engine's own."""
    here = _HERE.get(namespace)
    if here is not None and not here._closed:
        return here
    with _MAKING:  # one connection, however many runs ask at once (and the warm-up)
        here = _HERE.get(namespace)
        if here is not None and not here._closed:
            return here
        from kmpray.actors.bootstrap import engine_handles

        handles = engine_handles(namespace)
        if handles is None:
            raise EngineUnavailable(
                f"engine {namespace!r}, which runs this worker, is not running (stopped?)")
        described = handles["schedulers"][0].ready.remote().future().result(timeout=CALL_TIMEOUT_S)
        _HERE[namespace] = here = BackgroundTaskScheduler(namespace, handles, described)
        return here


def warm(namespace: str) -> None:
    """Make the connection in a thread (an executor or heavy worker calls this as it
    starts), so that worker code's ``connect()`` does not block its event loop. A failure
    is left to that ``connect()`` to raise."""
    def make() -> None:
        try:
            engine_running_this(namespace)
        except Exception as exc:
            log.debug("connect() for worker code not made ahead (%s); made when asked", exc)

    threading.Thread(target=make, name="kmpray-connect-ahead", daemon=True).start()
