"""Human-readable numbers and wording shared by every output (CLI tables, JSON, report, TUI).

Every percentage names its total: :func:`share` / :func:`percent_of` write ``"30.1% of SSM-mixer
params"``, and :func:`scope_name` is the one name of each total (``"SSM-mixer params"``,
``"whole-model params"``), so the CLI, the plan JSON, the HTML report and the TUI say the same.
"""

from __future__ import annotations

import math

METRIC_NOUNS = {"params": "params", "flops": "FLOPs/token", "state": "state bytes/sequence"}
SCOPE_PREFIX = {"ssm": "SSM-mixer", "model": "whole-model"}


def human_count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def human_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def scope_name(scope: str | None, metric: str = "params") -> str:
    """The total a share is of: ``scope_name("ssm") == "SSM-mixer params"``,
    ``scope_name("model", "flops") == "whole-model FLOPs/token"`` (no scope: the whole model)."""
    return f"{SCOPE_PREFIX[scope or 'model']} {METRIC_NOUNS.get(metric, metric)}"


def amount(metric: str, value: float) -> str:
    """``value`` of ``metric`` with its unit: ``"10.23k params"``, ``"132.10k FLOPs/token"``,
    ``"65.50 KiB state/sequence"``."""
    if metric == "state":
        return f"{human_bytes(value)} state/sequence"
    return f"{human_count(value)} {METRIC_NOUNS.get(metric, metric)}"


def percent_of(ratio: float | None, of: str, signed: bool = False) -> str:
    """``"30.1% of SSM-mixer params"`` (``signed``: ``"-30.1% of ..."``); ``"—"`` without a ratio."""
    if ratio is None:
        return "—"
    return f"{ratio:{'+' if signed else ''}.1%} of {of}"


def share(part: float | None, total: float | None, of: str, signed: bool = False) -> str:
    """``part`` as a percentage of ``total``, naming the total: ``share(3, 10, of="SSM-mixer params")``
    is ``"30.0% of SSM-mixer params"``."""
    return percent_of(part / total if part is not None and total else None, of, signed)


def agreement_text(name: str, agreement: dict) -> str:
    """``fisher ρ=0.95 (95% CI 0.92…0.97, n=90); measured/predicted ΔL 0.84 (95% CI 0.70…0.92, n=90):
    over-predicts``: one criterion's predicted-vs-measured Spearman, and the scale of its prediction."""
    rho, low, high = agreement.get("spearman"), agreement.get("low"), agreement.get("high")
    finite = [v is not None and math.isfinite(v) for v in (rho, low, high)]
    interval = f"95% CI {low:.2f}…{high:.2f}, " if all(finite[1:]) else ""
    text = f"{name} ρ={rho:.2f} ({interval}n={agreement.get('n')})" if finite[0] else f"{name} ρ n/a"
    return text + ratio_text(agreement)


def ratio_text(agreement: dict) -> str:
    """``; measured/predicted ΔL 0.84 (95% CI 0.70…0.92, n=24): over-predicts``, or "" without a ratio."""
    ratio, low, high = agreement.get("ratio"), agreement.get("ratio_low"), agreement.get("ratio_high")
    if ratio is None or not math.isfinite(ratio):
        return ""
    if low is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"; measured/predicted ΔL {ratio:.2f} (n={agreement.get('ratio_n')}, too few for an interval)"
    verdict = "over-predicts" if high < 1 else "under-predicts" if low > 1 else "scale within its interval"
    return (f"; measured/predicted ΔL median {ratio:.2f} (95% CI {low:.2f}…{high:.2f}, "
            f"n={agreement.get('ratio_n')}): {verdict}")


def parse_proportion(text: str, example: float, *, below_one: bool = False, allow_zero: bool = False) -> float:
    """A ratio or tolerance a person typed: a fraction (``0.1``) or a percentage (``10%``). The one rule
    for every front end (CLI flags, the TUI's fields).

    A bare number of 1 or more is refused: ``10`` would mean +1000%, almost surely a percentage without
    its sign. ``below_one``: also refuse 100% and more (a share of a total); ``allow_zero``: accept 0.
    ``example`` is the fraction the messages suggest. Raises ``ValueError`` with a one-line message."""
    hint = f"write a fraction ({example:g}) or a percentage ({example:.0%})"
    stripped = text.strip()
    percent = stripped.endswith("%")
    try:
        value = float(stripped[:-1] if percent else stripped)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}; {hint}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {text!r}; {hint}")
    if not percent and value >= 1:
        raise ValueError(f"{value:g} would mean {value:.0%}; {hint}")
    value = value / 100 if percent else value
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"must be {'at least' if allow_zero else 'more than'} 0, got {text!r}; {hint}")
    if below_one and value >= 1:
        raise ValueError(f"{text!r} is all of the total or more; {hint}")
    return value
