"""Formatting helpers shared by the views (numbers only; no analysis happens here)."""

from __future__ import annotations

import math
import re

from rich.text import Text

from ssm_profile.base.fmt import human_bytes, human_count

__all__ = ["duration", "heat_cell", "human_bytes", "human_count", "in_ui_terms", "num", "pct", "shape"]

# what a core message's command-line flag is in the UI: a tick box or a field of the form
_UI_WORDS = {"overwrite": "tick overwrite", "resume": "tick resume", "no-per-layer": "untick per-layer sweep",
             "no-measure": "untick measure", "no-lm-eval": "untick lm-eval tasks",
             "max-ppl-increase": "the ppl ≤ + field", "ratio": "the 'by' field", "absolute": "the 'by' field",
             "metric": "the 'reduce' choice", "criteria": "the criteria list", "force": "choose smaller settings",
             "output": "the output field"}
_FLAG = re.compile(r"(?:\b(pass|use|with) )?(?<![\w-])--([a-z][a-z0-9-]*)")


def in_ui_terms(text: str) -> str:
    """A message of the core, which speaks in command-line flags, in the UI's words: ``pass
    --overwrite`` is ``tick overwrite``, ``--seqlen`` the seqlen field."""
    def word(match: re.Match) -> str:
        name = match.group(2)
        said = _UI_WORDS.get(name, f"the {name.replace('-', ' ')} field")
        verb = match.group(1)
        return said if verb is None or said.startswith(("tick", "untick", "choose")) else f"{verb} {said}"

    # a command quoted in backticks is to be run as written: only the prose around it is translated
    parts = text.split("`")
    return "`".join(part if i % 2 else _FLAG.sub(word, part) for i, part in enumerate(parts))


def pct(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x * 100:.{digits}f}%"


def num(x: float | None, digits: int = 4) -> str:
    if x is None:
        return ""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 10 ** -digits):
        return f"{x:.{max(digits - 1, 1)}e}"
    return f"{x:.{digits}f}"


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    seconds = round(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def shape(dims: list[int]) -> str:
    return "×".join(str(d) for d in dims) or "scalar"


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> str:
    r, g, bl = (round(x + (y - x) * t) for x, y in zip(a, b))
    return f"rgb({r},{g},{bl})"


def heat_cell(value: float | None, scale: float, text: str | None = None) -> Text:
    """A table cell coloured by ``value / scale``: green (harmless) → yellow → red (sensitive).

    Negative values (pruning helped on the evaluation windows) are blue.
    """
    if value is None:
        return Text("·", justify="center", style="dim")
    label = text if text is not None else f"{value:.4f}"
    if scale <= 0:
        return Text(label, justify="right")
    t = max(-1.0, min(1.0, value / scale))
    if t < 0:
        bg = _mix((40, 40, 40), (40, 90, 170), -t)
    elif t < 0.5:
        bg = _mix((30, 110, 50), (170, 150, 20), t * 2)
    else:
        bg = _mix((170, 150, 20), (180, 30, 30), (t - 0.5) * 2)
    return Text(f" {label} ", justify="right", style=f"bold white on {bg}")
