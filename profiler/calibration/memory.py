"""How much memory the calibration statistics and their passes take, and how much there is.

Shared by :mod:`ssm_profile.profiling.estimate` (the up-front check of a whole profile) and
:meth:`ssm_profile.profiling.recipe.RunRecipe.statistics` (:func:`statistics_budget`: whether the statistics
fit in RAM or take the memory-bounded path of :func:`ssm_profile.calibration.stats.collect_stats`, and how many
bytes one chunk of layers may hold). ``SSM_PROFILE_AVAILABLE_MEMORY`` (bytes, or a number with
KiB/MiB/GiB) overrides the memory said to be available, for tests and for sharing a machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base.errors import SSMProfileError
# the machine's memory is read in the core (model loading checks a config's size against it too)
from ..base.runtime import available_memory

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
# Cached element scores (ssm_profile.profiling.sensitivity.Scorer) may use this share of the memory left
# once the statistics are in; beyond it the least recently used are recomputed when needed.
SCORE_CACHE_SHARE = 0.25
CAPTUM_SEQUENCES = 4  # sequences per attribution batch of the captum criterion (its default batch_size)


@dataclass(frozen=True)
class ModelDims:
    layers: int
    hidden: int
    inner: int
    state: int
    vocab: int

    @classmethod
    def of(cls, model: torch.nn.Module, mixers) -> "ModelDims":
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
    from ..model.arch import find_mixers

    mixers = find_mixers(model)
    shape = ModelDims.of(model, mixers)
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
    from ..model.arch import find_mixers
    from .stats import statistics_bytes

    sizes = [statistics_bytes(m, needs) for m in find_mixers(model)]
    return max(sizes, default=0) if bounded else sum(sizes)


def device_memory(model: torch.nn.Module) -> int | None:
    """Free bytes on the model's accelerator (None on the CPU)."""
    from ..mixers.choice import model_device

    device = model_device(model)
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def resident_weights(model: torch.nn.Module) -> int:
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


def score_cache_budget() -> int | None:
    """Bytes of element scores a :class:`ssm_profile.profiling.sensitivity.Scorer` may cache (None: unknown)."""
    available = available_memory()
    return None if available is None else int(SCORE_CACHE_SHARE * available)


def batch_bytes(model: torch.nn.Module, batch: int, seqlen: int, training: bool = False) -> int:
    """Bytes a batch's activations take at their peak: logits and one layer's expanded width in a
    forward; every layer's saved tensors and three copies of the logits when training."""
    from ..model.arch import find_mixers

    mixers = find_mixers(model)
    dims = ModelDims.of(model, mixers) if mixers else ModelDims(1, 1, 1, 1, 1)
    if training:
        return batch * (dims.layers * dims.backward_layer(seqlen) + dims.logits_backward(seqlen))
    return batch * seqlen * (dims.vocab + FORWARD_WIDTH_FACTOR * dims.inner + 4 * dims.hidden) * FLOAT32


def check_batch_fits(model: torch.nn.Module, batch: int, seqlen: int, option: str, training: bool = False) -> None:
    """One line naming ``option`` when a batch of ``batch`` x ``seqlen`` tokens cannot fit in the memory
    available (``--speed-batch 100000000 128`` took 5.5 GB, then a traceback)."""
    available = available_memory()
    need = batch_bytes(model, batch, seqlen, training)
    if available is not None and need > available:
        gib = 1 << 30
        raise SSMProfileError(f"{option} of {batch} x {seqlen} tokens needs ~{need / gib:.1f} GiB of activations, "
                              f"more than the {available / gib:.1f} GiB available; use a smaller {option}")
