"""Constraints: the conditions and policies that shape how a task runs."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from ._model import Frozen
from .enums import BackoffPolicy, ExistingWorkPolicy, NetworkType, QualityOfService
from .millis import DurationMs, PositiveDurationMs


class Constraints(Frozen):
    requires_network: bool = False
    network_type: NetworkType = NetworkType.CONNECTED
    requires_unmetered_network: bool = False
    requires_charging: bool = False
    requires_battery_not_low: bool = False
    requires_storage_not_low: bool = False
    requires_device_idle: bool = False
    allow_while_idle: bool = False
    is_heavy_task: bool = False
    expedited: bool = False
    backoff_policy: BackoffPolicy = BackoffPolicy.EXPONENTIAL
    backoff_delay_ms: DurationMs = 10_000
    existing_work_policy: ExistingWorkPolicy = ExistingWorkPolicy.KEEP
    qos: QualityOfService = QualityOfService.DEFAULT
    max_retries: Annotated[int, Field(ge=0, le=1_000_000)] = 5
    timeout_ms: PositiveDurationMs | None = None

    @model_validator(mode="before")
    @classmethod
    def _network_type_requires_network(cls, data: Any) -> Any:
        """A network type given without ``requires_network`` requires that network, as
        Android's ``setRequiredNetworkType`` does (``NOT_REQUIRED`` requires none); given
        both, ``requires_network`` stands. Until session 47 the type alone was ignored."""
        if isinstance(data, dict) and "requires_network" not in data and "requiresNetwork" not in data:
            kind = data.get("network_type", data.get("networkType"))
            if kind is not None:
                return {**data, "requires_network": kind != NetworkType.NOT_REQUIRED}
        return data


DEFAULT_CONSTRAINTS = Constraints()
