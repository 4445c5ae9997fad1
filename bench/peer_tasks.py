"""The no-op task of ``bench peers`` for each peer, in the module its worker processes import
(``huey_consumer bench.peer_tasks.huey``, ``dramatiq bench.peer_tasks``,
``celery -A bench.peer_tasks``). Each task pushes ``id start_ms`` onto one Redis list: the
harness reads the start stamps from there, the same way for every peer. The Redis
address comes from ``KMPRAY_PEER_REDIS``; a peer's package is imported only when its
workers (or the harness's sender for it) ask for it, so installing one peer is enough
to run that one."""

from __future__ import annotations

import os
import time
from typing import Any

STAMPS = "kmpray-peer-stamps"
_client: Any = None


def _redis() -> Any:
    global _client
    if _client is None:
        import redis

        _client = redis.Redis.from_url(_url())
    return _client


def _url() -> str:
    return os.environ.get("KMPRAY_PEER_REDIS", "redis://127.0.0.1:6379/0")


def stamp(task_id: str) -> None:
    _redis().rpush(STAMPS, f"{task_id} {time.time() * 1000:.3f}")


def __getattr__(name: str) -> Any:  # the peers' apps, built on first use
    if name == "huey":
        from huey import RedisHuey

        app = RedisHuey("kmpray-peers", url=_url(), results=False)
        globals()["huey_stamp"] = app.task()(stamp)
    elif name == "dramatiq_stamp":
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker

        dramatiq.set_broker(RedisBroker(url=_url()))
        app = dramatiq.actor(stamp, actor_name="kmpray_peer_stamp", max_retries=0)
    elif name == "app":  # celery -A bench.peer_tasks
        from celery import Celery

        app = Celery("kmpray-peers", broker=_url())
        app.conf.update(task_ignore_result=True, worker_prefetch_multiplier=4, broker_connection_retry=False,
                        broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
        globals()["celery_stamp"] = app.task(name="kmpray_peer_stamp")(stamp)
    else:
        raise AttributeError(name)
    globals()[name] = app
    return app


if os.environ.get("KMPRAY_PEER") == "dramatiq":  # the dramatiq CLI imports this module for actors
    __getattr__("dramatiq_stamp")
