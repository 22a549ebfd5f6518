"""Atomic file output: a reader never sees a half-written file, an interrupted write loses nothing."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path, TMP_SUFFIX, Path.is_file, Path.unlink)  # left by a writer that was killed
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_partial_prefix(path)}{os.getpid()}.", suffix=TMP_SUFFIX)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_permissions(root: Path) -> None:
    """Give a finished output tree the permissions a plain mkdir/open would (libraries such as
    safetensors also write through private temporary files)."""
    mask = _umask()
    for item in [root, *root.rglob("*")]:
        if not item.is_symlink():
            item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@contextmanager
def atomic_directory(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that becomes ``final`` only if the block succeeds.

    The temporary directory's name carries this process's id, so the next run can remove the
    ``.partial`` leftovers of a process that was killed (and only those: a live writer's stay)."""
    from .errors import OutputExistsError

    final = Path(final)
    if final.exists() and not final.is_dir():
        raise OutputExistsError(f"output '{final}' is a file; give a directory")
    if final.exists() and not overwrite:
        raise OutputExistsError(f"output '{final}' already exists; choose another path or pass --overwrite")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f"{_partial_prefix(final)}{os.getpid()}.",
                                suffix=PARTIAL_SUFFIX))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders; outputs get the usual permissions
    try:
        yield tmp
        _default_permissions(tmp)
        _swap_in(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, final: Path) -> None:
    """Put the finished ``tmp`` in ``final``'s place. An existing ``final`` is first renamed to a
    ``.partial`` sibling (removed after the swap, or by the next run if this process is killed), so
    the old output is never deleted before the new one is complete and in place."""
    if not final.exists():
        os.replace(tmp, final)
        return
    old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f"{_partial_prefix(final)}{os.getpid()}.",
                                suffix=".old" + PARTIAL_SUFFIX))
    os.replace(final, old)  # replaces the empty placeholder directory
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)  # put the old output back
        raise
    shutil.rmtree(old, ignore_errors=True)


PARTIAL_SUFFIX = ".partial"
TMP_SUFFIX = ".tmp"


def _partial_prefix(final: Path) -> str:
    return f".{final.name}.pid"


def remove_stale_partials(final: str | os.PathLike) -> list[Path]:
    """Remove ``final``'s temporary ``.partial`` siblings whose writing process is dead; returns them."""
    return _remove_stale(Path(final), PARTIAL_SUFFIX, Path.is_dir, lambda item: shutil.rmtree(item, ignore_errors=True))


def _remove_stale(final: Path, suffix: str, is_kind, remove) -> list[Path]:
    """Remove ``final``'s temporary siblings ``.NAME.pidPID.*SUFFIX`` whose process PID is dead."""
    prefix = _partial_prefix(final)
    removed = []
    for item in final.parent.glob(f"{glob.escape(prefix)}*{suffix}"):
        pid_text = item.name[len(prefix):].split(".", 1)[0]
        if is_kind(item) and not item.is_symlink() and pid_text.isdigit() and not pid_alive(int(pid_text)):
            try:
                remove(item)
            except OSError:
                continue
            removed.append(item)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (another user's counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_output(path: str | os.PathLike, *, overwrite: bool, inputs: Iterable[str | os.PathLike] = (),
                 what: str = "output") -> Path:
    """Refuse an output path that exists (unless ``overwrite``) or that is one of the command's inputs."""
    from .errors import OutputExistsError

    path = Path(path)
    for source in inputs:
        if _same_file(path, Path(source)):
            raise OutputExistsError(f"{what} '{path}' is also an input of this command ({source}); "
                                    "choose another output path")
    if path.is_dir() and not path.is_symlink():
        raise OutputExistsError(f"{what} '{path}' is a directory; give a file name")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{what} '{path}' already exists; choose another path or pass --overwrite")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def free_path(name: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """``name``, else ``stem-2.suffix``, ``stem-3.suffix`` ...: the first that does not exist yet in
    ``base`` (default: the working directory). Next-step hints and default outputs use it so that a
    suggested command works when copied and never writes into an existing folder."""
    root, first = Path(base) if base is not None else Path.cwd(), Path(name)
    candidate, n = first, 2
    while (root / candidate).exists():
        candidate, n = first.with_name(f"{first.stem}-{n}{first.suffix}"), n + 1
    return str(candidate)
