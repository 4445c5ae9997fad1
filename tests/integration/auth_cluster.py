"""Processes for test_auth.py: ``serve`` starts its own Ray instance with token
authentication and an engine on it; ``client`` connects to it with whatever token its
environment gives (RAY_AUTH_TOKEN) and enqueues one task. Run as
``python -m tests.integration.auth_cluster serve STATE NS`` / ``client ADDRESS NS ID``."""

from __future__ import annotations

import sys


def serve(state: str, namespace: str) -> None:
    import ray

    import kmpray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    sched = kmpray.connect(namespace=namespace, state_dir=state)
    print(f"ready {ray.get_runtime_context().gcs_address}", flush=True)
    sys.stdin.readline()  # the test closes stdin when it is done
    sched.shutdown()
    ray.shutdown()


def client(address: str, namespace: str, task_id: str) -> None:
    import kmpray

    class Hello(kmpray.CommonWorker):
        async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> object:  # noqa: A002
            return kmpray.WorkerResult.Success(data={"hello": ctx.task_id})

    sched = kmpray.connect(address=address, namespace=namespace)
    sched.register_worker("Hello", Hello)
    sched.enqueue(task_id, kmpray.TaskTrigger.OneTime(), "Hello")
    info = sched.wait(task_id, timeout_s=60)
    print(f"state {info.state.value} {info.result.data['hello'] if info.result else None}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    else:
        client(sys.argv[2], sys.argv[3], sys.argv[4])
