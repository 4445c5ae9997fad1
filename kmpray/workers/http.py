"""HTTP built-in workers on httpx: request, sync, download (resumable), upload (multipart).

5xx, timeouts and connection errors are retryable failures (the task's backoff applies);
4xx and malformed configs fail at once, naming the problem.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import mimetypes
import os
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from .._model import Frozen
from ..config import EngineConfig
from ..results import Failure, Success
from ..worker import CommonWorker, WorkerContext
from .safety import ConfigError, check_url, parse_config, public_address, safe_path

Method = Literal["GET", "POST", "PUT", "DELETE", "PATCH"]


class _Config(Frozen):
    url: str

    @field_validator("method", mode="before", check_fields=False)
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


_TCHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # RFC 9110's token
_TOKEN = re.compile(_TCHARS)  # a field-name
_MEDIA_TYPE = re.compile(rf"{_TCHARS}/{_TCHARS}(\s*;.*)?")  # type/subtype, parameters after


class HttpRequestConfig(_Config):
    method: Method = "GET"
    headers: dict[str, str] = {}
    body: str | None = None
    timeout_ms: Annotated[int, Field(gt=0)] = 30_000

    @field_validator("headers")
    @classmethod
    def _sendable(cls, headers: dict[str, str]) -> dict[str, str]:
        """Refused here, naming the header: httpx raised on them at send time (a non-ASCII
        value as UnicodeEncodeError, a line break as a protocol error), which a run
        retried as if the server had failed."""
        for name, value in headers.items():
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"{name[:80]!r} is not a valid header name")
            if not value.isascii() or any((c < " " and c != "\t") or c == "\x7f" for c in value):
                raise ValueError(f"the value of {name!r} must be ASCII without control characters "
                                 "(line breaks included)")
        return headers


class HttpSyncConfig(_Config):
    method: Literal["POST", "GET"] = "POST"
    request_body: Any = None
    timeout_ms: Annotated[int, Field(gt=0)] = 60_000


class HttpDownloadConfig(_Config):
    save_path: str
    timeout_ms: Annotated[int, Field(gt=0)] = 5 * 60_000
    sha256: str | None = None

    @field_validator("sha256")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        """A digest that could never match was found out after each whole download, and
        the "mismatch" retried."""
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError(f"must be 64 hexadecimal digits, got {value[:80]!r}")
        return value


class HttpUploadConfig(_Config):
    file_path: str
    file_field_name: str = "file"
    fields: dict[str, str] = {}
    mime_type: str | None = None
    timeout_ms: Annotated[int, Field(gt=0)] = 2 * 60_000

    @field_validator("mime_type")
    @classmethod
    def _media_type(cls, value: str | None) -> str | None:
        """``type/subtype`` (parameters allowed), printable ASCII: a line break went into the
        multipart part's headers as it was."""
        printable = value is None or (value.isascii() and value.isprintable())
        if value is not None and not (printable and _MEDIA_TYPE.fullmatch(value)):
            raise ValueError(f"must be a media type such as 'text/csv', got {value[:80]!r}")
        return value


def _config(ctx: WorkerContext | None) -> EngineConfig:
    return ctx.engine_config if ctx is not None and ctx.engine_config is not None else EngineConfig()


def _status_failure(status: int, url: str) -> Failure | None:
    if status >= 500:
        return Failure(f"HTTP {status} from {url}", should_retry=True)
    if status >= 400:
        return Failure(f"HTTP {status} from {url}")
    return None


def _transport_failure(exc: Exception, url: str) -> Failure:
    return Failure(f"{type(exc).__name__} for {url}: {exc}", should_retry=True)


_TLS: Any = None  # one SSL context per process, shared by every client (httpx.create_ssl_context)


def _prepare() -> Any:
    """httpx imported, its SSL context built (certifi's CA bundle: ~17 ms), its transport
    modules loaded (the first client: ~50 ms) and anyio's asyncio backend, which httpcore
    imports at the first request (27 modules, ~16 ms quiet; on the executor's loop that
    first run was reported as blocking it when the machine was busy): in a thread, once
    per process."""
    import anyio._backends._asyncio  # noqa: F401
    import anyio.streams.tls  # noqa: F401
    import httpx

    context = httpx.create_ssl_context()
    httpx.AsyncClient(verify=context)  # loads what the first client needs; nothing opened
    return context


def _guard(config: EngineConfig) -> Callable[[Any], Awaitable[None]]:
    """httpx's request hook: every hop (the first request and each redirect it follows)
    must pass ``check_url``. Redirects were followed unchecked: a URL on an allowed host
    that answered 302 to a denied host, or to 169.254.169.254 under ``http_deny_private``,
    was fetched. The private-address rule is the transport's (``_pinned``): it resolves
    each hop's host once, in a thread, and connects to the address it checked."""
    hops = 0

    async def check(request: Any) -> None:
        nonlocal hops
        hops += 1
        request.extensions[_HOP] = hops  # for _pinned's message too
        try:
            check_url(str(request.url), config)  # the address: _pinned's, under deny_private
        except ConfigError as exc:
            raise _hop_error(request, exc) from None

    return check


_HOP = "kmpray_hop"


def _hop_error(request: Any, exc: ConfigError) -> ConfigError:
    """``exc`` as said of a hop: of a redirect's target, naming it."""
    return ConfigError(f"redirected to {request.url}: {exc}" if request.extensions.get(_HOP, 1) > 1
                       else str(exc))


_PINNED: Any = None


def _pinned(inner: Any) -> Any:
    """A transport for ``http_deny_private``: each request's host (every hop's) is resolved
    once, in a thread, every address must be public, and the connection goes to the address
    checked (the URL's host replaced by it; the Host header and the TLS server name, which
    certificate checking uses, stay the host's). Before session 42 the check resolved the
    name and httpx resolved it again to connect: a DNS answer changed in between (rebinding)
    reached a private address."""
    global _PINNED
    if _PINNED is None:
        import httpx

        class Pinned(httpx.AsyncBaseTransport):
            def __init__(self, inner: Any) -> None:
                self.inner = inner

            async def handle_async_request(self, request: Any) -> Any:
                host = request.url.host
                try:
                    address = await asyncio.to_thread(public_address, host)
                except ConfigError as exc:
                    raise _hop_error(request, exc) from None
                pinned = httpx.Request(request.method, request.url.copy_with(host=address),
                                       headers=request.headers, stream=request.stream,
                                       extensions={**request.extensions, "sni_hostname": host})
                return await self.inner.handle_async_request(pinned)

            async def aclose(self) -> None:
                await self.inner.aclose()

        _PINNED = Pinned
    return _PINNED(inner)


async def _client(timeout_ms: int, config: EngineConfig | None = None) -> Any:
    """An ``httpx.AsyncClient`` that takes ~0.2 ms of the executor's event loop to make. Each
    client used to build its own SSL context on the loop (17 ms, 80 ms for the first), which
    every other run on that executor waited through (the blocked-loop warning fired)."""
    global _TLS
    if _TLS is None:
        _TLS = await asyncio.to_thread(_prepare)
    import httpx

    config = config or EngineConfig()
    hooks = {"request": [_guard(config)]}
    pinned = {"transport": _pinned(httpx.AsyncHTTPTransport(verify=_TLS))} if config.http_deny_private else {}
    return httpx.AsyncClient(timeout=timeout_ms / 1000, follow_redirects=True, verify=_TLS, event_hooks=hooks,
                             **pinned)


async def _send(
    method: str, url: str, timeout_ms: int, config: EngineConfig, whole: bool = True, **kwargs: Any
) -> tuple[int, int] | Failure:
    """(status, response length) or a Failure. ``whole``: ``timeout_ms`` bounds the whole
    exchange (request, sync); else each connect, read and write (an upload may take longer
    than its timeoutMs as long as it moves)."""
    client = await _client(timeout_ms, config)
    import httpx  # imported by then, off the loop

    try:
        # timeoutMs bounds the whole exchange: httpx's timeout is per connect, read or write,
        # so a server sending a byte a second kept a 2 s request going for as long as it liked
        async with asyncio.timeout(timeout_ms / 1000 if whole else None), client:
            async with client.stream(method, url, **kwargs) as response:
                failed = _status_failure(response.status_code, url)
                if failed is not None:
                    return failed
                # counted as it arrives: the body itself is never wanted, and reading it
                # whole (response.content) took a large answer into the executor's memory
                length = 0
                async for chunk in response.aiter_bytes():
                    length += len(chunk)
    except (httpx.TimeoutException, httpx.TransportError) as exc:
        return _transport_failure(exc, url)
    except ConfigError as exc:  # a hop the config does not allow (_guard)
        return Failure(str(exc))
    except TimeoutError:  # asyncio.timeout's
        return Failure(f"TimeoutError for {url}: no whole answer within timeoutMs ({timeout_ms} ms)",
                       should_retry=True)
    return response.status_code, length


async def _request(
    method: str, url: str, timeout_ms: int, config: EngineConfig, **kwargs: Any
) -> Success | Failure:
    """Send, and describe the response as the request/sync workers' ``Success.data``."""
    sent = await _send(method, url, timeout_ms, config, **kwargs)
    if isinstance(sent, Failure):
        return sent
    status, length = sent
    return Success(data={"statusCode": status, "method": method, "url": url, "responseLength": length})


class HttpRequestWorker(CommonWorker):
    """``{"url", "method", "headers", "body", "timeoutMs"}`` -> statusCode, method, url, responseLength."""

    async def do_work(self, input: str | None, ctx: WorkerContext) -> Success | Failure:  # noqa: A002
        config = _config(ctx)
        try:
            cfg = parse_config(HttpRequestConfig, input, upstream=ctx.upstream_data)
            check_url(cfg.url, config)
        except ConfigError as exc:
            return Failure(str(exc))
        return await _request(cfg.method, cfg.url, cfg.timeout_ms, config, headers=cfg.headers,
                              content=cfg.body.encode() if cfg.body is not None else None)


class HttpSyncWorker(CommonWorker):
    """``{"url", "method": POST|GET, "requestBody": <JSON>, "timeoutMs"}`` -> statusCode, method, url, responseLength."""

    async def do_work(self, input: str | None, ctx: WorkerContext) -> Success | Failure:  # noqa: A002
        config = _config(ctx)
        try:
            cfg = parse_config(HttpSyncConfig, input, upstream=ctx.upstream_data)
            check_url(cfg.url, config)
        except ConfigError as exc:
            return Failure(str(exc))
        kwargs: dict[str, Any] = {"headers": {"Content-Type": "application/json"}}
        if cfg.method == "POST":
            kwargs["content"] = json.dumps(cfg.request_body).encode()
        return await _request(cfg.method, cfg.url, cfg.timeout_ms, config, **kwargs)


class HttpDownloadWorker(CommonWorker):
    """``{"url", "savePath", "timeoutMs", "sha256"}`` -> fileSize, filePath, url.

    Streams into ``<savePath>.part`` and renames when complete; a later attempt resumes
    the part file with an HTTP Range request (starting over if the server ignores it).
    The resume sends the validator the first response gave (its strong ``ETag``, else its
    ``Last-Modified``, kept in ``<savePath>.part.validator``) as ``If-Range``, so a resource
    that changed in between comes whole; and a 206 must start where the part file ends, a
    416 must say the part is the resource's whole length, or the download starts over.
    Before session 46 a resume appended the new version's tail to the old one's head (or
    took an over-long part as complete): a corrupt file, reported as a Success.
    """

    async def do_work(self, input: str | None, ctx: WorkerContext) -> Success | Failure:  # noqa: A002
        config = _config(ctx)
        try:
            cfg = parse_config(HttpDownloadConfig, input, upstream=ctx.upstream_data)
            check_url(cfg.url, config)
            dest = safe_path(cfg.save_path, config, "savePath")
        except ConfigError as exc:
            return Failure(str(exc))
        if dest.is_dir():  # found only at the rename, after the whole download, and retried
            return Failure(f"savePath: {cfg.save_path!r} is a directory; name the file to save to")
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        kept = dest.with_name(dest.name + ".part.validator")
        client = await _client(cfg.timeout_ms, config)
        import httpx  # imported by then, off the loop

        try:
            async with client:
                for _ in range(2):  # a part file that does not fit the resource: once more, from 0
                    failed = await _fetch(client, cfg, part, kept, config, ctx)
                    if failed is not _START_OVER:
                        break
                    part.unlink(missing_ok=True)
                    kept.unlink(missing_ok=True)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            return _transport_failure(exc, cfg.url)  # the part file stays for the resume
        except ConfigError as exc:  # a hop the config does not allow (_guard)
            return Failure(str(exc))
        if isinstance(failed, Failure):
            return failed
        if failed is _START_OVER:  # (twice: the server's ranges make no sense)
            return Failure(f"{cfg.url}: the server's answers to a range request do not fit its resource",
                           should_retry=True)
        # (hashed in a thread: a large download's digest held the executor's loop before)
        if cfg.sha256 is not None and await asyncio.to_thread(_sha256_of, part) != cfg.sha256.lower():
            part.unlink(missing_ok=True)
            kept.unlink(missing_ok=True)
            return Failure(f"sha256 mismatch for {cfg.url}", should_retry=True)
        os.replace(part, dest)
        kept.unlink(missing_ok=True)
        return Success(data={"fileSize": dest.stat().st_size, "filePath": str(dest), "url": cfg.url})


_START_OVER = object()  # _fetch: the part file is not a prefix of the resource


def _validator(headers: Any) -> str | None:
    """What ``If-Range`` may carry for a response: a strong ETag, else Last-Modified."""
    etag = headers.get("etag")
    if etag and not etag.startswith("W/"):
        return str(etag)
    modified = headers.get("last-modified")
    return str(modified) if modified else None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total length) of a ``Content-Range`` (``bytes 10-99/100``, ``bytes */100``)."""
    try:
        span, _slash, total = (value or "").removeprefix("bytes ").partition("/")
        first = None if span == "*" else int(span.split("-")[0])
        return first, (int(total) if total.isdigit() else None)
    except ValueError:
        return None, None


async def _fetch(client: Any, cfg: HttpDownloadConfig, part: Any, kept: Any, config: EngineConfig,
                 ctx: WorkerContext) -> Failure | None | object:
    """One GET into ``part``, resuming it if it has bytes: None when the part file is whole,
    a Failure, or _START_OVER when the part is not a prefix of what the server now has."""
    offset = part.stat().st_size if part.exists() else 0
    # The file's own bytes, not a compressed transfer of them: a Range counts the bytes sent,
    # so with gzip (httpx asks for it; a web server compresses on the fly) a resume asked for
    # an offset of decoded bytes into the encoded stream. Saved as received.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    if offset and kept.exists():
        headers["If-Range"] = kept.read_text().strip()
    async with client.stream("GET", cfg.url, headers=headers) as response:
        if response.status_code == 416 and offset:
            # the part is whole only if the server says the resource is exactly that long
            return None if _content_range(response.headers.get("content-range"))[1] == offset else _START_OVER
        failed = _status_failure(response.status_code, cfg.url)
        if failed is not None:
            return failed
        if response.status_code == 206:
            if _content_range(response.headers.get("content-range"))[0] != offset:
                return _START_OVER
        else:
            offset = 0  # no range support, or the resource changed (If-Range): start over
        if offset == 0:
            validator = _validator(response.headers)
            if validator is not None:
                kept.write_text(validator)
            else:
                kept.unlink(missing_ok=True)
        length = response.headers.get("content-length")
        total = offset + int(length) if length and length.isdigit() else None
        if total is not None and total > config.download_max_bytes:
            return Failure(f"download of {total} bytes exceeds the cap of {config.download_max_bytes}")
        written = offset
        last_pct = -1
        with open(part, "ab" if offset else "wb") as out:
            async for chunk in response.aiter_raw():  # as received: a drop keeps what came
                out.write(chunk)
                written += len(chunk)
                if written > config.download_max_bytes:
                    part.unlink(missing_ok=True)
                    kept.unlink(missing_ok=True)
                    return Failure(f"download exceeds the cap of {config.download_max_bytes} bytes")
                if total:
                    pct = min(100, written * 100 // total)
                    if pct != last_pct:
                        ctx.report_progress(pct, f"{written}/{total} bytes")
                        last_pct = pct
    return None


def _sha256_of(path: Any) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


class _Counted(io.FileIO):
    """The upload's file, reporting the share of it read (what httpx streams out, 64 KiB at
    a time) as progress: before session 46 an upload reported 0 % and then 100 %, however
    large. A redirect that sends it again starts the count over (httpx seeks to 0)."""

    def __init__(self, path: Any, ctx: WorkerContext) -> None:
        super().__init__(path, "rb")
        self._ctx, self._total, self._read, self._pct = ctx, max(1, os.fstat(self.fileno()).st_size), 0, 0
        self._name = os.path.basename(str(path))

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self._read += len(data or b"")
        pct = min(99, self._read * 100 // self._total)  # 100 once the server has answered
        if pct > self._pct:
            self._pct = pct
            self._ctx.report_progress(pct, f"{self._read}/{self._total} bytes of {self._name}")
        return data or b""

    def seek(self, offset: int, whence: int = 0) -> int:
        at = super().seek(offset, whence)
        self._read = at
        return at


class HttpUploadWorker(CommonWorker):
    """``{"url", "filePath", "fileFieldName", "fields", "mimeType", "timeoutMs"}`` (multipart)
    -> statusCode, fileSize, fileName, url, responseLength. In a chain, ``filePath`` defaults
    to the previous step's ``outputPath`` or ``filePath``."""

    async def do_work(self, input: str | None, ctx: WorkerContext) -> Success | Failure:  # noqa: A002
        config = _config(ctx)
        up = ctx.upstream_data
        try:
            cfg = parse_config(
                HttpUploadConfig, input, {"filePath": up.get("outputPath") or up.get("filePath")}, up
            )
            check_url(cfg.url, config)
            path = safe_path(cfg.file_path, config, "filePath")
        except ConfigError as exc:
            return Failure(str(exc))
        if not path.is_file():
            return Failure(f"filePath: {cfg.file_path!r} is not a file")
        mime = cfg.mime_type or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        ctx.report_progress(0, f"uploading {path.name}")
        with _Counted(path, ctx) as f:
            sent = await _send("POST", cfg.url, cfg.timeout_ms, config, whole=False, data=cfg.fields,
                               files={cfg.file_field_name: (path.name, f, mime)})
        if isinstance(sent, Failure):
            return sent
        ctx.report_progress(100, f"uploaded {path.name}")
        status, length = sent
        return Success(data={"statusCode": status, "fileSize": path.stat().st_size, "fileName": path.name,
                             "url": cfg.url, "responseLength": length})
