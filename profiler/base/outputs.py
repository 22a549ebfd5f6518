"""One rule for every command's outputs, checked before any work.

Each command declares what it reads (:class:`Input`) and what it writes (:class:`Output`) to
:func:`check_paths`, which refuses, in one line:

* an output that, symlinks resolved, *is* an input, *holds* one (replacing a folder with
  ``--overwrite`` would delete it) or *lies inside* an input folder (the model, the tokenizer, a
  pruned checkpoint: folders a command reads as a whole);
* an output that exists, unless ``--overwrite`` (files; a folder's command decides for itself);
* a folder output that is a symbolic link (a swap would replace the link, not the folder);
* two outputs at one path;
* an output whose place cannot be written, so a read-only place is refused before minutes of work,
  and before any other output is written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import OutputExistsError, SSMProfileError


class UnwritableOutputError(SSMProfileError):
    """An output's place cannot be written (permissions, a read-only file system, no such device)."""


@dataclass(frozen=True)
class Input:
    """Something a command reads: a file, or a folder it reads as a whole."""

    path: Path
    what: str  # "the model", "the --calibration text" ...


@dataclass(frozen=True)
class Output:
    """Something a command writes: a file, or a folder it fills or swaps in."""

    path: Path
    what: str = "output"
    folder: bool = False
    overwrite: bool | None = False  # None: whether it may exist is the command's own business (resume ...)


def source_input(source: str | os.PathLike | None, what: str) -> Input | None:
    """The input a path option names; None for what is not a local path (unset, ``hf:...``, ``embedded``)."""
    if source is None or str(source) in ("", "embedded", "-") or str(source).startswith("hf:"):
        return None
    return Input(Path(source).expanduser(), what)


def text_input(source: str | os.PathLike | None, what: str) -> Input | None:
    """A local text file a command reads (a folder is no text: reading it is refused in its own words)."""
    found = source_input(source, what)
    return None if found is None or found.path.is_dir() else found


def data_inputs(spec, whose: str = "the") -> list[Input | None]:
    """The local text files a :class:`DataSpec` (or anything with ``calibration`` / ``evaluation``) reads."""
    return [text_input(spec.calibration, f"{whose} calibration text"),
            text_input(spec.evaluation, f"{whose} evaluation text")]


def folder_files(folder: str | os.PathLike, what: str, leave: tuple[str, ...] = ()) -> list[Input]:
    """Each file of ``folder`` (not those named in ``leave``), for a command that reads them one by one
    and may write its own file beside them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [Input(item, what) for item in sorted(folder.iterdir()) if item.is_file() and item.name not in leave]


def check_paths(outputs: Sequence[Output], inputs: Iterable[Input | None] = ()) -> None:
    """Refuse (one line) any output the module docstring forbids; writes nothing."""
    sources = [item for item in inputs if item is not None]
    for out in outputs:
        if str(out.path) == "-":
            raise OutputExistsError(f"{out.what} '-' would be standard output, which this command does not write; "
                                    "give a path (./- for one named '-')")
        if out.folder and out.path.is_symlink():
            raise OutputExistsError(f"{out.what} '{out.path}' is a symbolic link; give the directory it points to "
                                    f"('{os.path.realpath(out.path)}') or another path")
        for source in sources:
            _check_apart(out, source)
        _check_existing(out)
    _check_distinct(outputs)
    for out in outputs:
        check_writable(out)


def _resolved(path: Path) -> Path:
    try:
        return path.expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare the path as given
        return Path(os.path.abspath(path.expanduser()))


def _same(a: Path, b: Path) -> bool:
    if _resolved(a) == _resolved(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def _check_apart(out: Output, source: Input) -> None:
    a, b = _resolved(out.path), _resolved(source.path)
    if _same(out.path, source.path):
        relation = "is"
    elif a in b.parents:
        relation = "holds"
    elif b in a.parents:
        relation = "lies inside"
    else:
        return
    raise OutputExistsError(f"{out.what} '{out.path}' {relation} {source.what} '{source.path}', an input of this "
                            "command; choose another path")


def _check_existing(out: Output) -> None:
    path = out.path
    if out.folder:
        if path.exists() and not path.is_dir():
            raise OutputExistsError(f"{out.what} '{path}' is a file; give a directory")
    elif path.is_dir() and not path.is_symlink():
        raise OutputExistsError(f"{out.what} '{path}' is a directory; give a file name")
    if out.overwrite is False and (path.exists() or path.is_symlink()):
        raise OutputExistsError(f"{out.what} '{path}' already exists; choose another path or pass --overwrite")


def _check_distinct(outputs: Sequence[Output]) -> None:
    for i, first in enumerate(outputs):
        for second in outputs[i + 1:]:
            if _same(first.path, second.path):
                raise OutputExistsError(f"{first.what} and {second.what} name the same path '{first.path}'; "
                                        "give two paths")


def check_writable(out: Output) -> None:
    """Refuse an output whose place cannot be written: a probe file in its folder when that folder
    exists (removed at once), else the nearest existing folder above it must be writable."""
    place = out.path.expanduser().absolute().parent
    if out.folder and out.overwrite is None and out.path.is_dir():
        place = out.path  # a folder written in place (a resumed run)
    if place.is_dir():
        try:
            fd, probe = tempfile.mkstemp(dir=place, prefix=f".{out.path.name}.pid{os.getpid()}.", suffix=".tmp")
        except OSError as err:
            raise _unwritable(out, err) from None
        os.close(fd)
        os.unlink(probe)
        return
    above = next((p for p in place.parents if p.is_dir()), None)
    if above is None or not os.access(above, os.W_OK | os.X_OK):
        raise _unwritable(out, PermissionError(13, "Permission denied"))


def _unwritable(out: Output, err: OSError) -> UnwritableOutputError:
    return UnwritableOutputError(f"cannot write {out.what} '{out.path}': {err.strerror or err}; choose a location "
                                 "you can write to or fix its permissions")
