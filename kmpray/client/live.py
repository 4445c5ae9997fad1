"""The engines this process is connected to, so that ``@kmpray.worker`` reaches them.

A notebook connects in one cell and defines its workers in the next: a class decorated
after ``connect()`` is registered with every engine connected (and not shut down) in
this process at once, as ``register_worker`` would, instead of only at the next
``connect()``.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from ..errors import InvalidParameters
from ..worker import on_register

log = logging.getLogger("kmpray")

_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()


def attached(scheduler: Any) -> None:
    _LIVE.add(scheduler)


def detached(scheduler: Any) -> None:
    _LIVE.discard(scheduler)


def _push(name: str, cls: type) -> None:
    for scheduler in list(_LIVE):
        try:
            scheduler._register_many({name: cls})
        except InvalidParameters as exc:  # the class itself (it cannot be pickled, say): said once
            log.warning("@kmpray.worker(%r): not registered: %s", name, exc)
            return
        except Exception as exc:  # one unreachable engine must not stop the others (or the import)
            log.warning("@kmpray.worker(%r): not registered with engine %r (%s); call register_worker(%r, cls)",
                        name, scheduler.namespace, exc, name)


on_register(_push)
