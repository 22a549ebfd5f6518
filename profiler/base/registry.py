"""One generic registry of named things: criteria, mixer families, stock architectures, sweeps, CLI commands.

* A name is taken once: registering it again raises :class:`NameClashError` (never a silent overwrite).
* An entry may be lazy, ``"package.module:attribute"`` (or a bare module), imported on first use, so an
  optional dependency is imported only when its entry is asked for.
* Other packages add entries without forking through Python entry points in the registry's group,
  e.g. in their ``pyproject.toml``::

      [project.entry-points."ssm_profile.criteria"]
      my_score = "my_package.scores:MyScore"

  Entry points are read once, on the first lookup; one that takes a built-in name is an error.

Torch-free, so the CLI can list its commands before torch loads.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class NameClashError(ValueError):
    """A name registered twice in one registry."""


class Registry(Generic[T]):
    """Named entries of one kind (``what``: "criterion", "command", ...)."""

    def __init__(self, what: str, entry_point_group: str | None = None,
                 missing_dependency: Callable[[str, ImportError], str] | None = None):
        self.what = what
        self.entry_point_group = entry_point_group
        self._missing_dependency = missing_dependency
        self._entries: dict[str, T] = {}
        self._lazy: dict[str, str] = {}
        self._order: list[str] = []
        self._plugins_read = entry_point_group is None
        self._lock = threading.RLock()
        self._loading_now = threading.local()  # .name: the lazy entry this thread is importing

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; returns it (so ``add`` can end a decorator)."""
        with self._lock:
            lazy = self._lazy.get(name)
            if name in self._entries or (lazy is not None and not self._loading(name)
                                         and not _names(lazy, entry)):
                raise NameClashError(f"{self.what} '{name}' is registered twice")
            if name not in self._lazy:
                self._order.append(name)
            self._lazy.pop(name, None)
            self._entries[name] = entry
        return entry

    def add_lazy(self, name: str, target: str) -> None:
        """Register ``target`` ("module:attribute", or a module) under ``name``, imported on first use."""
        with self._lock:
            if name in self._entries or name in self._lazy:
                raise NameClashError(f"{self.what} '{name}' is registered twice")
            self._lazy[name] = target
            self._order.append(name)

    def names(self) -> list[str]:
        """Every name, in the order registered (entry points last)."""
        self._read_plugins()
        with self._lock:
            return list(self._order)

    def __contains__(self, name: object) -> bool:
        self._read_plugins()
        with self._lock:
            return name in self._entries or name in self._lazy

    def get(self, name: str) -> T:
        """The entry called ``name`` (imported now if lazy); an unknown name is a one-line error that
        lists the known ones."""
        from .errors import SSMProfileError

        self._read_plugins()
        with self._lock:
            if name in self._entries:
                return self._entries[name]
            target = self._lazy.get(name)
        if target is None:
            raise SSMProfileError(f"unknown {self.what} '{name}'; choose from {', '.join(sorted(self.names()))}")
        return self._load(name, target)

    def values(self) -> list[T]:
        """Every entry, in name order (lazy ones imported)."""
        return [self.get(name) for name in self.names()]

    # ------------------------------------------------------------------ internals
    def _loading(self, name: str) -> bool:
        return getattr(self._loading_now, "name", None) == name

    def _load(self, name: str, target: str) -> T:
        from .errors import SSMProfileError

        module_name, _, attribute = target.partition(":")
        state = self._loading_now
        state.name = name  # importing the module may register ``name`` itself (a decorator)
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            if self._missing_dependency is not None:
                raise SSMProfileError(self._missing_dependency(name, err)) from None
            raise
        finally:
            state.name = None
        with self._lock:
            if name in self._entries:  # the import registered it
                return self._entries[name]
            entry = getattr(module, attribute) if attribute else module
            self._lazy.pop(name, None)
            self._entries[name] = entry
            return entry

    def _read_plugins(self) -> None:
        if self._plugins_read:
            return
        with self._lock:
            if self._plugins_read:
                return
            self._plugins_read = True
            from importlib.metadata import entry_points

            for point in entry_points(group=self.entry_point_group):
                if point.name in self._entries or point.name in self._lazy:
                    from .errors import SSMProfileError

                    raise SSMProfileError(f"the installed package that provides {self.what} '{point.name}' "
                                          f"({point.value}) takes a name ssm-profile already has; rename its entry "
                                          f"point in group '{self.entry_point_group}'")
                self._lazy[point.name] = point.value
                self._order.append(point.name)


def _names(target: str, entry: object) -> bool:
    """``entry`` is what the lazy ``target`` ("module:attribute") points at: its module, imported
    directly, is registering it (not a second entry under the same name)."""
    module_name, _, attribute = target.partition(":")
    return (getattr(entry, "__module__", None) == module_name
            and getattr(entry, "__qualname__", None) == attribute)
