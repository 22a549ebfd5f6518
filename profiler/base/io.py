"""Atomic file output: a reader never sees a half-written file, an interrupted write loses nothing."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


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
    ``.partial`` leftovers of a process that was killed (and only those: a live writer's stay), and
    can finish or undo a swap that a killed process left half done (:func:`settle_interrupted_swap`)."""
    from .errors import OutputExistsError

    final = Path(final)
    if final.is_symlink():  # renaming over a link replaces the link, not the folder it names
        raise OutputExistsError(f"output '{final}' is a symbolic link; give the directory it points to "
                                f"('{os.path.realpath(final)}') or another path")
    settle_interrupted_swap(final)
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
    """Put the finished ``tmp`` in ``final``'s place: rename the old ``final`` to its backup (``tmp``'s
    name with :data:`BACKUP_SUFFIX`), rename ``tmp`` to ``final``, then delete the backup. The old
    output is never deleted before the new one is in place; a process killed between the two renames
    leaves the backup beside its finished ``tmp``, and the next writer or reader puts it back."""
    if not final.exists():
        os.replace(tmp, final)
        return
    backup = _backup_of(tmp)
    os.replace(final, backup)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(backup, final)  # put the old output back
        raise
    shutil.rmtree(backup, ignore_errors=True)


PARTIAL_SUFFIX = ".partial"
BACKUP_SUFFIX = ".backup"  # an output being replaced; never removed as a stale partial
LEGACY_BACKUP_SUFFIX = ".old" + PARTIAL_SUFFIX  # the backup of versions before BACKUP_SUFFIX
TMP_SUFFIX = ".tmp"


def _partial_prefix(final: Path) -> str:
    return f".{final.name}.pid"


def _backup_of(tmp: Path) -> Path:
    return tmp.with_name(tmp.name[:-len(PARTIAL_SUFFIX)] + BACKUP_SUFFIX)


def settle_interrupted_swap(final: str | os.PathLike) -> Path | None:
    """Finish what a killed :func:`_swap_in` left, from the backup of the old ``final`` (a dead process's):

    * ``final`` missing: the first rename happened and the second did not, so the old output goes back
      in place (returned);
    * ``final`` present and the backup's ``tmp`` gone: the swap was done, so the backup goes;
    * ``final`` present beside both: ``final`` was made again since; refused in one line, nothing deleted.

    A folder holding only a lock file counts as missing (a lock taken since made it)."""
    from .errors import OutputExistsError

    final = Path(final)
    restored = None
    legacy = list(_siblings(final, LEGACY_BACKUP_SUFFIX))
    for backup, pid in [*_siblings(final, BACKUP_SUFFIX), *legacy]:
        if pid_alive(pid) or not backup.is_dir() or backup.is_symlink():
            continue
        new = backup.with_name(backup.name[:-len(BACKUP_SUFFIX)] + PARTIAL_SUFFIX)  # the dead writer's tmp
        if final.is_dir() and not final.is_symlink() and _holds_only_a_lock(final):
            shutil.rmtree(final, ignore_errors=True)
        if not (final.exists() or final.is_symlink()):
            try:
                os.replace(backup, final)
            except FileNotFoundError:  # another process put it back first
                continue
            restored = final
            if (backup, pid) not in legacy:
                shutil.rmtree(new, ignore_errors=True)
        elif (backup, pid) in legacy:
            continue  # an older version's backup: removed as a stale partial, as that version did
        elif not new.exists():
            shutil.rmtree(backup, ignore_errors=True)  # the swap was complete
        else:
            raise OutputExistsError(f"'{final}' was made again after a replacement of it was interrupted; the "
                                    f"previous contents are in '{backup}': move one of them away")
    return restored


def _holds_only_a_lock(folder: Path) -> bool:
    return all(item.name == ".lock" for item in folder.iterdir())  # base.lock's LOCK_NAME


def remove_stale_partials(final: str | os.PathLike) -> list[Path]:
    """Remove ``final``'s temporary ``.partial`` siblings whose writing process is dead; returns them."""
    return _remove_stale(Path(final), PARTIAL_SUFFIX, Path.is_dir, lambda item: shutil.rmtree(item, ignore_errors=True))


def _siblings(final: Path, suffix: str) -> Iterator[tuple[Path, int]]:
    """``final``'s siblings ``.NAME.pidPID.*SUFFIX`` with their PID."""
    prefix = _partial_prefix(final)
    for item in final.parent.glob(f"{glob.escape(prefix)}*{suffix}"):
        pid_text = item.name[len(prefix):].split(".", 1)[0]
        if pid_text.isdigit():
            yield item, int(pid_text)


def _remove_stale(final: Path, suffix: str, is_kind, remove) -> list[Path]:
    """Remove ``final``'s temporary siblings ``.NAME.pidPID.*SUFFIX`` whose process PID is dead."""
    removed = []
    for item, pid in _siblings(final, suffix):
        if is_kind(item) and not item.is_symlink() and not pid_alive(pid):
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


def free_path(name: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """``name``, else ``stem-2.suffix``, ``stem-3.suffix`` ...: the first that does not exist yet in
    ``base`` (default: the working directory). Next-step hints and default outputs use it so that a
    suggested command works when copied and never writes into an existing folder."""
    root, first = Path(base) if base is not None else Path.cwd(), Path(name)
    candidate, n = first, 2
    while (root / candidate).exists():
        candidate, n = first.with_name(f"{first.stem}-{n}{first.suffix}"), n + 1
    return str(candidate)
