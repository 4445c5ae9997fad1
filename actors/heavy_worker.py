"""HeavyWorker: long-lived actors for ``Constraints(is_heavy_task=True)``, one run each at a time.

Created by the scheduler with the pool's resources (``heavy_num_cpus``, custom resources
such as ``heavy`` from cluster.yaml), reused across tasks so worker instances keep their
warm state, retired after ``heavy_idle_timeout_s`` idle, killed on a cancel that the
worker does not honour within ``heavy_cancel_grace_s``.
"""

from __future__ import annotations

import ray

from .executor import CONTROL, HeavyWorkerBase

HeavyWorker = ray.remote(max_restarts=-1, max_concurrency=10_000, concurrency_groups={CONTROL: 1})(HeavyWorkerBase)
