"""One profile in several processes: `torchrun` (or `accelerate launch`) shards a sweep across ranks.

``torchrun --nproc-per-node N --no-python ssm-profile profile MODEL -o RUN`` starts N copies of the
command; ``accelerate launch --num_processes N --no_python ssm-profile profile ...`` does the same
through torch's launcher. Both set the env:// variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) that :meth:`World.from_env` reads.

* Every rank holds a replica of the model on its own device (``--device auto``/``cuda``:
  ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU) and runs the same deterministic code:
  the same schedule, so every rank is handed the same batch of trials.
* Trials: :class:`ShardedTrialRunner` splits each batch into rounds of a few trials per rank
  (balanced by expected cost), evaluates its share and all-gathers the trials, so every rank's
  finished trials are identical before the schedule's next decision.
* Calibration statistics are sums over batches: :func:`sharded_statistics` gives each rank a share
  of the batches and adds every batch's partial sums in batch order, as one process adds them.
* Rank 0 alone touches the run directory (its lock, checks, run.json, the journal, results and
  reports) and shows progress; the other ranks wait for its answers (:meth:`World.from_writer`).
  The journal stays the single record of finished trials, so ``--resume`` may use another number
  of processes.

Results equal one process's bit for bit (tests/test_distributed.py): a trial's loss depends only on
its mask and the replica, not on which rank evaluates it, and the statistics are added in the same
order. The collectives carry small Python objects (trials, partial sums) on the CPU, so the process
group is gloo whatever the model's device.

Failures: every collective carries each rank's outcome. An error or Ctrl-C/cancel on one rank
reaches the others at their next collective: the rank it happened on raises it, rank 0 reports it
(user errors keep their exit code, an interrupt exits 130 with the resume hint) and the others stop
with :class:`RankStopped`. A rank that dies or hangs is noticed by the launcher (torchrun stops the
others when one exits non-zero) and, at the latest, by the process group's timeout
(``SSM_PROFILE_DIST_TIMEOUT`` seconds, default 1800), after which the waiting ranks exit with an error.
"""

from __future__ import annotations

import os
import traceback
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, ContextManager, Iterator, Sequence, TypeVar

import torch

from ..criteria.base import CalibrationStats
from ..base.errors import SSMProfileError
from .sensitivity import LocalTrialRunner, Trial, TrialSpec

T = TypeVar("T")
TIMEOUT_ENV = "SSM_PROFILE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800
ACTIVATION_NEEDS = frozenset({"inputs", "hessians", "ssm"})
GRAD_CHUNK = 1  # collect_stats' grad_batch_size: one sequence per gradient micro-batch


class RankStopped(SSMProfileError):
    """This rank stops because another one failed or was interrupted (that rank says why)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class _Failure:
    """What went wrong on one rank, in a form every rank can unpickle."""

    rank: int
    kind: str  # "user" (SSMProfileError), "interrupt" (KeyboardInterrupt) or "error"
    message: str
    exit_code: int

    @classmethod
    def of(cls, err: BaseException, rank: int) -> "_Failure":
        if isinstance(err, KeyboardInterrupt):
            return cls(rank, "interrupt", "interrupted", 130)
        if isinstance(err, SSMProfileError):
            return cls(rank, "user", str(err), int(getattr(err, "exit_code", 2)))
        return cls(rank, "error", "".join(traceback.format_exception_only(err)).strip(), 1)

    def raise_on(self, world: "World") -> None:
        """Raise, on a rank where this did not happen, what that rank should report."""
        if not world.writer:
            raise RankStopped(f"rank {world.rank} stopped: rank {self.rank} "
                              f"{'was interrupted' if self.kind == 'interrupt' else 'failed'}", self.exit_code)
        if self.kind == "interrupt":
            raise KeyboardInterrupt
        if self.kind == "user":
            raise RankStopped(f"rank {self.rank}: {self.message}", self.exit_code)
        raise RankStopped(f"rank {self.rank} failed: {self.message} (its traceback is in its output)", 1)


@dataclass(frozen=True)
class World:
    """This process's place among the launched ones (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "World":
        env = os.environ if environ is None else environ
        try:
            size = int(env.get("WORLD_SIZE", "1"))
            rank, local = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", env.get("RANK", "0")))
        except ValueError:
            raise SSMProfileError("RANK, WORLD_SIZE and LOCAL_RANK must be integers; launch with torchrun") from None
        if size > 1 and not {"MASTER_ADDR", "MASTER_PORT"} <= set(env):
            raise SSMProfileError("WORLD_SIZE > 1 without MASTER_ADDR/MASTER_PORT; launch with torchrun "
                                  "--nproc-per-node N or accelerate launch")
        if size < 1 or not 0 <= rank < size:
            raise SSMProfileError(f"RANK {rank} is outside WORLD_SIZE {size}; launch with torchrun")
        return cls(rank=rank, size=size, local_rank=local)

    @property
    def writer(self) -> bool:
        """The rank that writes the run directory and shows progress."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.size > 1

    def device(self, requested: str | None) -> str | None:
        """``auto``/``cuda`` mean this rank's own GPU (``cuda:LOCAL_RANK``) when several processes share a machine."""
        if self.sharded and requested in (None, "auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return requested

    @contextmanager
    def running(self) -> Iterator["World"]:
        """The process group for the block (nothing for one process)."""
        import torch.distributed as dist

        if not self.sharded or dist.is_initialized():
            yield self
            return
        try:
            dist.init_process_group("gloo", init_method="env://", rank=self.rank, world_size=self.size,
                                    timeout=timedelta(seconds=wait_limit_s()))
        except (RuntimeError, ValueError) as err:  # e.g. MASTER_PORT taken, peers never came
            raise SSMProfileError(f"rank {self.rank}: cannot join the other ranks ({str(err).splitlines()[0]}); "
                                  "check the launcher's MASTER_ADDR/MASTER_PORT") from None
        try:
            yield self
        finally:
            dist.destroy_process_group()

    def from_writer(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0, its result (or its error) on every rank; the others wait for it."""
        if not self.sharded:
            return fn()
        import torch.distributed as dist

        sent, err = self._outcome(fn) if self.writer else (None, None)
        box: list[Any] = [sent]
        self._collective(lambda: dist.broadcast_object_list(box, src=0))
        ok, value = box[0]
        if not ok:
            if err is not None:
                raise err
            value.raise_on(self)
        return value

    def gather(self, fn: Callable[[], T]) -> list[T]:
        """``fn()`` on every rank; every rank gets all results in rank order (or the first error)."""
        if not self.sharded:
            return [fn()]
        import torch.distributed as dist

        mine, err = self._outcome(fn)
        everyone: list[Any] = [None] * self.size
        self._collective(lambda: dist.all_gather_object(everyone, mine))
        if err is not None:
            raise err
        for ok, value in everyone:
            if not ok:
                value.raise_on(self)
        return [value for _, value in everyone]

    def share(self, items: Sequence[Any], fn: Callable[[Any], T], owners: Sequence[int] | None = None) -> list[T]:
        """``fn(item)`` for every item, each on one rank (``owners[i]``; default: round robin), all
        gathered: every rank returns the results in ``items`` order (or the first error)."""
        owners = [i % self.size for i in range(len(items))] if owners is None else owners
        mine = [i for i, owner in enumerate(owners) if owner == self.rank]
        shares = self.gather(lambda: [(i, fn(items[i])) for i in mine])
        by_index = dict(pair for share in shares for pair in share)
        return [by_index[i] for i in range(len(items))]

    def barrier(self) -> None:
        """Wait until every rank is here (a failure on rank 0 reaches the others)."""
        self.from_writer(lambda: None)

    def writer_lock(self, run_dir: str | os.PathLike) -> ExitStack:
        """The run directory's lock, held by rank 0 alone (the others wait until it has it)."""
        from ..base.lock import run_dir_lock

        return self.writer_holds(lambda: run_dir_lock(run_dir))

    def writer_holds(self, make: Callable[[], ContextManager[Any]]) -> ExitStack:
        """The context ``make()`` (a lock), entered by rank 0 alone (the others wait until it has it)."""
        stack = ExitStack()
        self.from_writer(lambda: stack.enter_context(make()))
        return stack

    def _outcome(self, fn: Callable[[], Any]) -> tuple[tuple[bool, Any], BaseException | None]:
        """((ok, result or _Failure) to send, the local exception to re-raise here)."""
        try:
            return (True, fn()), None
        except BaseException as err:  # noqa: BLE001 - every failure, Ctrl-C included, must reach the others
            return (False, _Failure.of(err, self.rank)), err

    def _collective(self, call: Callable[[], Any]) -> None:
        try:
            call()
        except RuntimeError as err:  # a timeout, or a peer that died
            raise RankStopped(f"rank {self.rank}: lost the other ranks ({str(err).splitlines()[0]}); "
                              f"a rank died or hangs (wait limit: ${TIMEOUT_ENV}, {wait_limit_s()} s)", 1) from None


def wait_limit_s() -> int:
    """How long a rank waits for the others at a collective (``$SSM_PROFILE_DIST_TIMEOUT``)."""
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = int(text)
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise SSMProfileError(f"{TIMEOUT_ENV}={text!r} is not a positive number of seconds; e.g. 1800")
    return seconds


@dataclass
class ShardedTrialRunner:
    """Evaluates each batch across the ranks (:class:`ssm_profile.profiling.schedule.TrialRunner`).

    A batch is run in rounds of ``trials_per_rank`` trials per rank, split by expected cost; after
    each round every rank holds every trial of it, and ``on_trial`` is called for them in batch
    order on every rank (rank 0's writes the journal, so an interruption loses one round at most).
    ``on_start`` (progress and the cancel check) runs on rank 0 alone, for the whole round at its start."""

    local: LocalTrialRunner
    world: World
    trials_per_rank: int = 4

    def run(self, specs: Sequence[TrialSpec], on_start: Callable[[TrialSpec], None],
            on_trial: Callable[[Trial], None]) -> list[Trial]:
        trials: list[Trial] = []
        step = self.world.size * self.trials_per_rank
        for start in range(0, len(specs), step):
            part = list(specs[start:start + step])

            def starting() -> None:
                for spec in part:
                    on_start(spec)

            self.world.from_writer(starting)
            owners = balanced_owners([self.expected_cost(spec) for spec in part], self.world.size)
            for trial in self.world.share(part, self.local.run_one, owners):
                on_trial(trial)
                trials.append(trial)
        return trials

    def expected_cost(self, spec: TrialSpec) -> float:
        """Layers a trial recomputes: all for a model-wide trial, those from its layer on for a
        per-layer one (the incremental evaluator starts at the first layer a mask touches)."""
        layers = [m.layer for m in self.local.mixers]
        if spec.layer is None or spec.layer not in layers:
            return float(len(layers))
        return float(len(layers) - layers.index(spec.layer))


def balanced_owners(costs: Sequence[float], ranks: int) -> list[int]:
    """The rank of each item: the costliest first, each to the least loaded rank (ties: the lowest)."""
    load = [0.0] * ranks
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(ranks), key=lambda r: (load[r], r))
        owners[i] = rank
        load[rank] += costs[i]
    return owners


def sharded_statistics(world: World, model: torch.nn.Module, tokens: torch.Tensor, needs: set[str],
                       batch_size: int, seed: int = 0) -> CalibrationStats:
    """:func:`ssm_profile.calibration.stats.collect_stats` of ``tokens``, each rank collecting a share of the batches.

    ``collect_stats`` adds its batches' partial sums one after another; here the ranks collect the
    partial sums of one round of batches (one per rank), all-gather them and add them in batch
    order, so the sums are the same floating-point operations in the same order: equal bit for bit
    for any number of ranks. Memory: one partial per rank per round (hessians included)."""
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    stats = CalibrationStats(seed=seed)
    if needs & ACTIVATION_NEEDS:
        _add_rounds(world, stats, model, tokens, set(needs & ACTIVATION_NEEDS), max(1, batch_size))
    if "grads" in needs:
        _add_rounds(world, stats, model, tokens, {"grads"}, GRAD_CHUNK)
    if "tokens" in needs:
        stats.tokens = tokens.clone()
    return stats


def _add_rounds(world: World, stats: CalibrationStats, model: torch.nn.Module, tokens: torch.Tensor,
                needs: set[str], chunk: int) -> None:
    from ..calibration.stats import collect_stats

    starts = list(range(0, tokens.shape[0], chunk))
    for first in range(0, len(starts), world.size):
        mine = first + world.rank

        def partial() -> CalibrationStats | None:
            if mine >= len(starts):
                return None
            return collect_stats(model, tokens[starts[mine]:starts[mine] + chunk], needs, batch_size=chunk,
                                 grad_batch_size=chunk)

        for part in world.gather(partial):
            if part is not None:
                add_stats(stats, part)


def add_stats(total: CalibrationStats, part: CalibrationStats) -> None:
    """Add ``part``'s sums to ``total`` in place (``total`` takes over tensors it lacks, as collect_stats
    keeps its first batch's)."""
    for mine, theirs in ((total.inputs, part.inputs), (total.ssm, part.ssm)):
        for key, fields in theirs.items():
            if key not in mine:
                mine[key] = dict(fields)
                continue
            for name, value in fields.items():
                mine[key][name] += value
    for mine, theirs in ((total.hessians, part.hessians), (total.grad_sum, part.grad_sum),
                         (total.grad_sq_sum, part.grad_sq_sum)):
        for key, value in theirs.items():
            if key in mine:
                mine[key] += value
            else:
                mine[key] = value
    total.grad_batches += part.grad_batches
    total.grad_tokens += part.grad_tokens
