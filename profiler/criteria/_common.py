"""Helpers shared by the criteria: which statistics belong to which parameter."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import torch

from .base import CalibrationStats, NotApplicable

if TYPE_CHECKING:
    from ..model.arch import MixerInfo

# weight -> key of its input statistics (relative to the mixer path)
# (Gated DeltaNet's input projections all read the hidden states: one "in_proj" entry serves them; so do
# KDA's q/k/v/b_proj and its two a-projections, whose b-projections read the low-rank widths)
LINEAR_WEIGHTS = {"in_proj.weight": "in_proj", "x_proj.weight": "x_proj", "dt_proj.weight": "dt_proj",
                  "out_proj.weight": "out_proj",
                  **{f"{name}.weight": "in_proj" for name in ("in_proj_qkvz", "in_proj_ba", "in_proj_qkv", "in_proj_z",
                                                              "in_proj_b", "in_proj_a")},
                  **{f"{name}.weight": "in_proj" for name in ("q_proj", "k_proj", "v_proj", "b_proj", "g_a_proj",
                                                              "forget_gate.f_a_proj")},
                  "forget_gate.f_b_proj.weight": "f_b_proj", "g_b_proj.weight": "g_b_proj", "o_proj.weight": "out_proj"}


def tensor(mixer: "MixerInfo", param: str) -> torch.Tensor:
    """The parameter as a float32 CPU tensor (criteria score on the CPU, where the statistics are)."""
    return mixer.param(param).detach().float().cpu()


def need_param(mixer: "MixerInfo", param: str) -> None:
    if not mixer.has(param):
        raise NotApplicable(f"{mixer.path} has no parameter '{param}'")


def inputs(stats: CalibrationStats, mixer: "MixerInfo", key: str) -> dict[str, torch.Tensor]:
    full = f"{mixer.path}.{key}"
    if full not in stats.inputs:
        raise KeyError(f"calibration statistics hold no input statistics for '{full}'; "
                       "collect them with needs={'inputs'}")
    return stats.inputs[full]


def input_norm(stats: CalibrationStats, mixer: "MixerInfo", key: str) -> torch.Tensor:
    inputs(stats, mixer, key)
    return stats.input_norm(f"{mixer.path}.{key}").float()


def input_var(stats: CalibrationStats, mixer: "MixerInfo", key: str) -> torch.Tensor:
    inputs(stats, mixer, key)
    return stats.input_var(f"{mixer.path}.{key}").float()


def grads(stats: CalibrationStats, mixer: "MixerInfo", param: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean gradient, mean squared gradient) of ``mixer.<param>`` over the gradient batches."""
    name = mixer.full_name(param)
    if name not in stats.grad_sum or stats.grad_batches == 0:
        raise KeyError(f"calibration statistics hold no gradients for '{name}'; collect them with needs={{'grads'}}")
    n = stats.grad_batches
    return stats.grad_sum[name].float() / n, stats.grad_sq_sum[name].float() / n


def fisher_diagonal(stats: CalibrationStats, mixer: "MixerInfo", param: str) -> torch.Tensor:
    """Per-token empirical Fisher diagonal, E_t[(∂ℓ_t/∂w)²], estimated from micro-batch gradients.

    A micro-batch gradient averages T token gradients, so its square is about 1/T of the per-token
    Fisher (the Hessian of the mean loss near a fit): scale by the tokens per micro-batch. Without
    this the second-order loss estimate is ~T times too small.
    """
    _, g2 = grads(stats, mixer, param)
    tokens_per_batch = stats.grad_tokens / stats.grad_batches if stats.grad_tokens else 1.0
    return g2 * tokens_per_batch


def stable_seed(*parts: object) -> int:
    """A seed that is the same in every run and process (``hash()`` of a str is not)."""
    return zlib.crc32(":".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


def expand_mask(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    mask = torch.as_tensor(mask, dtype=torch.bool)
    if mask.shape != shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the parameter shape {tuple(shape)}")
    return mask


def out_proj_slot(family):
    """The slot through which a unit family owns out_proj (KDA: o_proj) input channels, or None."""
    return next((slot for slot in family.slots if slot.param in ("out_proj.weight", "o_proj.weight")), None)
