"""What a plan is asked for: :class:`PlanRequest`, checked once when it is made.

Torch-free, so that the CLI and the TUI can build and check a request before anything heavy loads.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..base.errors import PlanError
from ..base.fmt import scope_name

METRICS = ("params", "flops", "state")
SCOPES = ("ssm", "model")
DEFAULT_MAX_PPL_INCREASE = 0.10
NM_PATTERN = re.compile(r"^(\d+):(\d+)$")


def parse_structures(structures: str | Sequence[str] | None) -> list[str] | None:
    """``"unstructured,2:4"`` or a sequence of names -> the checked list (None: every measured structure)."""
    if structures is None:
        return None
    items = [s.strip() for s in (structures.split(",") if isinstance(structures, str) else structures) if s.strip()]
    for s in items:
        m = NM_PATTERN.match(s)
        if s not in ("unstructured", "units", "layers") and not (m and 0 < int(m.group(1)) < int(m.group(2))):
            raise PlanError(f"unknown structure '{s}'; use unstructured, units, layers or N:M such as 2:4")
    if not items:
        raise PlanError("--structures is empty; use e.g. unstructured,2:4,units,layers")
    return items


@dataclass(frozen=True)
class PlanRequest:
    """What the user asks of a plan; every field is checked here, so an invalid request never exists.

    ``metric``: what to reduce (params | flops | state); ``ratio`` (a fraction of ``scope``'s total) or
    ``absolute`` (an amount of ``metric``): the reduction to reach, neither: as much as ``max_ppl_increase``
    (the largest relative perplexity increase) allows; ``criterion``: use this criterion wherever the run
    measured it (None: the best per target and level); ``structures``: the structures allowed, as
    ``"unstructured,2:4,units,layers"`` or a sequence (kept as a tuple; None: every measured one, no
    layers); ``scope``: ``ssm`` (the SSM mixers) or ``model``; ``measure``: measure the combined plan on
    the model (False: trust the additive prediction); ``also_on``: other texts the promise must hold on
    too (``--also-on``): each one's first windows are certified with the search windows, its last
    windows check the promise (``plan.domains``).
    """

    metric: str = "params"
    ratio: float | None = None
    absolute: int | None = None
    max_ppl_increase: float = DEFAULT_MAX_PPL_INCREASE
    criterion: str | None = None
    structures: tuple[str, ...] | None = None
    scope: str = "ssm"
    measure: bool = True
    also_on: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise PlanError(f"unknown --metric '{self.metric}'; choose from {', '.join(METRICS)}")
        if self.ratio is not None and self.absolute is not None:
            raise PlanError("give either --ratio or --absolute, not both")
        tol = self.max_ppl_increase
        if not (isinstance(tol, (int, float)) and 0 < tol and math.isfinite(tol)):
            raise PlanError(f"--max-ppl-increase must be a positive number such as 0.10, got {tol}")
        if self.scope not in SCOPES:
            raise PlanError(f"unknown --scope '{self.scope}'; choose from {', '.join(SCOPES)}")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise PlanError(f"--ratio must be in (0, 1) (a fraction of {scope_name(self.scope, self.metric)}), "
                            f"got {self.ratio}")
        if self.absolute is not None and int(self.absolute) <= 0:
            raise PlanError(f"--absolute must be positive, got {self.absolute}")
        object.__setattr__(self, "also_on", _once_each(self.also_on))
        if self.also_on and not self.measure:
            raise PlanError("--also-on certifies the plan by measuring it on that text; drop --no-measure")
        structures = parse_structures(self.structures)
        object.__setattr__(self, "structures", None if structures is None else tuple(structures))


def _once_each(texts: Sequence[str]) -> tuple[str, ...]:
    """Each text once (``x.txt`` and ``./x.txt`` are one text), as the user first named it."""
    seen: dict[str, str] = {}
    for text in map(str, texts):
        key = text if text.startswith("hf:") else os.path.normpath(os.path.expanduser(text))
        seen.setdefault(key, text)
    return tuple(seen.values())
