"""FileCompressionWorker: zip a file or a directory, with exclusions, optionally deleting the original."""

from __future__ import annotations

import asyncio
import fnmatch
import os
import shutil
import zipfile
from pathlib import Path
from typing import Literal

from .._model import Frozen
from ..config import EngineConfig
from ..results import Failure, Success
from ..worker import CommonWorker, WorkerContext
from .safety import ConfigError, base_dir, inside, parse_config, safe_path

LEVELS = {"low": 1, "medium": 6, "high": 9}


class CompressionConfig(Frozen):
    input_path: str
    output_path: str | None = None
    level: Literal["low", "medium", "high"] = "medium"
    exclude_patterns: list[str] = []
    delete_original: bool = False


def _excluded(rel: str, patterns: list[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


class FileCompressionWorker(CommonWorker):
    """``{"inputPath", "outputPath", "level": low|medium|high, "excludePatterns", "deleteOriginal"}``
    -> originalSize, compressedSize, compressionRatio, outputPath, deletedOriginal. In a chain,
    ``inputPath`` defaults to the previous step's ``filePath``."""

    async def do_work(self, input: str | None, ctx: WorkerContext) -> Success | Failure:  # noqa: A002
        config = ctx.engine_config or EngineConfig()
        try:
            cfg = parse_config(
                CompressionConfig, input, {"inputPath": ctx.upstream_data.get("filePath")}, ctx.upstream_data
            )
            source = safe_path(cfg.input_path, config, "inputPath")
            target = safe_path(cfg.output_path or f"{source}.zip", config, "outputPath")
        except ConfigError as exc:
            return Failure(str(exc))
        if target.is_dir():  # (ZipFile raised IsADirectoryError, and the run was retried)
            return Failure(f"outputPath: {cfg.output_path!r} is a directory; name the zip file")
        if not source.exists():
            return Failure(f"inputPath: {cfg.input_path!r} does not exist")
        if source.is_dir() and (target == source or source in target.parents):
            return Failure("outputPath: must not be inside the directory being compressed")
        if target == source:  # (paths resolved: a link to the input is the input) the zip
            # opened for writing truncated the file it was about to read: a Success with an
            # empty member, the original gone
            return Failure(f"outputPath: {cfg.output_path!r} is the input file itself; "
                           "the zip would overwrite it")
        # The files and the zip in a thread: zipping gigabytes held the executor's event
        # loop (every other run there) until session 41.
        return await asyncio.to_thread(_compress, source, target, cfg, base_dir(config), ctx)


def _compress(
    source: Path, target: Path, cfg: CompressionConfig, base: Path, ctx: WorkerContext
) -> Success | Failure:
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    root = source.parent if source.is_file() else source
    chosen = [p for p in files if not _excluded(p.relative_to(root).as_posix(), cfg.exclude_patterns)]
    for path in chosen:  # a link to a file outside the base directory would carry it out
        real = path.resolve()
        if not inside(base, real):
            name = path.relative_to(root).as_posix()
            return Failure(f"inputPath: {name!r} is a link to {str(real)!r}, outside the allowed base "
                           f"directory {str(base)!r} (leave it out with excludePatterns)")
    original = sum(p.stat().st_size for p in chosen)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written to a part file, renamed when whole (as downloads are): a run that failed
    # halfway left a truncated archive at outputPath, over the last good one.
    part = target.with_name(f"{target.name}.part")
    try:
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED, compresslevel=LEVELS[cfg.level]) as zf:
            for n, path in enumerate(chosen, 1):
                zf.write(path, path.relative_to(root).as_posix())
                ctx.report_progress(n * 100 // len(chosen), path.name)
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    compressed = target.stat().st_size
    if cfg.delete_original:  # the whole input, files left out of the zip too (KMP's deleteRecursively)
        if source.is_dir():
            shutil.rmtree(source)
        else:
            source.unlink()
    return Success(data={
        "originalSize": original,
        "compressedSize": compressed,
        "compressionRatio": round(compressed / original, 4) if original else 0.0,
        "outputPath": str(target),
        "deletedOriginal": cfg.delete_original,
    })
