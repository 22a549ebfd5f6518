"""Swap module-level functions of transformers for drop-ins, and restore them exactly.

transformers' Mamba mixers look their kernels up as module globals at call time, so replacing a
global is what takes effect. Both fast paths (:mod:`profiler.fastscan`, :mod:`profiler.fastscan2`)
use one :class:`GlobalPatcher` each.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator

_ORIGINAL = "_ssm_profile_original"  # attribute of a drop-in that holds the function it replaced


class GlobalPatcher:
    """Replaces ``hooks`` names (``name -> make(original) -> drop-in``) in each target module."""

    def __init__(self, targets: tuple[str, ...], hooks: dict[str, Callable[[Callable], Callable]]):
        self.targets = targets
        self.hooks = hooks

    def points(self) -> Iterator[tuple[object, str, Callable]]:
        for target in self.targets:
            try:
                module = importlib.import_module(target)
            except ImportError:  # model family absent from this transformers version
                continue
            for name, make in self.hooks.items():
                if hasattr(module, name):
                    yield module, name, make

    def enabled(self) -> bool:
        return any(hasattr(getattr(m, n), _ORIGINAL) for m, n, _ in self.points())

    def enable(self) -> None:
        """Install every drop-in (idempotent: never wraps a drop-in twice)."""
        for module, name, make in self.points():
            current = getattr(module, name)
            if not hasattr(current, _ORIGINAL):
                patched = make(current)
                setattr(patched, _ORIGINAL, current)
                setattr(module, name, patched)

    def disable(self) -> None:
        """Restore transformers' own functions."""
        for module, name, _ in self.points():
            original = getattr(getattr(module, name), _ORIGINAL, None)
            if original is not None:
                setattr(module, name, original)

    @contextlib.contextmanager
    def use(self, enabled: bool = True) -> Iterator[None]:
        """Drop-ins on (or off) inside the block; every global is put back as it was on exit."""
        saved = [(module, name, getattr(module, name)) for module, name, _ in self.points()]
        (self.enable if enabled else self.disable)()
        try:
            yield
        finally:
            for module, name, func in saved:
                setattr(module, name, func)
