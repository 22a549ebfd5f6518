"""The pruning frontend: from saliency scores to keep-masks (torchao's split: masks here,
making them fast or small is the backend's job, see :mod:`ssm_profile.pruning.surgery`).

A *target* is what one sensitivity trial prunes in every selected layer:

* ``in_proj``, ``A_log``, ... (kind ``group``): the group's elements, unstructured or N:M;
* ``unit:state``, ``unit:head``, ... (kind ``unit``): whole coupled units, zeroed across every
  tensor the unit touches with one shared index set.

A mask maps full parameter names to boolean tensors (True = keep). Dense-with-zeros is the
hand-off format: applying a mask multiplies weights by it, which always reloads anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..model.arch import MixerInfo, UnitFamily

Mask = dict[str, torch.Tensor]
_NM_RE = re.compile(r"^(\d+):(\d+)$")


@dataclass(frozen=True)
class Target:
    name: str  # "in_proj" | "unit:state"
    kind: str  # "group" | "unit"
    part: str  # group name or unit kind

    @classmethod
    def parse(cls, name: str) -> "Target":
        if name.startswith("unit:"):
            return cls(name, "unit", name[5:])
        return cls(name, "group", name)


def targets_for(mixers: list[MixerInfo]) -> list[Target]:
    """Every group and prunable unit kind present in the model's mixers, in display order."""
    names: dict[str, None] = {}
    for m in mixers:
        for group in m.groups():
            names.setdefault(group, None)
    for m in mixers:
        for fam in m.unit_families().values():
            if fam.prunable:
                names.setdefault(f"unit:{fam.kind}", None)
    return [Target.parse(n) for n in names]


def prunable_params(mixer: MixerInfo, group: str) -> list[str]:
    """Parameters of ``group`` pruned element-wise: everything but biases of linear/conv layers."""
    names = mixer.groups().get(group, [])
    return [n for n in names if not (n.endswith(".bias") and "." in n)]


def parse_structure(structure: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> None; ``"2:4"`` -> (2, 4)."""
    if structure == "unstructured":
        return None
    match = _NM_RE.match(structure)
    if not match or not 0 < int(match.group(1)) < int(match.group(2)):
        raise ValueError(f"structure must be 'unstructured' or N:M with 0 < N < M, got '{structure}'")
    return int(match.group(1)), int(match.group(2))


def element_mask(scores: torch.Tensor, sparsity: float, comparison: str = "tensor",
                 nm: tuple[int, int] | None = None) -> torch.Tensor:
    """Keep-mask zeroing the lowest-scoring fraction ``sparsity`` of elements.

    ``comparison="row"`` ranks within each output row (dim 0) as WANDA does; N:M keeps the ``N``
    best of every ``M`` consecutive elements along the last dimension.
    """
    if nm is not None:
        return _nm_mask(scores, *nm)
    if sparsity <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    flat = scores.reshape(scores.shape[0], -1) if comparison == "row" and scores.ndim >= 2 else scores.reshape(1, -1)
    k = int(round(sparsity * flat.shape[1]))
    if k <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    return _keep_all_but_lowest(flat, k).view_as(scores)


def _keep_all_but_lowest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, False at the ``k`` lowest scores, ties going to the lower index: the mask of a stable
    argsort's first ``k``, found with a selection (linear) instead of a sort (a sort of every
    in_proj of a 130M model took ~5 s a trial)."""
    if k >= flat.shape[1] or bool(torch.isnan(flat).any()):  # NaN order: leave it to the sort
        mask = torch.ones_like(flat, dtype=torch.bool)
        mask.scatter_(1, torch.argsort(flat, dim=1, stable=True)[:, :k], False)
        return mask
    kth = torch.kthvalue(flat, k, dim=1, keepdim=True).values
    below = flat < kth
    ties = flat == kth
    wanted = k - below.sum(dim=1, keepdim=True)  # ties to remove per row, in index order
    return ~(below | (ties & (torch.cumsum(ties, dim=1) <= wanted)))


def _nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    if scores.shape[-1] % m:
        raise ValueError(f"N:M {n}:{m} needs the last dimension ({scores.shape[-1]}) to be a multiple of {m}")
    blocks = scores.reshape(-1, m)
    idx = torch.argsort(blocks, dim=1, descending=True, stable=True)[:, :n]
    mask = torch.zeros_like(blocks, dtype=torch.bool).scatter_(1, idx, True)
    return mask.view_as(scores)


def select_units(scores: torch.Tensor, family: UnitFamily, sparsity: float) -> torch.Tensor:
    """Indices of the units to remove: the lowest-scoring ones, equally many from each block."""
    per_block = family.count // family.blocks
    k = int(round(sparsity * per_block))
    k = min(k, per_block - 1)  # never remove a whole block (a layer keeps at least one head/state)
    if k <= 0:
        return torch.empty(0, dtype=torch.long)
    blocks = scores.view(family.blocks, per_block)
    idx = torch.argsort(blocks, dim=1, stable=True)[:, :k]
    return (idx + torch.arange(family.blocks)[:, None] * per_block).reshape(-1).sort().values


def unit_mask(mixer: MixerInfo, family: UnitFamily, units: torch.Tensor) -> Mask:
    """Element keep-masks of every tensor the removed ``units`` touch (one shared index set)."""
    masks: Mask = {}
    for param, dim, idx in family.indices(units):
        name = mixer.full_name(param)
        if name not in masks:
            masks[name] = torch.ones_like(mixer.param(param), dtype=torch.bool)
        masks[name].index_fill_(dim, idx, False)
    return masks


def merge(masks: list[Mask]) -> Mask:
    out: Mask = {}
    for mask in masks:
        for name, keep in mask.items():
            out[name] = out[name] & keep if name in out else keep.clone()
    return out


@dataclass
class Pruning:
    """A cut: the keep-masks, and the new values of tensors whose kept elements a reconstructing
    criterion changed (SparseGPT updates, FLAP bias compensation); full names -> tensors.

    ``solvers``: masked tensor -> the criterion whose reconstruction from that tensor's mask wrote
    ``values`` (a tensor two cuts share is solved again on their union, see :func:`shared_solves`).
    ``norm_eps``: gated-norm module (full path) -> the eps that makes the zeroed model compute what
    the sliced model computes (see :func:`ssm_profile.model.norms.sliced_norm_eps`)."""

    mask: Mask
    values: dict[str, torch.Tensor]
    solvers: dict[str, str] = field(default_factory=dict)
    norm_eps: dict[str, float] = field(default_factory=dict)

    @classmethod
    def combine(cls, parts: list["Pruning"]) -> "Pruning":
        """Every part's zeros; where two parts rewrite the same tensor, the later part's values (a
        reconstructing criterion solves such a tensor again on the union: Scorer.solve_jointly)."""
        values: dict[str, torch.Tensor] = {}
        solvers: dict[str, str] = {}
        norm_eps: dict[str, float] = {}
        for part in parts:
            values.update(part.values)
            solvers.update(part.solvers)
            norm_eps.update(part.norm_eps)
        return cls(merge([part.mask for part in parts]), values, solvers, norm_eps)


def shared_solves(parts: list[Pruning]) -> dict[str, list[str]]:
    """Tensors a reconstructing criterion rewrote that two or more ``parts`` cut: full name -> the
    criteria (sorted: the same whatever the parts' order) that must each solve it once on the union
    of the parts' masks."""
    solvers: dict[str, set[str]] = {}
    for part in parts:
        for name, criterion in part.solvers.items():
            solvers.setdefault(name, set()).add(criterion)
    return {name: sorted(criteria) for name, criteria in solvers.items()
            if sum(name in part.mask and not bool(part.mask[name].all()) for part in parts) > 1}


def pruned_count(mask: Mask) -> int:
    return int(sum((~keep).sum() for keep in mask.values()))


def write_cut(params: dict[str, torch.nn.Parameter], mask: Mask, values: dict[str, torch.Tensor] | None = None) -> None:
    """In place: write ``values`` (new tensors, e.g. reconstructed weights), then zero where ``mask`` is False."""
    with torch.no_grad():
        for name, value in (values or {}).items():
            params[name].copy_(value.to(dtype=params[name].dtype, device=params[name].device))
        for name, keep in mask.items():
            params[name].masked_fill_(~keep.to(params[name].device), 0)


class MaskApplier:
    """Applies masks in place and restores the exact original values (bit for bit) afterwards;
    also the gated norms' eps of a sliced-form emulation (``norm_eps``)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.params = dict(model.named_parameters())
        self._saved: dict[str, torch.Tensor] = {}
        self._saved_eps: dict[str, float] = {}

    def __enter__(self) -> "MaskApplier":
        return self

    def apply(self, mask: Mask, values: dict[str, torch.Tensor] | None = None,
              norm_eps: dict[str, float] | None = None) -> None:
        """:func:`write_cut` after saving the original of every tensor it changes; ``norm_eps``: the
        norms' ``variance_epsilon`` to use meanwhile (module path -> eps)."""
        for name in [*(values or {}), *mask]:
            if name not in self._saved:
                self._saved[name] = self.params[name].detach().clone()
        write_cut(self.params, mask, values)
        for path, eps in (norm_eps or {}).items():
            norm = self.model.get_submodule(path)
            self._saved_eps.setdefault(path, norm.variance_epsilon)
            norm.variance_epsilon = eps

    def restore(self) -> None:
        with torch.no_grad():
            for name, original in self._saved.items():
                self.params[name].copy_(original)
        for path, eps in self._saved_eps.items():
            self.model.get_submodule(path).variance_epsilon = eps
        self._saved.clear()
        self._saved_eps.clear()

    def __exit__(self, *exc) -> None:
        self.restore()
