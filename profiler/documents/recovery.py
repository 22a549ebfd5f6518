"""``recovery.json``: what ``recover`` did (:class:`RecoveryRecord`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base.errors import SSMProfileError
from ._base import RECOVERY_KIND, Document, _extra, _optional, parse_document
from .plan import Increase, read_json
from .usage import MixerUsage


@dataclass(kw_only=True)
class RecoveryCheck(Document):
    """The student measured against its teacher, before or after recovery."""

    verification: Increase
    lm_eval: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> metric -> score
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Teacher(Document):
    name: str
    location: str
    fingerprint: str
    source_model: bool  # the model the pruned one was cut from (else a stand-in the user named)
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class RecoveryData(Document):
    training: str  # the training text, as described to people
    training_tokens: int
    seqlen: int
    verification: str | None  # the held-out windows' text
    verification_windows: int
    overlap_check_span: int | None = None
    shared_spans: int = 0
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class RecoveryProgress(Document):
    steps_done: int
    total_steps: int | None
    train_seconds: float
    seconds: float
    train_cpu_seconds: float | None = _optional()  # this process's CPU time; absent in older files
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class CurvePoint(Document):
    """One step of distillation; ``verification_loss`` at the periodic checks (step 0: before training)."""

    step: int
    kd_loss: float | None = None
    lm_loss: float | None = None
    lr: float | None = None
    verification_loss: float | None = _optional()
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Sparsity(Document):
    nonzero_before: int
    nonzero_after: int
    frozen_entries: int  # pruned entries held at zero during training
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class RecoveryOutput(Document):
    fingerprint: str | None = None
    files: list[str] = field(default_factory=list)
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class RecoveryKernels(Document):
    """What computed the distillation: the kernels chosen and, in words, the forward that trained."""

    choice: dict[str, Any]  # the Kernels value (ssm_profile.mixers.choice.Kernels), as written
    training: str
    mixer_forwards: dict[str, MixerUsage] | None = _optional()  # counted per call (ssm_profile.mixers.usage)
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class RecoveryWorld(Document):
    """The processes that trained: how many, and each rank's final weights (all equal when DDP held)."""

    size: int
    rank_weights: list[str]
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class RecoveredFrom(Document):
    """The pruned checkpoint recovery started from: its folder, its weights, the model its plan was made for."""

    directory: str
    fingerprint: str
    plan_model: str | None  # None: no plan beside the checkpoint
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class RecoverySettings(Document):
    """How recovery trained, as resolved (:class:`ssm_profile.recovery.recover.RecoverSettings`)."""

    steps: int | None
    minutes: float | None
    lr: float
    temperature: float
    lm_weight: float | None
    batch_size: int
    seqlen: int | None
    seed: int
    checkpoint_every: int
    eval_every: int | None
    data: str | None  # the training text as named (None: the run's calibration text)
    lm_eval: bool
    lm_eval_limit: int | float | None
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class RecoveryRecord(Document):
    """What ``ssm-profile recover`` did (``recovery.json``): distillation settings, the loss curve
    (``curve``: ``{"step", "kd_loss", "lm_loss", "lr"}`` every step, plus ``verification_loss`` at
    the periodic checks) and the verification perplexity (and offline tasks) before and after."""

    schema_version: int = 1
    kind: str = RECOVERY_KIND
    created: str
    pruned: RecoveredFrom
    teacher: Teacher
    output: RecoveryOutput
    settings: RecoverySettings
    data: RecoveryData
    kernels: RecoveryKernels
    world: RecoveryWorld
    progress: RecoveryProgress
    curve: list[CurvePoint]
    before: RecoveryCheck
    after: RecoveryCheck
    sparsity: Sparsity
    notes: list[str]
    versions: dict[str, str]
    teacher_scores: dict[str, dict[str, float]] | None = _optional()  # the teacher's own lm-eval scores, task -> metric
    extra: dict[str, Any] = _extra()

    def recovered_fraction(self) -> float | None:
        """Share of the pruning's verification perplexity increase that recovery removed (1 = all)."""
        before = self.before.verification.rel_ppl_increase
        after = self.after.verification.rel_ppl_increase
        return None if before <= 0 else 1.0 - after / before

    def verification_points(self) -> list[tuple[int, float]]:
        """(step, verification loss) of the periodic checks (step 0: before training)."""
        return [(p.step, float(p.verification_loss)) for p in self.curve if p.verification_loss is not None]


def load_recovery(path: str | Path) -> RecoveryRecord:
    """Read a ``recovery.json`` written by ``ssm-profile recover``; every problem is one line."""
    data = read_json(path, "recovery", "make one with `ssm-profile recover PRUNED_DIR -o OUT_DIR`",
                     error=SSMProfileError)
    if not isinstance(data, dict) or data.get("kind") != RECOVERY_KIND:
        raise SSMProfileError(f"'{path}' is not a recovery record written by `ssm-profile recover`")
    return parse_document(RecoveryRecord, data, f"recovery file '{path}'")


