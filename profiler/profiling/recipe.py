"""How a profile run computed its masks, so that plan and apply rebuild exactly the same ones.

A :class:`RunRecipe` is built from a run's ``run.json`` (:meth:`RunRecipe.of_run`) or from the
``run``/``data`` blocks of a plan made from it (:meth:`RunRecipe.of_plan`): the data windows, the
batch size of the calibration statistics (they are sums, so the batch size changes their float
rounding and can flip a mask at a tie), the seed, and the scan kernels the run used. The profiler,
the planner's measurer and ``apply`` all score elements through it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..calibration.data import DataSpec
from ..mixers.choice import Kernels, installed
from .record import RunRecord

DEFAULT_BATCH_SIZE = 8  # ProfileSettings' default: what a plan without run.batch_size was profiled with


def needs_of(criteria: Iterable[str]) -> set[str]:
    """Calibration statistics the criteria need (empty: data-free criteria)."""
    from ..criteria import get

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
    def of_run(cls, record: RunRecord) -> "RunRecipe":
        """From a run's record (its settings and data description)."""
        return cls(data=record.data_spec(), batch_size=int(record.settings.batch_size),
                   seed=int(record.settings.seed), kernels=Kernels.for_run(bool(record.settings.fast_scan)))

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

        When they would not fit in the memory available (:func:`ssm_profile.calibration.memory.statistics_budget`)
        they take the memory-bounded path, with the large ones on disk under ``offload_dir`` (default:
        ``SSM_PROFILE_TMPDIR`` or the system's temporary folder); the numbers are the same.
        ``world``: a :class:`ssm_profile.profiling.distributed.World` whose ranks share the work (same sums bit
        for bit; each rank then holds the statistics in memory)."""
        from ..criteria import CalibrationStats
        from ..calibration.memory import statistics_budget
        from ..calibration.stats import collect_stats

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
        """The :class:`ssm_profile.profiling.sensitivity.Scorer` the run scored ``criteria`` with."""
        from ..criteria import ScoringContext
        from ..calibration.memory import score_cache_budget
        from .sensitivity import Scorer

        return Scorer(model, ScoringContext(model=model, stats=stats, seed=self.seed), list(criteria),
                      cache_bytes=score_cache_budget())
