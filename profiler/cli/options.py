"""Option parsers that refuse nonsense with a message naming the option (argparse adds its name)."""

from __future__ import annotations

import argparse
import math
from typing import Callable

from ..base.runtime import check_threads  # noqa: F401  (re-exported: the option's check lives in the core)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


SEED_MAX = 2**32 - 1  # numpy's and torch's generators both take any seed in [0, 2**32)


def seed(text: str) -> int:
    """A random seed: a whole number from 0 to 2**32 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be between 0 and {SEED_MAX}, got {text}")
    return value


def names(text: str) -> list[str]:
    """A comma-separated list of names (criteria, targets); an empty list is refused."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return items


def fraction(text: str) -> float:
    """A sparsity strictly between 0 and 1."""
    value = _number(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{value:g} is outside (0, 1); use values such as 0.1,0.5,0.9")
    return value


def sparsity_list(text: str) -> list[float]:
    """Comma-separated sparsities: at least one, each in (0, 1), none twice."""
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise argparse.ArgumentTypeError("give at least one sparsity, e.g. 0.1,0.5,0.9")
    if not all(items):
        raise argparse.ArgumentTypeError(f"empty item in {text!r}; separate sparsities with single commas")
    values = [fraction(item) for item in items]
    seen: set[float] = set()
    for value in values:
        if round(value, 4) in seen:  # trials are keyed on 4 decimals
            raise argparse.ArgumentTypeError(f"sparsity {value:g} is listed twice")
        seen.add(round(value, 4))
    return values


def positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value:g}")
    return value


def at_least(minimum: int, why: str = "") -> Callable[[str], int]:
    """An integer parser that refuses values below ``minimum`` (``why`` explains the bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}{why}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in some messages
    return parse


def proportion(example: float, *, below_one: bool = False, allow_zero: bool = False) -> Callable[[str], float]:
    """A ratio or tolerance flag: :func:`ssm_profile.base.fmt.parse_proportion`, the rule the TUI applies too."""
    from ..base.fmt import parse_proportion

    def parse(text: str) -> float:
        try:
            return parse_proportion(text, example, below_one=below_one, allow_zero=allow_zero)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = "fraction"  # argparse names the type in some messages
    return parse


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def duration(text: str) -> float:
    """A time span such as ``30s``, ``10m``, ``1.5h`` (a bare number is seconds), in seconds."""
    raw = text.strip().lower()
    unit = raw[-1:] if raw[-1:] in _DURATION_UNITS else "s"
    number = raw[:-1] if raw[-1:] in _DURATION_UNITS else raw
    try:
        value = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration such as 30s, 10m or 1h, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration such as 30s, 10m or 1h, got {text!r}")
    return value
