"""Up-front estimates for a profile, so an impossible run is refused before it starts.

Memory: the estimate adds the largest things a profile holds at once, in three kinds:

* **weights**;
* **statistics**: XᵀX of every linear layer's input (``hessians``) and the two gradient sums per
  mixer parameter (``grads``), in full when they fit, else the largest layer's (the memory-bounded
  path of :func:`ssm_profile.stats.collect_stats` holds one chunk of layers and keeps the rest on disk);
* **activations**: one forward batch (the mixer's expanded channels, the scan's inputs, the head's
  logits); for gradient criteria one sequence's activations kept for backward (every layer's, or
  with the bounded path's checkpointing one layer's plus every block's input); captum's attribution
  batch; the incremental evaluator's activation cache.

It is deliberately coarse (within a small factor), which is all a go/no-go check needs.
:func:`statistics_budget` makes the same comparison for :meth:`ssm_profile.recipe.RunRecipe.statistics`:
whether the statistics fit in RAM or must take the bounded path, and how many bytes a chunk may hold.
``SSM_PROFILE_AVAILABLE_MEMORY`` (bytes, or a number with KiB/MiB/GiB) overrides the memory said to
be available, for tests and for sharing a machine.
"""

from __future__ import annotations

import os
import re
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
# float64 per-token copies the statistics hooks make of a mixer's expanded channels (x, dt, x², ...).
HOOK_WIDTH_FACTOR = 6
# Statistics in RAM may use this share of what is left after activations (allocator slack, copies).
STATISTICS_SHARE = 0.4
AVAILABLE_ENV = "SSM_PROFILE_AVAILABLE_MEMORY"
CAPTUM_SEQUENCES = 4  # sequences per attribution batch of the captum criterion (its default batch_size)
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


@dataclass(frozen=True)
class _Shape:
    layers: int
    hidden: int
    inner: int
    state: int
    vocab: int

    @classmethod
    def of(cls, model: torch.nn.Module, mixers) -> "_Shape":
        return cls(layers=len(mixers), hidden=int(getattr(model.config, "hidden_size", mixers[0].hidden_size)),
                   inner=max(m.intermediate_size for m in mixers), state=max(m.state_size for m in mixers),
                   vocab=int(getattr(model.config, "vocab_size", 0)))

    def backward_layer(self, seqlen: int) -> int:
        """Bytes one layer keeps for backward per sequence."""
        return seqlen * (BACKWARD_STATE_FACTOR * self.inner * self.state + FORWARD_WIDTH_FACTOR * self.inner
                         + 4 * self.hidden) * FLOAT32

    def logits_backward(self, seqlen: int) -> int:
        return 3 * seqlen * self.vocab * FLOAT32  # logits, log-softmax, their gradient


def statistics_activations(model: torch.nn.Module, *, batch_size: int, seqlen: int, needs: set[str],
                           bounded: bool) -> dict[str, int]:
    """Bytes of activations the statistics passes hold besides the statistics (by part)."""
    from .arch import find_mixers

    mixers = find_mixers(model)
    shape = _Shape.of(model, mixers)
    parts = {}
    if needs & {"inputs", "hessians", "ssm"}:
        rows = batch_size * seqlen
        parts["calibration batch"] = rows * (FORWARD_WIDTH_FACTOR * shape.inner * FLOAT32 + 4 * shape.hidden * FLOAT32
                                             + HOOK_WIDTH_FACTOR * shape.inner * FLOAT64)
    if "grads" in needs:  # one sequence at a time
        kept = shape.layers * seqlen * shape.hidden * FLOAT32 + shape.backward_layer(seqlen) if bounded \
            else shape.layers * shape.backward_layer(seqlen)
        largest = max(p.numel() for m in mixers for p in m.module.parameters())
        parts["backward activations"] = kept + shape.logits_backward(seqlen) + 2 * largest * FLOAT32
    return parts


def statistics_bytes_held(model: torch.nn.Module, needs: set[str], bounded: bool) -> int:
    """Bytes of XᵀX and gradient sums held in RAM: all of them, or (bounded) the largest layer's."""
    from .arch import find_mixers
    from .stats import statistics_bytes

    sizes = [statistics_bytes(m, needs) for m in find_mixers(model)]
    return max(sizes, default=0) if bounded else sum(sizes)


def estimate_profile_memory(model: torch.nn.Module, *, nsamples: int, eval_samples: int, seqlen: int,
                            batch_size: int, needs: set[str], cache_bytes: int,
                            bounded: bool = False) -> MemoryEstimate:
    """Peak bytes a profile of ``model`` with these settings is expected to hold (see the module
    docstring); ``bounded``: with the statistics' memory-bounded path."""
    from .arch import find_mixers

    mixers = find_mixers(model)
    shape = _Shape.of(model, mixers)
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


def parse_bytes(text: str) -> int:
    """'1234', '1.5GiB', '512 MiB', '2G' -> bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(i?B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise SSMProfileError(f"{AVAILABLE_ENV}={text!r} is not an amount of memory; use e.g. 8GiB or 8589934592")
    power = " KMGT".index(match.group(2).upper() or " ")
    return int(float(match.group(1)) * 1024 ** power)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (None when it cannot be told);
    ``SSM_PROFILE_AVAILABLE_MEMORY`` overrides it."""
    if os.environ.get(AVAILABLE_ENV):
        return parse_bytes(os.environ[AVAILABLE_ENV])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a dependency of the test environment only
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None


def device_memory(model: torch.nn.Module) -> int | None:
    """Free bytes on the model's accelerator (None on the CPU)."""
    from .kernels import model_device

    device = model_device(model)
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def _resident_weights(model: torch.nn.Module) -> int:
    """Bytes of weights already in the memory that ``available_memory`` measures (CPU weights)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type == "cpu")


def statistics_budget(model: torch.nn.Module, *, batch_size: int, seqlen: int, needs: set[str]) -> int | None:
    """Bytes the large calibration statistics may hold at once (``collect_stats(memory_budget=...)``):
    None when all of them fit with their activations (or nothing can be told), else a chunk's share."""
    available = available_memory()
    on_device = device_memory(model)
    if on_device is not None:  # statistics accumulate on the model's device
        available = on_device if available is None else min(available, on_device)
    if available is None or not needs & {"hessians", "grads"}:
        return None
    full = statistics_bytes_held(model, needs, bounded=False)
    activations = sum(statistics_activations(model, batch_size=batch_size, seqlen=seqlen, needs=needs,
                                             bounded=False).values())
    if full + activations <= STATISTICS_SHARE * available:
        return None
    activations = sum(statistics_activations(model, batch_size=batch_size, seqlen=seqlen, needs=needs,
                                             bounded=True).values())
    return max(1, int(STATISTICS_SHARE * (available - activations)))


def check_memory(model: torch.nn.Module, force: bool, available: int | None = None, **settings) -> MemoryEstimate:
    """Refuse (one line) a profile expected to need more memory than is available, unless ``force``.

    ``settings``: those of :func:`estimate_profile_memory`. The bounded statistics path is tried
    when the in-memory one does not fit. Returns the estimate that fits (or the bounded one)."""
    available = available_memory() if available is None else available
    resident = _resident_weights(model)
    estimate = estimate_profile_memory(model, **settings)
    if available is None or estimate.total <= available + resident:
        return estimate
    estimate = estimate_profile_memory(model, **settings, bounded=True)
    if force or estimate.total <= available + resident:
        return estimate
    gib = 1 << 30
    raise SSMProfileError(
        f"profiling this model needs ~{estimate.total / gib:.1f} GiB (weights {estimate.of('weights') / gib:.1f}, "
        f"statistics {estimate.of('statistics') / gib:.1f}, activations {estimate.of('activations') / gib:.1f}; "
        f"largest part: {estimate.largest()}) but ~{(available + resident) / gib:.1f} GiB is available; "
        "use --criteria without fisher/snip/obs/captum, fewer --nsamples, a lower --seqlen or --batch-size, "
        "a larger machine, or pass --force to try anyway")


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
    eval_batches = math.ceil(int(evaluation.shape[0]) / batch)
    calib_batches = math.ceil(int(calibration.shape[0]) / batch) if calibration is not None else 0
    return (eval_batch * eval_batches * (1 + trials + PER_LAYER_SHARE * probes)
            + calib_batch * calib_batches)


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
