"""Shape accounting: what uniform unit cuts remove, measured by slicing a shape-only (meta-device) model.

Without a model to slice (the run's config cannot be rebuilt), fractions of the analysis'
per-group numbers are used instead (an estimate, noted in the plan).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..documents import one_line
from ..profiling.results import ProfileResult


class Shapes:
    """Shape-only (meta-device) copy of the run's model: unit families, sliced sizes, expressibility."""

    def __init__(self, result: ProfileResult, loaded: Any = None):
        self.result = result
        self.model = None
        self.problem = ""
        self._effects: dict[tuple, dict[str, Any]] = {}
        try:
            self.model = self._build(result, loaded)
        except Exception as err:  # noqa: BLE001 - any failure just means the analytic fallback
            self.problem = one_line(f"{type(err).__name__}: {err}", 120)
        self.numel = {}
        for g in result.analysis.mixer_groups():
            for name, shape in zip(g.params, g.shapes):
                self.numel[name] = int(np.prod(shape)) if shape else 1

    @staticmethod
    def _build(result: ProfileResult, loaded: Any):
        import torch
        import transformers

        from ..model.arch import find_mixers

        if loaded is not None and getattr(loaded.model, "config", None) is not None:
            cls, config = type(loaded.model), copy.deepcopy(loaded.model.config)
        else:
            cls = getattr(transformers, result.record.model.class_name)
            config = cls.config_class.from_dict(dict(result.record.model.config))
        with torch.device("meta"):
            model = cls(config)
        if not find_mixers(model):
            raise ValueError("no Mamba mixer in the rebuilt model")
        return model

    # --- families
    def families(self, kind: str) -> dict[int, Any]:
        """layer -> UnitFamily (only the count and blocks are used without the meta model)."""
        from ..model.arch import UnitFamily, find_mixers

        if self.model is not None:
            return {m.layer: m.unit_family(kind) for m in find_mixers(self.model) if kind in m.unit_families()}
        dims = self.result.analysis.model.dims
        blocks = 1
        if "num_heads" in dims:
            blocks = {"head": dims.get("n_groups", 1), "state": dims.get("n_groups", 1),
                      "head_channel": dims["num_heads"]}.get(kind, 1)
        if kind == "value_head":  # Gated DeltaNet: value heads in equal numbers under every key head
            blocks = dims.get("num_k_heads", 1)
        return {u.layer: UnitFamily(kind, u.count, (), u.description, blocks=blocks, prunable=u.prunable)
                for u in self.result.analysis.units if u.kind == kind and u.layer is not None}

    # --- effects of uniform unit cuts
    def effect(self, cuts: Mapping[str, float]) -> dict[str, Any]:
        """Params/FLOPs/state that slicing uniform unit cuts {kind: sparsity} removes, and per-tensor
        removed elements (single cuts). The params equal the elements zeroed when the cut is executed
        as zeros; FLOPs and state are only removed where :meth:`execution` slices."""
        key = tuple(sorted(cuts.items()))
        if key not in self._effects:
            self._effects[key] = self._meta_effect(cuts) if self.model is not None else self._analytic_effect(cuts)
        return self._effects[key]

    def execution(self, cuts: Mapping[str, float]) -> dict[str, str]:
        """{kind: why it stays zeros, "" when sliced} for uniform unit cuts executed together, decided
        by :func:`ssm_profile.pruning.surgery.slice_cuts` (what apply runs) on a meta copy of the model."""
        from ..model.arch import find_mixers
        from ..pruning.surgery import slice_cuts

        cuts = {kind: s for kind, s in cuts.items() if s > 0}
        key = ("execution", tuple(sorted(cuts.items())))
        if key not in self._effects:
            if self.model is None:
                why = f"could not rebuild the model from the run's config to check slicing ({self.problem})"
                self._effects[key] = {kind: why for kind in cuts}
            else:
                model = copy.deepcopy(self.model)
                ids: dict[str, dict[int, list[int]]] = {}
                for m in find_mixers(model):
                    for kind, sparsity in cuts.items():
                        if kind in m.unit_families():
                            ids.setdefault(kind, {})[m.layer] = first_units(m.unit_family(kind), sparsity)
                outcomes = slice_cuts(model, ids)
                self._effects[key] = {kind: outcomes[kind].reason if kind in outcomes else "no unit removed"
                                      for kind in cuts}
        return dict(self._effects[key])

    def _meta_effect(self, cuts: Mapping[str, float]) -> dict[str, Any]:
        """Slice the cuts out of meta-device copies; mixers of identical shapes are sliced once."""
        from ..model.arch import MixerInfo, find_mixers

        groups: dict[tuple, list] = {}
        for m in find_mixers(self.model):
            signature = (m.kind, tuple(sorted((n, tuple(p.shape)) for n, p in m.params.items())))
            groups.setdefault(signature, []).append(m)
        out = {"params": 0, "flops": 0, "state": 0, "removed": {}}
        for members in groups.values():
            first = members[0]
            part, removed = _slice_effect(MixerInfo(first.index, first.layer, first.path,
                                                    copy.deepcopy(first.module), first.kind), cuts)
            for key in ("params", "flops", "state"):
                out[key] += part[key] * len(members)
            if len(cuts) == 1:
                for m in members:
                    for rel, n in removed.items():
                        out["removed"][m.full_name(rel)] = n
        return out

    def _analytic_effect(self, cuts: Mapping[str, float]) -> dict[str, Any]:
        """Without a model to slice: fractions of the analysis' per-group numbers (an estimate)."""
        a = self.result.analysis
        out = {"params": 0, "flops": 0, "state": 0, "removed": {}}
        for kind, sparsity in cuts.items():
            fams = self.families(kind)
            for u in a.units:
                if u.kind != kind or u.layer not in fams:
                    continue
                fam = fams[u.layer]
                k = removed_per_block(fam, sparsity) * fam.blocks
                frac = k / u.count if u.count else 0.0
                out["params"] += k * u.params_per_unit
                rel = set(u.tensors)
                layer_groups = [g for g in a.mixer_groups() if g.layer == u.layer]
                touched = {g.group for g in layer_groups for p in g.params if any(p.endswith("." + r) for r in rel)}
                for g in layer_groups:
                    scan = g.group == "A_log" and kind != "dt_rank"
                    if g.group in touched or scan:
                        out["flops"] += int(frac * g.flops_per_token)
                        if kind != "dt_rank":
                            out["state"] += int(frac * g.state_bytes)
                    if len(cuts) == 1:
                        for p in g.params:
                            if any(p.endswith("." + r) for r in rel):
                                out["removed"][p] = out["removed"].get(p, 0.0) + frac * self.numel.get(p, 0)
        return out


def _slice_effect(mixer: Any, cuts: Mapping[str, float]) -> tuple[dict[str, int], dict[str, float]]:
    """Slice uniform cuts {kind: sparsity} out of one (meta) mixer in place: what it removed
    (params, FLOPs/token and state bytes, analysis conventions) and elements removed per relative
    parameter name (single cuts)."""
    from ..model.analysis import group_flops, group_state_bytes
    from ..pruning.surgery import slice_units

    def totals() -> tuple[int, int, int]:
        groups = mixer.groups()
        return (sum(p.numel() for p in mixer.params.values()), sum(group_flops(mixer, g) for g in groups),
                sum(group_state_bytes(mixer, g) for g in groups))

    before = totals()
    removed: dict[str, float] = {}
    for kind, sparsity in cuts.items():
        if kind not in mixer.unit_families():
            continue
        family = mixer.unit_family(kind)
        cut = first_units(family, sparsity)
        if not cut:
            continue
        if len(cuts) == 1:
            for param, dim, idx in family.indices(cut):
                shape = mixer.param(param).shape
                removed[param] = removed.get(param, 0.0) + len(idx) * int(np.prod(shape)) / shape[dim]
        gone = set(cut)
        try:  # sliced here only to count: whether apply slices is Shapes.execution's question
            slice_units(mixer, kind, [u for u in range(family.count) if u not in gone], for_counting=True)
        except ValueError:
            continue  # not a prunable kind: nothing to count
    after = totals()
    return {"params": before[0] - after[0], "flops": before[1] - after[1], "state": before[2] - after[2]}, removed


_SHAPES_CACHE: dict[tuple, Shapes] = {}


def shapes_for(result: ProfileResult, loaded: Any = None) -> Shapes:
    """A :class:`Shapes` per model (its slicing results are cached: interactive re-solves stay fast)."""
    model = result.record.model
    key = (model.fingerprint, model.class_name, json.dumps(model.config, sort_keys=True, default=str),
           json.dumps(result.analysis.model.dims, sort_keys=True))
    shapes = _SHAPES_CACHE.get(key)
    if shapes is None or shapes.model is None:
        shapes = Shapes(result, loaded)
        if len(_SHAPES_CACHE) >= 4:
            _SHAPES_CACHE.pop(next(iter(_SHAPES_CACHE)))
        _SHAPES_CACHE[key] = shapes
    shapes.result = result
    return shapes


def first_units(family: Any, sparsity: float) -> list[int]:
    """The first :func:`removed_per_block` units of every block (the shapes of any uniform cut)."""
    per_block, k = family.count // family.blocks, removed_per_block(family, sparsity)
    return [u for u in range(family.count) if u % per_block < k]


def removed_per_block(family: Any, sparsity: float) -> int:
    """Units :func:`ssm_profile.criteria.masks.select_units` removes from each block at ``sparsity``."""
    per_block = family.count // family.blocks
    return max(0, min(round(sparsity * per_block), per_block - 1))

