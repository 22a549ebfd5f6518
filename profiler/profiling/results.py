"""The profile results object: the one thing the CLI tables, the JSON/CSV run directory, the
HTML report, the TUI and the planner all read, so they never disagree.

Stored facts (trials, dense losses, scores) are saved; everything derived (ranking, findings,
curves with uncertainty, prediction agreement) is recomputed from them by the same functions,
whether the result was just computed or loaded from a run directory.

Run directory layout (``RUN_SCHEMA_VERSION``)::

    run.json            metadata: model, weights fingerprint, config, data, settings, versions, timings
    analysis.json       static analysis (ssm_profile.model.analysis.AnalysisResult)
    dense.json          per-window evaluation losses of the dense model
    trials.jsonl        one finished trial per line (append-only journal; makes --resume possible)
    unit_scores.json    per criterion, layer and unit kind: one score per unit (plans pick indices)
    saliency.json       score distributions per target and criterion; criteria rank agreement
    sweep.csv, layers.csv, ranking.csv, layer_ranking.csv, findings.csv   pandas-readable tables
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..model.analysis import AnalysisResult
from ..base.defaults import DEFAULT_TOLERANCE
from ..base.errors import RunDirError
from .findings import Finding, evaluate_findings
from ..base.io import write_json_atomic, write_text_atomic
from ..base.safe_read import read_user_json
from .journal import append_journal, read_journal  # noqa: F401  (the run directory's journal)
from .record import RUN_SCHEMA_VERSION, RunRecord
from .run_checks import check_dense, check_settings, check_trials
from .sensitivity import Trial, layer_text



@dataclass
class RankRow:
    target: str
    layer: int | None
    best_criterion: str
    auc: float  # area under ΔL(sparsity) for the best criterion, sparsity 0..max measured
    auc_ci: tuple[float, float]  # bootstrap 95% interval over evaluation windows
    max_safe_sparsity: float  # largest measured sparsity with rel. ppl increase <= tolerance (all below too)
    delta_at_50: float | None
    params: int  # parameters the target holds (all layers, or the layer)
    rank: int = 0


@dataclass
class ProfileResult:
    record: RunRecord
    analysis: AnalysisResult
    dense_window_losses: list[float]
    trials: list[Trial]
    unit_scores: dict[str, Any] = field(default_factory=dict)
    saliency: dict[str, Any] = field(default_factory=dict)
    tolerance: float = DEFAULT_TOLERANCE
    bootstrap: int = 200

    def __post_init__(self) -> None:
        self.trials = without_superseded_screens(self.trials)

    # ------------------------------------------------------------------ basic views
    @property
    def dense_loss(self) -> float:
        return float(np.mean(self.dense_window_losses))

    @property
    def dense_perplexity(self) -> float:
        return math.exp(self.dense_loss)

    @property
    def model_trials(self) -> list[Trial]:
        return [t for t in self.trials if t.layer is None]

    @property
    def layer_trials(self) -> list[Trial]:
        return [t for t in self.trials if t.layer is not None]

    def targets(self) -> list[str]:
        return list(dict.fromkeys(t.target for t in self.trials))

    def criteria(self) -> list[str]:
        return list(dict.fromkeys(t.criterion for t in self.model_trials))

    def curve(self, target: str, criterion: str) -> list[Trial]:
        return sorted((t for t in self.model_trials if t.target == target and t.criterion == criterion),
                      key=lambda t: t.sparsity)

    def trial(self, target: str, criterion: str, sparsity: float, layer: int | None = None) -> Trial | None:
        for t in self.trials:
            if (t.target, t.criterion, t.layer) == (target, criterion, layer) and abs(t.sparsity - sparsity) < 1e-9:
                return t
        return None

    # ------------------------------------------------------------------ uncertainty
    def _resamples(self, n: int | None = None) -> np.ndarray:
        """Bootstrap resamples of the first ``n`` windows (default: all of them)."""
        n = len(self.dense_window_losses) if n is None else n
        rng = np.random.default_rng(int(self.record.data.seed))
        return rng.integers(0, n, size=(self.bootstrap, n))

    def shared_windows(self, trials: list[Trial]) -> int:
        """How many windows every one of ``trials`` was evaluated on: a trial stopped early
        (``Trial.stopped``) holds a prefix of the search windows, so paired statistics use the
        windows all of them share."""
        return min([len(self.dense_window_losses), *(len(t.window_losses) for t in trials)])

    def resampled_means(self, trials: list[Trial]) -> np.ndarray | None:
        """Mean loss of the dense model (column 0) and of each trial (columns 1..) on the SAME bootstrap
        resamples of the evaluation windows (one row per resample), so differences between columns are
        paired. Only the windows every trial was evaluated on take part (all of them unless a trial
        stopped early). None when fewer than two windows are shared."""
        n = self.shared_windows(trials)
        if n < 2:
            return None
        dense = np.asarray(self.dense_window_losses[:n], dtype=float)
        losses = np.stack([dense] + [np.asarray(t.window_losses[:n], dtype=float) for t in trials])
        return losses[:, self._resamples(n)].mean(axis=2).T

    def delta_ci(self, trial: Trial) -> tuple[float, float]:
        """Paired bootstrap 95% interval of ΔL over evaluation windows."""
        means = self.resampled_means([trial])
        if means is None:
            return (trial.delta_loss, trial.delta_loss)
        lo, hi = np.percentile(means[:, 1] - means[:, 0], [2.5, 97.5])
        return float(lo), float(hi)

    def _auc(self, curve: list[Trial], idx: np.ndarray | None = None) -> float:
        """Area under ΔL(sparsity) from 0 (ΔL 0) over the measured levels; with ``idx``, on those
        window indices (a resample of the windows every trial of the curve shares)."""
        xs, ys = [0.0], [0.0]
        dense = np.asarray(self.dense_window_losses)
        for t in curve:
            xs.append(t.sparsity)
            if idx is None:
                ys.append(t.delta_loss)
            else:
                ys.append(float(np.asarray(t.window_losses)[idx].mean() - dense[idx].mean()))
        return float(np.trapezoid(ys, xs))

    def _best_criterion(self, curves: dict[str, list[Trial]]) -> str:
        """The criterion with the least area under ΔL over the levels every curve measured (all of
        them in a grid sweep; an adaptive sweep measures other criteria at the probe level only).
        A criterion measured only by a screen (a few windows; :mod:`ssm_profile.profiling.adaptive`) lost that
        screen to a completed one, so it competes only when no curve is complete."""
        complete = {c: v for c, v in curves.items() if not any(t.screen for t in v)}
        curves = complete or curves
        common = set.intersection(*({round(t.sparsity, 6) for t in c} for c in curves.values()))
        if not common:
            return min(curves, key=lambda c: self._auc(curves[c]))
        return min(curves, key=lambda c: self._auc([t for t in curves[c] if round(t.sparsity, 6) in common]))

    # ------------------------------------------------------------------ ranking
    def ranking(self) -> list[RankRow]:
        """Targets from most to least sensitive (model-wide sweep, best criterion per target)."""
        rows = []
        for target in dict.fromkeys(t.target for t in self.model_trials):
            curves = {c: self.curve(target, c) for c in self.criteria()}
            curves = {c: v for c, v in curves.items() if v}
            if not curves:
                continue
            best = self._best_criterion(curves)
            curve = curves[best]
            shared = self.shared_windows(curve)
            boots = [self._auc(curve, idx) for idx in self._resamples(shared)] if shared else [0.0]
            at50 = next((t.delta_loss for t in curve if abs(t.sparsity - 0.5) < 1e-9), None)
            rows.append(RankRow(target=target, layer=None, best_criterion=best, auc=self._auc(curve),
                                auc_ci=tuple(float(v) for v in np.percentile(boots, [2.5, 97.5])),
                                max_safe_sparsity=self._max_safe(curve), delta_at_50=at50,
                                params=self._target_params(target, None)))
        rows.sort(key=lambda r: -r.auc)
        for i, r in enumerate(rows, 1):
            r.rank = i
        return rows

    def _max_safe(self, curve: list[Trial]) -> float:
        safe = 0.0
        for t in curve:
            if t.stopped or t.rel_ppl_increase > self.tolerance:  # a stopped trial is far outside
                break
            safe = t.sparsity
        return safe

    def layer_ranking(self) -> list[dict[str, Any]]:
        """Per (layer, target) loss increase at the probe sparsity, most sensitive per layer first.
        A row of an adaptive run may cover a block of ``span`` layers from ``layer`` (``layers``: "4-7")."""
        rows = []
        for t in self.layer_trials:
            lo, hi = self.delta_ci(t)
            rows.append({"layer": t.layer, "span": t.span, "layers": layer_text(t.layer, t.span), "target": t.target,
                         "criterion": t.criterion, "sparsity": t.sparsity, "delta_loss": t.delta_loss,
                         "ci_low": lo, "ci_high": hi, "rel_ppl_increase": t.rel_ppl_increase,
                         "params": sum(self._target_params(t.target, layer) for layer in range(t.layer, t.layer + t.span))})
        rows.sort(key=lambda r: -r["delta_loss"] / r["span"])
        for i, r in enumerate(rows, 1):
            r["rank"] = i
        return rows

    def layer_cell(self, layer: int, target: str) -> Trial | None:
        """The narrowest per-layer trial of ``target`` that covers ``layer`` (None: not measured)."""
        covering = [t for t in self.layer_trials if t.target == target and t.spec.covers(layer)]
        return min(covering, key=lambda t: t.span) if covering else None

    def layer_stage_note(self) -> str | None:
        """Why targets have no per-layer rows (None when every profiled target has some)."""
        settings = self.record.settings
        if not settings.per_layer:
            return "no per-layer sweep in this run (profiled with --no-per-layer)"
        missing = [t for t in dict.fromkeys(t.target for t in self.model_trials)
                   if not any(u.target == t for u in self.layer_trials)]
        if not missing or settings.sweep != "adaptive":
            return None
        from .adaptive import REFINE_FLOOR

        floor = REFINE_FLOOR * math.log1p(self.tolerance)
        probe = f"({settings.layer_criterion} at {settings.probe_sparsity:.0%})"
        limit = f"the floor (ΔL {floor:.4f}, a tenth of the tolerance's), so there was nothing to localize"
        if len(missing) == len(self.targets()):
            return f"no layer blocks: no target pruned in every layer {probe} surely cost more than {limit}"
        return (f"no layer blocks for {', '.join(missing)}: pruned in every layer {probe}, they did not surely "
                f"cost more than {limit}")

    def heatmap(self, metric: str = "delta") -> tuple[list[int], list[str], list[list[float | None]]]:
        """Layer × target matrix at the probe sparsity (None where not measured): ΔL (``metric``
        "delta") or the relative perplexity increase ("rel"). Where only a block of layers was
        measured (adaptive sweep), each of its layers shows the block's ΔL shared evenly."""
        mixer_layers = {g.layer for g in self.analysis.mixer_groups()}
        layers = sorted({l for t in self.layer_trials for l in range(t.layer, t.layer + t.span)
                         if t.span == 1 or l in mixer_layers})
        targets = list(dict.fromkeys(t.target for t in self.layer_trials))

        def value(layer: int, target: str) -> float | None:
            t = self.layer_cell(layer, target)
            if t is None:
                return None
            share = t.delta_loss / t.span
            return share if metric == "delta" else math.expm1(min(share, 700.0))

        return layers, targets, [[value(l, g) for g in targets] for l in layers]

    def _target_params(self, target: str, layer: int | None) -> int:
        if target.startswith("unit:"):
            kind = target[5:]
            return sum(u.count * u.params_per_unit for u in self.analysis.units
                       if u.kind == kind and (layer is None or u.layer == layer))
        return sum(g.numel for g in self.analysis.mixer_groups()
                   if g.group == target and (layer is None or g.layer == layer))

    # ------------------------------------------------------------------ predictions
    def prediction_agreement(self) -> dict[str, dict[str, float]]:
        """Spearman rank correlation between predicted and measured ΔL, per criterion that predicts the
        loss, over its model-wide trials (at least 3): ``spearman``, ``n`` and a 95% interval ``low``/
        ``high`` from Fisher's z with the Spearman standard error sqrt(1.06/(n-3)) (Fieller, Hartley &
        Pearson 1957; NaN below 5 trials). Also how far the predicted ΔL is off in scale: ``ratio``, the
        median of measured / predicted over the trials it predicts a loss for, and ``ratio_low``/
        ``ratio_high`` its distribution-free 95% interval (order statistics; NaN below 6 such trials):
        below 1, the criterion over-predicts ΔL by that factor."""
        from scipy.stats import spearmanr

        out = {}
        for criterion in self.criteria():
            pairs = [(t.predicted_delta, t.delta_loss) for t in self.model_trials
                     if t.criterion == criterion and t.predicted_delta is not None]
            if len(pairs) >= 3:
                pred, meas = zip(*pairs)
                rho = float(spearmanr(pred, meas).statistic)
                low, high = spearman_interval(rho, len(pairs))
                out[criterion] = {"spearman": rho if rho == rho else float("nan"), "n": len(pairs),
                                  "low": low, "high": high, **median_ratio([m / p for p, m in pairs if p > 0])}
        return out

    # ------------------------------------------------------------------ findings
    def findings(self) -> list[Finding]:
        return evaluate_findings(self)

    # ------------------------------------------------------------------ tables
    def sweep_frame(self):
        import pandas as pd

        rows = []
        for t in self.trials:
            lo, hi = self.delta_ci(t)
            row = {k: v for k, v in t.to_dict().items() if k != "window_losses"}
            row.update(ci_low=lo, ci_high=hi, windows_evaluated=t.windows_evaluated,
                       unit_aggregation=self.unit_aggregation_of(t))
            rows.append(row)
        return pd.DataFrame(rows)

    def unit_aggregation_of(self, trial: Trial) -> str:
        """How ``trial``'s unit scores combined their tensors' sums ("" for element cuts, criteria that
        score units natively, and runs from before the record said)."""
        ways = self.record.unit_aggregation
        if not ways or not trial.target.startswith("unit:"):
            return ""
        return ", ".join(dict.fromkeys(how for kind in ways.values() if (how := kind.get(trial.criterion))))

    # ------------------------------------------------------------------ persistence
    def save(self, run_dir: str | Path) -> Path:
        """Write everything except the journal (which the profiler appends as it goes)."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "run.json", self.record.to_dict())
        self.analysis.to_json(run_dir / "analysis.json")
        write_json_atomic(run_dir / "dense.json", {"window_losses": self.dense_window_losses})
        write_json_atomic(run_dir / "unit_scores.json", self.unit_scores)
        write_json_atomic(run_dir / "saliency.json", self.saliency)
        write_csv_tables(run_frames(self, self.ranking(), self.layer_ranking(), self.findings()), run_dir)
        return run_dir

    @classmethod
    def load(cls, run_dir: str | Path) -> "ProfileResult":
        run_dir = Path(run_dir)
        if not (run_dir / "run.json").exists():
            raise RunDirError(f"'{run_dir}' is not a profile run directory (no run.json); "
                              "create one with `ssm-profile profile MODEL -o DIR`")
        try:
            meta = read_user_json(run_dir / "run.json", "run file", error=RunDirError)
            if not isinstance(meta, dict) or meta.get("schema_version") != RUN_SCHEMA_VERSION:
                found = meta.get("schema_version") if isinstance(meta, dict) else None
                raise RunDirError(f"'{run_dir}' was written by an incompatible version "
                                  f"(schema {found}, expected {RUN_SCHEMA_VERSION}); profile again")
            check_settings(meta.get("settings", {}), run_dir / "run.json")
            record = RunRecord.from_dict(meta)
            analysis = AnalysisResult.from_json(run_dir / "analysis.json")
            dense = check_dense(read_user_json(run_dir / "dense.json", "run file", error=RunDirError),
                                run_dir / "dense.json")
            trials = read_journal(run_dir / "trials.jsonl")
            check_trials(trials, record.settings.targets, len(dense), run_dir / "trials.jsonl")
            unit_scores = _read_optional(run_dir / "unit_scores.json")
            saliency = _read_optional(run_dir / "saliency.json")
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise RunDirError(f"run directory '{run_dir}' is incomplete or damaged ({err}); "
                              "rerun `ssm-profile profile ... --resume`") from None
        return cls(record=record, analysis=analysis, dense_window_losses=dense, trials=trials,
                   unit_scores=unit_scores, saliency=saliency, tolerance=record.settings.tolerance)


def spearman_interval(rho: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% interval of a Spearman correlation of ``n`` pairs (Fisher z, se = sqrt(1.06/(n-3)))."""
    if n < 5 or not math.isfinite(rho):
        return float("nan"), float("nan")
    centre = math.atanh(max(min(rho, 1 - 1e-12), -1 + 1e-12))
    half = z * math.sqrt(1.06 / (n - 3))
    return math.tanh(centre - half), math.tanh(centre + half)


def median_ratio(ratios: list[float]) -> dict[str, float]:
    """Median of ``ratios`` and its distribution-free 95% interval [x_(k), x_(n-k+1)], k the binomial(n, ½)
    2.5% quantile (covers at least 95% whatever their distribution; NaN below 6 values)."""
    from scipy.stats import binom

    n = len(ratios)
    if not n:
        return {}
    ordered = sorted(ratios)
    k = int(binom.ppf(0.025, n, 0.5))
    low, high = (ordered[k - 1], ordered[n - k]) if k >= 1 else (float("nan"), float("nan"))
    return {"ratio": float(np.median(ordered)), "ratio_low": float(low), "ratio_high": float(high), "ratio_n": n}


def run_frames(result: ProfileResult, ranking: list[RankRow], layer_ranking: list[dict[str, Any]],
               findings: list[Finding]) -> dict[str, Any]:
    """name -> pandas DataFrame for the run directory's tables, from the result's views (computed by the caller,
    who may already hold them): sweep (model-wide trials), layers (per-layer trials), ranking, layer_ranking,
    findings."""
    import pandas as pd

    trials = result.sweep_frame()
    if len(trials):
        sweep = trials[trials["layer"].isna()].reset_index(drop=True)
        layers = trials[trials["layer"].notna()].reset_index(drop=True)
    else:  # no trials, no columns to split on
        sweep = layers = trials
    return {
        "sweep": sweep,
        "layers": layers,
        "ranking": pd.DataFrame([asdict(row) for row in ranking]),
        "layer_ranking": pd.DataFrame(layer_ranking),
        "findings": pd.DataFrame([asdict(f) for f in findings]),
    }


def write_csv_tables(frames: dict[str, Any], directory: str | Path) -> list[Path]:
    """Write each frame to ``directory/NAME.csv`` (atomically, file by file); the one CSV writer of the
    run directory and the report's ``--csv`` export. Returns the paths."""
    directory = Path(directory)
    return [write_text_atomic(directory / f"{name}.csv", frame.to_csv(index=False)) for name, frame in frames.items()]


def _read_optional(path: Path) -> dict[str, Any]:
    return read_user_json(path, "run file", error=RunDirError) if path.exists() else {}


def without_superseded_screens(trials: list[Trial]) -> list[Trial]:
    """``trials`` less each screen whose trial was also completed on every window (the completion
    supersedes its preview; the journal keeps both)."""
    complete = {t.key for t in trials if not t.screen}
    return [t for t in trials if not (t.screen and t.spec.completed.key in complete)]
