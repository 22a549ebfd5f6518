"""Certifying a measured plan on the search windows, against the winner's curse.

The planner picks the most pruning whose measured increase fits the tolerance, on the same search
windows it measures; the plan that just fits is the one the windows flatter most, and on text no
step saw it breaks the promise (issue 24: held-out increases a median 1.18x the search figure). So a
plan is accepted on a bound, not on the mean: the one-sided ``level`` t *prediction* bound of the
mean loss change on ``unseen`` new windows (the verification count), from the paired per-window
differences of the ``n`` search windows:

    bound = mean(d) + t_{level, n-1} * sd(d) * sqrt(1/n + 1/unseen)

It widens with the windows' disagreement and with how few there are, so a plan that fits only by
the luck of these windows is backed off. The verification windows take no part in it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..documents import Certification

RULE = "prediction-bound"
LEVEL = 0.95
WHY = ("a plan chosen as the most pruning that fits on the search windows is flattered by them (winner's curse); "
       "the bound adds the windows' disagreement and the noise of the unseen windows that check it")


@dataclass(frozen=True)
class Certifier:
    """Accepts or refuses a measurement (:meth:`Measurer.measure`'s dict, with ``window_losses``)."""

    dense: Sequence[float]  # the dense model's loss on each search window
    unseen: int  # the windows the bound predicts: the verification windows' count
    max_ppl_increase: float
    level: float = LEVEL

    def bound(self, m: dict[str, Any]) -> float:
        """The relative perplexity increase the rule compares with the tolerance."""
        pruned = m.get("window_losses")
        if pruned is None:  # the empty plan: nothing changes
            return math.expm1(m["delta_loss"])
        return prediction_bound(self.dense, pruned, self.unseen, self.level)

    def accepts(self, m: dict[str, Any]) -> bool:
        bound = self.bound(m)
        return math.isfinite(bound) and bound <= self.max_ppl_increase

    def document(self, m: dict[str, Any]) -> Certification:
        bound = self.bound(m)
        return Certification(rule=RULE, level=self.level, windows=len(self.dense), unseen_windows=self.unseen,
                             increase=float(m["rel_ppl_increase"]), bound=float(bound),
                             max_ppl_increase=float(self.max_ppl_increase), certified=self.accepts(m), why=WHY)


def prediction_bound(dense: Sequence[float], pruned: Sequence[float], unseen: int, level: float = LEVEL) -> float:
    """One-sided ``level`` prediction bound of the relative perplexity increase on ``unseen`` new windows,
    from the paired per-window losses of the same windows (see the module docstring)."""
    from scipy.stats import t

    diffs = [p - d for d, p in zip(dense, pruned, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return math.inf if mean > 0 else math.expm1(mean)  # one window: no spread to bound with
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (n - 1))
    delta = mean + float(t.ppf(level, n - 1)) * sd * math.sqrt(1 / n + 1 / max(1, unseen))
    return math.expm1(min(delta, 700.0))
