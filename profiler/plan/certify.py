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

A bound holds for text like the search windows. A cut's damage on another domain is its own: on the
embedded tiny-mamba a state cut costs 3.3x its search-window loss on modern prose but 0.5x on
Bierce's 1911 prose, and an element cut the reverse. No margin learned on one domain transfers, so
the promise covers another text only when the user names it (``plan --also-on TEXT``): its first
windows are one more stratum the bound must hold on, its last windows check the promise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..documents import Certification

RULE = "prediction-bound"
LEVEL = 0.95
WHY = ("a plan chosen as the most pruning that fits on the search windows is flattered by them (winner's curse); "
       "the bound adds the windows' disagreement and the noise of the unseen windows that check it")


@dataclass(frozen=True)
class Stratum:
    """Windows a plan is certified on: their dense losses and how many unseen windows the bound predicts."""

    dense: Sequence[float]
    unseen: int


@dataclass(frozen=True)
class Certifier:
    """Accepts or refuses a measurement (:meth:`Measurer.measure`'s dict, with ``window_losses`` and,
    for ``domains``, ``domain_window_losses``): accepted when the bound holds on every stratum."""

    dense: Sequence[float]  # the dense model's loss on each search window
    unseen: int  # the windows the bound predicts: the verification count
    max_ppl_increase: float
    level: float = LEVEL
    domains: dict[str, Stratum] = field(default_factory=dict)  # `--also-on` texts' certifying windows

    def bound(self, m: dict[str, Any]) -> float:
        """The relative perplexity increase the rule compares with the tolerance: the worst stratum's."""
        return max([self.search_bound(m)] + [self.domain_bound(m, name) for name in self.domains])

    def search_bound(self, m: dict[str, Any]) -> float:
        pruned = m.get("window_losses")
        if pruned is None:  # the empty plan: nothing changes
            return math.expm1(m["delta_loss"])
        return prediction_bound(self.dense, pruned, self.unseen, self.level)

    def domain_bound(self, m: dict[str, Any], name: str) -> float:
        pruned = (m.get("domain_window_losses") or {}).get(name)
        if pruned is None:  # the empty plan
            return 0.0
        stratum = self.domains[name]
        return prediction_bound(stratum.dense, pruned, stratum.unseen, self.level)

    def accepts(self, m: dict[str, Any]) -> bool:
        bound = self.bound(m)
        return math.isfinite(bound) and bound <= self.max_ppl_increase

    def document(self, m: dict[str, Any]) -> Certification:
        """The search windows' certification (each domain's: :meth:`domain_document`)."""
        return self._document(len(self.dense), self.unseen, float(m["rel_ppl_increase"]), self.search_bound(m))

    def domain_document(self, m: dict[str, Any], name: str) -> Certification:
        stratum = self.domains[name]
        pruned = (m.get("domain_window_losses") or {}).get(name)
        increase = 0.0 if pruned is None else math.expm1(
            min(700.0, (sum(pruned) - sum(stratum.dense)) / len(stratum.dense)))
        return self._document(len(stratum.dense), stratum.unseen, increase, self.domain_bound(m, name))

    def _document(self, windows: int, unseen: int, increase: float, bound: float) -> Certification:
        return Certification(rule=RULE, level=self.level, windows=windows, unseen_windows=unseen,
                             increase=increase, bound=float(bound), max_ppl_increase=float(self.max_ppl_increase),
                             certified=bool(math.isfinite(bound) and bound <= self.max_ppl_increase), why=WHY)

    def deltas(self, m: dict[str, Any]) -> dict[str, float]:
        """The mean loss change on each stratum ("" the search windows; the empty plan changes none)."""
        out = {"": float(m["delta_loss"])}
        for name, stratum in self.domains.items():
            pruned = (m.get("domain_window_losses") or {}).get(name)
            out[name] = 0.0 if pruned is None else (sum(pruned) - sum(stratum.dense)) / len(stratum.dense)
        return out

    def marginal(self, m: dict[str, Any], without: dict[str, Any] | None = None) -> float:
        """What one action costs in the combination ``m`` (``without``: ``m`` less that action; None: the
        action alone): the largest of its marginal loss changes over the strata, each on its own windows,
        so the text that refuses a plan teaches the back-off its costs even when another has the larger mean."""
        after = self.deltas(m)
        before = self.deltas(without) if without is not None else dict.fromkeys(after, 0.0)
        return max(after[s] - before[s] for s in after)


def prediction_bound(dense: Sequence[float], pruned: Sequence[float], unseen: int, level: float = LEVEL) -> float:
    """One-sided ``level`` prediction bound of the relative perplexity increase on ``unseen`` new windows,
    from the paired per-window losses of the same windows (see the module docstring)."""
    from scipy.stats import t

    diffs = [p - d for d, p in zip(dense, pruned, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return math.inf  # one window: no spread to bound with, whatever its sign
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (n - 1))
    delta = mean + float(t.ppf(level, n - 1)) * sd * math.sqrt(1 / n + 1 / max(1, unseen))
    return math.expm1(min(delta, 700.0))
