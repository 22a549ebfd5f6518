"""Whole SSM layers as plan options (``--structures layers``): each removable layer is one more target
with one level, "remove it", measured like any other cut and counted in the budgets.

* **Cost**: no profile trial removes a whole layer (its layer blocks prune one target in a few layers),
  so the plan measures each candidate's removal on the search windows, the windows every other
  option's ΔL comes from: the model with that decoder layer returning its input (the residual stream
  passes it unchanged), which gives the logits of the model without it; risk: the upper end of the
  paired bootstrap 95% interval of its ΔL.
* **Gain**: params: what removing the layer frees, counted on the meta model
  (:func:`ssm_profile.pruning.layers.removed_parameters`: norms, an MLP in the same decoder layer,
  Zamba2 adapters included); FLOPs/token and state bytes/sequence: the analysis' figures of that layer.
* **Overlaps**: another action's cut inside a removed layer is counted once (its share of that layer).
* **Refused**: a layer whose removal the stock config cannot describe, or after which transformers
  cannot run the default forward, or the last SSM layer (:func:`ssm_profile.pruning.layers.removal_problem`),
  is no option; the plan says why in one line. Layers that may go alone but not together (Jamba's
  attention period, Zamba's pair of hybrid layers) are excluded from the solution by :class:`LayerVeto`.
* **Apply** removes the layers last, so every other action addresses the plan's layer numbering.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..base.errors import PlanError
from ..documents import LAYERS
from ..profiling.results import ProfileResult
from .options import Option, build_options, overlaps
from .request import METRICS
from .shapes import Shapes

LAYER_TARGET = "layer"
LAYER_CRITERION = "measured"  # chosen by its own measured removal loss, no saliency criterion


def is_layer(option: Any) -> bool:
    return getattr(option, "structure", None) == LAYERS


def wants_layers(structures: Sequence[str] | None) -> bool:
    return structures is not None and LAYERS in structures


def plan_options(result: ProfileResult, metric: str, criterion: str | None, structures: Sequence[str] | None,
                 shapes: Shapes, measurer: Any) -> tuple[list[list[Option]], list[str]]:
    """:func:`build_options` for the profile's cuts, plus whole layers when ``structures`` lists them."""
    if not wants_layers(structures):
        return build_options(result, metric, criterion, structures, shapes)
    others = [s for s in structures or () if s != LAYERS]
    options: list[list[Option]] = []
    notes: list[str] = []
    nothing = None
    if others:
        try:
            options, notes = build_options(result, metric, criterion, others, shapes)
        except PlanError as err:  # the layers may still reduce the metric
            nothing = err
    layer_levels, layer_notes = layer_options(result, shapes, measurer)
    notes += layer_notes
    options += [levels for levels in layer_levels if levels[1].gain(metric) > 0]
    if not options:
        raise nothing or PlanError(f"no SSM layer can be removed ({'; '.join(layer_notes) or 'none measured'}); "
                                   "choose other --structures")
    return options, notes


def layer_options(result: ProfileResult, shapes: Shapes, measurer: Any) -> tuple[list[list[Option]], list[str]]:
    """One target per removable SSM layer: level 0 and "removed", its ΔL measured on the search windows."""
    from ..pruning.layers import layer_parameters, removal_problem, removed_parameters, ssm_layers

    if measurer is None:
        return [], [("whole layers are measured by the plan itself (no profile trial removes one): with "
                     "--no-measure they are left out")]
    model = measurer.model
    meta = shapes.model
    by_layer = _analysis_by_layer(result)
    out: list[list[Option]] = []
    refused: list[str] = []
    for layer in ssm_layers(model):
        why = removal_problem(model, [layer], meta=meta)
        if why:
            refused.append(f"layer {layer}: {why}")
            continue
        measurer.note(0, 1, f"measuring the removal of layer {layer}")
        m = measurer.measure_layers([layer])
        flops, state, analysed = by_layer.get(layer, (0, 0, 0))
        params = removed_parameters(meta, [layer]) if meta is not None else analysed
        opt = Option(LAYER_TARGET, 1.0, LAYERS, LAYER_CRITERION, m["delta_loss"], math.expm1(min(m["delta_loss"], 700)),
                     risk=max(0.0, math.log1p(max(m["interval"][1], -0.999999))), params=int(params),
                     flops=int(flops), state=int(state), layers=[layer],
                     removed={n: float(model.get_parameter(n).numel()) for n in layer_parameters(model, layer)})
        out.append([Option(LAYER_TARGET, 0.0, "none", None, 0.0, 0.0, layers=[]), opt])
    notes = [("whole-layer removal left out where transformers could not run or describe the rest: "
              f"{'; '.join(refused)}")] if refused else []
    if out:
        notes.append("each layer's removal measured alone on the search windows (perplexity): " + ", ".join(
            f"layer {levels[1].layers[0]} {levels[1].rel_ppl_increase:+.1%}" for levels in out))
    return out, notes


def _analysis_by_layer(result: ProfileResult) -> dict[int, tuple[int, int, int]]:
    """layer -> (FLOPs/token, state bytes/sequence, params) of every analysed group in that decoder layer."""
    out: dict[int, list[int]] = {}
    for g in result.analysis.groups:
        if g.layer is not None:
            row = out.setdefault(int(g.layer), [0, 0, 0])
            row[0] += int(g.flops_per_token)
            row[1] += int(g.state_bytes)
            row[2] += int(g.numel)
    return {layer: (f, s, p) for layer, (f, s, p) in out.items()}


def plan_overlaps(options: list[list[Option]], shapes: Shapes) -> dict[str, dict]:
    """:func:`overlaps`, plus what another action cuts inside a removed layer (counted once)."""
    out = overlaps(options, shapes)
    for t2, levels in enumerate(options):
        if not is_layer(levels[-1]):
            continue
        layer = levels[1]
        inside = set(layer.removed)
        for t1, other_levels in enumerate(options):
            if is_layer(other_levels[-1]):
                continue
            for l1, other in enumerate(other_levels[1:], 1):
                key = ((t1, l1), (t2, 1)) if t1 < t2 else ((t2, 1), (t1, l1))
                params = sum(v for p, v in other.removed.items() if p in inside)
                if params > 0:
                    out["params"][key] = min(params, float(other.params), float(layer.params))
                share = 1 / len(other.layers) if layer.layers[0] in other.layers and other.layers else 0.0
                for metric in ("flops", "state"):
                    if other.gain(metric) and share:
                        out[metric][key] = other.gain(metric) * share
    return out


def overlap_in_layer(layer: Option, other: Option, mask: Any) -> int:
    """Exact parameters ``other`` (its keep-mask) removes inside the removed layer."""
    inside = set(layer.removed)
    return int(sum((~keep).sum() for name, keep in mask.items() if name in inside))


class LayerVeto:
    """Whether the layers a solution removes may go together; if not, the cut that excludes them."""

    def __init__(self, options: list[list[Option]], measurer: Any, shapes: Shapes):
        self.targets = [t for t, levels in enumerate(options) if is_layer(levels[-1])]
        self.options, self.measurer, self.shapes = options, measurer, shapes
        self.refused: dict[tuple[int, ...], str] = {}
        self.notes: list[str] = []

    def __call__(self, choice: Sequence[int]) -> dict[int, int] | None:
        from ..pruning.layers import removal_problem

        chosen = [t for t in self.targets if choice[t] > 0]
        if len(chosen) < 2:
            return None
        layers = tuple(sorted(self.options[t][1].layers[0] for t in chosen))
        if layers not in self.refused:
            self.refused[layers] = removal_problem(self.measurer.model, layers, meta=self.shapes.model)
            if self.refused[layers]:
                self.notes.append(f"layers {list(layers)} cannot all go: {self.refused[layers]}")
        return {t: 1 for t in chosen} if self.refused[layers] else None


def layer_totals(actions: list[Option], sliced_effect: dict[str, Any] | None) -> dict[str, float]:
    """FLOPs, state and physically removed params of the removed layers with the sliced unit cuts
    (``sliced_effect``: what those remove together in every layer), a sliced cut inside a removed layer once."""
    removed = {a.layers[0] for a in actions if is_layer(a)}
    units = [a for a in actions if a.unit_kind and not is_layer(a)]
    covered = set().union(*(set(a.layers) for a in units)) if units else set()
    keep = 1 - len(removed & covered) / len(covered) if covered else 1.0
    effect = sliced_effect or {"params": 0, "flops": 0, "state": 0}
    out = {m: effect[m] * keep + sum(a.gain(m) for a in actions if is_layer(a)) for m in METRICS}
    return {"flops": out["flops"], "state": out["state"], "params_sliced": out["params"]}
