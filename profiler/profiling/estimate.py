"""Up-front estimates for a profile, so an impossible run is refused before it starts.

Memory: the estimate adds the largest things a profile holds at once, in three kinds:

* **weights**;
* **statistics**: XᵀX of every linear layer's input (``hessians``) and the two gradient sums per
  mixer parameter (``grads``), in full when they fit, else the largest layer's (the memory-bounded
  path of :func:`ssm_profile.calibration.stats.collect_stats` holds one chunk of layers and keeps the rest on disk);
* **activations**: one forward batch (the mixer's expanded channels, the scan's inputs, the head's
  logits); for gradient criteria one sequence's activations kept for backward (every layer's, or
  with the bounded path's checkpointing one layer's plus every block's input); captum's attribution
  batch; the incremental evaluator's activation cache.

It is deliberately coarse (within a small factor), which is all a go/no-go check needs.
The parts come from :mod:`ssm_profile.calibration.memory`, which also sizes the statistics' chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..base.errors import SSMProfileError
from ..base.fmt import human_bytes
from ..base.runtime import available_memory
from ..calibration.memory import (CAPTUM_SEQUENCES, FLOAT32, FORWARD_WIDTH_FACTOR, ModelDims, resident_weights,
                                  statistics_activations, statistics_bytes_held)

KINDS = ("weights", "statistics", "activations")


@dataclass
class MemoryEstimate:
    parts: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # part -> one of KINDS (default: activations)
    bounded: bool = False  # whether the statistics take the memory-bounded path

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def of(self, kind: str) -> int:
        return sum(size for name, size in self.parts.items() if self.kinds.get(name, "activations") == kind)

    def largest(self) -> str:
        name = max(self.parts, key=self.parts.get)
        return f"{name} {human_bytes(self.parts[name])}"


def estimate_profile_memory(model: torch.nn.Module, *, nsamples: int, eval_samples: int, seqlen: int,
                            batch_size: int, needs: set[str], cache_bytes: int,
                            bounded: bool = False) -> MemoryEstimate:
    """Peak bytes a profile of ``model`` with these settings is expected to hold (see the module
    docstring); ``bounded``: with the statistics' memory-bounded path."""
    from ..model.arch import find_mixers

    mixers = find_mixers(model)
    shape = ModelDims.of(model, mixers)
    rows = min(batch_size, max(nsamples, eval_samples)) * seqlen  # tokens of one forward batch
    parts = {
        "weights": sum(p.numel() * p.element_size() for p in model.parameters()),
        "statistics": statistics_bytes_held(model, needs, bounded),
        "forward activations": rows * (FORWARD_WIDTH_FACTOR * shape.inner + 4 * shape.hidden) * FLOAT32,
        "logits": rows * shape.vocab * FLOAT32,
        "evaluation windows": (nsamples + eval_samples) * seqlen * 8,
        "activation cache": min(cache_bytes, eval_samples * seqlen * shape.hidden * (shape.layers + 1) * FLOAT32),
    }
    parts.update(statistics_activations(model, batch_size=batch_size, seqlen=seqlen, needs=needs, bounded=bounded))
    if "tokens" in needs:  # captum: gradient × activation of a few sequences at once, every layer kept
        sequences = min(CAPTUM_SEQUENCES, nsamples)
        parts["captum attribution"] = sequences * (shape.layers * shape.backward_layer(seqlen)
                                                   + shape.logits_backward(seqlen))
    return MemoryEstimate(parts, kinds={"weights": "weights", "statistics": "statistics"}, bounded=bounded)


def check_memory(model: torch.nn.Module, force: bool, available: int | None = None, **settings) -> MemoryEstimate:
    """Refuse (one line) a profile expected to need more memory than is available, unless ``force``.

    ``settings``: those of :func:`estimate_profile_memory`. The bounded statistics path is tried
    when the in-memory one does not fit. Returns the estimate that fits (or the bounded one)."""
    available = available_memory() if available is None else available
    resident = resident_weights(model)
    estimate = estimate_profile_memory(model, **settings)
    if available is None or estimate.total <= available + resident:
        return estimate
    estimate = estimate_profile_memory(model, **settings, bounded=True)
    if force or estimate.total <= available + resident:
        return estimate
    raise SSMProfileError(
        f"profiling this model needs ~{human_bytes(estimate.total)} (weights {human_bytes(estimate.of('weights'))}, "
        f"statistics {human_bytes(estimate.of('statistics'))}, activations {human_bytes(estimate.of('activations'))}; "
        f"largest part: {estimate.largest()}) but ~{human_bytes(available + resident)} is available; "
        "use --criteria without fisher/snip/obs/captum, fewer --nsamples, a lower --seqlen or --batch-size, "
        "a larger machine, or pass --force to try anyway")


# --------------------------------------------------------------------------------------------
# time

TIME_LIMIT_S = 24 * 3600  # beyond this a profile is refused unless --force
# A per-layer probe re-runs only the layers from the pruned one on (incremental evaluator), yet cost as
# much as a model-wide trial in the default profiles of the embedded models (2026-12-06).
PER_LAYER_SHARE = 1.0
# A trial costs about one evaluation of the dense model: its masks are built (per criterion) and applied,
# while screens and early stops save some. With only the (target, criterion) pairs that apply counted,
# 1.0 put the estimate at 0.8-1.3x the wall time of the default profiles of the three embedded models
# (2026-12-06, 2 cores, one helper process running beside them); 1.2 made tiny-deltanet's 1.54x.
TRIAL_COST = 1.0


CALIBRATION_TIMED = 2  # calibration windows the estimate times (a batch of 8 took ~20 s at mamba-130m)
EVAL_TIMINGS = 2  # evaluation batches timed: the faster counts (one timing can catch a busy machine's spike)
# Scoring the criteria and caching activations, as a share of the statistics' time: measured 0.55 on
# tiny-mamba2 and 1.13 on tiny-mamba (default profiles, run.json timings; 2026-12-06).
SCORING_SHARE = 0.8


def _timed(function, *args) -> float:
    import time

    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def estimate_profile_seconds(recipe, model: torch.nn.Module, dataset, settings) -> float:
    """Seconds a profile is expected to take: the faster of two timed evaluation batches and a warm
    calibration batch (each after a warm-up), times the planned counts, plus scoring and caching as a
    share of the statistics and the warm-up's one-time costs once. A trial counts as ``TRIAL_COST``
    evaluations (measured on the embedded models); early stopping is not counted, so it errs long."""
    import math

    from ..model.arch import find_mixers
    from ..calibration.data import batch_losses
    from ..criteria.masks import targets_for
    from .recipe import needs_of

    batch = settings.batch_size
    evaluation, calibration = dataset.evaluation, dataset.calibration
    needs = needs_of([*settings.criteria, settings.layer_criterion])
    once = 0.0  # one-time costs (kernel compilation, lazy imports): paid once by the run, never multiplied
    with recipe.installed(model):
        batch_losses(model, evaluation[:1], batch)  # warm-up: kernel compilation, allocator
        eval_batch = min(_timed(batch_losses, model, evaluation[:batch], batch) for _ in range(EVAL_TIMINGS))
        calib_batch = 0.0
        if needs and calibration is not None:
            timed = min(CALIBRATION_TIMED, batch)  # statistics are sums over windows: time linear in them
            cold = _timed(recipe.statistics, model, calibration[:timed], needs)
            warm = _timed(recipe.statistics, model, calibration[:timed], needs)
            once, calib_batch = max(0.0, cold - warm), warm * batch / timed
    mixers = find_mixers(model)
    targets = [t for t in targets_for(mixers) if settings.targets is None or t.name in settings.targets]
    pairs = _applicable_pairs(model, settings.criteria, {t.name for t in targets})
    trials = pairs * len(settings.sparsities)
    probes = len(targets) * len(mixers) if settings.per_layer else 0
    if getattr(settings, "sweep", "grid") == "adaptive":  # early stopping not counted: errs long too
        from .adaptive import expected_trials

        from .earlystop import CHUNK_WINDOWS

        trials, probes = expected_trials(pairs, len(targets), len(settings.sparsities),
                                         len(targets) if settings.per_layer else 0, len(mixers))
        windows = int(evaluation.shape[0])
        if windows > CHUNK_WINDOWS:  # every pair screened on one chunk, each target's leader completed
            trials += len(targets) - pairs * (1 - CHUNK_WINDOWS / windows)
    eval_batches = math.ceil(int(evaluation.shape[0]) / batch)
    calib_batches = math.ceil(int(calibration.shape[0]) / batch) if calibration is not None else 0
    seconds = (eval_batch * eval_batches * (1 + TRIAL_COST * (trials + PER_LAYER_SHARE * probes))
               + calib_batch * calib_batches * (1 + SCORING_SHARE) + once)
    budget = getattr(settings, "budget", None)
    return min(seconds, budget) if budget else seconds


def _applicable_pairs(model: torch.nn.Module, criteria: list[str], targets: set[str]) -> int:
    """(target, criterion) pairs a sweep will measure: a criterion that cannot score a target
    (told from the architecture, as ``--list-criteria`` does) costs no trial. Counting every pair made
    tiny-deltanet's estimate 1.6x its run (117 pairs, 82 apply)."""
    from ..criteria import applicability

    rows = applicability(model, criteria)
    return sum(1 for r in rows if r["applies"] and (r["group"] or f"unit:{r['unit']}") in targets)


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
