"""The facade's device-state calls (``set_device_state``, ``device_states``,
``clear_device_overrides``): they go to the ConstraintOracle, which owns each node's probed
state and the overrides, not to a scheduler shard."""

from __future__ import annotations

from typing import Any

from ..device import DEVICE_FIELDS, DeviceState
from ..timing import CALL_TIMEOUT_S
from .remote import _ray, _unwrap


class Devices:
    """Mixed into BackgroundTaskScheduler, which gives these two."""

    _oracle: Any  # the ConstraintOracle's handle
    _check_open: Any  # raises when the connection is shut down (Routing)

    def set_device_state(self, node_id: str | None = None, **state: Any) -> dict[str, DeviceState]:
        """Override probed device state on one node (None: every node), e.g.
        ``set_device_state(charging=False, battery_level=10)``. Returns the nodes' new states
        once the scheduler has applied them. Unknown nodes or fields raise ValueError."""
        if known := {k: v for k, v in state.items() if k in DEVICE_FIELDS}:
            DeviceState(**known)  # a bad value raises here, naming it (each field has a default)
        raw = self._ask_oracle("set_device_state", node_id, state)
        return {n: DeviceState.model_validate(s) for n, s in raw.items()}

    def device_states(self) -> dict[str, DeviceState]:
        """Every node's current device state (probes plus overrides)."""
        return {n: DeviceState.model_validate(s) for n, s in self._ask_oracle("states").items()}

    def clear_device_overrides(self) -> None:
        """Back to what the probes say."""
        self._ask_oracle("clear_overrides")

    def _ask_oracle(self, method: str, *args: Any) -> Any:
        """Asked again while the oracle restarts (each of these calls is idempotent)."""
        from kmpray.actors.retry import call_with_retry_sync

        self._check_open()
        ray = _ray()
        try:
            return call_with_retry_sync(lambda: ray.get(getattr(self._oracle, method).remote(*args),
                                                        timeout=CALL_TIMEOUT_S), CALL_TIMEOUT_S)
        except ray.exceptions.RayTaskError as exc:
            raise _unwrap(exc) from None
