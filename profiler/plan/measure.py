"""Measuring a combination of plan actions on the run's model, with the masks the profile built."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..documents import check_weights
from ..base.errors import PlanError, SSMProfileError
from ..profiling.recipe import RunRecipe, needs_of
from ..profiling.results import ProfileResult
from .layers import is_layer, overlap_in_layer
from .options import Option

Progress = Callable[[int, int, str], None]


def load_run_model(result: ProfileResult, name: str | None = None, device: str = "cpu") -> Any:
    """Load the model a run profiled (from where the run found it, or ``name``), in the run's dtype."""
    from ..model.resolve import DTYPES, load_model

    model = result.record.model
    name = name if name is not None else model.load_name()
    dtype = model.dtype
    try:
        return load_model(name, device=device, dtype=dtype if dtype in DTYPES else None)
    except SSMProfileError as err:
        raise PlanError(f"cannot load the run's model to measure the plan ({err}); pass --no-measure "
                        "or --model PATH") from None


def check_run_weights(result: ProfileResult, loaded: Any) -> None:
    """Refuse a model with other weights than the run profiled (one line)."""
    model = result.record.model
    check_weights(model.fingerprint, loaded, "the run profiled", expected_name=model.name,
                  hint="measure with the same weights or pass --no-measure")


class Measurer:
    """Loads once, then measures the held-out loss of any combination of plan actions."""

    def __init__(self, result: ProfileResult, loaded: Any, progress: Progress, device: str = "cpu",
                 world: Any = None, domains: Sequence[str] = ()):
        from ..calibration.data import batch_losses, load_dataset
        from ..model.resolve import check_vocabulary

        self.note = progress
        self.world = world  # ssm_profile.profiling.distributed.World: several ranks share a batch of measurements
        if loaded is None:
            self.note(0, 1, "loading the model")
            loaded = load_run_model(result, device=device)
        check_run_weights(result, loaded)
        self.result = result
        self.loaded = loaded
        self.model = loaded.model
        # The profile's recipe: its statistics rebuild its masks, and measuring is as fast as its trials.
        self.recipe = RunRecipe.of_run(result.record)
        check_vocabulary(loaded.tokenizer, self.model)
        self.dataset = load_dataset(loaded.tokenizer, self.recipe.data)
        self.note(0, 1, "dense evaluation")
        with self.recipe.installed(self.model):
            self.dense = batch_losses(self.model, self.dataset.evaluation, self.recipe.batch_size)
        self.dense_loss = float(self.dense.mean())
        self.domains = {source: self._domain(source) for source in domains}
        self._stats = None
        self._needs: set[str] = set()
        self._scorer = None
        self._masks: dict[tuple, Any] = {}
        self.expected_criteria: set[str] = set()

    def _domain(self, source: str) -> DomainWindows:
        """An ``--also-on`` text's windows: the first certify (as many as the search windows), the last
        (as many as verification, at most half) check the promise."""
        from ..calibration.data import batch_losses, domain_windows

        spec = self.recipe.data
        self.note(0, 1, f"dense evaluation of {source}")
        search, verify = domain_windows(self.loaded.tokenizer, source, spec.eval_samples, spec.verify_samples,
                                        spec.seqlen)
        with self.recipe.installed(self.model):
            dense = batch_losses(self.model, search, self.recipe.batch_size)
        return DomainWindows(search=search, verification=verify, dense=dense.tolist())

    def _scorer_for(self, criteria: set[str]):
        criteria = set(criteria) | self.expected_criteria  # one statistics pass for every criterion a re-solve may pick
        needs = needs_of(criteria)
        if self._stats is None or not needs <= self._needs:
            self.note(0, 1, "calibration statistics")
            self._needs |= needs
            self._stats = self.recipe.statistics(self.model, self.dataset.calibration, self._needs)
            self._scorer = None
        if self._scorer is None or not criteria <= set(self._scorer.criteria):
            known = set(self._scorer.criteria) if self._scorer is not None else set()
            self._scorer = self.recipe.scorer(self.model, self._stats, sorted(known | criteria))
        return self._scorer

    def action_mask(self, a: Option):
        """Keep-mask of one action, exactly as the profile's trial built it (cached)."""
        return self.action_cut(a).mask

    def action_cut(self, a: Option):
        """Keep-mask and rewritten values (OBS, FLAP) of one action, as the profile's trial built them (cached)."""
        key = (a.target, a.sparsity, a.criterion, a.structure)
        if key not in self._masks:
            self._masks[key] = self._unit_cut(a) if a.unit_kind else self._element_cut(a)
        return self._masks[key]

    def _unit_cut(self, a: Option):
        from ..model.arch import find_mixers
        from ..criteria import get
        from ..criteria.masks import Pruning, unit_mask
        from ..profiling.sensitivity import relative

        by_layer = {m.layer: m for m in find_mixers(self.model)}
        reconstructs = get(a.criterion).reconstructs
        parts = []
        for layer, ids in (a.unit_indices or {}).items():
            mixer = by_layer[int(layer)]
            mask = unit_mask(mixer, mixer.unit_family(a.unit_kind), torch.tensor(ids, dtype=torch.long))
            if reconstructs and ids:
                with self.recipe.installed(self.model):
                    parts.append(self._scorer_for({a.criterion}).reconstruction(a.criterion, mixer,
                                                                                 relative(mixer, mask)))
            else:
                parts.append(Pruning(mask, {}))
        return Pruning.combine(parts)

    def _element_cut(self, a: Option):
        from ..model.arch import find_mixers
        from ..criteria import NotApplicable
        from ..profiling.sensitivity import TrialSpec

        try:
            with self.recipe.installed(self.model):
                scorer = self._scorer_for({a.criterion})
                return scorer.prune(TrialSpec(a.target, a.criterion, a.sparsity), find_mixers(self.model), a.structure)
        except (NotApplicable, ValueError) as err:
            raise PlanError(f"cannot rebuild the {a.target} mask with {a.criterion}: {err}") from None

    def cut(self, actions: list[Option]):
        """The combined cut of ``actions``: every action's zeros, and a tensor that two actions cut and
        a reconstructing criterion (OBS) rewrote solved once on the union of their masks, as apply does;
        whole-layer removals are no cut (:meth:`skipping` runs them)."""
        from ..model.arch import find_mixers
        from ..criteria.masks import Pruning, shared_solves

        cuts = [a for a in actions if not is_layer(a)]
        parts = [self.action_cut(a) for a in cuts]
        if not shared_solves(parts):
            combined = Pruning.combine(parts)
        else:
            with self.recipe.installed(self.model):
                scorer = self._scorer_for({a.criterion for a in cuts if a.criterion})
            combined = scorer.solve_jointly(parts, find_mixers(self.model))
        combined.norm_eps = self._sliced_norm_eps(cuts)
        return combined

    def skipping(self, actions: list[Option]):
        """The model without the layers ``actions`` remove (each returns its input): their logits."""
        from ..pruning.layers import skipped

        return skipped(self.model, [layer for a in actions if is_layer(a) for layer in a.layers])

    def _sliced_norm_eps(self, actions: list[Option]) -> dict[str, float]:
        """{gated norm path: eps} with which the zeroed model computes what apply's slice of the unit
        actions writes (:mod:`ssm_profile.model.norms`): the norm groups keep what the kinds apply
        slices (:meth:`Shapes.execution`, asked for the actions together) keep; zeroed kinds stay in them."""
        from ..model.arch import find_mixers
        from ..model.norms import sliced_norm_eps
        from ..criteria.masks import merge
        from .shapes import shapes_for

        units = [a for a in actions if a.unit_kind and not is_layer(a)]
        if not units:
            return {}
        execution = shapes_for(self.result, self.loaded).execution({a.unit_kind: a.sparsity for a in units})
        sliced = [self.action_cut(a).mask for a in units if not execution.get(a.unit_kind)]
        out: dict[str, float] = {}
        for mixer in find_mixers(self.model):
            name = mixer.full_name("norm.weight")
            keeps = [{name: mask[name]} for mask in sliced if name in mask]
            eps = sliced_norm_eps(mixer, merge(keeps)[name]) if keeps else None
            if eps is not None:
                out[f"{mixer.path}.norm"] = eps
        return out

    def exact_overlap(self, a: Option, b: Option) -> int:
        """Parameters both actions remove."""
        if is_layer(a) or is_layer(b):
            layer, other = (a, b) if is_layer(a) else (b, a)
            return 0 if is_layer(other) else overlap_in_layer(layer, other, self.action_mask(other))
        ma, mb = self.action_mask(a), self.action_mask(b)
        return int(sum((~ma[n] & ~mb[n]).sum() for n in set(ma) & set(mb)))

    def measure_layers(self, layers: list[int]) -> dict[str, Any]:
        """ΔL of the model without decoder ``layers`` on the search windows, with the paired bootstrap
        95% interval of its relative perplexity increase."""
        from ..calibration.data import batch_losses, paired_increase
        from ..pruning.layers import skipped

        with skipped(self.model, layers), self.recipe.installed(self.model):
            losses = batch_losses(self.model, self.dataset.evaluation, self.recipe.batch_size)
        return paired_increase(self.dense.tolist(), losses.tolist(), seed=self.recipe.seed)

    def verify(self, actions: list[Option], max_ppl_increase: float, windows: torch.Tensor | None = None) -> Any:
        """The plan's promise on the verification windows (after selection; nothing is chosen from it),
        or on ``windows`` (an ``--also-on`` text's held-out windows)."""
        from ..calibration.data import batch_losses, paired_increase
        from ..documents import Verification
        from ..criteria.masks import MaskApplier

        windows = self.dataset.verification if windows is None else windows
        with self.recipe.installed(self.model):
            dense = batch_losses(self.model, windows, self.recipe.batch_size)
            with MaskApplier(self.model) as applier, self.skipping(actions):
                if actions:
                    cut = self.cut(actions)
                    applier.apply(cut.mask, cut.values, cut.norm_eps)
                pruned = batch_losses(self.model, windows, self.recipe.batch_size)
        m = paired_increase(dense.tolist(), pruned.tolist(), seed=self.recipe.seed)
        return Verification(**m, max_ppl_increase=float(max_ppl_increase),
                            kept=bool(math.isfinite(m["rel_ppl_increase"])
                                      and m["rel_ppl_increase"] <= max_ppl_increase))

    def domain_checks(self, actions: list[Option], measured: dict[str, Any], certifier: Any,
                      max_ppl_increase: float, verify: bool = True) -> list[Any] | None:
        """One :class:`DomainCheck` per ``--also-on`` text: its certification from ``measured`` and its
        promise on its held-out windows (None: no text asked for)."""
        from ..calibration.data import windows_digest
        from ..documents import DomainCheck

        if not self.domains:
            return None
        return [DomainCheck(source=source, certification=certifier.domain_document(measured, source),
                            verification=self.verify(actions, max_ppl_increase, d.verification) if verify else None,
                            held_out_digest=windows_digest(d.verification))
                for source, d in self.domains.items()]

    def measure_many(self, combinations: list[list[Option]]) -> list[dict[str, Any]]:
        """:meth:`measure` of each combination; under torchrun the ranks take turns (combination i on
        rank i mod size) and all-gather, so every rank returns the same list a single process would."""
        if self.world is None or not self.world.sharded:
            return [self.measure(actions) for actions in combinations]
        return self.world.share(combinations, self.measure)

    def measure(self, actions: list[Option]) -> dict[str, Any]:
        from ..calibration.data import batch_losses
        from ..criteria.masks import MaskApplier, pruned_count

        if not actions:
            return {"loss": self.dense_loss, "delta_loss": 0.0, "rel_ppl_increase": 0.0, "params_removed": 0}
        cut = self.cut(actions)
        mask = cut.mask
        with MaskApplier(self.model) as applier, self.recipe.installed(self.model), self.skipping(actions):
            applier.apply(mask, cut.values, cut.norm_eps)
            losses = batch_losses(self.model, self.dataset.evaluation, self.recipe.batch_size)
            domains = {source: batch_losses(self.model, d.search, self.recipe.batch_size).tolist()
                       for source, d in self.domains.items()}
        loss = float(losses.mean())
        delta = loss - self.dense_loss
        out = {"loss": loss, "delta_loss": delta, "rel_ppl_increase": math.exp(min(delta, 700.0)) - 1.0,
               "params_removed": pruned_count(mask) + _layer_params(actions, mask),
               "window_losses": losses.tolist()}
        if domains:
            out["domain_window_losses"] = domains
        return out

    def certifier(self, max_ppl_increase: float):
        """The rule that accepts a measurement of this measurer (:mod:`.certify`): a bound for as many
        unseen windows as verification holds, from the search windows alone."""
        from .certify import Certifier

        from .certify import Stratum

        domains = {source: Stratum(dense=d.dense, unseen=int(d.verification.shape[0]))
                   for source, d in self.domains.items()}
        return Certifier(dense=self.dense.tolist(), unseen=int(self.dataset.verification.shape[0]),
                         max_ppl_increase=max_ppl_increase, domains=domains)


@dataclass(frozen=True)
class DomainWindows:
    """An ``--also-on`` text's certifying windows (with their dense losses) and held-out windows."""

    search: torch.Tensor
    verification: torch.Tensor
    dense: list[float]


def _layer_params(actions: list[Option], mask: dict) -> int:
    """Parameters the removed layers free beyond what the masks already zero there."""
    layers = [a for a in actions if is_layer(a)]
    inside = {name for a in layers for name in a.removed}
    zeroed_inside = sum(int((~keep).sum()) for name, keep in mask.items() if name in inside)
    return sum(a.params for a in layers) - zeroed_inside
