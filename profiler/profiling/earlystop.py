"""Early stopping: end a trial's evaluation once its windows show it is far outside tolerance.

A trial is evaluated in chunks of windows (the evaluator's batches). After each chunk but the last
the rule looks at the paired window losses ``d_i = loss_trial(i) - loss_dense(i)`` seen so far
(same windows, so window-to-window difficulty cancels) and stops when

    mean(d) - t(1 - alpha / looks, n - 1) * sd(d) / sqrt(n)  >  log(1 + k * tolerance)

i.e. when the one-sided lower confidence bound of the mean paired ΔL lies above the ΔL at which
perplexity rises by ``k`` times the tolerance (``k = 2``: "far" outside means twice the allowed
increase). Error control: at each of the ``looks`` interim looks the bound holds with probability
``1 - alpha / looks``, so (Bonferroni over looks, t-approximation of the mean of the windows) a
trial whose true mean ΔL is at most ``log(1 + k * tolerance)`` is stopped with probability at most
``alpha`` (1%); a trial within tolerance is further still from the line. A stopped trial is
"lost": outside tolerance at that sparsity, never a plan option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FAR_FACTOR = 2.0  # k: stop when the increase is surely above k x tolerance
STOP_ALPHA = 0.01  # chance of stopping a trial that is not that far out, over all looks
CHUNK_WINDOWS = 4  # the adaptive sweep evaluates at most this many windows per batch: a look after each
MIN_WINDOWS = 3  # no look with fewer paired windows (the t bound needs a spread)


@dataclass(frozen=True)
class StopRule:
    """The sequential test above, for a trial of ``windows`` windows evaluated in ``chunk``-window pieces."""

    tolerance: float
    windows: int
    chunk: int
    k: float = FAR_FACTOR
    alpha: float = STOP_ALPHA

    @property
    def threshold(self) -> float:
        """The mean paired ΔL the lower bound must exceed: log(1 + k * tolerance)."""
        return math.log1p(self.k * self.tolerance)

    @property
    def looks(self) -> int:
        """Interim looks: after every chunk but the last, once enough windows are in."""
        ends = range(self.chunk, self.windows, self.chunk)
        return max(1, sum(1 for n in ends if n >= MIN_WINDOWS))

    def lower_bound(self, paired: np.ndarray) -> float:
        """One-sided lower confidence bound (level 1 - alpha/looks) of the mean of ``paired``."""
        return lower_bound(paired, self.alpha / self.looks)

    def should_stop(self, paired: np.ndarray) -> bool:
        """Whether to stop after seeing ``paired`` (trial minus dense, per window, in window order)."""
        return len(paired) < self.windows and self.lower_bound(np.asarray(paired, dtype=np.float64)) > self.threshold


def lower_bound(paired: np.ndarray, alpha: float) -> float:
    """One-sided lower confidence bound (level 1 - ``alpha``, t-approximation) of the mean of
    ``paired``; -inf with fewer than ``MIN_WINDOWS`` values."""
    from scipy.stats import t

    n = len(paired)
    if n < MIN_WINDOWS:
        return -math.inf
    spread = float(np.std(paired, ddof=1)) / math.sqrt(n)
    return float(np.mean(paired)) - float(t.ppf(1.0 - alpha, n - 1)) * spread
