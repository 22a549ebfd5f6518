"""The plan's ``--also-on`` texts, held out again for validation (``Plan.domains``).

``plan --also-on TEXT`` certified the plan on each text's first windows and checked its promise on
the text's last windows, which no step saw. ``validate`` measures base and pruned model on those same
held-out windows, rebuilt here exactly as the plan built them (:func:`ssm_profile.calibration.data.
domain_windows` with the plan's data settings), and refuses a text that is gone or that no longer
gives the windows the plan measured: the verdict would be on other text than the promise's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..base.errors import DataError
from ..calibration.data import DataSpec, domain_windows, windows_digest
from ..documents import DomainCheck, Plan


@dataclass(frozen=True)
class HeldOutText:
    """One ``--also-on`` text's held-out windows as the plan measured them."""

    check: DomainCheck  # what the plan recorded for the text
    windows: torch.Tensor  # (n, seqlen) token ids
    digest: str
    seed: int  # the plan's: its bootstrap interval is drawn again the same way


def held_out_texts(tokenizer: Any, plan: Plan | None, spec: DataSpec) -> list[HeldOutText]:
    """Each of the plan's ``--also-on`` texts' held-out windows (none without a plan or texts); ``spec``:
    the data settings the plan's windows came from (``plan.data``; the validation's when it has none).
    A text that cannot be read, or whose windows are not those the plan measured, is one DataError."""
    if plan is None or not plan.domains:
        return []
    if plan.data is not None:
        spec = plan.data.spec()
    return [_held_out(tokenizer, check, spec) for check in plan.domains]


def check_texts_are_there(plan: Plan | None) -> None:
    """Refuse (one line) a plan whose local ``--also-on`` text is gone, before any model loads or any
    output is written (``validate``, ``apply --validate``)."""
    for check in (plan.domains or []) if plan is not None else []:
        _check_there(check)


def _check_there(check: DomainCheck) -> None:
    if not check.source.startswith("hf:") and not Path(check.source).expanduser().is_file():
        raise DataError(f"the plan's --also-on text '{check.source}' is not there; put the text back where the "
                        "plan read it (run from the directory `plan` ran in, for a relative path) to check the "
                        "promise on it")


def _held_out(tokenizer: Any, check: DomainCheck, spec: DataSpec) -> HeldOutText:
    where = f"the plan's --also-on text '{check.source}'"
    if tokenizer is None:
        raise DataError("this model has no tokenizer; pass --tokenizer PATH|embedded")
    _check_there(check)
    try:
        _, windows = domain_windows(tokenizer, check.source, spec.eval_samples, spec.verify_samples, spec.seqlen)
    except DataError as err:  # read, but no longer holds the windows the plan measured (or none at all)
        raise DataError(f"{where} is not the text the plan measured ({err}); restore the text the plan read, "
                        "or plan again with --also-on on this one") from None
    digest = windows_digest(windows)
    expected = check.verification.windows if check.verification is not None else None
    changed = (check.held_out_digest is not None and check.held_out_digest != digest) or \
        (expected is not None and expected != int(windows.shape[0]))
    if changed:
        now = int(windows.shape[0])
        what = (f"{expected} held-out windows then, {now} now" if expected is not None and expected != now
                else "its held-out windows hold other tokens now")
        raise DataError(f"{where} is not the text the plan measured ({what}: the text or the tokenizer changed); "
                        "restore the text the plan read, or plan again with --also-on on this one")
    return HeldOutText(check=check, windows=windows, digest=digest, seed=spec.seed)
