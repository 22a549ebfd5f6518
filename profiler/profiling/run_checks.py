"""Checks of a run directory's records on read: what a damaged or hand-edited file would make the
planner, the report or a resumed run believe. Each failure is one :class:`RunDirError` line naming
the file and the field (a NaN loss, a target the run never swept, a trial measured on another
number of windows than the dense model, a ``settings`` that is not an object)."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..base.errors import RunDirError
from .journal import _matches
from .sensitivity import Trial

_FIX = "profile into a new -o (or restore the file)"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_settings(raw: Any, where: Path) -> None:
    """``run.json``'s ``settings``: an object whose known fields have their types and sane values."""
    from .record import ProfileSettings

    if not isinstance(raw, Mapping):
        raise RunDirError(f"'{where}' field 'settings' is a {type(raw).__name__}, not an object; {_FIX}")
    hints = typing.get_type_hints(ProfileSettings)
    for f in dataclasses.fields(ProfileSettings):
        if f.name in raw and not _matches(raw[f.name], hints[f.name]):
            raise RunDirError(f"'{where}' field 'settings.{f.name}' has the wrong type "
                              f"({type(raw[f.name]).__name__}); {_FIX}")
    tolerance = raw.get("tolerance")
    if tolerance is not None and not (_finite(tolerance) and tolerance > 0):
        raise RunDirError(f"'{where}' field 'settings.tolerance' is {tolerance!r}, not a positive finite number; "
                          f"{_FIX}")
    for s in raw.get("sparsities") or []:
        if not (_finite(s) and 0 < s < 1):
            raise RunDirError(f"'{where}' field 'settings.sparsities' holds {s!r}, outside (0, 1); {_FIX}")
    for name in ("batch_size", "bootstrap"):
        if name in raw and raw[name] < 1:
            raise RunDirError(f"'{where}' field 'settings.{name}' is {raw[name]}, not a positive integer; {_FIX}")


def check_dense(raw: Any, where: Path) -> list[float]:
    """``dense.json``'s per-window losses: a non-empty list of finite numbers."""
    losses = raw.get("window_losses") if isinstance(raw, Mapping) else None
    if not isinstance(losses, list) or not losses:
        raise RunDirError(f"'{where}' field 'window_losses' is missing or empty; {_FIX}")
    bad = [x for x in losses if not _finite(x)]
    if bad:
        raise RunDirError(f"'{where}' field 'window_losses' holds {bad[0]!r}, not a finite number; {_FIX}")
    return losses


def check_trials(trials: Iterable[Trial], targets: list[str] | None, windows: int, where: Path) -> None:
    """Every trial finite, of a target the run swept (``targets``; None: not recorded) and measured
    on the dense model's ``windows`` windows (a partial trial on at most that many)."""
    known = set(targets) if targets is not None else None
    for trial in trials:
        name = f"'{where}' trial {trial.key}"
        if known is not None and trial.target not in known:
            raise RunDirError(f"{name}: target '{trial.target}' is not one the run swept "
                              f"({', '.join(sorted(known))}); delete that line or {_FIX}")
        for field_name in ("sparsity", "loss", "delta_loss", "seconds"):
            if not _finite(getattr(trial, field_name)):
                raise RunDirError(f"{name}: field '{field_name}' is {getattr(trial, field_name)!r}, not a finite "
                                  f"number; delete that line (--resume measures it again) or {_FIX}")
        if not 0 < trial.sparsity < 1 or trial.pruned_params < 0:
            raise RunDirError(f"{name}: sparsity {trial.sparsity} or pruned_params {trial.pruned_params} is out of "
                              f"range; delete that line or {_FIX}")
        if any(not _finite(x) for x in trial.window_losses):
            raise RunDirError(f"{name}: field 'window_losses' holds a non-finite number; delete that line or {_FIX}")
        count = len(trial.window_losses)
        if count and (count > windows or (count != windows and not trial.partial)):
            raise RunDirError(f"{name}: {count} window losses where the dense model has {windows}; delete that "
                              f"line (--resume measures it again) or {_FIX}")
