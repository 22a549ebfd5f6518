"""How a sweep picks its trials: one schedule builder per ``--sweep`` name, in one registry."""

from __future__ import annotations

from typing import Callable, Protocol

from ..base.registry import Registry
from .adaptive import AdaptiveSchedule
from .earlystop import CHUNK_WINDOWS
from .schedule import GridSchedule, Schedule
from .sensitivity import Scorer, TrialSpec


class SweepSettings(Protocol):
    """What a schedule builder reads of :class:`ssm_profile.profiling.record.ProfileSettings`."""

    probe_sparsity: float
    tolerance: float
    layer_criterion: str
    structure: str


def _grid(settings: SweepSettings, specs: list[TrialSpec], scorer: Scorer, mixers,
          dense_losses: list[float]) -> Schedule:
    return GridSchedule(specs)


def _adaptive(settings: SweepSettings, specs: list[TrialSpec], scorer: Scorer, mixers,
              dense_losses: list[float]) -> Schedule:
    def predict(spec: TrialSpec) -> float | None:
        return scorer.predicted_delta(spec, scorer.mask(spec, mixers, settings.structure), mixers)

    screen = CHUNK_WINDOWS if len(dense_losses) > CHUNK_WINDOWS else 0  # a screen is one evaluation batch
    return AdaptiveSchedule.from_grid(specs, probe=settings.probe_sparsity, tolerance=settings.tolerance,
                                      layer_criterion=settings.layer_criterion, predict=predict, screen=screen,
                                      dense_losses=dense_losses)


# How a sweep picks its trials: name -> schedule builder (``--sweep``; "adaptive" is the default).
SWEEPS: Registry[Callable[..., Schedule]] = Registry("sweep")
SWEEPS.add("adaptive", _adaptive)
SWEEPS.add("grid", _grid)
