"""The run record (``run.json``) as a typed object: which model, which data, which settings, what ran.

:class:`RunRecord` is the one reader and writer of ``run.json``; everything else reads a run by
attribute (``result.record.model.fingerprint``, ``result.record.settings.tolerance``). Keys a newer
version adds survive a read/write round trip in ``extra``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from ..base.defaults import DEFAULT_CRITERIA, DEFAULT_SPARSITIES, DEFAULT_TOLERANCE
from ..base.errors import SSMProfileError
from ..calibration.data import DataSpec
from ..documents import Document, MixerUsage, ModelOrigin, RunData, extra_field, optional_field, read_mixer_usage
from .adaptive import Budget

RUN_SCHEMA_VERSION = 1
# Settings older runs lack, with the value they ran with (so they still read, and resume, as they ran).
SETTINGS_BEFORE = {"sweep": "grid", "budget": None}


@dataclass
class ProfileSettings:
    """What a profile measures and how; persisted as the run record's ``settings``."""

    criteria: list[str] = field(default_factory=lambda: list(DEFAULT_CRITERIA))
    targets: list[str] | None = None  # None = every group and unit kind of the model
    sparsities: list[float] = field(default_factory=lambda: list(DEFAULT_SPARSITIES))
    per_layer: bool = True
    probe_sparsity: float = 0.5
    layer_criterion: str = "fisher"
    structure: str = "unstructured"
    batch_size: int = 8
    tolerance: float = DEFAULT_TOLERANCE
    bootstrap: int = 200
    seed: int = 0
    # How trials are computed, not what they measure (see RESUMABLE_SETTINGS): fast CPU kernels
    # (equal to transformers' paths within float32 rounding) and incremental evaluation
    # (ssm_profile.profiling.incremental; bit-identical to batch_losses).
    fast_scan: bool = True
    incremental: bool = True
    sweep: str = "adaptive"  # "grid": every trial; "adaptive": ssm_profile.profiling.adaptive (with early stopping)
    budget: float | None = None  # seconds the adaptive sweep may take in all (None: no bound)

    def validate(self) -> None:
        """One-line errors for impossible settings."""
        from ..criteria import get
        from .sweeps import SWEEPS

        SWEEPS.get(self.sweep)  # an unknown name is a one-line error listing the sweeps
        if self.budget is not None and (self.sweep != "adaptive" or not self.budget > 0):
            raise SSMProfileError("--budget needs --sweep adaptive and a positive duration such as 10m")
        for s in [*self.sparsities, self.probe_sparsity]:
            if not 0.0 < float(s) < 1.0:
                raise SSMProfileError(f"sparsity {s} is outside (0, 1); use values such as 0.1,0.5,0.9")
        if not self.sparsities:
            raise SSMProfileError("no sparsities given")
        for name in dict.fromkeys([*self.criteria, self.layer_criterion]):
            get(name)  # raises a one-line error for unknown names
        if self.batch_size < 1:
            raise SSMProfileError("--batch-size must be positive")
        if not 0 <= int(self.seed) < 2**32:  # numpy's and torch's generators take [0, 2**32)
            raise SSMProfileError(f"--seed must be between 0 and {2**32 - 1}, got {self.seed}")
        if self.targets is not None and not self.targets:
            raise SSMProfileError("--targets is empty; name groups or units, e.g. in_proj,unit:state")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProfileSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in {**SETTINGS_BEFORE, **data}.items() if k in names})


@dataclass
class RunModel:
    """The profiled model: where it came from, its weights' fingerprint, its class and config."""

    name: str
    source: ModelOrigin
    fingerprint: str
    class_name: str
    config: dict[str, Any]  # the transformers config as saved (a config is a mapping by nature)

    @property
    def dtype(self) -> str:
        return str(self.config.get("dtype") or self.config.get("torch_dtype") or "")

    def load_name(self) -> str:
        """What :func:`ssm_profile.load_model` takes to load this model again."""
        return self.source.load_name() or self.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source.to_dict(), "fingerprint": self.fingerprint,
                "class": self.class_name, "config": self.config}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunModel:
        source = ModelOrigin.from_dict({"name": data.get("name", ""), **(data.get("source") or {})})
        return cls(name=str(data.get("name", "")), source=source, fingerprint=str(data.get("fingerprint") or ""),
                   class_name=str(data.get("class") or ""), config=dict(data.get("config") or {}))


@dataclass(kw_only=True)
class SweepSummary(Document):
    """What the sweep spent: trials (early stops and screens among them), windows evaluated, seconds."""

    trials: int = 0
    stopped: int = 0
    screens: int = 0
    windows_evaluated: int = 0
    window_tokens: int = 0
    trial_seconds: float = 0.0
    budget_exhausted: bool | None = optional_field()  # adaptive sweeps with --budget only
    extra: dict[str, Any] = extra_field()


@dataclass(kw_only=True)
class Skip(Document):
    """A criterion that does not apply to a target, and why."""

    criterion: str
    target: str
    reason: str
    extra: dict[str, Any] = extra_field()


@dataclass(kw_only=True)
class TokenizerInfo(Document):
    """The tokenizer a run used: where it was read from, its class, vocabulary size and the SHA-256 of its
    ``tokenizer.json`` (when it has one); see :func:`ssm_profile.model.resolve.tokenizer_info`."""

    path: str | None = None  # its folder ("embedded": the shipped one)
    class_name: str = field(default="", metadata={"key": "class"})
    vocab_size: int = 0
    tokenizer_json_sha256: str | None = optional_field()
    extra: dict[str, Any] = extra_field()


@dataclass(kw_only=True)
class IncrementalSummary(Document):
    """What incremental evaluation reused (:meth:`ssm_profile.profiling.incremental.IncrementalEvaluator.summary`)."""

    enabled: bool
    reason: str | None  # why it is off, or fell back
    modes: dict[str, bool]  # stage -> whether replaying from it reproduced the dense losses bit for bit
    blocked_head: bool | None = optional_field()  # absent in runs from before blocked heads
    cached_layers: int = 0
    staged_layers: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # evaluations by how they were computed
    prepare_s: float = 0.0
    extra: dict[str, Any] = extra_field()


_FIELDS = ("schema_version", "created", "model", "data", "tokenizer", "settings", "versions", "threads", "device",
           "processes", "status", "finished", "skipped", "trials_planned", "trials_grid", "budget", "sweep",
           "incremental", "mixer_forwards", "timings", "unit_aggregation")


@dataclass
class RunRecord:
    """``run.json``: what a profile run was asked, where it ran, and how far it got."""

    model: RunModel
    settings: ProfileSettings
    data: RunData
    created: str = ""
    schema_version: int = RUN_SCHEMA_VERSION
    tokenizer: TokenizerInfo | None = None
    versions: dict[str, str] = field(default_factory=dict)
    threads: int = 1
    device: str = "cpu"
    processes: int = 1
    status: str = "running"  # "running" | "complete" | "interrupted" ...
    finished: str | None = None
    skipped: list[Skip] = field(default_factory=list)
    trials_planned: int | None = None
    trials_grid: int | None = None
    budget: Budget | None = None  # the adaptive sweep's bound
    sweep: SweepSummary | None = None
    incremental: IncrementalSummary | None = None
    mixer_forwards: dict[str, MixerUsage] | None = None  # which forward each mixer class ran (ssm_profile.mixers.usage)
    timings: dict[str, float] = field(default_factory=dict)
    # mixer kind -> criterion -> how its unit scores combined the per-tensor sums of element scores
    # (ssm_profile.criteria.base.UNIT_AGGREGATION); None: no unit targets, or a run from before it was recorded
    unit_aggregation: dict[str, dict[str, str]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as read

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def data_spec(self) -> DataSpec:
        """The :class:`DataSpec` that rebuilds this run's windows."""
        return self.data.spec()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": self.schema_version, "created": self.created,
                               "model": self.model.to_dict(), "data": self.data.to_dict(),
                               "tokenizer": self.tokenizer.to_dict() if self.tokenizer is not None else None,
                               "settings": asdict(self.settings), "versions": self.versions,
                               "threads": self.threads, "device": self.device, "processes": self.processes,
                               "status": self.status}
        for name in _FIELDS[11:]:
            value = getattr(self, name)
            if name == "skipped":
                value = [s.to_dict() for s in value]
            elif name == "budget" and value is not None:
                value = asdict(value)
            elif name in ("sweep", "incremental") and value is not None:
                value = value.to_dict()
            elif name == "mixer_forwards" and value is not None:
                value = {mixer: usage.to_dict() for mixer, usage in value.items()}
            if value is not None and value != [] and value != {}:
                out[name] = value
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        known = {k: data[k] for k in _FIELDS if k in data}
        extra = {k: v for k, v in data.items() if k not in _FIELDS}
        return cls(
            model=RunModel.from_dict(known.pop("model", {}) or {}),
            settings=ProfileSettings.from_dict(known.pop("settings", {}) or {}),
            data=RunData.from_dict(known.pop("data", {}) or {}),
            skipped=[Skip.from_dict(s) for s in known.pop("skipped", []) or []],
            sweep=_nested(SweepSummary.from_dict, known.pop("sweep", None)),
            tokenizer=_nested(TokenizerInfo.from_dict, known.pop("tokenizer", None)),
            budget=_nested(_budget, known.pop("budget", None)),
            incremental=_nested(IncrementalSummary.from_dict, known.pop("incremental", None)),
            mixer_forwards=read_mixer_usage(known.pop("mixer_forwards", None)),
            **known, extra=extra)


def _nested(read: Any, value: Any) -> Any:
    """``read(value)``, or None for an absent or empty part (an empty tokenizer: none was loaded)."""
    return read(value) if value else None


def _budget(data: Mapping[str, Any]) -> Budget:
    names = {f.name for f in dataclasses.fields(Budget)}
    return Budget(**{k: v for k, v in data.items() if k in names})
