"""The data windows a stage measured on, as every document records them (``data`` of ``run.json`` and
``validation.json``, ``calibration`` of ``pruning.json``): :class:`RunData`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._base import Document, _extra, _optional

if TYPE_CHECKING:  # the calibration wing imports torch; documents are read without it
    from ..calibration.data import DataSpec


@dataclass(kw_only=True)
class RunData(Document):
    """The run's windows: sources as described to people (``embedded:calibration.txt``,
    ``file.txt [first 80%]``), counts and roles (calibration, search, held-out verification)."""

    calibration: str | None = _optional()
    evaluation: str | None = _optional()
    nsamples: int = 0
    eval_samples: int = 0
    seqlen: int = 0
    seed: int = 0
    calibration_tokens: int | None = _optional()
    evaluation_tokens: int | None = _optional()
    verification: str | None = _optional()  # absent in runs from before the verification split
    verify_samples: int | None = _optional()
    verification_tokens: int | None = _optional()
    roles: dict[str, str] | None = _optional()
    digests: dict[str, str] | None = _optional()  # role -> SHA-256 of its token windows (absent in older runs)
    # Which windows each role took (calibration token offsets; search and verification window
    # indices into the evaluation text); absent in runs from before seeds drew the search windows.
    windows: dict[str, list[int]] | None = _optional()
    notes: list[str] | None = _optional()  # a text past the token cap: how much of it was read
    extra: dict[str, Any] = _extra()

    def spec(self) -> DataSpec:
        """The :class:`DataSpec` that rebuilds these windows."""
        from ..calibration.data import data_spec_from_meta

        return data_spec_from_meta(self.to_dict())
