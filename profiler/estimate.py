"""An up-front memory estimate for a profile, so an impossible run is refused before it starts.

The estimate adds the largest things a profile holds at once: the weights; per-window activations
of one forward batch (the mixer's expanded channels, the scan's inputs, the head's logits); for
gradient criteria, one sequence's activations kept for the backward pass (the reference scan keeps
channels × state per token), the gradients and their running sums; for Hessian criteria, XᵀX of
every linear layer's input; and the incremental evaluator's activation cache. It is deliberately
coarse (within a small factor), which is all a go/no-go check needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from .errors import SSMProfileError
from .fmt import human_bytes

FLOAT32, FLOAT64 = 4, 8
# Tensors of the expanded width alive per token in a mixer's forward (in_proj's two halves, conv,
# dt, B, C, gate, scan output), a coarse upper count.
FORWARD_WIDTH_FACTOR = 8
# Tensors saved per token and channel × state by the reference scan for the backward pass.
BACKWARD_STATE_FACTOR = 3


@dataclass
class MemoryEstimate:
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def largest(self) -> str:
        name = max(self.parts, key=self.parts.get)
        return f"{name} {human_bytes(self.parts[name])}"


def estimate_profile_memory(model: torch.nn.Module, *, nsamples: int, eval_samples: int, seqlen: int,
                            batch_size: int, needs: set[str], cache_bytes: int) -> MemoryEstimate:
    """Peak bytes a profile of ``model`` with these settings is expected to hold (see the module docstring)."""
    from .arch import find_mixers

    mixers = find_mixers(model)
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    hidden = int(getattr(model.config, "hidden_size", mixers[0].hidden_size))
    vocab = int(getattr(model.config, "vocab_size", 0))
    inner = max(m.intermediate_size for m in mixers)
    state = max(m.state_size for m in mixers)
    layers = len(mixers)
    rows = min(batch_size, max(nsamples, eval_samples)) * seqlen  # tokens of one forward batch
    parts = {
        "weights": weight_bytes,
        "forward activations": rows * (FORWARD_WIDTH_FACTOR * inner + 4 * hidden) * FLOAT32,
        "logits": rows * vocab * FLOAT32,
        "evaluation windows": (nsamples + eval_samples) * seqlen * 8,
        "activation cache": min(cache_bytes, eval_samples * seqlen * hidden * (layers + 1) * FLOAT32),
    }
    if "grads" in needs:  # one sequence at a time, every layer's activations kept for backward
        parts["backward activations"] = seqlen * layers * (
            BACKWARD_STATE_FACTOR * inner * state + FORWARD_WIDTH_FACTOR * inner + 4 * hidden) * FLOAT32
        parts["backward logits"] = 2 * seqlen * vocab * FLOAT32
        parts["gradients"] = 3 * params * FLOAT32  # .grad, Σg, Σg²
    if "hessians" in needs:
        per_layer = sum(d * d for d in (hidden, inner, inner, max(m.dt_rank for m in mixers)))
        parts["Hessians (XᵀX)"] = layers * per_layer * FLOAT64 + inner * inner * FLOAT32
    return MemoryEstimate(parts)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (None when it cannot be told)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a dependency of the test environment only
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None


def check_memory(estimate: MemoryEstimate, force: bool, available: int | None = None) -> None:
    """Refuse (one line) a profile expected to need more memory than is available, unless ``force``."""
    available = available_memory() if available is None else available
    if force or available is None or estimate.total <= available:
        return
    raise SSMProfileError(
        f"this profile needs about {human_bytes(estimate.total)} of memory (largest part: {estimate.largest()}) "
        f"but {human_bytes(available)} is available; lower --seqlen, --batch-size or --eval-samples, "
        "or pass --force to try anyway")


# --------------------------------------------------------------------------------------------
# time

TIME_LIMIT_S = 24 * 3600  # beyond this a profile is refused unless --force
# A per-layer probe re-runs only the layers from the pruned one on (incremental evaluator): about half.
PER_LAYER_SHARE = 0.5


def estimate_profile_seconds(recipe, model: torch.nn.Module, dataset, settings) -> float:
    """Seconds a profile is expected to take: one timed evaluation batch and one timed calibration
    batch (after a warm-up batch), times the planned counts. Trials are counted as full evaluations
    (an upper bound for the incremental evaluator), so the figure errs long."""
    import math
    import time

    from .arch import find_mixers
    from .data import batch_losses
    from .masks import targets_for
    from .recipe import needs_of

    batch = settings.batch_size
    evaluation, calibration = dataset.evaluation, dataset.calibration
    with recipe.installed(model):
        batch_losses(model, evaluation[:batch], batch)  # warm-up: kernel compilation, allocator
        started = time.perf_counter()
        batch_losses(model, evaluation[:batch], batch)
        eval_batch = time.perf_counter() - started
        needs = needs_of([*settings.criteria, settings.layer_criterion])
        started = time.perf_counter()
        if needs and calibration is not None:
            recipe.statistics(model, calibration[:batch], needs)
        calib_batch = time.perf_counter() - started
    mixers = find_mixers(model)
    targets = [t for t in targets_for(mixers) if settings.targets is None or t.name in settings.targets]
    trials = len(targets) * len(settings.criteria) * len(settings.sparsities)
    probes = len(targets) * len(mixers) if settings.per_layer else 0
    if getattr(settings, "sweep", "grid") == "adaptive":  # early stopping not counted: errs long too
        from .adaptive import expected_trials

        trials, probes = expected_trials(len(targets) * len(settings.criteria), len(targets), len(settings.sparsities),
                                         len(targets) if settings.per_layer else 0, len(mixers))
    eval_batches = math.ceil(int(evaluation.shape[0]) / batch)
    calib_batches = math.ceil(int(calibration.shape[0]) / batch) if calibration is not None else 0
    seconds = (eval_batch * eval_batches * (1 + trials + PER_LAYER_SHARE * probes)
               + calib_batch * calib_batches)
    budget = getattr(settings, "budget", None)
    return min(seconds, budget) if budget else seconds


def duration_text(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_time(seconds: float, force: bool, limit: float = TIME_LIMIT_S) -> None:
    """Refuse (one line) a profile expected to run longer than ``limit``, unless ``force``."""
    if force or seconds <= limit:
        return
    raise SSMProfileError(
        f"this profile would take about {duration_text(seconds)} (more than {duration_text(limit)}); lower "
        "--nsamples, --eval-samples, --seqlen or the criteria, sparsities and targets, or pass --force to run anyway")
