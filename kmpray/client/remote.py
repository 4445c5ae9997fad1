"""How the client facade reaches Ray: imported on first use, never at ``import kmpray``."""

from __future__ import annotations

import functools
import itertools
import logging
import os
import re
import secrets
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import packing
from ..errors import EngineUnavailable, InvalidParameters, KmprayError
from ..protocol import RETRY_MARK

#: The oldest Ray kmpray runs on (pyproject.toml's floor; tests/core/test_dependency_floors.py
#: keeps the two equal). Session 52 found the floor said 2.40 while the engine failed to
#: start on 2.40 and on 2.52 (2.53 and older lack ``RuntimeContext.get_session_name``); on
#: 2.54 and 2.56 the integration tests passed, 2.60 is the one the suite runs on.
MIN_RAY = (2, 54)

log = logging.getLogger("kmpray")


def _ray() -> Any:
    import ray

    return ray


def require_usable_ray(ray: Any) -> None:
    """What ``connect()`` checks of this process before it starts or reaches an engine: Ray
    recent enough, not forked from a process running Ray; and it says (once) when msgpack
    runs its pure-Python packer."""
    require_ray_version(ray.__version__)
    require_ray_here()
    _warn_slow_packer()


@functools.cache
def _warn_slow_packer() -> None:
    if (why := packing.slow_packer_warning()) is not None:
        logging.getLogger("kmpray").warning(why)


def require_ray_version(version: str) -> None:
    """Raise, naming both versions, when this process's Ray is older than ``MIN_RAY``: a
    cluster's nodes run the Ray their image has, and pip's floor does not reach them."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None or (int(match[1]), int(match[2])) < MIN_RAY:
        need = ".".join(map(str, MIN_RAY))
        raise EngineUnavailable(f"kmpray needs Ray >= {need}, and this is Ray {version}: "
                                f"pip install 'ray>={need}' (on every node of a cluster)")


def require_ray(namespace: str | None = None) -> None:
    """Raise if Ray was shut down in this process: a call would start a new local Ray
    (~6 s) and then fail with Ray's bare "Can't find actor ... from a different cluster"."""
    if not _ray().is_initialized():
        raise ray_gone(namespace)


_ray_pid_at_fork: int | None = None  # this process's pid, if Ray was up when it forked
_forked_from: int | None = None  # in a forked child: the pid of the parent, where Ray was up
# What a connection holds of this process's threads and sockets, each with ``_after_fork()``
# to let it go in a forked child: lane connections, the enqueue coalescers, the shard
# fan-out pool (multiprocessing's "fork" after connect(); each once read its parent's
# answers or waited for good on its parent's threads).
_HELD: weakref.WeakSet[Any] = weakref.WeakSet()


def let_go_in_forked_child(held: Any) -> None:
    """Call ``held._after_fork()`` in each child forked from this process."""
    _HELD.add(held)


def _before_fork() -> None:
    global _ray_pid_at_fork
    ray = sys.modules.get("ray")
    _ray_pid_at_fork = os.getpid() if ray is not None and ray.is_initialized() else None


def _after_fork_in_child() -> None:
    global _forked_from
    if _ray_pid_at_fork is not None:
        _forked_from = _ray_pid_at_fork
    for held in list(_HELD):
        held._after_fork()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def require_ray_here() -> None:
    """Raise in a process forked after Ray started in its parent (multiprocessing's "fork"
    start method, a notebook's default on Linux): Ray does not work there, and a call
    through it never answered. What the local lane carries works (client/lane.py)."""
    if _forked_from is not None:
        raise EngineUnavailable(
            f"this process was forked from process {_forked_from} after Ray started there, and Ray does "
            "not work in a forked process (its calls never answer): start it with multiprocessing's "
            "'spawn' or 'forkserver' method and connect() there (enqueue and reads over the local lane "
            "work here, the rest does not)")


def default_state_dir(namespace: str) -> str:
    base = os.environ.get("KMPRAY_STATE_DIR") or str(Path.home() / ".kmpray")
    return str(Path(base) / namespace)


def ray_gone(namespace: str | None = None) -> EngineUnavailable:
    engine = "its engine" if namespace is None else f"engine {namespace!r}"
    return EngineUnavailable(f"Ray was shut down in this process (ray.shutdown()), and this connection "
                             f"to {engine} with it: connect() again")


def check_engine_code(handle: Any, described: dict[str, Any]) -> None:
    """Refuse a scheduler handle whose actor class this client could not load, and warn of
    another kmpray version. Ray loads the class of an actor another process created (``kmpray
    start``, another client) from its pickle; when that fails here (the engine runs other
    kmpray code: a name or module this client's lacks), Ray falls back to a stand-in whose
    methods take keyword arguments only, and the first call failed deep in Ray with "too many
    positional arguments" (a run of the suite in session 54, its driver's modules older than
    the engine's)."""
    from kmpray import __version__

    version = described.get("engine_version")
    # (an engine that does not say runs code from before engines said it: other code than this)
    engine = f"kmpray {version}" if version else "kmpray code from before engines said their version"
    params = (getattr(handle, "_ray_method_signatures", None) or {}).get("register_workers")
    if params is not None and not any(p.name == "items" for p in params):
        raise EngineUnavailable(
            f"this client could not load the engine's actor classes from Ray (it has a stand-in for "
            f"a class it could not unpickle): the engine runs other kmpray code (engine: {engine}, "
            f"here: kmpray {__version__}). Connect with the engine's kmpray, or restart the engine "
            "with this one (`kmpray stop`, then connect)")
    if version != __version__:
        log.warning("the engine runs %s, this client kmpray %s: connect with the same version",
                    engine, __version__)


def _unwrap(exc: BaseException) -> BaseException:
    """A remote KmprayError/ValueError comes back as itself, not wrapped in RayTaskError."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, (KmprayError, ValueError, TypeError)):
        return cause
    return exc


async def _await(ref: Any) -> Any:
    return await ref


def _node_id() -> str:
    return str(_ray().get_runtime_context().get_node_id())


def ship_class(cls: type) -> bytes:
    """Serialize a worker class for other processes; notebook/test classes go by value."""
    from ray import cloudpickle

    module = sys.modules.get(cls.__module__)
    top = cls.__module__.split(".")[0]
    if module is not None and cls.__module__ != "__main__" and top != "kmpray":
        cloudpickle.register_pickle_by_value(module)
    try:
        return bytes(cloudpickle.dumps(cls))
    except Exception as exc:  # a lock, connection or open file the class's code refers to
        raise InvalidParameters(
            f"worker class {cls.__qualname__} cannot be sent to the engine's processes ({exc}): its code "
            "refers to an object that cannot be pickled, such as a module-level lock, connection, client "
            "or open file; create that object in __init__ or do_work instead"
        ) from None


def _new_token_source() -> None:
    """Tokens are this process's random prefix (96 bits, as unguessable to collide as a
    uuid4) and a count: no random bytes asked of the kernel per call (a system call each,
    on every enqueue). A forked child draws a prefix of its own."""
    global _token_prefix, _token_count
    _token_prefix, _token_count = secrets.token_hex(12) + "-", itertools.count()


_token_prefix, _token_count = "", itertools.count()
_new_token_source()
os.register_at_fork(after_in_child=_new_token_source)


def _tokens(token: bool) -> Iterator[tuple[str, ...]]:
    """The request token each try of one call carries (nothing if ``token`` is False): the
    first try a fresh token, every retry the same token marked as a retry. The scheduler
    looks stored answers up only for retries: a first try cannot have been applied."""
    if not token:
        while True:
            yield ()
    first = f"{_token_prefix}{next(_token_count):x}"
    yield (first,)
    while True:
        yield (first + RETRY_MARK,)


def _ray_init(ray: Any, address: str | None) -> None:
    """Join (or, without an address, start) Ray; a refused connection says what a token
    cluster needs (Ray's own error says only "Failed to connect to Ray cluster")."""
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING)
    except ConnectionError as exc:
        if not address or address == "local":
            raise
        raise ConnectionError(refused_connection(address, exc)) from exc


def refused_connection(address: str, exc: Exception) -> str:
    """What a refused ``ray.init(address=...)`` means, for the error a user reads."""
    mode = os.environ.get("RAY_AUTH_MODE", "unset")
    return (
        f"could not connect to the Ray cluster at {address} ({exc}). If it uses token authentication "
        f"(Ray >= 2.59 turns it on for clusters started locally), this process needs RAY_AUTH_MODE=token "
        f"(here: {mode}) and the cluster's token: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
        "~/.ray/auth_token (`ray get-auth-token` on the head prints it)"
    )
