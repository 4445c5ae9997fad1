"""What the built-in workers may touch: URL and path checks, config parsing."""

from __future__ import annotations

import ipaddress
import json
import socket
import tempfile
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydantic import ValidationError

from .._model import Frozen
from ..config import EngineConfig

C = TypeVar("C", bound=Frozen)


class ConfigError(ValueError):
    """A malformed worker config: the run fails at once, naming the field."""


def parse_config(
    model: type[C], raw: str | None, defaults: dict[str, Any] | None = None, upstream: dict[str, Any] | None = None
) -> C:
    """The worker's JSON ``input``, strictly validated, over ``defaults`` (known fields a
    chain's upstream data supplies, e.g. a download's filePath for the compressor). A
    step without its own input receives the upstream data itself: then only the
    defaults apply."""
    try:
        own = json.loads(raw) if raw else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"input: not valid JSON ({exc.msg})") from None
    if not isinstance(own, dict):
        raise ConfigError("input: must be a JSON object")
    if upstream and own == upstream:
        own = {}
    merged = {k: v for k, v in (defaults or {}).items() if v is not None}
    for key, value in own.items():  # the step's own config wins over upstream defaults
        merged[key] = value
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "input"
        raise ConfigError(f"{field}: {first['msg'].removeprefix('Value error, ')}") from None


def _host_matches(host: str, patterns: list[str]) -> bool:
    return any(host == p or (p.startswith("*.") and host.endswith(p[1:])) for p in patterns)


def check_url(url: str, config: EngineConfig) -> str:
    """``url`` if the config lets a worker send to it (scheme, host, allow and deny lists),
    else ConfigError naming why. ``http_deny_private`` is ``public_address``'s, which
    looks up the host's addresses (a blocking DNS query): the clients' transport runs it
    for every hop, in a thread, and connects to the address it checked (http.py)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (out of range, or not a number: ValueError)
    except ValueError as exc:  # "http://[::1", "http://h:99999/": not a URL to retry
        raise ConfigError(f"url: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"url: scheme must be http or https, got {parts.scheme or 'none'!r}")
    host = (parts.hostname or "").lower()
    if not host:
        raise ConfigError("url: has no host")
    if any(c.isspace() or not c.isprintable() or c in '<>"{}|\\^`%' for c in host):
        raise ConfigError(f"url: host {host!r} is not a valid host name")
    if config.http_allow_hosts and not _host_matches(host, config.http_allow_hosts):
        raise ConfigError(f"url: host {host!r} is not in the allow list")
    if _host_matches(host, config.http_deny_hosts):
        raise ConfigError(f"url: host {host!r} is denied")
    return url


def public_address(host: str) -> str:
    """The address to connect to for ``host`` (http_deny_private): every address it resolves
    to must be public, else ConfigError naming the first that is not. A blocking DNS query:
    call it in a thread. The HTTP clients connect to the address returned (http.py), so the
    address checked is the address used."""
    try:
        addresses = [info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)]
    except OSError as exc:
        raise ConfigError(f"url: cannot resolve {host!r} ({exc})") from None
    if not addresses:
        raise ConfigError(f"url: cannot resolve {host!r} (no address)")
    for addr in addresses:
        ip = ipaddress.ip_address(str(addr).split("%")[0])
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved:
            raise ConfigError(f"url: {host!r} resolves to a private address ({ip}), which is denied")
    return str(addresses[0]).split("%")[0]


def base_dir(config: EngineConfig) -> Path:
    base = Path(config.files_base_dir) if config.files_base_dir else Path(tempfile.gettempdir()) / "kmpray-files"
    base.mkdir(parents=True, exist_ok=True)
    return base.resolve()


def inside(base: Path, resolved: Path) -> bool:
    """Whether the resolved path is the base directory or below it."""
    return resolved == base or base in resolved.parents


def safe_path(path: str, config: EngineConfig, field: str) -> Path:
    """``path`` (absolute, or relative to the base dir) must resolve inside the base dir."""
    base = base_dir(config)
    candidate = Path(path)
    resolved = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if not inside(base, resolved):
        raise ConfigError(f"{field}: {path!r} is outside the allowed base directory {str(base)!r}")
    return resolved
