"""Bounded, type-checked reads of files the user names: never hang on a FIFO, never swallow /dev/zero.

Every file the tool reads on the user's word (data, plans, run directories) goes through
:func:`read_user_file`: it accepts regular files only (checked with ``stat`` before opening and
with ``fstat`` after, so a path swapped in between is caught too), opens with ``O_NONBLOCK`` so a
FIFO can never block, reads at most ``max_bytes`` and turns every problem into one
:class:`~ssm_profile.base.errors.SSMProfileError` line that names the file and what to do.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from .errors import SSMProfileError

MiB = 1 << 20
# Generous limits: far above any real file of each kind, far below what would exhaust memory.
DATA_LIMIT = 2048 * MiB  # calibration / evaluation text
JSON_LIMIT = 256 * MiB  # plans, validations, run metadata, analyses, scores
JOURNAL_LIMIT = 2048 * MiB  # trials.jsonl (every trial keeps its per-window losses)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _limit_text(max_bytes: int) -> str:
    return f"{max_bytes / MiB:.0f} MiB" if max_bytes >= MiB else f"{max_bytes} bytes"


def read_user_file(path: str | os.PathLike, what: str, max_bytes: int,
                   error: type[SSMProfileError] = SSMProfileError) -> bytes:
    """The bytes of the regular file ``path`` (at most ``max_bytes``), or one-line ``error``.

    ``what`` names the file for the message, e.g. ``"data file"`` or ``"plan file"``."""
    path = Path(path).expanduser()
    try:
        info = os.stat(path)  # follows symlinks: a link to /dev/zero is a device
    except FileNotFoundError:
        raise error(f"{what} '{path}' does not exist") from None
    except OSError as err:
        raise error(f"cannot read {what} '{path}': {err.strerror or err}") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} '{path}' is {_kind(info.st_mode)}, not a regular file; pass a file")
    _check_size(path, what, info.st_size, max_bytes, error)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise error(f"cannot read {what} '{path}': {err.strerror or err}") from None
    try:
        info = os.fstat(fd)  # the path may have been swapped since the stat above
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} '{path}' is {_kind(info.st_mode)}, not a regular file; pass a file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
    except OSError as err:
        raise error(f"cannot read {what} '{path}': {err.strerror or err}") from None
    finally:
        os.close(fd)
    _check_size(path, what, len(data), max_bytes, error)
    return data


def _check_size(path: Path, what: str, size: int, max_bytes: int, error: type[SSMProfileError]) -> None:
    if size > max_bytes:
        raise error(f"{what} '{path}' is larger than the {_limit_text(max_bytes)} limit for {what}s; "
                    "pass a smaller file")


def read_user_text(path: str | os.PathLike, what: str, max_bytes: int,
                   error: type[SSMProfileError] = SSMProfileError) -> str:
    """:func:`read_user_file` decoded as UTF-8 (one-line ``error`` when it is not text)."""
    data = read_user_file(path, what, max_bytes, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{what} '{Path(path)}' is not UTF-8 text (byte {err.start}); pass a text file") from None


def read_user_json(path: str | os.PathLike, what: str, max_bytes: int = JSON_LIMIT,
                   error: type[SSMProfileError] = SSMProfileError) -> Any:
    """:func:`read_user_text` parsed as JSON (one-line ``error`` naming the line of a syntax error)."""
    text = read_user_text(path, what, max_bytes, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{what} '{Path(path)}' is not valid JSON (line {err.lineno} column {err.colno}: {err.msg})") from None
    except RecursionError:
        raise error(f"{what} '{Path(path)}' is nested too deeply to be a valid file") from None
