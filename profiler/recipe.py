"""How a profile run computed its masks, so that plan and apply rebuild exactly the same ones.

A :class:`RunRecipe` is built from a run's ``run.json`` (:meth:`RunRecipe.of_run`) or from the
``run``/``data`` blocks of a plan made from it (:meth:`RunRecipe.of_plan`): the data windows, the
batch size of the calibration statistics (they are sums, so the batch size changes their float
rounding and can flip a mask at a tie), the seed, and the scan kernels the run used. The profiler,
the planner's measurer and ``apply`` all score elements through it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data import DEFAULT_VERIFY_SAMPLES, DataSpec
from .kernels import Kernels, installed

DEFAULT_BATCH_SIZE = 8  # ProfileSettings' default: what a plan without run.batch_size was profiled with


def data_spec_from_meta(data: Mapping[str, Any]) -> DataSpec:
    """The :class:`DataSpec` that reproduces a run's (or a plan's) data windows.

    Accepts both a run's ``run.json`` ``data`` (source descriptions such as
    ``embedded:calibration.txt`` or ``file.txt [first 80%]``) and a plan's ``data`` (the DataSpec
    values themselves, ``null`` = embedded). One source named for both calibration and evaluation
    is the run's single source split 80/20 (:mod:`ssm_profile.data`), so it is named once.
    Runs and plans from before the verification split have no ``verify_samples``: the default
    held-out tail, which never overlaps their search windows (:func:`ssm_profile.data.split_windows`).
    """

    def source(value: Any) -> str | None:
        if value is None or str(value).startswith("embedded:"):
            return None
        return re.sub(r" \[(first 80|last 20)%\]$", "", str(value))

    cal, ev = source(data.get("calibration")), source(data.get("evaluation"))
    if cal is not None and cal == ev:
        ev = None  # one source split 80/20, as the run did
    return DataSpec(calibration=cal, evaluation=ev, nsamples=int(data["nsamples"]),
                    eval_samples=int(data["eval_samples"]), seqlen=int(data["seqlen"]), seed=int(data.get("seed", 0)),
                    verify_samples=int(data.get("verify_samples") or DEFAULT_VERIFY_SAMPLES))


def needs_of(criteria: Iterable[str]) -> set[str]:
    """Calibration statistics the criteria need (empty: data-free criteria)."""
    from .criteria import get

    needs: set[str] = set()
    for name in criteria:
        needs |= set(get(name).needs)
    return needs


@dataclass(frozen=True)
class RunRecipe:
    data: DataSpec
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    kernels: Kernels = Kernels.transformers()  # older plans without run.fast_kernels: transformers' own

    @classmethod
    def of_run(cls, meta: Mapping[str, Any]) -> "RunRecipe":
        """From a run's ``run.json`` (its settings and data description)."""
        settings = meta.get("settings", {})
        return cls(data=data_spec_from_meta(meta["data"]), batch_size=int(settings.get("batch_size",
                                                                                       DEFAULT_BATCH_SIZE)),
                   seed=int(settings.get("seed", 0)), kernels=Kernels.for_run(bool(settings.get("fast_scan", True))))

    @classmethod
    def of_plan(cls, plan: Any) -> "RunRecipe":
        """From a :class:`ssm_profile.documents.Plan` (older plans: default batch size, reference kernels)."""
        batch = plan.run.batch_size if plan.run.batch_size is not None else DEFAULT_BATCH_SIZE
        return cls(data=plan.data.spec(), batch_size=int(batch), seed=int(plan.data.seed),
                   kernels=Kernels.for_run(bool(plan.run.fast_kernels)))

    def installed(self, model: torch.nn.Module):
        """Context manager: the run's kernels on ``model`` (the one place they are chosen)."""
        return installed(model, self.kernels)

    def statistics(self, model: torch.nn.Module, calibration: torch.Tensor | None, needs: set[str],
                   offload_dir: str | Path | None = None, world=None):
        """Calibration statistics as the run collected them (``calibration`` may be None without needs).

        When they would not fit in the memory available (:func:`ssm_profile.memory.statistics_budget`)
        they take the memory-bounded path, with the large ones on disk under ``offload_dir`` (default:
        ``SSM_PROFILE_TMPDIR`` or the system's temporary folder); the numbers are the same.
        ``world``: a :class:`ssm_profile.distributed.World` whose ranks share the work (same sums bit
        for bit; each rank then holds the statistics in memory)."""
        from .criteria import CalibrationStats
        from .memory import statistics_budget
        from .stats import collect_stats

        if needs and world is not None and world.sharded:
            from .distributed import sharded_statistics

            stats = sharded_statistics(world, model, calibration, needs, self.batch_size)
        elif needs:
            budget = statistics_budget(model, batch_size=self.batch_size, seqlen=int(calibration.shape[-1]),
                                       needs=needs)
            stats = collect_stats(model, calibration, needs, batch_size=self.batch_size, memory_budget=budget,
                                  offload_dir=offload_dir)
        else:
            stats = CalibrationStats(seed=self.seed)
        stats.seed = self.seed
        return stats

    def scorer(self, model: torch.nn.Module, stats: Any, criteria: Iterable[str]):
        """The :class:`ssm_profile.sensitivity.Scorer` the run scored ``criteria`` with."""
        from .criteria import ScoringContext
        from .memory import score_cache_budget
        from .sensitivity import Scorer

        return Scorer(model, ScoringContext(model=model, stats=stats, seed=self.seed), list(criteria),
                      cache_bytes=score_cache_budget())
