"""Request validation: everything that turns into REJECTED_INVALID_PARAMS or REJECTED_OS_POLICY."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import msgpack

from .config import EngineConfig
from .constraints import Constraints
from .enums import ExistingWorkPolicy
from .errors import InvalidParameters, RejectedByPolicy
from .platforms import FLEX_MIN_MS, PlatformProfile
from .triggers import ContentUri, Periodic, Trigger, Windowed

# '#' is reserved: appended work of unique name X is stored as X#2, X#3, ...
_ID_RE = re.compile(r"^[^\x00-\x1f\x7f#]+$")


def shown(value: object, limit: int = 80) -> str:
    """``value``'s repr for a reason or a log line, cut after ``limit`` characters: a
    rejected id, worker name or URI is echoed back, and one of 100,000 characters was,
    whole, into the reason, the scheduler's log and its list of recent rejections."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value):,} characters" if isinstance(value, str) else f"{len(text):,} characters shown"
    return f"{text[:limit]}… ({size})"


def check_id(task_id: object, config: EngineConfig, field: str = "id") -> str:
    if not isinstance(task_id, str) or not task_id.strip():
        raise InvalidParameters(f"{field}: must be a non-empty string")
    if len(task_id) > config.max_id_length:
        raise InvalidParameters(
            f"{field}: {len(task_id)} characters, more than the limit of {config.max_id_length}"
        )
    if not _ID_RE.match(task_id):
        raise InvalidParameters(f"{field}: must not contain control characters or '#'")
    return task_id


def check_input(value: object, config: EngineConfig, field: str = "input") -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidParameters(f"{field}: must be a string (e.g. JSON) or None, got {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidParameters(f"{field}: is not valid UTF-8 text (lone surrogate)") from None
    if size > config.max_input_bytes:
        raise InvalidParameters(
            f"{field}: {size} bytes, more than the cap of {config.max_input_bytes} bytes"
        )


def check_output(data: object, config: EngineConfig) -> None:
    """A run's ``Success.data`` must be msgpack-able and under the output cap."""
    if data is None:
        return
    try:
        size = len(msgpack.packb(data, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidParameters(f"Success.data: not msgpack-serializable ({exc})") from None
    if size > config.max_output_bytes:
        raise InvalidParameters(
            f"Success.data: {size} bytes, more than the cap of {config.max_output_bytes} bytes"
        )


def check_uri(uri: str, field: str = "trigger.uri_string") -> None:
    parts = urlsplit(uri)
    if not parts.scheme or not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*$", parts.scheme):
        raise InvalidParameters(f"{field}: {shown(uri)} has no valid scheme (e.g. content:// or file://)")
    if any(ch.isspace() for ch in uri):
        raise InvalidParameters(f"{field}: {shown(uri)} contains whitespace")


def check_trigger(
    trigger: Trigger,
    constraints: Constraints,
    platform: PlatformProfile,
    now_ms: int,
    config: EngineConfig,
) -> None:
    if trigger.kind in platform.unsupported_triggers:
        raise RejectedByPolicy(f"trigger {trigger.kind} is not supported on platform {platform.name!r}")
    if isinstance(trigger, Periodic):
        if trigger.interval_ms < platform.min_periodic_ms:
            raise InvalidParameters(
                f"trigger.interval_ms: {trigger.interval_ms} ms is below the "
                f"{platform.name} minimum of {platform.min_periodic_ms} ms"
            )
        if trigger.flex_ms is not None:
            low = min(FLEX_MIN_MS, trigger.interval_ms)
            if not low <= trigger.flex_ms <= trigger.interval_ms:
                raise InvalidParameters(
                    f"trigger.flex_ms: {trigger.flex_ms} ms must be within [{low}, {trigger.interval_ms}] ms"
                )
        if constraints.existing_work_policy in (
            ExistingWorkPolicy.APPEND,
            ExistingWorkPolicy.APPEND_OR_REPLACE,
        ):
            raise InvalidParameters(
                "constraints.existing_work_policy: periodic work takes KEEP or REPLACE "
                "(it never finishes, so nothing could run after it)"
            )
    elif isinstance(trigger, Windowed):
        if trigger.end_epoch_millis < trigger.start_epoch_millis:
            raise InvalidParameters(
                "trigger: window is inverted (end_epoch_millis < start_epoch_millis)"
            )
        if trigger.end_epoch_millis < now_ms:
            raise InvalidParameters(
                f"trigger.end_epoch_millis: the window ended {now_ms - trigger.end_epoch_millis} ms ago"
            )
    elif isinstance(trigger, ContentUri):
        check_uri(trigger.uri_string)
