"""Running a bit of a test in a child forked from the test process (what multiprocessing's
"fork" start method does to a notebook's connection), bounded: shared by the core and the
integration tests."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable


def in_a_forked_child(work: Callable[[], bytes], meanwhile: Callable[[], object] | None = None,
                      timeout_s: float = 30) -> bytes:
    """``work()``'s bytes, run in a forked child that leaves at once (none of this process's
    clean-up runs there); ``meanwhile()`` is called here again and again until they come.
    A child that does not answer within ``timeout_s`` is killed, and b"" returned."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, work())
        except BaseException as exc:
            os.write(write, f"raised {exc!r}".encode())
        finally:
            os._exit(0)
    os.close(write)
    body, deadline = b"", time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if meanwhile is not None:
                meanwhile()
            if select.select([read], [], [], 0 if meanwhile is not None else 0.1)[0]:
                while chunk := os.read(read, 1 << 20):  # to the end: the child closed it leaving
                    body += chunk
                break
    finally:
        os.close(read)
        if not body:
            os.kill(pid, 9)
        os.waitpid(pid, 0)
    return body
