"""The exact solver: a multiple-choice knapsack with pairwise overlaps, as a MILP (scipy/numpy only).

One level per target (level 0 = untouched); gains are what a level removes of the chosen metric,
costs its measured loss change. Overlapping pairs enter through linearised pair variables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..documents import one_line
from ..base.errors import PlanError

_OBJ_SCALE = 1e6  # MILP objectives are scaled so that HiGHS' absolute gap (1e-6) is negligible

Overlaps = Mapping[tuple[tuple[int, int], tuple[int, int]], float]

def solve_mckp(gains: Sequence[Sequence[float]], costs: Sequence[Sequence[float]], *, cap: float,
               budget: float | None = None, overlaps: Mapping[tuple[tuple[int, int], tuple[int, int]], float] | None
               = None, gain_ceiling: float | None = None, cuts: Sequence[Mapping[int, int]] = (),
               risks: Sequence[Sequence[float]] | None = None) -> list[int] | None:
    """Multiple-choice knapsack as a MILP; returns the chosen level of each target, or None if infeasible.

    ``gains[t][l]``/``costs[t][l]``: reduction and loss cost of level ``l`` of target ``t``.
    ``overlaps[((t1, l1), (t2, l2))]``: reduction counted twice when both are chosen (subtracted).
    Net reduction ``R = Σ g x - Σ o y`` with ``y = x1 AND x2`` (linearised).

    * ``budget is None``: maximise ``R`` s.t. ``Σ c x <= cap``;
    * else: minimise ``Σ c x`` s.t. ``R >= budget`` and ``Σ c x <= cap``.

    Among optimal solutions (a second, lexicographic solve) the one with the least ``Σ risk``
    wins (default: least cost when maximising, least ``R`` when minimising).
    ``gain_ceiling`` adds ``R <= gain_ceiling``; each cut ``{t: l}`` excludes every choice with
    level ``>= l`` in all of its targets (levels must be ordered from least to most aggressive).
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix

    overlaps = {k: v for k, v in (overlaps or {}).items() if v}
    index: dict[tuple[int, int], int] = {}
    for t, row in enumerate(gains):
        if len(row) != len(costs[t]) or not row:
            raise ValueError(f"target {t}: gains and costs need the same, non-zero number of levels")
        for l in range(len(row)):
            index[(t, l)] = len(index)
    pairs = list(overlaps)
    nx, n = len(index), len(index) + len(pairs)
    scale = max(1.0, abs(budget or 0.0), sum(max(abs(v) for v in row) for row in gains))
    g = np.zeros(n)  # net-reduction coefficients, normalised
    c = np.zeros(n)
    r = np.zeros(n)
    for (t, l), i in index.items():
        g[i] = gains[t][l] / scale
        c[i] = costs[t][l]
        r[i] = risks[t][l] if risks is not None else 0.0
    for j, pair in enumerate(pairs):
        g[nx + j] = -overlaps[pair] / scale

    rows: list[tuple[np.ndarray | dict[int, float], float, float]] = []
    for t, row in enumerate(gains):
        rows.append(({index[(t, l)]: 1.0 for l in range(len(row))}, 1.0, 1.0))
    rows.append((c, -np.inf, cap))
    if budget is not None:
        rows.append((g, budget / scale, np.inf))
    if gain_ceiling is not None:
        rows.append((g, -np.inf, gain_ceiling / scale))
    for j, (a, b) in enumerate(pairs):
        ia, ib, iy = index[a], index[b], nx + j
        rows.append(({ia: 1.0, ib: 1.0, iy: -1.0}, -np.inf, 1.0))
        rows.append(({iy: 1.0, ia: -1.0}, -np.inf, 0.0))
        rows.append(({iy: 1.0, ib: -1.0}, -np.inf, 0.0))
    for cut in cuts:
        coeffs = {index[(t, l2)]: 1.0 for t, l in cut.items() for l2 in range(l, len(gains[t]))}
        rows.append((coeffs, -np.inf, len(cut) - 1.0))

    def run(objective: np.ndarray, extra: list) -> Any:
        all_rows = rows + extra
        matrix = np.zeros((len(all_rows), n))
        lo, hi = np.empty(len(all_rows)), np.empty(len(all_rows))
        for k, (coeffs, low, high) in enumerate(all_rows):
            if isinstance(coeffs, dict):
                for i, v in coeffs.items():
                    matrix[k, i] = v
            else:
                matrix[k] = coeffs
            lo[k], hi[k] = low, high
        res = milp(objective, constraints=LinearConstraint(csr_matrix(matrix), lo, hi), integrality=np.ones(n),
                   bounds=Bounds(0, 1), options={"mip_rel_gap": 1e-9, "presolve": True})
        if res.status == 2:
            return None
        if res.x is None:
            raise PlanError(f"the MILP solver stopped without a solution ({one_line(res.message)})")
        return res

    # HiGHS stops at an absolute gap of 1e-6: scale objectives so that differences that matter are far larger.
    primary = (-g if budget is None else c) * _OBJ_SCALE
    first = run(primary, [])
    if first is None:
        return None
    if risks is not None:
        secondary = r
    else:
        secondary = c if budget is None else g
    optimum = float(primary @ first.x)
    second = run(secondary * _OBJ_SCALE, [(primary, -np.inf, optimum + 1e-4 + 1e-9 * abs(optimum))])
    x = np.round((second if second is not None else first).x[:nx]).astype(int)
    return [next(l for l in range(len(row)) if x[index[(t, l)]]) for t, row in enumerate(gains)]


def net_gain(choice: Sequence[int], gains: Sequence[Sequence[float]],
             overlaps: Mapping[tuple[tuple[int, int], tuple[int, int]], float] | None = None) -> float:
    total = sum(gains[t][l] for t, l in enumerate(choice))
    for ((t1, l1), (t2, l2)), o in (overlaps or {}).items():
        if choice[t1] == l1 and choice[t2] == l2:
            total -= o
    return total

