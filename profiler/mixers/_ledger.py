"""What each mixer class actually ran: a counter of real calls, and the verdict of each check.

Every call of an installed mixer forward counts here under (mixer class, forward): ``owned/numba``,
``owned/torch``, ``owned/mamba-ssm`` or ``transformers``. Records read the counter (:func:`usage`),
so what they say ran is what ran, not what was asked for. Thread-safe; process-wide.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

TRANSFORMERS = "transformers"
OWNED = "owned"


@dataclass(frozen=True)
class Verdict:
    """The outcome of comparing an owned forward with transformers' on one mixer class."""

    mixer: str  # class name
    family: str
    kernel: str
    dtype: str
    device: str
    ok: bool
    max_abs_diff: float | None
    bound: float | None
    reason: str = ""  # why not ok

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Ledger:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (mixer class, family, forward, why transformers' forward ran or "") -> calls
        self._calls: Counter[tuple[str, str, str, str]] = Counter()
        self._verdicts: dict[tuple[str, str, str, str], Verdict] = {}

    def count(self, mixer: str, family: str, forward: str, why: str = "") -> None:
        with self._lock:
            self._calls[(mixer, family, forward, why)] += 1

    def verdict(self, key: tuple[str, str, str, str]) -> Verdict | None:
        with self._lock:
            return self._verdicts.get(key)

    def record(self, key: tuple[str, str, str, str], verdict: Verdict) -> None:
        with self._lock:
            self._verdicts[key] = verdict

    def snapshot(self) -> Counter[tuple[str, str, str, str]]:
        with self._lock:
            return Counter(self._calls)

    def usage(self, since: Counter[tuple[str, str, str, str]] | None = None) -> dict[str, Any]:
        """mixer class -> {family, calls by forward, why transformers' forward ran (calls by reason),
        checks}, for calls made after ``since`` (a :meth:`snapshot`; None: every call of this process)."""
        with self._lock:
            calls = self._calls - (since or Counter())
            verdicts = list(self._verdicts.values())
        out: dict[str, Any] = {}
        for (mixer, family, forward, why), n in sorted(calls.items()):
            entry = out.setdefault(mixer, {"family": family, "calls": {}, "transformers_because": {}})
            entry["calls"][forward] = entry["calls"].get(forward, 0) + n
            if why:
                entry["transformers_because"][why] = n
        for mixer, entry in out.items():
            entry["checks"] = [v.to_dict() for v in verdicts if v.mixer == mixer]
        return out


LEDGER = Ledger()


def usage(since: Counter[tuple[str, str, str, str]] | None = None) -> dict[str, Any]:
    """See :meth:`Ledger.usage`."""
    return LEDGER.usage(since)


def snapshot() -> Counter[tuple[str, str, str, str]]:
    return LEDGER.snapshot()


def describe(record: dict[str, Any], calls: bool = True) -> str:
    """One line for a usage ``record``: which forward and kernel each mixer class ran (with call
    counts unless ``calls`` is false), and why transformers' forward ran where it did."""
    parts = []
    for mixer, entry in record.items():
        ran = ", ".join(_label(forward) + (f" ×{n}" if calls else "") for forward, n in entry["calls"].items())
        why = entry.get("transformers_because") or {}
        parts.append(f"{mixer}: {ran}" + (f" ({'; '.join(why)})" if why else ""))
    return "; ".join(parts) if parts else "no SSM mixer ran"


def _label(forward: str) -> str:
    if forward.startswith(OWNED + "/"):
        return f"own forward, {forward.split('/', 1)[1]} kernel"
    return "transformers' forward" if forward == TRANSFORMERS else forward
