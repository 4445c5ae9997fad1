"""A passthrough FUSE filesystem that fails or slows I/O on command: the nemesis of the chaos
driver's ``io`` scenario, for the storage faults a tmpfs cannot make (a full disk it can:
``chaos_disk.py``): an I/O error (EIO) on a share of writes, a disk gone read-only (EROFS),
a slow disk (every write and fsync delayed). Real faults as the engine's processes meet
them: the kernel hands the error to SQLite's own ``pwrite``/``fsync``, to numpy's artifact
write, to the event log's, whichever process makes the call.

Needs root, ``/dev/fuse``, libfuse 3 (Debian's ``fuse3``) and ``mfusepy`` (the maintained
fork of fusepy). ``FaultyDisk(backing, mountpoint)`` mounts it in a
child process (``python -m bench.faultfs BACKING MOUNTPOINT``) and sets its mode by a JSON
line on that process's stdin, answered once in force:

- ``{"mode": "ok"}``: passthrough;
- ``{"mode": "eio", "rate": 0.3, "seed": 7, "reads": false}``: each write-side call (create,
  write, truncate, fsync, unlink, rename, mkdir, ...) fails with EIO at ``rate`` (seeded),
  reads too with ``reads``;
- ``{"mode": "ro"}``: every write-side call and every open for writing fails with EROFS;
- ``{"mode": "slow", "delay_ms": 500}``: each write and fsync waits that long first.

``{"counts": true}`` answers the faults made so far, by call.
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

WRITE_CALLS = ("create", "write", "truncate", "fsync", "unlink", "rename", "mkdir", "rmdir",
               "chmod", "fallocate", "link", "symlink", "utimens")


def unavailable() -> str | None:
    """Why this machine cannot mount a FaultFS, or None."""
    if os.geteuid() != 0:
        return "mounting a FUSE filesystem needs root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    try:
        import mfusepy  # type: ignore[import-untyped]  # noqa: F401
    except (ImportError, OSError) as exc:  # (OSError: libfuse itself missing)
        return f"mfusepy and libfuse 3 are needed (pip install mfusepy; apt install fuse3): {exc}"
    return None


def _operations(backing: str) -> Any:
    import mfusepy
    from mfusepy import FuseOSError

    class FaultFS(mfusepy.Operations):  # type: ignore[misc]
        """os.* on the same path under ``backing``, after ``_strike(call)``. (No ``lock``:
        the kernel then keeps POSIX locks itself, as SQLite needs across processes.)"""

        use_ns = True

        def __init__(self) -> None:
            self.mode: dict[str, Any] = {"mode": "ok"}
            self.rng = random.Random(0)
            self.counts: Counter[str] = Counter()
            self.guard = threading.Lock()

        def set(self, mode: dict[str, Any]) -> None:
            with self.guard:
                self.mode = mode
                self.rng = random.Random(mode.get("seed", 0))

        def _strike(self, call: str) -> None:
            mode = self.mode
            kind = mode["mode"]
            if kind == "ok":
                return
            if kind == "slow":
                if call in ("write", "fsync"):
                    time.sleep(mode.get("delay_ms", 500) / 1000)
                return
            writes = call in WRITE_CALLS
            if kind == "ro" and writes:
                self.counts[call] += 1
                raise FuseOSError(errno.EROFS)
            if kind == "eio" and (writes or (call == "read" and mode.get("reads"))):
                with self.guard:
                    hit = self.rng.random() < mode.get("rate", 1.0)
                if hit:
                    self.counts[call] += 1
                    raise FuseOSError(errno.EIO)

        def _path(self, path: str) -> str:
            return os.path.join(backing, path.lstrip("/"))

        def _os(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except OSError as exc:
                raise FuseOSError(exc.errno or errno.EIO) from None

        # -- reads (never struck, but ``read`` in eio mode with ``reads``)
        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            st = self._os(os.lstat, self._path(path))
            attrs = {k: getattr(st, k) for k in ("st_gid", "st_mode", "st_nlink", "st_size", "st_uid")}
            times = {"st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns}
            return {**attrs, **times}  # (in ns: use_ns)

        def access(self, path: str, amode: int) -> int:
            if not os.access(self._path(path), amode):
                raise FuseOSError(errno.EACCES)
            return 0

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *self._os(os.listdir, self._path(path))]

        def readlink(self, path: str) -> str:
            return str(self._os(os.readlink, self._path(path)))

        def statfs(self, path: str) -> dict[str, Any]:
            st = os.statvfs(self._path(path))
            return {k: getattr(st, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                                 "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

        def open(self, path: str, flags: int) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR) and self.mode["mode"] == "ro":
                self.counts["open"] += 1
                raise FuseOSError(errno.EROFS)
            return int(self._os(os.open, self._path(path), flags))

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            self._strike("read")
            return bytes(self._os(os.pread, fh, size, offset))

        def flush(self, path: str, fh: int) -> int:
            return 0

        def release(self, path: str, fh: int) -> int:
            os.close(fh)
            return 0

        # -- writes: each struck first
        def create(self, path: str, mode: int, flags: int = os.O_RDWR) -> int:
            self._strike("create")
            return int(self._os(os.open, self._path(path), flags | os.O_CREAT, mode))

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            self._strike("write")
            return int(self._os(os.pwrite, fh, data, offset))

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            self._strike("truncate")
            if fh is not None:
                self._os(os.ftruncate, fh, length)
            else:
                self._os(os.truncate, self._path(path), length)
            return 0

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            self._strike("fsync")
            self._os(os.fdatasync if datasync else os.fsync, fh)
            return 0

        def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
            self._strike("fallocate")
            self._os(os.posix_fallocate, fh, offset, size)
            return 0

        def unlink(self, path: str) -> int:
            self._strike("unlink")
            self._os(os.unlink, self._path(path))
            return 0

        def rename(self, old: str, new: str) -> int:
            self._strike("rename")
            self._os(os.rename, self._path(old), self._path(new))
            return 0

        def mkdir(self, path: str, mode: int) -> int:
            self._strike("mkdir")
            self._os(os.mkdir, self._path(path), mode)
            return 0

        def rmdir(self, path: str) -> int:
            self._strike("rmdir")
            self._os(os.rmdir, self._path(path))
            return 0

        def chmod(self, path: str, mode: int) -> int:
            self._strike("chmod")
            self._os(os.chmod, self._path(path), mode)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            self._os(os.chown, self._path(path), uid, gid)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            self._strike("utimens")
            if times:
                self._os(os.utime, self._path(path), ns=times)
            else:
                self._os(os.utime, self._path(path))
            return 0

        def link(self, target: str, source: str) -> int:
            self._strike("link")
            self._os(os.link, self._path(source), self._path(target))
            return 0

        def symlink(self, target: str, source: str) -> int:
            self._strike("symlink")
            self._os(os.symlink, source, self._path(target))
            return 0

    return FaultFS()


def _serve(backing: str, mountpoint: str) -> None:
    import mfusepy

    ops = _operations(backing)

    def commands() -> None:
        for line in sys.stdin:
            cmd = json.loads(line)
            answer = dict(ops.counts) if cmd.get("counts") else (ops.set(cmd) or {"ok": cmd["mode"]})
            print(json.dumps(answer), flush=True)
        os._exit(0)  # stdin closed: the driver is gone (the mount is lazily unmounted by it, or stays)

    threading.Thread(target=commands, daemon=True).start()
    print(json.dumps({"mounted": mountpoint}), flush=True)  # (FUSE() blocks: the driver waits for the mount)
    mfusepy.FUSE(ops, mountpoint, foreground=True, allow_other=True, nothreads=False)


class FaultyDisk:
    """A FaultFS of ``backing`` mounted on ``mountpoint`` (both folders) while open."""

    def __init__(self, backing: Path, mountpoint: Path) -> None:
        self.backing, self.mountpoint = backing, mountpoint
        self.proc: subprocess.Popen[str] | None = None
        self.lock = threading.Lock()

    def __enter__(self) -> FaultyDisk:
        return self.mount()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def mount(self) -> FaultyDisk:
        """Mounted (RuntimeError if it cannot be: the reason from the FUSE process)."""
        self.proc = subprocess.Popen([sys.executable, "-m", __spec__.name if __spec__ else "bench.faultfs",
                                      str(self.backing), str(self.mountpoint)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.readline()  # {"mounted": ...}
        deadline = time.monotonic() + 30
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                said = self.proc.stderr.read().strip().splitlines() or ["no reason given"]
                why = next((line for line in said if line.startswith("fuse:")), said[-1])  # libfuse's own
                raise RuntimeError(f"FaultFS could not mount {self.mountpoint}: {why}")
            time.sleep(0.05)
        threading.Thread(target=self._relay, daemon=True).start()
        return self

    def _relay(self) -> None:
        """The FUSE process's own lines (a failed call's traceback), on this one's stderr."""
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            if "max threads" not in line:  # (libfuse's note on mfusepy's default)
                sys.stderr.write(f"faultfs: {line}")

    def ask(self, **cmd: Any) -> dict[str, Any]:
        """Send a command; its answer (in force once answered)."""
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        with self.lock:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
            return dict(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        """Unmounted, its process ended."""
        subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True, timeout=30)
        if self.proc is not None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2])
