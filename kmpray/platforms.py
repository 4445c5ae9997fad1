"""Platform profiles: what each ``connect(platform=...)`` supports and its minimums."""

from __future__ import annotations

from dataclasses import dataclass

from .clock import FIFTEEN_MINUTES, ONE_MINUTE, ONE_SECOND


@dataclass(frozen=True, slots=True)
class PlatformProfile:
    name: str
    min_periodic_ms: int
    # Trigger kinds this platform refuses with REJECTED_OS_POLICY.
    unsupported_triggers: frozenset[str] = frozenset()
    # Constraint fields the platform cannot honour; they are ignored with a warning.
    ignored_constraints: frozenset[str] = frozenset()
    # A shorter backoff_delay_ms is raised to this, with a warning (Android's
    # WorkRequest.MIN_BACKOFF_MILLIS: its builder does the same).
    min_backoff_ms: int = 0


FLEX_MIN_MS = 5 * ONE_MINUTE

PLATFORMS: dict[str, PlatformProfile] = {
    "cluster": PlatformProfile("cluster", min_periodic_ms=ONE_SECOND),
    "android": PlatformProfile("android", min_periodic_ms=FIFTEEN_MINUTES, min_backoff_ms=10 * ONE_SECOND),
    "ios": PlatformProfile(
        "ios",
        min_periodic_ms=FIFTEEN_MINUTES,
        unsupported_triggers=frozenset({"windowed", "content_uri", "storage_low", "device_idle"}),
        ignored_constraints=frozenset(
            {"requires_charging", "requires_battery_not_low", "requires_storage_not_low",
             "requires_device_idle", "allow_while_idle"}
        ),
    ),
}


def profile(name: str) -> PlatformProfile:
    try:
        return PLATFORMS[name]
    except KeyError:
        raise ValueError(
            f"platform: must be one of {sorted(PLATFORMS)}, got {name!r}"
        ) from None
