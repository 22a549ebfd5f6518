"""Tensors kept on disk instead of in RAM: calibration statistics of models too large to hold them.

A :class:`DiskTensors` is a ``MutableMapping[str, torch.Tensor]`` whose values are files in a
directory, one per key: setting a key writes the tensor (and frees nothing itself: the caller
drops its reference), reading a key loads it again. Criteria read statistics through plain
``stats.hessians[key]`` / ``key in stats.grad_sum``, so they read offloaded statistics lazily, one
tensor at a time, without knowing where they live. The values round-trip bit for bit.

The directory is a fresh one made under ``parent`` (the run directory, or the system's temporary
folder) and is removed when the mapping is garbage collected or the process exits.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, MutableMapping
from pathlib import Path

import torch

TMPDIR_ENV = "SSM_PROFILE_TMPDIR"  # where offloaded statistics go when no run directory is given
STATS_PREFIX = ".ssm-profile-stats-"  # hidden, so a run directory's own files stay what a user sees


def remove_leftovers(parent: str | Path) -> None:
    """Delete statistics folders left in ``parent`` by a killed run (call under the run's lock)."""
    for item in Path(parent).glob(STATS_PREFIX + "*"):
        shutil.rmtree(item, ignore_errors=True)


class DiskTensors(MutableMapping):
    """A str -> tensor mapping stored as one file per key in a private temporary directory."""

    def __init__(self, parent: str | Path | None = None, prefix: str = STATS_PREFIX):
        parent = parent if parent is not None else os.environ.get(TMPDIR_ENV) or None
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self.directory = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        self._files: dict[str, Path] = {}
        self._remove = weakref.finalize(self, shutil.rmtree, self.directory, True)

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        path = self._files.get(key) or self.directory / f"{len(self._files)}.pt"
        torch.save(value.detach().cpu().contiguous(), path)
        self._files[key] = path

    def __getitem__(self, key: str) -> torch.Tensor:
        return torch.load(self._files[key], map_location="cpu", weights_only=True)

    def __delitem__(self, key: str) -> None:
        self._files.pop(key).unlink(missing_ok=True)

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def __contains__(self, key: object) -> bool:
        return key in self._files

    def close(self) -> None:
        """Remove the files now (the mapping is empty afterwards)."""
        self._files.clear()
        self._remove()
