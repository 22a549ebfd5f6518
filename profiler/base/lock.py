"""An exclusive lock on a run directory: one writer at a time, never a stale lock.

The lock is ``fcntl.flock`` on ``RUN_DIR/.lock``. The kernel releases it when its holder exits,
however it exits, so a lock left by a killed process never blocks the next run; the file only
records who holds it (pid and host) for the refusal message. Re-entrant within a process, so the
CLI can take it before loading a model and ``profile_model`` can take it again.
"""

from __future__ import annotations

import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import RunDirError

LOCK_NAME = ".lock"
_held: dict[Path, int] = {}  # resolved run directory -> how many times this process holds it


@contextmanager
def run_dir_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the run directory's lock for the block (creating the directory); refuse if another process has it."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory '{run_dir}' is a file; choose another -o")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        key = run_dir.resolve()
    except OSError as err:
        raise RunDirError(f"cannot create run directory '{run_dir}': {err.strerror or err}") from None
    if key in _held:
        _held[key] += 1
        try:
            yield run_dir
        finally:
            _held[key] -= 1
        return
    fd = _acquire(run_dir)
    _held[key] = 1
    try:
        yield run_dir
    finally:
        del _held[key]
        if created:
            _remove_if_only_lock(run_dir)  # a run that failed before writing anything leaves nothing
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _remove_if_only_lock(run_dir: Path) -> None:
    try:
        if [item.name for item in run_dir.iterdir()] == [LOCK_NAME]:
            (run_dir / LOCK_NAME).unlink()
            run_dir.rmdir()
    except OSError:
        pass


def _acquire(run_dir: Path) -> int:
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as err:
        raise RunDirError(f"cannot lock run directory '{run_dir}': {err.strerror or err}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise RunDirError(f"run directory '{run_dir}' is in use by {holder}; wait for it to finish "
                          "or choose another -o") from None
    except OSError as err:
        os.close(fd)
        raise RunDirError(f"cannot lock run directory '{run_dir}': {err.strerror or err}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} host {socket.gethostname()}\n".encode(), 0)
    return fd


def _read_holder(fd: int) -> str:
    """'process PID on HOST' from the lock file, or a vaguer phrase while the holder is still writing it."""
    words = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
    if len(words) >= 4 and words[0] == "pid" and words[2] == "host":
        return f"process {words[1]} on {words[3]}"
    return "another process"
