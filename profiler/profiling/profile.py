"""The profiler: calibration statistics → saliency under every criterion → measured sensitivity.

Data roles (:mod:`ssm_profile.calibration.data`): scores come from the calibration windows, the sweep runs on
the search windows (``Dataset.evaluation``); the verification windows are recorded in run.json
(``data``) but never evaluated here, so plans can be checked on windows nothing was chosen on.

Which trials run: ``ProfileSettings.sweep`` "adaptive" (the default; :mod:`ssm_profile.profiling.adaptive`,
with early stopping from :mod:`ssm_profile.profiling.earlystop`, optionally bounded by ``budget`` seconds) or
"grid" (every target x criterion x sparsity, and every target in every layer).

``profile_model`` is the Python API behind `ssm-profile profile` and the TUI's profile screen;
it returns a :class:`ssm_profile.profiling.results.ProfileResult` and, given ``run_dir``, writes a run
directory as it goes so an interrupted run can be resumed without redoing finished trials.

Speed (``ProfileSettings.fast_scan`` / ``incremental``, both on by default): the whole profile runs
with the fast CPU kernels of :mod:`ssm_profile.kernels.fastscan` (Mamba-1), :mod:`ssm_profile.kernels.fastscan2`
(Mamba-2) and :mod:`ssm_profile.kernels.fastlinear` (oneDNN matmuls for inference), which agree with
transformers' reference paths to float32 rounding, and trials are
evaluated by :class:`ssm_profile.profiling.incremental.IncrementalEvaluator`, which reuses the dense model's
activations and gives the same losses as a full forward pass bit for bit. Neither setting blocks
``--resume`` (see ``RESUMABLE_SETTINGS``).
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from .. import __version__
from ..model.analysis import analyze
from ..model.arch import find_mixers
from ..calibration.data import DataSpec, Dataset, batch_losses, load_dataset
from .distributed import ShardedTrialRunner, World
from ..base.errors import DataError, OutputExistsError, RunDirError, SSMProfileError
from ..base.io import write_json_atomic
from ..mixers.choice import Kernels, model_device
from ..mixers import snapshot as mixer_calls, usage as mixer_usage
from ..base.lock import LOCK_NAME
from ..calibration.offload import STATS_PREFIX, remove_leftovers
from ..criteria.base import unit_aggregations
from ..criteria.masks import Target, targets_for
from .recipe import RunRecipe, needs_of
from ..model.resolve import LoadedModel, check_vocabulary, tokenizer_info
from ..documents import ModelOrigin, read_mixer_usage
from .record import IncrementalSummary, ProfileSettings, RunData, RunModel, RunRecord, Skip, SweepSummary, TokenizerInfo
from .results import ProfileResult, read_journal
from .run_checks import check_trials
from ..base.safe_read import read_user_json
from .adaptive import AdaptiveSchedule, Budget
from .earlystop import CHUNK_WINDOWS, StopRule
from .saliency import saliency_summary
from .schedule import Schedule, run_schedule
from .sweeps import SWEEPS
from .sensitivity import LocalTrialRunner, Scorer, Trial, TrialSpec, plan_trials

Progress = Callable[[int, int, str], None]
# Settings a resumed run may change: they change how fast trials run, not what they measure
# (``incremental`` gives bit-identical losses; ``fast_scan`` agrees with the reference kernels to
# float32 rounding, so a run resumed with the other kernel choice mixes trials of both).
RESUMABLE_SETTINGS = ("fast_scan", "incremental")


def _resolve_targets(model: torch.nn.Module, wanted: list[str] | None) -> list[Target]:
    available = targets_for(find_mixers(model))
    if wanted is None:
        return available
    by_name = {t.name: t for t in available}
    unknown = [w for w in wanted if w not in by_name]
    if unknown:
        raise SSMProfileError(f"unknown group or unit '{unknown[0]}' for this model; choose from "
                              f"{', '.join(by_name)}")
    return [by_name[w] for w in wanted]


def _versions() -> dict[str, str]:
    import transformers

    out = {"ssm-profile": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__}
    try:
        import numba

        out["numba"] = numba.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def _check_resume(run_dir: Path, record: RunRecord) -> None:
    raw = read_user_json(run_dir / "run.json", "run file", error=RunDirError)
    try:
        old = RunRecord.from_dict(raw)
    except (TypeError, AttributeError, ValueError):
        old = None
    if old is None or not isinstance(raw.get("model"), dict):
        raise RunDirError(f"cannot resume '{run_dir}': its run.json is damaged; profile into a new -o")
    if old.model.fingerprint != record.model.fingerprint:
        raise RunDirError(f"cannot resume '{run_dir}': it profiles other weights ({old.model.name}); "
                          "choose a new -o")
    changed = _changed_text(old.data, record.data)
    if changed:
        raise RunDirError(f"cannot resume '{run_dir}': {changed} changed since the run began (its windows differ); "
                          "rerun with the original text or choose a new -o")
    # a run from before the record listed its windows: seed 0 searched the same first windows
    data = replace(record.data, windows=None) if old.data.windows is None and old.data.seed == 0 else record.data
    if _comparable(old.settings) != _comparable(record.settings) or \
            replace(old.data, digests=None) != replace(data, digests=None):
        raise RunDirError(f"cannot resume '{run_dir}': settings or data differ from the original run; "
                          "rerun with the same options or choose a new -o")


_ROLE_TEXT = {"calibration": "the calibration text", "evaluation": "the evaluation text (search windows)",
              "verification": "the evaluation text (held-out verification windows)"}


def _changed_text(old: RunData, new: RunData) -> str | None:
    """Which text's windows differ by digest (None: none, or a run from before digests were recorded)."""
    for role, digest in (old.digests or {}).items():
        if (new.digests or {}).get(role) != digest:
            source = getattr(new, role, None)
            return _ROLE_TEXT.get(role, role) + (f" '{source}'" if source else "")
    return None


def _comparable(settings: ProfileSettings) -> dict[str, Any]:
    return {k: v for k, v in asdict(settings).items() if k not in RESUMABLE_SETTINGS}


def profile_model(loaded: LoadedModel, data: DataSpec | Dataset | None = None,
                  settings: ProfileSettings | None = None, run_dir: str | Path | None = None,
                  resume: bool = False, progress: Progress | None = None,
                  cancel: Callable[[], bool] | None = None, kernels: Kernels | None = None,
                  world: World | None = None) -> ProfileResult:
    """Profile ``loaded``; see the module docstring. ``cancel()`` returning True stops cleanly.
    ``kernels``: the CPU kernels to evaluate with (default: the fast ones unless ``settings.fast_scan``
    is off; the bench passes :meth:`Kernels.reference` to time the profiler as it was).
    ``world``: this process's rank among several that share the work (:mod:`ssm_profile.profiling.distributed`;
    every rank calls with the same arguments, rank 0 alone writes ``run_dir``); default: one process."""
    world = world or World()
    settings = settings or ProfileSettings()
    settings.validate()
    model = loaded.model
    targets = _resolve_targets(model, settings.targets)
    check_vocabulary(loaded.tokenizer, model)
    dataset = data if isinstance(data, Dataset) else load_dataset(loaded.tokenizer, data or DataSpec(seed=settings.seed))
    recipe = RunRecipe(data=dataset.spec, batch_size=settings.batch_size, seed=settings.seed,
                       kernels=kernels or Kernels.for_run(settings.fast_scan, model_device(model)))
    run_path = Path(run_dir) if run_dir is not None else None
    run = _Run(recipe, loaded, dataset, settings, targets, run_path, resume,
               progress or (lambda done, total, label: None), cancel, world)
    if run_path is None:
        return _checked_profile(run)
    with world.writer_lock(run_path):  # one writer per run directory, from the checks below to the last trial
        return _checked_profile(run)


@dataclass
class _Run:
    """One profile call's inputs, resolved: what every step of the profile reads."""

    recipe: RunRecipe
    loaded: LoadedModel
    dataset: Dataset
    settings: ProfileSettings
    targets: list[Target]
    run_path: Path | None
    resume: bool
    note: Progress
    cancel: Callable[[], bool] | None
    world: World
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)


def check_run_dir(run_path: Path, *, resume: bool, overwrite: bool = False) -> None:
    """Refuse a directory that holds a run (unless resumed or, by the CLI, replaced) or that is no run.

    The CLI calls it before loading a model; :func:`profile_model` again under the run's lock."""
    if (run_path / "run.json").exists():
        if not (resume or overwrite):
            raise OutputExistsError(f"'{run_path}' already holds a profile; pass --resume to continue it, "
                                    "--overwrite to replace it, or choose another -o")
    elif run_path.exists() and any(item.name != LOCK_NAME and not item.name.startswith(STATS_PREFIX)
                                   for item in run_path.iterdir()):
        raise OutputExistsError(f"'{run_path}' exists and is not a profile run; choose another -o")


def _checked_profile(run: _Run) -> ProfileResult:
    loaded, model, world = run.loaded, run.loaded.model, run.world
    run.started = time.perf_counter()  # the run's clock starts once it holds its directory
    tokenizer = tokenizer_info(loaded)
    record = RunRecord(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model=RunModel(name=loaded.source.name, source=ModelOrigin.from_dict(asdict(loaded.source)),
                       fingerprint=loaded.fingerprint, class_name=type(model).__name__, config=_config_dict(model)),
        # calibration, search ("evaluation") and verification windows, with the digests a resume compares
        data=RunData.from_dict({**run.dataset.describe(), "digests": run.dataset.digests()}),
        tokenizer=TokenizerInfo.from_dict(tokenizer) if tokenizer else None,
        settings=replace(run.settings, targets=[t.name for t in run.targets]),
        versions=_versions(), threads=torch.get_num_threads(),
        device=str(model_device(model)),  # where it ran (--device auto resolves to cuda or cpu)
        processes=world.size,
        unit_aggregation=unit_aggregations(run.settings.criteria, [m.kind for m in find_mixers(model)])
        if any(t.name.startswith("unit:") for t in run.targets) else None)
    if run.run_path is not None:
        world.from_writer(lambda: _check_run_path(run.run_path, record, run.resume))

    with run.recipe.installed(loaded.model):
        return _profile(run, record)


def _check_run_path(run_path: Path, record: RunRecord, resume: bool) -> None:
    check_run_dir(run_path, resume=resume)
    if resume and (run_path / "run.json").exists():
        _check_resume(run_path, record)


def _profile(run: _Run, record: RunRecord) -> ProfileResult:
    recipe, loaded, dataset, settings, targets = run.recipe, run.loaded, run.dataset, run.settings, run.targets
    run_path, timings, started, note, world = run.run_path, run.timings, run.started, run.note, run.world
    model = loaded.model
    calls_before = mixer_calls()  # what the mixers run is recorded from their calls, not the settings
    note(0, 1, "static analysis")
    t0 = time.perf_counter()
    analysis = analyze(model, name=loaded.source.name, source=asdict(loaded.source))
    timings["analysis"] = time.perf_counter() - t0

    note(0, 1, "dense evaluation")
    t0 = time.perf_counter()
    eval_batch = evaluation_batch(settings)
    dense = batch_losses(model, dataset.evaluation, eval_batch)
    dense_loss = float(dense.mean())
    if not math.isfinite(dense_loss):
        raise DataError("the dense model's evaluation loss is not finite; check the model and data")
    timings["dense_eval"] = time.perf_counter() - t0

    note(0, 1, "calibration statistics")
    t0 = time.perf_counter()
    criteria = list(dict.fromkeys([*settings.criteria, settings.layer_criterion]))
    if run_path is not None and run_path.exists() and world.writer:
        remove_leftovers(run_path)  # offloaded statistics of a run that was killed
    stats = recipe.statistics(model, dataset.calibration, needs_of(criteria), offload_dir=run_path, world=world)
    timings["calibration"] = time.perf_counter() - t0
    scorer = recipe.scorer(model, stats, criteria)
    mixers = find_mixers(model)
    t0 = time.perf_counter()
    specs, skipped = plan_trials(scorer, mixers, targets, settings.criteria, settings.sparsities,
                                 settings.per_layer, settings.probe_sparsity, settings.layer_criterion)
    timings["scoring"] = time.perf_counter() - t0
    record.skipped = [Skip.from_dict(s) for s in skipped]
    record.trials_planned = record.trials_grid = len(specs)

    journal = recorded = None  # only the writing rank's trials go to the journal (every rank's ``done`` is the same)
    done: dict[str, Trial] = {}
    if run_path is not None:
        done, recorded = world.from_writer(lambda: _start_run_dir(run_path, record, analysis, dense))
        journal = run_path / "trials.jsonl" if world.writer else None

    schedule = make_schedule(settings, specs, scorer, mixers, dense_losses=dense.tolist())
    evaluate = None
    if settings.incremental and schedule.next_batch(done):
        from .incremental import IncrementalEvaluator

        note(0, 1, "caching activations")
        t0 = time.perf_counter()
        evaluate = IncrementalEvaluator(model, dataset.evaluation, eval_batch).prepare(dense)
        timings["caching"] = time.perf_counter() - t0

    # rank 0's numbers, so every rank's schedule makes the same decisions
    record.budget = world.from_writer(
        lambda: _budget_record(settings, recorded, time.perf_counter() - started, timings))
    if record.budget is not None and isinstance(schedule, AdaptiveSchedule):
        schedule.budget = record.budget  # bounded from here on; keeps the predictions it cached
    record.trials_planned = schedule.expected_total(done)
    if run_path is not None and world.writer and record.budget is not None:
        write_json_atomic(run_path / "run.json", record.to_dict())  # the budget's numbers, before the first trial
    stop = None if settings.sweep == "grid" else StopRule(settings.tolerance, len(dense), eval_batch)
    runner = LocalTrialRunner(model, scorer, mixers, dataset.evaluation, dense_loss, settings.structure,
                              eval_batch, evaluate=evaluate, dense_losses=dense, stop=stop)
    if world.sharded:
        runner = ShardedTrialRunner(runner, world)
    t0 = time.perf_counter()
    trials = run_schedule(schedule, runner, done, journal, note, run.cancel)
    note(len(trials), len(trials), "summaries")
    timings["trials"] = time.perf_counter() - t0
    record.sweep = SweepSummary.from_dict(sweep_summary(schedule, done, int(dataset.evaluation.shape[1])))

    unit_scores = _unit_scores(scorer, mixers, criteria)
    saliency = saliency_summary(scorer, mixers, targets, settings.criteria)
    timings["total"] = time.perf_counter() - started
    if evaluate is not None:
        record.incremental = IncrementalSummary.from_dict(evaluate.summary())
    record.mixer_forwards = read_mixer_usage(mixer_usage(calls_before))
    record.status, record.timings = "complete", {k: round(v, 3) for k, v in timings.items()}
    record.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result = ProfileResult(record=record, analysis=analysis, dense_window_losses=dense.tolist(), trials=trials,
                           unit_scores=unit_scores, saliency=saliency, tolerance=settings.tolerance,
                           bootstrap=settings.bootstrap)
    if run_path is not None and world.writer:
        result.save(run_path)
    return result


def _start_run_dir(run_path: Path, record: RunRecord, analysis,
                   dense: torch.Tensor) -> tuple[dict[str, Trial], Budget | None]:
    """Write the run's description; return the trials its journal holds (from an interrupted run)
    and the budget numbers that run recorded (read before run.json is rewritten)."""
    run_path.mkdir(parents=True, exist_ok=True)
    done = {t.key: t for t in read_journal(run_path / "trials.jsonl")}
    check_trials(done.values(), record.settings.targets, len(dense), run_path / "trials.jsonl")
    recorded = _recorded_budget(run_path) if done else None
    write_json_atomic(run_path / "run.json", record.to_dict())
    analysis.to_json(run_path / "analysis.json")
    write_json_atomic(run_path / "dense.json", {"window_losses": dense.tolist()})
    return done, recorded


def evaluation_batch(settings: ProfileSettings) -> int:
    """Windows per evaluation batch: the adaptive sweep looks for an early stop after every batch,
    so it evaluates at most ``CHUNK_WINDOWS`` at a time (the dense losses use the same batches)."""
    return settings.batch_size if settings.sweep == "grid" else min(settings.batch_size, CHUNK_WINDOWS)


def make_schedule(settings: ProfileSettings, specs: list[TrialSpec], scorer: Scorer, mixers,
                  dense_losses: list[float]) -> Schedule:
    """The schedule of ``settings.sweep`` over the grid's ``specs`` (without a budget: the profiler
    sets ``AdaptiveSchedule.budget`` once the setup's time is known); ``dense_losses``: the dense
    model's loss on each search window."""
    return SWEEPS.get(settings.sweep)(settings, specs, scorer, mixers, dense_losses)


def _recorded_budget(run_path: Path) -> Budget | None:
    """The budget numbers an earlier start of this run recorded in its run.json (None: none)."""
    if not (run_path / "run.json").exists():
        return None
    old = read_user_json(run_path / "run.json", "run file", error=RunDirError).get("budget")
    return Budget(**old) if isinstance(old, dict) and set(old) == {"seconds", "setup_s", "trial_s"} else None


def _budget_record(settings: ProfileSettings, recorded: Budget | None, setup_s: float,
                   timings: dict[str, float]) -> Budget | None:
    """The numbers the budget rests on, fixed when the run starts; a resumed run reuses those it
    recorded (so the schedule replays the same decisions)."""
    if settings.budget is None:
        return None
    if recorded is not None:
        return recorded
    return Budget(seconds=float(settings.budget), setup_s=round(setup_s, 3),
                  trial_s=round(timings.get("dense_eval", 0.0), 3))


def sweep_summary(schedule: Schedule, finished: dict[str, Trial], seqlen: int) -> dict[str, Any]:
    """What the sweep spent: trials, early stops, windows and window-tokens evaluated."""
    trials = list(finished.values())
    windows = sum(t.windows_evaluated for t in trials)
    out: dict[str, Any] = {"trials": len(trials), "stopped": sum(t.stopped for t in trials),
                           "screens": sum(t.screen > 0 for t in trials),
                           "windows_evaluated": windows, "window_tokens": windows * seqlen,
                           "trial_seconds": round(sum(t.seconds for t in trials), 3)}
    if isinstance(schedule, AdaptiveSchedule) and schedule.budget is not None:
        out["budget_exhausted"] = schedule.exhausted(finished)
    return out


def _config_dict(model: torch.nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    if config is None:
        return {}
    data = config.to_dict()
    return json.loads(json.dumps(data, default=str))


def _unit_scores(scorer: Scorer, mixers, criteria: list[str]) -> dict[str, Any]:
    """criterion -> layer -> unit kind -> scores (what plans use to pick exact unit indices)."""
    from ..criteria import NotApplicable

    out: dict[str, Any] = {}
    for criterion in criteria:
        for mixer in mixers:
            for kind, fam in mixer.unit_families().items():
                if not fam.prunable:
                    continue
                try:
                    scores = scorer.units(criterion, mixer, kind)
                except NotApplicable:
                    continue
                out.setdefault(criterion, {}).setdefault(str(mixer.layer), {})[kind] = [float(s) for s in scores]
    return out


