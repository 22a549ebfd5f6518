"""The trial journal (``trials.jsonl``): one finished trial per line, appended as a run goes.

Reading checks every record's fields against :class:`~ssm_profile.profiling.sensitivity.Trial`'s types.
A killed run can leave a torn last line (no newline): readers ignore it and the next append cuts
it off first, so a resumed run never glues a record onto a fragment. A damaged line anywhere else
is one error naming the line. A trial recorded twice counts once (the first record).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any

from ..base.errors import RunDirError
from ..base.safe_read import JOURNAL_LIMIT, read_user_file
from .sensitivity import Trial

TAIL_CHECK = 1 << 16  # bytes read from the end to tell a whole last line from a torn one
_HINTS = typing.get_type_hints(Trial)
_REQUIRED = {f.name for f in dataclasses.fields(Trial)
             if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the type ``hint`` (float accepts ints; bools are not numbers)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, hint)


def parse_record(line: bytes) -> Trial:
    """One journal line as a Trial; ValueError saying what is wrong otherwise."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"not JSON: {getattr(err, 'msg', type(err).__name__)}") from None
    if not isinstance(record, dict):
        raise ValueError(f"a {type(record).__name__}, not an object")
    unknown = sorted(set(record) - set(_HINTS))
    missing = sorted(_REQUIRED - set(record))
    if unknown or missing:
        raise ValueError(f"unknown field '{unknown[0]}'" if unknown else f"missing field '{missing[0]}'")
    for name, value in record.items():
        if not _matches(value, _HINTS[name]):
            raise ValueError(f"field '{name}' has the wrong type ({type(value).__name__})")
    return Trial(**record)


def _scan(data: bytes, path: Path) -> tuple[list[Trial], int]:
    """Trials of a journal's bytes and the length of its intact prefix (a torn tail lies beyond it)."""
    trials: dict[str, Trial] = {}
    intact = position = 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines, 1):
        terminated = number < len(lines)
        position += len(line) + terminated
        if not line.strip():
            intact = position if terminated else intact
            continue
        try:
            trial = parse_record(line)
        except ValueError as err:
            if _torn(line, terminated, lines[number:]):
                break
            raise _damaged(path, number, str(err)) from None
        trials.setdefault(trial.key, trial)
        intact = position
    return list(trials.values()), intact


def _torn(line: bytes, terminated: bool, rest: list[bytes]) -> bool:
    """A bad last line is what a killed writer leaves: cut off before its newline, or NUL-filled by a crash."""
    return not any(r.strip() for r in rest) and (not terminated or b"\x00" in line)


def _damaged(path: Path, number: int, reason: str) -> RunDirError:
    return RunDirError(f"journal '{path}' line {number} is damaged ({reason}); delete that line (--resume "
                       "measures its trial again) or profile into a new -o")


def read_journal(path: str | os.PathLike) -> list[Trial]:
    """Trials from the journal (none when it does not exist); a torn last line is ignored."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return []
    return _scan(read_user_file(path, "journal", JOURNAL_LIMIT, RunDirError), path)[0]


def repair_journal(path: str | os.PathLike) -> None:
    """Cut a torn tail off the journal so the next record starts on a line of its own."""
    path = Path(path)
    if not path.exists():
        return
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - TAIL_CHECK))
        tail = handle.read()
    last_line = tail[:-1].rsplit(b"\n", 1)[-1]
    if not tail or (tail.endswith(b"\n") and b"\x00" not in last_line):
        return  # the common case: the last record is whole
    data = read_user_file(path, "journal", JOURNAL_LIMIT, RunDirError)
    _trials, intact = _scan(data, path)
    with path.open("rb+") as handle:
        handle.truncate(intact)
        if intact and not data[:intact].endswith(b"\n"):
            handle.seek(intact)
            handle.write(b"\n")  # the last record was whole, only its newline was lost
        handle.flush()
        os.fsync(handle.fileno())


def append_journal(path: str | os.PathLike, trial: Trial) -> None:
    """Append one trial (after repairing a torn tail), flushed to disk before returning."""
    path = Path(path)
    repair_journal(path)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(trial.to_dict()) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
