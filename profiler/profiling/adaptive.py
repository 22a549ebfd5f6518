"""The adaptive sweep (`--sweep adaptive`, the default): spend trials where they decide something.

The grid measures every target x criterion x sparsity and every target in every layer. The adaptive
schedule asks, from the trials finished so far, only what is still undecided:

1. **probe**: every applicable (target, criterion) at the probe sparsity (``probe_sparsity``, the
   level the findings compare at). With ``screen`` = n, each is first a *screen* on the first n
   search windows; per target only the screen's leader (lowest paired ΔL on those windows; the
   ``random`` baseline leads only when it is the target's one criterion) is completed on every
   window, and it is the target's best criterion. Without screening, every pair is completed and
   the lowest ΔL is the best.
2. **boundary**, per target with its best criterion: the largest safe sparsity of the grid levels
   (``sparsities``; safe = relative perplexity increase <= tolerance, every lower level safe too)
   is bracketed between the largest measured safe level and the smallest measured lost one, and the
   bracket is narrowed one level at a time until the two are adjacent grid levels: the boundary is
   always verified by measurement. The next level is where the criterion's loss prediction
   (``predicted_delta``, for criteria that make one), scaled by measured/predicted at the nearest
   measured level, crosses log(1 + tolerance), so levels predicted clearly safe or clearly lost are
   skipped; without a prediction, the lower middle level of the bracket. The top level is always measured
   (the ranking's area under the curve spans the whole range).
3. **knee**: once the boundary is found, levels are added until the curve holds ``CURVE_LEVELS``,
   each in the gap with the largest trapezoid error bound (gap width x ΔL jump across it, from
   sparsity 0 where ΔL = 0), i.e. where the curve bends most; gaps in the safe region come first,
   because a plan chooses among the measured safe levels. A gap across which ΔL does not surely
   change by the floor gets no level (the curve is flat there as far as the windows tell).
4. **layers**: the layer criterion at the probe sparsity on ``LAYER_BLOCKS`` contiguous blocks of
   layers per target, for each target whose model-wide probe with that criterion surely costs at
   least the floor (a cheaper cut of every layer leaves nothing to localize); a block whose ΔL per
   layer is at least ``REFINE_RATIO`` x the median block's, and surely at least the floor, is split
   in halves, down to single layers, so layers are resolved only where blocks differ.

**The floor** is ``REFINE_FLOOR`` x log(1 + tolerance), a tenth of the ΔL the tolerance allows;
"surely" means by a one-sided 95% paired bound over the trial's windows (given the dense model's
window losses; without them, by the mean). Differences the search windows cannot tell from noise,
or too small to change a plan, buy no further trials.

Stages 2-4 of different targets (and stage 4 with stage 1) are independent and share batches, so a
sharded runner evaluates them side by side. Trials are evaluated with early stopping
(:mod:`ssm_profile.profiling.earlystop`): a stopped trial is lost, with ΔL estimated on its windows.

**Budget** (``--budget 10m``): the run's setup (analysis, calibration, caching; measured once and
recorded in run.json, so a resume replays it) plus the ``seconds`` of every finished trial may not
exceed it. Each batch is cut to what the remaining time allows (cost per trial: the mean of the
finished trials, before any the dense evaluation's), in priority order (probe, top level, boundary,
layer blocks, then by the size of the curve gap or block share); time left after the stages above
goes to further knee levels and block splits, largest first. Everything is a function of the
finished trials and of numbers fixed at the start, so ``next_batch`` stays pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median
from typing import Callable, Mapping, Sequence

import numpy as np

from .earlystop import lower_bound
from .sensitivity import Trial, TrialSpec

CURVE_LEVELS = 5  # the knee stage fills the best criterion's curve up to this many levels (more with a budget)
LAYER_BLOCKS = 4  # blocks of contiguous layers the per-layer stage starts with
REFINE_RATIO = 2.0  # split a block whose ΔL per layer is this many times the median block's
REFINE_FLOOR = 0.1  # ... and whose ΔL is surely at least this share of the tolerance's ΔL, log(1 + tolerance)
REFINE_ALPHA = 0.05  # the one-sided level of "surely"

Predict = Callable[[TrialSpec], "float | None"]


@dataclass(frozen=True)
class Budget:
    """A bound on a run's time: ``seconds`` in all, of which ``setup_s`` went before the first trial;
    ``trial_s``: the cost of one trial until some have finished (the dense evaluation's time)."""

    seconds: float
    setup_s: float = 0.0
    trial_s: float = 0.0


def is_lost(trial: Trial, tolerance: float) -> bool:
    """Outside tolerance: measured above it, or stopped early (far above it)."""
    return trial.stopped or not trial.rel_ppl_increase <= tolerance


def expected_trials(pairs: int, targets: int, levels: int, layer_targets: int, layers: int) -> tuple[int, int]:
    """A guess of the (model-wide, per-layer) trials of an adaptive sweep without a budget: the
    probe, a boundary search of ~log2(levels) plus the top level, filled up to ``CURVE_LEVELS``, and
    the layer blocks with a split or two."""
    search = max(CURVE_LEVELS, 2 + math.ceil(math.log2(max(2, levels)))) - 1
    blocks = min(layers, LAYER_BLOCKS + (2 if layers > LAYER_BLOCKS else 0))
    return pairs + targets * search, layer_targets * blocks


class AdaptiveSchedule:
    """:class:`ssm_profile.profiling.schedule.Schedule` of the adaptive sweep (see the module docstring)."""

    def __init__(self, pairs: Sequence[tuple[str, str]], sparsities: Sequence[float], probe: float,
                 tolerance: float, layer_targets: Sequence[str] = (), layers: Sequence[int] = (),
                 layer_criterion: str = "fisher", predict: Predict | None = None, budget: Budget | None = None,
                 screen: int = 0, dense_losses: Sequence[float] | None = None):
        self.pairs = list(pairs)
        self.screen = screen
        self.dense_losses = None if dense_losses is None else np.asarray(dense_losses, dtype=np.float64)
        self.targets = list(dict.fromkeys(t for t, _ in self.pairs))
        self.levels = sorted({round(float(s), 6) for s in sparsities})
        self.probe = round(float(probe), 6)
        self.tolerance = tolerance
        self.layer_targets = list(layer_targets)
        self.layers = sorted(layers)
        self.layer_criterion = layer_criterion
        self.predict = predict
        self.budget = budget
        self._predictions: dict[str, float | None] = {}

    @classmethod
    def from_grid(cls, specs: Sequence[TrialSpec], **kw) -> "AdaptiveSchedule":
        """The adaptive schedule over the trials a grid would run (``plan_trials``' specs)."""
        pairs = list(dict.fromkeys((s.target, s.criterion) for s in specs if s.layer is None))
        layer_specs = [s for s in specs if s.layer is not None]
        layer_targets = list(dict.fromkeys(s.target for s in layer_specs))
        layers = sorted({s.layer for s in layer_specs})
        sparsities = sorted({s.sparsity for s in specs if s.layer is None})
        return cls(pairs, sparsities, layer_targets=layer_targets, layers=layers, **kw)

    # ------------------------------------------------------------------ the Schedule protocol
    def next_batch(self, finished: Mapping[str, Trial]) -> list[TrialSpec]:
        """Replays the batches from the start: each is decided from the trials of the batches
        before it, so a run interrupted mid-batch resumes with the rest of that same batch (and
        a budget cuts the same batches) whatever the order trials finished in."""
        known: dict[str, Trial] = {}
        while batch := self._decide(known):
            missing = [spec for spec in batch if spec.key not in finished]
            if missing:
                return missing
            known.update((spec.key, finished[spec.key]) for spec in batch)
        return []

    def _decide(self, known: Mapping[str, Trial]) -> list[TrialSpec]:
        """The batch that follows the trials ``known``, in priority order, cut to the budget."""
        wanted = self._wanted(known, extra=self.budget is not None)
        batch = [spec for _, spec in sorted(wanted, key=lambda item: item[0])]
        batch = list({s.key: s for s in batch}.values())
        return self._affordable(batch, known) if self.budget is not None else batch

    def expected_total(self, finished: Mapping[str, Trial]) -> int:
        model, layer = expected_trials(len(self.pairs), len(self.targets), len(self.levels),
                                       len(self.layer_targets), len(self.layers))
        model += len(self.targets) if self.screen else 0  # the screen leaders' completions
        return max(model + layer, len(finished) + len(self._wanted(finished, extra=False)))

    # ------------------------------------------------------------------ stages
    def _wanted(self, finished: Mapping[str, Trial], extra: bool) -> list[tuple[tuple, TrialSpec]]:
        """(priority, spec) of every trial that can be decided now; lower priority tuples go first."""
        out = [item for item in self._probe_next(finished) if item[1].key not in finished]
        if not out:
            for target in self.targets:
                out += self._curve_next(target, finished, extra)
        for target in self.layer_targets:
            out += self._layers_next(target, finished, extra)
        return [item for item in out if item[1].key not in finished]

    def _criteria(self, target: str) -> list[str]:
        return [c for t, c in self.pairs if t == target]

    def _probe_next(self, finished: Mapping[str, Trial]) -> list[tuple[tuple, TrialSpec]]:
        """The probe stage's trials that can be decided now: every screen, then the leaders' full probes."""
        out = []
        for target in self.targets:
            criteria = self._criteria(target)
            if self.screen and len(criteria) > 1:
                screens = [TrialSpec(target, c, self.probe, screen=self.screen) for c in criteria]
                if any(spec.key not in finished for spec in screens):
                    out += [((0, 0.0), spec) for spec in screens]
                    continue
                criteria = [self.screen_leader([finished[spec.key] for spec in screens])]
            out += [((0, 0.0), TrialSpec(target, c, self.probe)) for c in criteria]
        return out

    @staticmethod
    def screen_leader(screens: Sequence[Trial]) -> str:
        """The criterion with the lowest screened ΔL (ties: by name); ``random``, a baseline, only alone."""
        methods = [t for t in screens if t.criterion != "random"] or list(screens)
        return min(methods, key=lambda t: (t.delta_loss, t.criterion)).criterion

    def best_criterion(self, target: str, finished: Mapping[str, Trial]) -> str | None:
        """The criterion with the lowest ΔL at the probe sparsity over every window (ties: by name);
        with screening, the one completed there: the screen's leader."""
        probes = [t for c in (c for t_, c in self.pairs if t_ == target)
                  if (t := finished.get(TrialSpec(target, c, self.probe).key)) is not None]
        return min(probes, key=lambda t: (t.delta_loss, t.criterion)).criterion if probes else None

    def _curve(self, target: str, criterion: str, finished: Mapping[str, Trial]) -> dict[float, Trial]:
        return {s: t for s in self.levels if (t := finished.get(TrialSpec(target, criterion, s).key)) is not None}

    def _curve_next(self, target: str, finished: Mapping[str, Trial], extra: bool) -> list[tuple[tuple, TrialSpec]]:
        criterion = self.best_criterion(target, finished)
        if criterion is None:
            return []
        curve = self._curve(target, criterion, finished)
        out = []
        if self.levels[-1] not in curve:
            out.append(((1, 0.0), TrialSpec(target, criterion, self.levels[-1])))
        candidates = self._bracket(curve)
        if candidates:
            level = self._next_in_bracket(target, criterion, candidates, curve)
            out.append(((2, 0.0), TrialSpec(target, criterion, level)))
            return out
        if out:
            return out
        gap = self._widest_gap(curve)
        if gap is None or not (extra or len(curve) < CURVE_LEVELS):
            return out
        size, level = gap
        return [((3 if len(curve) < CURVE_LEVELS else 5, -size), TrialSpec(target, criterion, level))]

    def _bracket(self, curve: dict[float, Trial]) -> list[float]:
        """Unmeasured grid levels between the largest safe level (all lower measured levels safe)
        and the first measured level above it (lost): where the boundary may still lie."""
        safe, above = 0.0, None
        for level in sorted(curve):
            if is_lost(curve[level], self.tolerance):
                above = level
                break
            safe = level
        return [s for s in self.levels if s > safe and (above is None or s < above) and s not in curve]

    def _next_in_bracket(self, target: str, criterion: str, candidates: list[float],
                         curve: dict[float, Trial]) -> float:
        """The candidate where the scaled prediction crosses the tolerance; else the middle one."""
        threshold = math.log1p(self.tolerance)
        scored = []
        for level in candidates:
            predicted = self._predicted(TrialSpec(target, criterion, level))
            scale = self._scale(curve, level)
            if predicted is None or scale is None:
                return candidates[(len(candidates) - 1) // 2]
            scored.append((abs(math.log(max(scale * predicted, 1e-12)) - math.log(threshold)), level))
        return min(scored)[1]

    def _predicted(self, spec: TrialSpec) -> float | None:
        if self.predict is None:
            return None
        if spec.key not in self._predictions:  # a cache of a pure function of the spec
            self._predictions[spec.key] = self.predict(spec)
        return self._predictions[spec.key]

    def _scale(self, curve: dict[float, Trial], level: float) -> float | None:
        """Measured / predicted ΔL at the measured level nearest ``level`` (completed trials only)."""
        usable = [s for s, t in curve.items() if not t.stopped and (t.predicted_delta or 0) > 0 and t.delta_loss > 0]
        if not usable:
            return None
        nearest = min(usable, key=lambda s: (abs(s - level), s))
        return curve[nearest].delta_loss / curve[nearest].predicted_delta

    def _widest_gap(self, curve: dict[float, Trial]) -> tuple[float, float] | None:
        """(error bound, middle grid level) of the curve gap with the largest width x ΔL jump; gaps up
        to the first lost level come first, since a plan can only choose measured levels, and safe ones.
        A gap across which ΔL does not surely change by the floor (:meth:`_material_change`) needs no
        level inside: the curve is flat there as far as the windows can tell."""
        ends = [None] + [curve[s] for s in sorted(curve)]
        points = [(0.0, 0.0)] + [(s, curve[s].delta_loss) for s in sorted(curve)]
        first_lost = next((s for s in sorted(curve) if is_lost(curve[s], self.tolerance)), None)
        best = None
        for (a, da), (b, db), left, right in zip(points, points[1:], ends, ends[1:]):
            inside = [s for s in self.levels if a < s < b]
            if inside and self._material_change(left, right):
                key = (first_lost is None or b <= first_lost, (b - a) * abs(db - da))
                if best is None or key > best[0]:
                    best = (key, inside[len(inside) // 2])
        return None if best is None else (best[0][1], best[1])

    # ------------------------------------------------------------------ per-layer blocks
    def blocks(self) -> list[list[int]]:
        """The first partition of the SSM layers into ``LAYER_BLOCKS`` contiguous blocks."""
        n = len(self.layers)
        size = math.ceil(n / min(LAYER_BLOCKS, n)) if n else 1
        return [self.layers[i:i + size] for i in range(0, n, size)]

    def _layer_spec(self, target: str, block: list[int]) -> TrialSpec:
        return TrialSpec(target, self.layer_criterion, self.probe, block[0], block[-1] - block[0] + 1)

    def _layer_probe(self, target: str, finished: Mapping[str, Trial]) -> Trial | None:
        """The layer criterion's model-wide probe of ``target`` (completed, else its screen)."""
        for screen in dict.fromkeys((0, self.screen)):
            trial = finished.get(TrialSpec(target, self.layer_criterion, self.probe, screen=screen).key)
            if trial is not None:
                return trial
        return None

    def _layers_next(self, target: str, finished: Mapping[str, Trial], extra: bool) -> list[tuple[tuple, TrialSpec]]:
        if (target, self.layer_criterion) in self.pairs:  # gate: is there anything to localize?
            probe = self._layer_probe(target, finished)
            if probe is None or not (probe.stopped or self._surely_at_least(probe, self._floor())):
                return []
        leaves, pending = [], []
        stack = list(self.blocks())
        while stack:
            block = stack.pop()
            trial = finished.get(self._layer_spec(target, block).key)
            if trial is None:
                pending.append(block)
                continue
            halves = [block[: len(block) // 2], block[len(block) // 2:]]
            if len(block) > 1 and any(self._layer_spec(target, h).key in finished for h in halves):
                stack += halves  # refined before: descend
            else:
                leaves.append((trial.delta_loss / len(block), block))
        out = [((4, 0.0), self._layer_spec(target, b)) for b in pending]
        if pending or not leaves:
            return out
        share, block = max(leaves, key=lambda item: (item[0], -item[1][0]))
        middle = median(s for s, _ in leaves)
        material = self._surely_at_least(finished[self._layer_spec(target, block).key], self._floor())
        if len(block) > 1 and material and (extra or share >= REFINE_RATIO * max(middle, 0.0)):
            urgent = share >= REFINE_RATIO * max(middle, 0.0)
            for half in (block[: len(block) // 2], block[len(block) // 2:]):
                out.append(((4 if urgent else 5, -share), self._layer_spec(target, half)))
        return out

    def _floor(self) -> float:
        return REFINE_FLOOR * math.log1p(self.tolerance)

    def _material_change(self, left: Trial | None, right: Trial) -> bool:
        """Whether ΔL surely changes by at least the floor from ``left`` (None: sparsity 0, ΔL 0) to
        ``right``: a paired bound over their shared windows, either way; a trial stopped early (far
        outside tolerance) always differs."""
        if right.stopped or (left is not None and left.stopped):
            return True
        if self.dense_losses is None:
            return abs(right.delta_loss - (left.delta_loss if left is not None else 0.0)) >= self._floor()
        base = self.dense_losses if left is None else np.asarray(left.window_losses, dtype=np.float64)
        after = np.asarray(right.window_losses, dtype=np.float64)
        n = min(len(base), len(after))
        paired = after[:n] - base[:n]
        return max(lower_bound(paired, REFINE_ALPHA), lower_bound(-paired, REFINE_ALPHA)) >= self._floor()

    def _surely_at_least(self, trial: Trial, level: float) -> bool:
        """Whether ``trial``'s ΔL is at least ``level``: by its paired lower bound when the dense window
        losses are known, else by its mean."""
        if self.dense_losses is None or not trial.window_losses:
            return trial.delta_loss >= level
        losses = np.asarray(trial.window_losses, dtype=np.float64)
        return lower_bound(losses - self.dense_losses[: len(losses)], REFINE_ALPHA) >= level

    # ------------------------------------------------------------------ budget
    def spent(self, finished: Mapping[str, Trial]) -> float:
        """Seconds of the run so far as the schedule counts them: setup plus the finished trials'."""
        setup = self.budget.setup_s if self.budget is not None else 0.0
        return setup + sum(t.seconds for t in finished.values())

    def _affordable(self, batch: list[TrialSpec], finished: Mapping[str, Trial]) -> list[TrialSpec]:
        """The head of ``batch`` (priority order) whose estimated cost fits the time left."""
        assert self.budget is not None
        left = self.budget.seconds - self.spent(finished)
        if left <= 0:
            return []
        times = [t.seconds for t in finished.values() if t.layer is None and not t.partial]
        each = sum(times) / len(times) if times else self.budget.trial_s
        count = max(1, int(left // each)) if each > 0 else len(batch)
        return batch[:count]

    def exhausted(self, finished: Mapping[str, Trial]) -> bool:
        """Whether the budget ended the run before the stages above were complete."""
        return self.budget is not None and bool(self._wanted(finished, extra=False)) and not self.next_batch(finished)
