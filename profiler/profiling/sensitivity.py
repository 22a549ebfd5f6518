"""Measured sensitivity: prune one target at rising sparsity, measure held-out loss, restore.

A trial = (target, criterion, sparsity, layer). ``layer=None`` prunes the target in every SSM
layer (the model-wide sweep); an integer prunes it in that layer only (the per-layer heatmap), or
in the ``span`` layers from it on (a block of layers, which the adaptive sweep probes first).
Weights are restored bit for bit after every trial (:class:`ssm_profile.criteria.masks.MaskApplier`).

With a :class:`ssm_profile.profiling.earlystop.StopRule` a trial is evaluated chunk by chunk and may stop
early (``stopped``): its ``window_losses`` then hold the windows evaluated (a prefix of the search
windows) and ``delta_loss`` is the paired mean over them. A *screen* (``screen=n``) is evaluated on
the first ``n`` search windows only, by design: the adaptive sweep screens every criterion that way
and completes only the leader (:mod:`ssm_profile.profiling.adaptive`).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import torch

from ..model.arch import MixerInfo, UnitFamily
from ..model.norms import sliced_norm_eps, stock_width_problems
from ..criteria import NotApplicable, ScoringContext, get
from ..calibration.data import batch_losses
from .earlystop import StopRule
from ..mixers.choice import Kernels
from ..criteria.masks import (Mask, MaskApplier, Pruning, Target, element_mask, parse_structure, pruned_count, prunable_params,
                    select_units, shared_solves, unit_mask)

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class TrialSpec:
    target: str
    criterion: str
    sparsity: float
    layer: int | None = None  # None = every SSM layer
    span: int = 1  # with a layer: the layers layer .. layer + span - 1
    screen: int = 0  # > 0: evaluated on the first ``screen`` search windows only

    @property
    def key(self) -> str:
        key = f"{self.target}|{self.criterion}|{self.sparsity:.4f}|{layer_text(self.layer, self.span)}"
        return key + (f"|screen{self.screen}" if self.screen else "")

    @property
    def completed(self) -> "TrialSpec":
        """The same trial on every search window (what a screen is a preview of)."""
        return TrialSpec(self.target, self.criterion, self.sparsity, self.layer, self.span)

    def covers(self, layer: int) -> bool:
        return self.layer is None or self.layer <= layer < self.layer + self.span


def layer_text(layer: int | None, span: int = 1) -> str:
    """'all', '3', or '4-7' for a block of layers (the journal key's last field)."""
    if layer is None:
        return "all"
    return str(layer) if span == 1 else f"{layer}-{layer + span - 1}"


@dataclass
class Trial:
    target: str
    criterion: str
    sparsity: float
    layer: int | None
    loss: float
    delta_loss: float
    perplexity: float
    rel_ppl_increase: float
    pruned_params: int
    predicted_delta: float | None
    seconds: float
    window_losses: list[float] = field(default_factory=list)
    span: int = 1  # layers pruned from ``layer`` on (see TrialSpec)
    stopped: bool = False  # ended early, far outside tolerance (ssm_profile.profiling.earlystop): "lost"
    screen: int = 0  # > 0: a screen, evaluated on the first ``screen`` search windows only (see TrialSpec)

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def spec(self) -> TrialSpec:
        return TrialSpec(self.target, self.criterion, self.sparsity, self.layer, self.span, self.screen)

    @property
    def partial(self) -> bool:
        """Measured on fewer than all search windows (stopped early or a screen): never a plan option."""
        return self.stopped or self.screen > 0

    @property
    def windows_evaluated(self) -> int:
        return len(self.window_losses)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Scorer:
    """Element and unit scores per criterion, computed on first use and cached. ``cache_bytes``
    bounds the element scores held at once (least recently used go first and are recomputed from
    the statistics when asked again): every criterion's scores of every weight of a 1.4B model
    would take ~35 GB."""

    def __init__(self, model: torch.nn.Module, ctx: ScoringContext, criteria: Iterable[str],
                 cache_bytes: int | None = None):
        self.ctx = ctx
        self.criteria = {name: get(name) for name in criteria}
        self.cache_bytes = cache_bytes
        self._elements: OrderedDict[tuple[str, str, str], torch.Tensor | NotApplicable] = OrderedDict()
        self._element_bytes = 0  # of the tensors in ``_elements``
        self._units: dict[tuple[str, str, str], torch.Tensor | NotApplicable] = {}
        self._chosen_cuts: dict[tuple, tuple[torch.Tensor, torch.Tensor] | None] = {}

    def element(self, criterion: str, mixer: MixerInfo, param: str) -> torch.Tensor:
        key = (criterion, mixer.path, param)
        if key not in self._elements:
            crit = self.criteria[criterion]
            try:
                if not crit.scores_elements:
                    raise NotApplicable(f"{criterion} scores structured units only")
                self._elements[key] = crit.score(self.ctx, mixer, param).detach().float().cpu()
                self._element_bytes += _nbytes(self._elements[key])
            except NotApplicable as err:
                self._elements[key] = err
            self._evict(keep=key)
        self._elements.move_to_end(key)
        value = self._elements[key]
        if isinstance(value, NotApplicable):
            raise value
        return value

    def _evict(self, keep: tuple[str, str, str]) -> None:
        """Drop the least recently used element scores until the cache fits ``cache_bytes``."""
        if self.cache_bytes is None:
            return
        for key in list(self._elements):  # oldest first
            if self._element_bytes <= self.cache_bytes:
                break
            value = self._elements[key]
            if key != keep and isinstance(value, torch.Tensor):
                self._element_bytes -= _nbytes(value)
                del self._elements[key]

    def units(self, criterion: str, mixer: MixerInfo, kind: str) -> torch.Tensor:
        key = (criterion, mixer.path, kind)
        if key not in self._units:
            try:
                family = mixer.unit_family(kind)
                self._units[key] = self.criteria[criterion].unit_scores(self.ctx, mixer, family).detach().double().cpu()
            except (NotApplicable, KeyError) as err:
                self._units[key] = NotApplicable(str(err))
        value = self._units[key]
        if isinstance(value, NotApplicable):
            raise value
        return value

    def prune(self, spec: TrialSpec, mixers: list[MixerInfo], structure: str = "unstructured") -> Pruning:
        """The keep-mask of one trial across the selected layers, and the new values of the tensors a
        reconstructing criterion changes (raises NotApplicable)."""
        target = Target.parse(spec.target)
        parts = []
        for mixer in mixers:
            if not spec.covers(mixer.layer):
                continue
            if target.kind == "group":
                if target.part not in mixer.groups():
                    continue
                keeps, values = self._group_cut(spec, mixer, target.part, structure)
            else:
                if target.part not in mixer.unit_families():
                    continue
                family = mixer.unit_family(target.part)
                units = select_units(self.units(spec.criterion, mixer, target.part), family, spec.sparsity)
                keeps, values = relative(mixer, unit_mask(mixer, family, units)), {}
            parts.append(self.reconstruction(spec.criterion, mixer, keeps, values))
            if target.kind == "unit" and spec.layer is None:  # a uniform cut: apply slices it where it can
                parts[-1].norm_eps.update(self._sliced_norm(mixer, family, parts[-1].mask))
        if not parts:
            raise NotApplicable(f"no layer has {spec.target}")
        return Pruning.combine(parts)

    def reconstruction(self, criterion: str, mixer: MixerInfo, keeps: dict[str, torch.Tensor],
                       chosen: dict[str, torch.Tensor] | None = None) -> Pruning:
        """The cut ``keeps`` of ``mixer`` (relative names) with the values ``criterion`` rewrites: those it
        ``chosen`` with the mask, and its :meth:`~ssm_profile.criteria.Criterion.reconstruct` of the rest
        (tensor by tensor, so each rewritten tensor names the mask it was solved from: ``solvers``)."""
        crit = self.criteria[criterion]
        values = dict(chosen or {})
        solved = set(values)
        for param, keep in keeps.items():
            if param in solved:
                continue
            rewritten = crit.reconstruct(self.ctx, mixer, {param: keep})
            if rewritten:
                values.update(rewritten)
                solved.add(param)
        return Pruning({mixer.full_name(p): k for p, k in keeps.items()},
                       {mixer.full_name(p): v.detach().float().cpu() for p, v in values.items()},
                       {mixer.full_name(p): criterion for p in solved})

    def solve_jointly(self, parts: list[Pruning], mixers: list[MixerInfo]) -> Pruning:
        """``parts`` together: every part's zeros, and each tensor that two parts cut and a reconstructing
        criterion rewrote solved once on the union of their masks (one SparseGPT solve, not the later
        part's values over the earlier part's)."""
        combined = Pruning.combine(parts)
        by_path = {m.path: m for m in mixers}
        for name, criteria in shared_solves(parts).items():
            path, param = _split_param(name, by_path)
            for criterion in criteria:
                joint = self.reconstruction(criterion, by_path[path], {param: combined.mask[name]})
                combined.values.update(joint.values)
        return combined

    def _sliced_norm(self, mixer: MixerInfo, family: UnitFamily, mask: Mask) -> dict[str, float]:
        """{gated norm path: eps} that makes the zeroed cut compute what apply's slice of it writes
        (:mod:`ssm_profile.model.norms`); empty where apply keeps the cut as zeros or no norm group
        loses channels."""
        name = mixer.full_name("norm.weight")
        if family.normalised or name not in mask:
            return {}
        eps = sliced_norm_eps(mixer, mask[name])
        config = getattr(self.ctx.model, "config", None)
        if eps is None or stock_width_problems(config, mixer, int(mask[name].sum())):
            return {}
        return {f"{mixer.path}.norm": eps}

    def mask(self, spec: TrialSpec, mixers: list[MixerInfo], structure: str = "unstructured") -> Mask:
        """The keep-mask of one trial across the selected layers (raises NotApplicable)."""
        return self.prune(spec, mixers, structure).mask

    def _group_cut(self, spec: TrialSpec, mixer: MixerInfo, group: str,
                   structure: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(keep-masks, values the criterion chose with them) of the group's prunable tensors."""
        crit = self.criteria[spec.criterion]
        nm = parse_structure(structure)
        keeps, values = {}, {}
        for param in prunable_params(mixer, group):
            chosen = self._chosen(spec, mixer, param, nm) if crit.reconstructs else None
            if chosen is None:
                scores = self.element(spec.criterion, mixer, param)
                keeps[param] = element_mask(scores, spec.sparsity, crit.comparison, nm)
            else:
                keeps[param], values[param] = chosen
        return keeps, values

    def _chosen(self, spec: TrialSpec, mixer: MixerInfo, param: str,
                nm: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The criterion's own (keep, values) of an element cut (SparseGPT), cached for the current
        (criterion, sparsity, structure) only: a copy of every weight at every level would not fit
        for a large model."""
        level = (spec.criterion, round(spec.sparsity, 6), nm)
        key = (*level, mixer.path, param)
        if any(k[:3] != level for k in self._chosen_cuts):
            self._chosen_cuts.clear()
        if key not in self._chosen_cuts:
            chosen = self.criteria[spec.criterion].prune(self.ctx, mixer, param, spec.sparsity, nm)
            self._chosen_cuts[key] = None if chosen is None else (chosen[0], chosen[1].detach().float().cpu())
        return self._chosen_cuts[key]

    def predicted_delta(self, spec: TrialSpec, mask: Mask, mixers: list[MixerInfo]) -> float | None:
        crit = self.criteria[spec.criterion]
        if not crit.predicts_loss:
            return None
        by_path = {m.path: m for m in mixers}
        total = 0.0
        for name, keep in mask.items():
            path, param = _split_param(name, by_path)
            try:
                total += float(crit.predict_delta_loss(self.ctx, by_path[path], param, keep))
            except NotApplicable:
                return None
        return total

    def applies(self, criterion: str, target: Target, mixers: list[MixerInfo]) -> str | None:
        """None when ``criterion`` can score ``target``, else the reason it cannot. Decided on the first
        layer that has the target; a group from its element scores (cached for the sweep), not from a
        whole cut, which for a reconstructing criterion (SparseGPT) would solve every layer."""
        try:
            if target.kind == "unit":
                self.mask(TrialSpec(target.name, criterion, 0.5), mixers[:1])
                return None
            for mixer in mixers:
                if target.part in mixer.groups():
                    for param in prunable_params(mixer, target.part):
                        self.element(criterion, mixer, param)
                    return None
        except (NotApplicable, ValueError) as err:
            return str(err)
        return f"no layer has {target.name}"


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def relative(mixer: MixerInfo, mask: Mask) -> dict[str, torch.Tensor]:
    """A mask of ``mixer``'s tensors keyed by names relative to the mixer."""
    return {name[len(mixer.path) + 1:]: keep for name, keep in mask.items()}


def _split_param(name: str, by_path: dict[str, MixerInfo]) -> tuple[str, str]:
    for path in by_path:
        if name.startswith(path + "."):
            return path, name[len(path) + 1 :]
    raise KeyError(name)


def plan_trials(scorer: Scorer, mixers: list[MixerInfo], targets: list[Target], criteria: list[str],
                sparsities: Iterable[float], per_layer: bool, probe_sparsity: float,
                layer_criterion: str) -> tuple[list[TrialSpec], list[dict[str, Any]]]:
    """All trials to run, and the (criterion, target) pairs skipped with the reason."""
    specs, skipped = [], []
    for target in targets:
        for criterion in criteria:
            reason = scorer.applies(criterion, target, mixers)
            if reason:
                skipped.append({"criterion": criterion, "target": target.name, "reason": reason})
                continue
            specs.extend(TrialSpec(target.name, criterion, float(s)) for s in sparsities)
    if per_layer:
        for target in targets:
            if scorer.applies(layer_criterion, target, mixers):
                continue
            for mixer in mixers:
                specs.append(TrialSpec(target.name, layer_criterion, float(probe_sparsity), mixer.layer))
    return specs, skipped


def run_trial(model: torch.nn.Module, spec: TrialSpec, scorer: Scorer, mixers: list[MixerInfo],
              eval_windows: torch.Tensor, dense_loss: float, structure: str = "unstructured",
              batch_size: int = 8, evaluate: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None,
              kernels: Kernels | None = None, dense_losses: torch.Tensor | None = None,
              stop: StopRule | None = None) -> Trial:
    """Measure one trial: mask, evaluate, restore. ``evaluate(model, windows)`` replaces
    :func:`batch_losses` (run with ``kernels``; None: those installed on the model); an evaluator
    with a true ``accepts_mask`` attribute is called as ``evaluate(model, windows, mask=mask, values=values,
    norm_eps=norm_eps)`` so it can tell what the trial changed (``values``: tensors a reconstructing
    criterion rewrote; ``norm_eps``: gated norms given the eps of apply's slice), and
    one with a ``chunks`` method is evaluated batch by batch. With ``stop`` (and the dense model's
    per-window ``dense_losses``) the trial ends once the rule says it is far outside tolerance."""
    start = time.perf_counter()
    pruning = scorer.prune(spec, mixers, structure)
    mask = pruning.mask
    predicted = scorer.predicted_delta(spec, mask, mixers)
    with MaskApplier(model) as applier:
        applier.apply(mask, pruning.values, pruning.norm_eps)
        pieces = _chunks(model, eval_windows, pruning, batch_size, evaluate, kernels,
                         chunked=stop is not None or spec.screen > 0)
        losses, stopped = _evaluate_until(pieces, dense_losses, stop, spec.screen or None)
    if stopped or spec.screen:  # the paired mean over the windows evaluated, and the full-data loss it implies
        if dense_losses is None:
            raise ValueError("a screen needs the dense model's per-window losses")
        losses = losses[: spec.screen or None]
        delta = float((losses - dense_losses[: len(losses)]).mean())
        loss = dense_loss + delta
    else:
        loss = float(losses.mean())
        delta = loss - dense_loss
    return Trial(
        target=spec.target, criterion=spec.criterion, sparsity=spec.sparsity, layer=spec.layer, loss=loss,
        delta_loss=delta, perplexity=_exp(loss), rel_ppl_increase=_exp(delta) - 1.0,
        pruned_params=pruned_count(mask), predicted_delta=predicted, seconds=time.perf_counter() - start,
        window_losses=[round(float(x), 6) for x in losses], span=spec.span, stopped=stopped, screen=spec.screen,
    )


def _chunks(model: torch.nn.Module, windows: torch.Tensor, pruning: Pruning, batch_size: int,
            evaluate: Callable[..., torch.Tensor] | None, kernels: Kernels | None, chunked: bool):
    """The trial's per-window losses, in pieces (window order); one piece unless ``chunked``."""
    if evaluate is not None and getattr(evaluate, "accepts_mask", False):
        # e.g. ssm_profile.profiling.incremental.IncrementalEvaluator; ``values``: kept weights the cut changed
        told = dict(mask=pruning.mask, values=pruning.values, norm_eps=pruning.norm_eps)
        if chunked and hasattr(evaluate, "chunks"):
            return evaluate.chunks(model, windows, **told)
        return iter([evaluate(model, windows, **told)])
    if evaluate is not None:
        return iter([evaluate(model, windows)])
    if not chunked:
        return iter([batch_losses(model, windows, batch_size, kernels=kernels)])
    # batch_losses evaluates batch by batch, so one call per batch gives the same numbers
    return (batch_losses(model, piece, batch_size, kernels=kernels) for piece in windows.split(batch_size))


def _evaluate_until(pieces, dense_losses: torch.Tensor | None, stop: StopRule | None,
                    limit: int | None = None) -> tuple[torch.Tensor, bool]:
    """Concatenated losses of ``pieces``, drawn until the last, until ``limit`` windows are in, or
    until ``stop`` says stop (then True)."""
    done: list[torch.Tensor] = []
    seen = 0
    try:
        for piece in pieces:
            done.append(piece.double())
            seen += len(piece)
            if limit is not None and seen >= limit:
                break
            if stop is not None and dense_losses is not None:
                losses = torch.cat(done)
                if stop.should_stop((losses - dense_losses[: len(losses)]).numpy()):
                    return losses, True
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()  # a generator's contexts (installed kernels) end here, before the weights are restored
    return torch.cat(done), False


def _exp(x: float) -> float:
    return math.exp(min(x, 700.0))


class SequentialRunner:
    """A :class:`ssm_profile.profiling.schedule.TrialRunner` that measures a batch one trial after another in
    this process; a subclass says how one trial is measured (``run_one``)."""

    def run_one(self, spec: TrialSpec) -> Trial:
        raise NotImplementedError

    def run(self, specs, on_start: Callable[[TrialSpec], None], on_trial: Callable[[Trial], None]) -> list[Trial]:
        trials = []
        for spec in specs:
            on_start(spec)
            trials.append(self.run_one(spec))
            on_trial(trials[-1])
        return trials


@dataclass
class LocalTrialRunner(SequentialRunner):
    """Evaluates trials one after another in this process (:class:`ssm_profile.profiling.schedule.TrialRunner`)."""

    model: torch.nn.Module
    scorer: Scorer
    mixers: list[MixerInfo]
    windows: torch.Tensor
    dense_loss: float
    structure: str = "unstructured"
    batch_size: int = 8
    evaluate: Callable[..., torch.Tensor] | None = None
    dense_losses: torch.Tensor | None = None  # per window; with ``stop``, trials may end early
    stop: StopRule | None = None

    def run_one(self, spec: TrialSpec) -> Trial:
        return run_trial(self.model, spec, self.scorer, self.mixers, self.windows, self.dense_loss,
                         self.structure, self.batch_size, evaluate=self.evaluate,
                         dense_losses=self.dense_losses, stop=self.stop)

