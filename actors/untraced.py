"""Internal calls of an actor's own methods without Ray's tracing shim.

Ray wraps every method of an actor class, private ones and inherited ones included, in a
tracing shim (``ray/util/tracing/tracing_helper.py``, ``_inject_tracing_into_class``),
whether tracing is on or not (ray-project/ray#28293): each ``self._run(...)`` inside the
actor then goes through a ``*args, **kwargs`` wrapper that asks whether tracing is on,
and an async method gets a second coroutine around it. A light executor's thread spent
~8 % of its CPU in those shims (py-spy under ``bench dispatch``, Ray 2.60).

Remote calls do not look the method up on the class: Ray took each method, wrapped, for
its executor of remote calls when it loaded the class, before ``__init__`` runs. So once
the actor exists, putting the original functions back on its class changes only the
actor's calls of its own methods, which never carry a trace context: the shim had
nothing to do for them, with tracing on or off.
"""

from __future__ import annotations

from typing import Any


def untrace(actor: Any) -> None:
    """From ``actor.__init__``: its class's methods back as they were written (remote
    calls keep Ray's wrapped ones). A class Ray never wrapped is left as it is."""
    cls = type(actor)
    for name, member in list(vars(cls).items()):
        original = getattr(member, "__wrapped__", None)
        if getattr(member, "__ray_tracing_wrapped__", False) and callable(original):
            setattr(cls, name, original)
