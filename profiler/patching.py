"""Swap module-level functions of transformers for drop-ins, and restore them exactly.

transformers' Mamba mixers look their kernels up as module globals at call time, so replacing a
global is what takes effect. The fast paths (:mod:`ssm_profile.fastscan`, :mod:`ssm_profile.fastscan2`,
:mod:`ssm_profile.fastlinear`) use one :class:`GlobalPatcher` each.

``use(True)`` blocks may overlap across threads (the TUI runs a profile, a plan and an apply in
separate workers): the first block to enter installs the drop-ins, the last one to leave puts
the originals back, whatever order they leave in.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable, Iterator

_ORIGINAL = "_ssm_profile_original"  # attribute of a drop-in that holds the function it replaced
_LOCK = threading.RLock()


class GlobalPatcher:
    """Replaces ``hooks`` names (``name -> make(original) -> drop-in``) in each target module."""

    def __init__(self, targets: tuple[str, ...], hooks: dict[str, Callable[[Callable], Callable]]):
        self.targets = targets
        self.hooks = hooks
        self._users = 0  # use(True) blocks currently open, in any thread
        self._saved: list[tuple[object, str, Callable]] = []

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
        """Drop-ins on (or off) inside the block; every global is put back as it was on exit.

        Enabled blocks are counted: the globals are restored when the last open one leaves, so
        overlapping blocks in different threads never leave a drop-in behind or pull one from
        under a block that is still running."""
        if not enabled:
            with _LOCK:
                saved = [(module, name, getattr(module, name)) for module, name, _ in self.points()]
                self.disable()
            try:
                yield
            finally:
                with _LOCK:
                    for module, name, func in saved:
                        setattr(module, name, func)
            return
        with _LOCK:
            if self._users == 0:
                self._saved = [(module, name, getattr(module, name)) for module, name, _ in self.points()]
                self.enable()
            self._users += 1
        try:
            yield
        finally:
            with _LOCK:
                self._users -= 1
                if self._users == 0:
                    for module, name, func in self._saved:
                        setattr(module, name, func)
                    self._saved = []
