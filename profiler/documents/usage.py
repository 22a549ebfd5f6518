"""Which forward each SSM mixer class ran, as run.json, validation.json and recovery.json record it
(``mixer_forwards``: mixer class -> :class:`MixerUsage`; written from :func:`ssm_profile.mixers.usage`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._base import Document, _extra


@dataclass(kw_only=True)
class ForwardCheck(Document):
    """An owned forward compared with transformers' on one mixer class (:class:`ssm_profile.mixers._ledger.Verdict`)."""

    mixer: str
    family: str
    kernel: str
    dtype: str
    device: str
    ok: bool
    max_abs_diff: float | None
    bound: float | None
    reason: str = ""  # why not ok
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class MixerUsage(Document):
    """One mixer class: its family, calls by forward, why transformers' forward ran (calls by reason), its checks."""

    family: str
    calls: dict[str, int]
    transformers_because: dict[str, int]
    checks: list[ForwardCheck]
    extra: dict[str, Any] = _extra()


def read_mixer_usage(usage: dict[str, Any] | None) -> dict[str, MixerUsage] | None:
    """``usage`` (mixer class -> its usage, as JSON) typed; None stays None."""
    return None if usage is None else {mixer: MixerUsage.from_dict(entry) for mixer, entry in usage.items()}
