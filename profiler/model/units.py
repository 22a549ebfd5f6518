"""Coupled structural units: a :class:`Slot` is the run of indices one unit touches in one tensor, a
:class:`UnitFamily` one kind of unit in one mixer with all its slots (see :mod:`ssm_profile.model.arch`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Slot:
    """Unit ``u`` touches indices ``[start(u), start(u) + width)`` of ``param`` along ``dim``, with
    ``start(u) = offset + u*width``; and ``repeats`` copies of that run, ``every`` indices apart.

    ``period`` > 0 numbers units in blocks of ``period`` laid out ``stride`` indices apart:
    ``start(u) = offset + (u // period)*stride + (u % period)*width`` (Qwen3-Next packs each key
    head's rows together, so value head u of key head u // r sits inside that key head's block).
    ``repeats`` serves units that are the same channel of every head (Gated DeltaNet's key and
    value channels: one norm weight per channel, shared by all heads).
    """

    param: str  # parameter name relative to the mixer, e.g. "in_proj.weight"
    dim: int
    offset: int
    width: int = 1
    period: int = 0
    stride: int = 0
    repeats: int = 1
    every: int = 0

    @property
    def span(self) -> int:
        """Indices one unit touches in this slot."""
        return self.width * self.repeats

    def indices(self, units: torch.Tensor) -> torch.Tensor:
        """The indices of ``units``, unit by unit (each unit's ``span`` indices together)."""
        units = torch.as_tensor(units, dtype=torch.long).reshape(-1)
        if self.period:
            base = self.offset + (units // self.period) * self.stride + (units % self.period) * self.width
        else:
            base = self.offset + units * self.width
        local = (torch.arange(self.repeats)[:, None] * self.every + torch.arange(self.width)[None, :]).reshape(-1)
        return (base[:, None] + local).reshape(-1)


@dataclass(frozen=True)
class UnitFamily:
    """One kind of coupled structural unit in one mixer."""

    kind: str  # channel | state | dt_rank | head | head_channel | group | value_head | key_head | ...
    count: int
    slots: tuple[Slot, ...]
    description: str
    # Slicing constraints: units are cut in equal numbers from each of ``blocks`` consecutive
    # blocks (Mamba-2 heads and states per group); ``prunable`` False means the kind is never a
    # pruning target and cannot be sliced out (it may still be zeroed), e.g. Mamba-2's B/C groups.
    # Whether a uniform cut can be saved in the stock config is the analysis's ``stock_config``.
    # ``normalised``: why slicing these units would change the model (a norm averages over their
    # dimension, so a zeroed unit counts in the mean and a sliced one does not); empty when it would not.
    blocks: int = 1
    prunable: bool = True
    normalised: str = ""

    def indices(self, units: torch.Tensor | list[int]) -> list[tuple[str, int, torch.Tensor]]:
        """The shared index set of ``units`` in every coupled tensor: (param, dim, indices)."""
        units = torch.as_tensor(units, dtype=torch.long)
        return [(s.param, s.dim, s.indices(units)) for s in self.slots]

    @property
    def tensors(self) -> list[str]:
        return sorted({s.param for s in self.slots})

    def elements_per_unit(self, mixer: Any) -> int:
        """Parameters one unit owns across all its coupled tensors."""
        total = 0
        for slot in self.slots:
            shape = mixer.param(slot.param).shape
            other = 1
            for d, size in enumerate(shape):
                if d != slot.dim:
                    other *= size
            total += slot.span * other
        return total


def and_biases(slots: list[Slot]) -> list[Slot]:
    """Each row slot of a weight, and the same rows of its bias (the mixer keeps only those it has)."""
    out = []
    for s in slots:
        out.append(s)
        if s.dim == 0 and s.param.endswith(".weight"):
            out.append(Slot(s.param[: -len("weight")] + "bias", 0, s.offset, s.width, s.period, s.stride,
                            s.repeats, s.every))
    return out
