"""What the literature reports, checked on this model's own measurements.

Each finding is decided by a rule fixed in advance (the sparsity and comparison are written in
its ``claim``); nothing here is tuned per model. ``holds`` is None when the run did not measure
what the rule needs (e.g. a criterion was not selected).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # results imports this module; at run time the rules only call a result's methods
    from .results import ProfileResult

PROBE = 0.5  # the sparsity every rule compares at
FRAGILE_THRESHOLD = 0.20  # relative perplexity increase at PROBE that makes a group "fragile"


@dataclass
class Finding:
    id: str
    claim: str
    source: str
    holds: bool | None  # None: not measurable on this model/run
    detail: str
    numbers: dict[str, float] = field(default_factory=dict)


def _delta(result: "ProfileResult", target: str, criterion: str) -> float | None:
    trial = result.trial(target, criterion, PROBE)
    return None if trial is None else trial.delta_loss


def _best_delta(result: "ProfileResult", target: str) -> tuple[str, float] | None:
    options = [(c, _delta(result, target, c)) for c in result.criteria()]
    options = [(c, d) for c, d in options if d is not None]
    return min(options, key=lambda cd: cd[1]) if options else None


def wanda_vs_magnitude(result: "ProfileResult") -> Finding:
    numbers, verdicts = {}, []
    for group in ("in_proj", "out_proj"):
        w, m = _delta(result, group, "wanda"), _delta(result, group, "magnitude")
        if w is None or m is None:
            continue
        numbers[f"{group}.wanda"], numbers[f"{group}.magnitude"] = w, m
        verdicts.append(w < m)
    holds = all(verdicts) if verdicts else None
    detail = "; ".join(f"{g}: WANDA ΔL {numbers[f'{g}.wanda']:.4f} vs magnitude {numbers[f'{g}.magnitude']:.4f}"
                       for g in ("in_proj", "out_proj") if f"{g}.wanda" in numbers) or "not measured"
    return Finding("wanda_vs_magnitude", "WANDA loses less than magnitude at 50% unstructured sparsity on in_proj "
                   "and out_proj", "Ghattas et al. 2025; SparseSSM 2025", holds, detail, numbers)


def state_criteria_order(result: "ProfileResult") -> Finding:
    f, r, m = (_delta(result, "unit:state", c) for c in ("fisher", "random", "magnitude"))
    if None in (f, r, m):
        return Finding("state_criteria_order", "For SSM states at 50%: Fisher-Taylor < random < magnitude (ΔL)",
                       "Ghattas et al. 2025 (Phi-Mamba state pruning)", None, "not measured")
    return Finding("state_criteria_order", "For SSM states at 50%: Fisher-Taylor < random < magnitude (ΔL)",
                   "Ghattas et al. 2025 (Phi-Mamba state pruning)", f < r < m,
                   f"ΔL fisher {f:.4f}, random {r:.4f}, magnitude {m:.4f}",
                   {"fisher": f, "random": r, "magnitude": m})


def a_log_fragility(result: "ProfileResult") -> Finding:
    trial = result.trial("A_log", "magnitude", PROBE)
    kinds = result.analysis.model.get("mixer_kinds", [])
    claim = (f"Mamba-1's A_log is fragile under 50% magnitude pruning (perplexity +{FRAGILE_THRESHOLD:.0%} or "
             f"more) while Mamba-2's is not")
    if trial is None or len(kinds) != 1:
        return Finding("a_log_fragility", claim, "SparseSSM 2025", None, "not measured")
    fragile = trial.rel_ppl_increase >= FRAGILE_THRESHOLD
    expected = kinds[0] == "mamba1"
    return Finding("a_log_fragility", claim, "SparseSSM 2025", fragile == expected,
                   f"{kinds[0]}: A_log magnitude 50% → perplexity {trial.rel_ppl_increase:+.1%} "
                   f"({'fragile' if fragile else 'not fragile'}; expected {'fragile' if expected else 'not fragile'})",
                   {"rel_ppl_increase": trial.rel_ppl_increase, "delta_loss": trial.delta_loss})


def heads_vs_states(result: "ProfileResult") -> Finding:
    kinds = result.analysis.model.get("mixer_kinds", [])
    wide = "unit:head" if "mamba2" in kinds else "unit:channel"
    claim = ("Cutting heads hurts more than cutting states at 50% (best criterion each)" if wide == "unit:head" else
             "Cutting channels (Mamba-1's analogue of heads) hurts more than cutting states at 50% (best criterion each)")
    heads, states = _best_delta(result, wide), _best_delta(result, "unit:state")
    if heads is None or states is None:
        return Finding("heads_vs_states", claim, "Ghattas et al. 2025", None, "not measured")
    return Finding("heads_vs_states", claim, "Ghattas et al. 2025", heads[1] > states[1],
                   f"{wide} ΔL {heads[1]:.4f} ({heads[0]}) vs unit:state ΔL {states[1]:.4f} ({states[0]})",
                   {"wide": heads[1], "state": states[1]})


RULES = (wanda_vs_magnitude, state_criteria_order, a_log_fragility, heads_vs_states)


def evaluate_findings(result: "ProfileResult") -> list[Finding]:
    return [rule(result) for rule in RULES]
