"""The run's saliency summary: per target and criterion, the distribution of element (or unit) scores
(quantiles and a log10 histogram) and how the criteria's rankings agree (Spearman on sampled positions).

Memory: one criterion's scores of one target are held at a time, as float32, and summarised in place
(quantiles by a partial sort, the histogram chunk by chunk), so a 1.4B model's in_proj (~0.8 G
scores) needs ~3 GB, not the ~6 GB per criterion a float64 copy and its sorted copy would. The
numbers equal ``np.quantile`` / ``np.histogram`` of the float64 scores exactly: float32 values are
exact in float64, the order statistics are the same elements, and the interpolation and the
histogram's edges are computed in float64 as numpy does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..criteria.masks import Target, prunable_params
from .sensitivity import Scorer

QUANTILES = (("min", 0.0), ("p05", 0.05), ("median", 0.5), ("p95", 0.95), ("max", 1.0))
CHUNK = 1 << 22  # scores per float64 temporary in the histogram pass


def saliency_summary(scorer: Scorer, mixers, targets: list[Target], criteria: list[str],
                     max_points: int = 20000, bins: int = 24) -> dict[str, Any]:
    """Score distributions (log10 histograms, quantiles) and criteria rank agreement per target;
    the agreement uses the same ``max_points`` sampled positions of every criterion."""
    from scipy.stats import spearmanr

    out: dict[str, Any] = {"distributions": {}, "agreement": {}}
    rng = np.random.default_rng(0)
    for target in targets:
        dists, sampled, n, pick = {}, {}, None, None
        for c in criteria:
            s = target_scores(scorer, mixers, target, c)
            if s is None:
                continue
            if n is None:
                n = len(s)
                pick = rng.choice(n, size=min(n, max_points), replace=False) if n > max_points else np.arange(n)
            if len(s) == n:
                sampled[c] = s[pick].astype(np.float64)
            dists[c] = distribution(s, bins)  # partially sorts ``s`` in place: after the sampling
            del s
        if not dists:
            continue
        out["distributions"][target.name] = dists
        names = list(sampled)
        matrix = [[1.0 if a == b else _spearman(spearmanr, sampled[a], sampled[b]) for b in names] for a in names]
        out["agreement"][target.name] = {"criteria": names, "spearman": matrix}
    return out


def target_scores(scorer: Scorer, mixers, target: Target, criterion: str) -> np.ndarray | None:
    """Every score of ``target`` under ``criterion`` over the layers, one flat array (a fresh copy:
    float32 for element scores, float64 for unit scores); None when the criterion cannot score it."""
    from ..criteria import NotApplicable

    parts = []
    try:
        for mixer in mixers:
            if target.kind == "group":
                for param in prunable_params(mixer, target.part):
                    parts.append(scorer.element(criterion, mixer, param).reshape(-1).numpy())
            elif target.part in mixer.unit_families():
                parts.append(scorer.units(criterion, mixer, target.part).numpy())
    except NotApplicable:
        return None
    return np.concatenate(parts) if parts else None


def distribution(s: np.ndarray, bins: int) -> dict[str, Any]:
    """Quantiles and log10 histogram of ``s`` (reordered in place)."""
    return {"quantiles": _quantiles(s), "log10_hist": _log_histogram(s, bins), "n": int(len(s))}


def _quantiles(s: np.ndarray) -> dict[str, float]:
    """``np.quantile(s.astype(float64), q)`` (linear interpolation) for each of :data:`QUANTILES`."""
    n = len(s)
    positions = {name: q * (n - 1) for name, q in QUANTILES}
    ranks = sorted({int(np.floor(p)) for p in positions.values()} | {int(np.ceil(p)) for p in positions.values()})
    s.partition(ranks)
    out = {}
    for name, position in positions.items():
        lo, hi = int(np.floor(position)), int(np.ceil(position))
        out[name] = _lerp(np.float64(s[lo]), np.float64(s[hi]), np.float64(position - lo))
    return out


def _lerp(a: np.float64, b: np.float64, t: np.float64) -> float:
    """numpy's quantile interpolation, which works back from ``b`` when ``t`` >= 0.5."""
    return float(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)


def _log_histogram(s: np.ndarray, bins: int) -> dict[str, list]:
    """``np.histogram`` of the finite log10(|s| + 1e-30), computed in float64 chunks. The range needs
    no pass over the logs: log10 is monotone, so its ends are the logs of the smallest and largest
    finite |s| (the very float64 operations the chunks apply)."""
    extremes = [(m.min(), m.max()) for start in range(0, len(s), CHUNK)
                if (m := _finite(np.abs(s[start:start + CHUNK]))).size]
    ends = (np.log10(np.array([min(lo for lo, _ in extremes), max(hi for _, hi in extremes)], dtype=np.float64)
                     + 1e-30) if extremes else None)
    if ends is None or not np.isfinite(ends).all():
        return _histogram_of_logs(s, bins)  # extreme values whose log overflows: the plain two passes
    counts = np.zeros(bins, dtype=np.int64)
    edges = None
    for start in range(0, len(s), CHUNK):
        hist, edges = np.histogram(_finite_logs(s[start:start + CHUNK]), bins=bins, range=(ends[0], ends[1]))
        counts += hist
    return {"counts": counts.tolist(), "edges": [float(e) for e in edges]}


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def _finite_logs(chunk: np.ndarray) -> np.ndarray:
    return _finite(np.log10(np.abs(chunk.astype(np.float64)) + 1e-30))


def _histogram_of_logs(s: np.ndarray, bins: int) -> dict[str, list]:
    logs = _finite_logs(s)
    hist, edges = np.histogram(logs, bins=bins) if logs.size else (np.zeros(bins), np.zeros(bins + 1))
    return {"counts": hist.tolist(), "edges": [float(e) for e in edges]}


def _spearman(fn, a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(fn(a, b).statistic)
