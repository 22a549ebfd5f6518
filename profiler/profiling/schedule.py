"""Which trials a profile runs, and in what order: a schedule hands out batches of trials.

The profiler's loop is ``run_schedule(schedule, runner, ...)``: it asks the schedule for the next
batch of unfinished trials given every trial finished so far (the journal's), lets a runner
evaluate them, appends each to the journal, and repeats until the schedule returns an empty batch.

A schedule must be a pure function of the finished trials (no clocks, no randomness of its own), so
that a resumed run replays the same decisions from the journal and may use another runner (one
process, or a different number of torchrun ranks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

from .journal import append_journal
from .sensitivity import Trial, TrialSpec, layer_text

Progress = Callable[[int, int, str], None]


class Schedule(Protocol):
    def next_batch(self, finished: Mapping[str, Trial]) -> list[TrialSpec]:
        """The unfinished trials to run next; empty when the run is complete."""

    def expected_total(self, finished: Mapping[str, Trial]) -> int:
        """Best current guess of the number of trials the run will hold (for progress and ETA)."""


class TrialRunner(Protocol):
    def run(self, specs: Sequence[TrialSpec], on_start: Callable[[TrialSpec], None],
            on_trial: Callable[[Trial], None]) -> list[Trial]:
        """Evaluate ``specs``, calling ``on_start`` before and ``on_trial`` after each trial (on the
        process that writes the run directory, for every trial of the batch, in ``specs`` order);
        return the trials in ``specs`` order."""


class GridSchedule:
    """Every planned trial, in one batch (the full grid: `--sweep grid`)."""

    def __init__(self, specs: Sequence[TrialSpec]):
        self.specs = list(specs)

    def next_batch(self, finished: Mapping[str, Trial]) -> list[TrialSpec]:
        return [s for s in self.specs if s.key not in finished]

    def expected_total(self, finished: Mapping[str, Trial]) -> int:
        return len(self.specs)


def run_schedule(schedule: Schedule, runner: TrialRunner, finished: dict[str, Trial], journal: Path | None,
                 note: Progress, cancel: Callable[[], bool] | None = None) -> list[Trial]:
    """Run ``schedule`` to the end; ``finished`` (the journal's trials, all asked for by this same
    schedule before an interruption) is extended in place and returned in journal order."""

    def progress(label: str) -> None:
        note(len(finished), max(schedule.expected_total(finished), len(finished)), label)

    def starting(spec: TrialSpec) -> None:
        if cancel is not None and cancel():
            raise KeyboardInterrupt
        progress(_label(spec))

    def record(trial: Trial) -> None:
        finished[trial.key] = trial
        if journal is not None:
            append_journal(journal, trial)

    while batch := schedule.next_batch(finished):
        if any(spec.key in finished for spec in batch):
            raise RuntimeError(f"{type(schedule).__name__} asked again for a finished trial")
        runner.run(batch, starting, record)
    return list(finished.values())


def _label(spec: TrialSpec) -> str:
    return (f"{spec.target} · {spec.criterion} · {spec.sparsity:.0%}"
            + ("" if spec.layer is None else f" · layer {layer_text(spec.layer, spec.span)}"))
