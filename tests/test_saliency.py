"""The saliency summary holds one criterion's scores at a time, in float32, summarised in place: its
numbers must equal numpy's on the float64 scores (what the run's saliency held before)."""

from __future__ import annotations

import numpy as np
import pytest

from ssm_profile.profiling import saliency


def _numpy_summary(scores: np.ndarray, bins: int) -> dict:
    s = scores.astype(np.float64)
    logs = np.log10(np.abs(s) + 1e-30)
    hist, edges = np.histogram(logs[np.isfinite(logs)], bins=bins)
    return {"quantiles": {name: float(np.quantile(s, q)) for name, q in saliency.QUANTILES},
            "log10_hist": {"counts": hist.tolist(), "edges": [float(e) for e in edges]}, "n": len(s)}


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 40_001])
@pytest.mark.parametrize("kind", ["spread", "half zeros", "positive"])
def test_distribution_equals_numpy_on_float64(n, kind, monkeypatch):
    monkeypatch.setattr(saliency, "CHUNK", 4096)  # several histogram chunks
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-5, 3, n)).astype(np.float32)
    if kind == "half zeros":
        x[: n // 2] = 0
    elif kind == "positive":
        x = np.abs(x)
    assert saliency.distribution(x.copy(), 24) == _numpy_summary(x, 24)
