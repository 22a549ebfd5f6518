"""Locks on run directories and outputs: one writer at a time, no reader while it writes, never a stale lock.

A run directory's lock is ``fcntl.flock`` on ``RUN_DIR/.lock``: writers take it exclusively,
readers (plan, report) shared, so a reader is refused while a profile writes the run and a writer
while a reader reads it. An output that is not a run directory (apply's and recover's OUT_DIR) is
locked through a sibling ``.NAME.lock``, removed when its holder is done. The kernel releases a lock
when its holder exits, however it exits, so a lock left by a killed process never blocks the next
run; the file only records who holds it (pid and host) for the refusal message. Re-entrant within
a process, so the CLI can take it before loading a model and ``profile_model`` can take it again.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import OutputExistsError, RunDirError
from .io import pid_alive, settle_interrupted_swap

LOCK_NAME = ".lock"
_held: dict[Path, int] = {}  # resolved lock file -> how many times this process holds it


@contextmanager
def run_dir_lock(run_dir: str | os.PathLike, shared: bool = False) -> Iterator[Path]:
    """Hold the run directory's lock for the block; refuse if another process has it.

    Exclusive (a writer) creates the directory; ``shared`` (a reader) creates nothing and, where the
    directory is missing or its lock cannot be made (a read-only place nobody writes), reads unlocked."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory '{run_dir}' is a file; choose another -o")
    settle_interrupted_swap(run_dir)  # an --overwrite killed between its renames: the old run back in place
    if shared and not run_dir.is_dir():
        yield run_dir
        return
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        key = (run_dir / LOCK_NAME).resolve()
    except OSError as err:
        raise RunDirError(f"cannot create run directory '{run_dir}': {err.strerror or err}") from None
    if key in _held:
        yield from _again(key, run_dir)
        return
    fd = _acquire_run_dir(run_dir, shared)
    if fd is None:
        yield run_dir
        return
    _held[key] = 1
    try:
        yield run_dir
    finally:
        del _held[key]
        if created:
            _remove_if_only_lock(run_dir)  # a run that failed before writing anything leaves nothing
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def output_lock(output: str | os.PathLike) -> Iterator[Path]:
    """Hold ``output``'s exclusive lock (the sibling file ``.NAME.lock``) for the block: a second
    writer of the same output is refused at once, not after its work."""
    output = Path(output).expanduser()
    path = output.parent / f".{output.name}{LOCK_NAME}"
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        key = path.resolve()
    except OSError as err:
        raise OutputExistsError(f"cannot lock output '{output}': {err.strerror or err}") from None
    if key in _held:
        yield from _again(key, output)
        return
    fd = _acquire_file(path, output)
    _held[key] = 1
    try:
        yield output
    finally:
        del _held[key]
        path.unlink(missing_ok=True)  # while still held: a process that opened it sees it go (below)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _again(key: Path, value: Path) -> Iterator[Path]:
    _held[key] += 1
    try:
        yield value
    finally:
        _held[key] -= 1


def _remove_if_only_lock(run_dir: Path) -> None:
    try:
        if [item.name for item in run_dir.iterdir()] == [LOCK_NAME]:
            (run_dir / LOCK_NAME).unlink()
            run_dir.rmdir()
    except OSError:
        pass


def _open(path: Path, shared: bool) -> int | None:
    """The lock file's descriptor; None for a reader that can neither create nor open it."""
    flags = getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o666)
    except OSError as err:
        if shared and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            try:
                return os.open(path, os.O_RDONLY | flags)
            except OSError:
                return None
        raise


def _acquire_run_dir(run_dir: Path, shared: bool) -> int | None:
    path = run_dir / LOCK_NAME
    try:
        fd = _open(path, shared)
    except OSError as err:
        raise RunDirError(f"cannot lock run directory '{run_dir}': {err.strerror or err}") from None
    if fd is None:
        return None
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        if shared:
            raise RunDirError(f"run directory '{run_dir}' is being written by {holder}; wait for the profile to "
                              "finish, then run this again") from None
        raise RunDirError(f"run directory '{run_dir}' is in use by {holder}; wait for it to finish "
                          "or choose another -o") from None
    except OSError as err:
        os.close(fd)
        raise RunDirError(f"cannot lock run directory '{run_dir}': {err.strerror or err}") from None
    if not shared:
        _record_holder(fd)
    return fd


def _acquire_file(path: Path, output: Path) -> int:
    """An exclusive lock on ``path`` that is still the file at ``path`` (its last holder unlinks it)."""
    for _ in range(100):
        fd = -1
        try:
            fd = _open(path, shared=False)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise OutputExistsError(f"output '{output}' is being written by {holder}; wait for it to finish "
                                    "or choose another -o") from None
        except OSError as err:
            if fd >= 0:
                os.close(fd)
            raise OutputExistsError(f"cannot lock output '{output}': {err.strerror or err}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            _record_holder(fd)
            return fd
        os.close(fd)  # locked a file its holder had just removed: take the new one
    raise OutputExistsError(f"cannot lock output '{output}': its lock keeps changing hands; try again")


def _record_holder(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} host {socket.gethostname()}\n".encode(), 0)


def _read_holder(fd: int) -> str:
    """'process PID on HOST' from the lock file, or a vaguer phrase while the holder is still writing it
    (or when the lock is held by readers, who record nothing)."""
    words = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
    if len(words) >= 4 and words[0] == "pid" and words[2] == "host" and words[1].isdigit():
        pid = int(words[1])
        if words[3] != socket.gethostname() or (pid != os.getpid() and pid_alive(pid)):
            return f"process {pid} on {words[3]}"
    return "another process"
