"""Validate a pruned model against its base: quality, size, state and speed, before and after.

``validate(base, pruned, plan)`` measures both models the same way and returns one
:class:`ssm_profile.documents.ValidationReport` (written by the CLI to ``validation.json``):

* held-out perplexity on the verification windows of the plan's data (``plan.data``; without a
  plan, the embedded evaluation text's): never seen by the profile or the plan's selection;
  relative increase with a paired bootstrap 95% interval; measured vs predicted loss change. The
  search windows (what the plan was chosen on) are reported too, for the comparison with the
  plan's own measurement, and any ``evaluations`` (other texts, e.g. other domains), each with
  its own interval (``report.evaluations``);
* lm-eval: the tasks shipped in :mod:`ssm_profile.tasks` (offline) and any standard lm-eval task the
  user names (needs its dataset from the hub or the local cache);
* parameters (total and nonzero), bytes on disk, recurrent-state bytes per sequence and FLOPs per
  token (:func:`ssm_profile.model.analysis.analyze`);
* CPU latency and tokens/s of one forward over a fixed batch (warm-up first, then the median of
  a few repeats, base and pruned paired in alternating order, same thread count), with the mean
  paired change and its 95% interval: "within noise" when the interval holds 0.

``within_tolerance`` compares the verification split's relative perplexity increase with
``max_ppl_increase`` (default: the plan's ``objective.max_ppl_increase``), and so each of the plan's
``--also-on`` texts' held-out windows (``report.domains``, rebuilt as the plan built them by
:mod:`.domains`): they are what decides (``tolerance.decided_by``). ``perplexity`` and ``measured``
keep their older meaning: the search windows. ``comparison.comparison_rows(report)`` is the
before/after table every front-end shows.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from .. import __version__
from .comparison import paired_change, perplexity, relative_change
from .domains import HeldOutText, held_out_texts
from ..calibration.memory import check_batch_fits
from ..calibration.data import DataSpec, batch_losses, load_dataset, paired_increase, text_windows
from ..documents import (LM_EVAL_LOG, PRUNING_FILE, RECOVERY_FILE, VALIDATION_FILE, Plan,  # noqa: F401
                        AgainstPlan, ComparedModels, DomainIncrease, Increase, LmEval, LossPerplexity, ModelRef,
                        ModelSize, PlanSummary, RunData, SearchPerplexity, Sizes, read_mixer_usage,
                        Speed, Tolerance, ValidationReport)
from ..base.errors import DataError, SSMProfileError
from ..mixers.choice import Kernels, installed
from ..mixers import snapshot as mixer_calls, usage as mixer_usage
from ..model.resolve import LoadedModel, check_vocabulary
from ..tasks import BUILTIN_TASKS, TASKS_DIR

Progress = Callable[[int, int, str], None]
VALIDATION_SCHEMA_VERSION = 1
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
TRANSFORMERS_KERNELS = Kernels.transformers()  # validate measures as a user of the saved model runs it


class ToleranceBreachedError(SSMProfileError):
    """The pruned model's perplexity rose by more than the allowed fraction."""

    exit_code = 3


# --------------------------------------------------------------------------------------------
# sizes


# ssm-profile's own records and logs beside a checkpoint: not part of the model's size
TOOL_FILES = frozenset({PRUNING_FILE, VALIDATION_FILE, RECOVERY_FILE, LM_EVAL_LOG})


def dir_bytes(path: str | Path | None) -> dict[str, int] | None:
    """Bytes of the model's files under ``path`` (ssm-profile's own records and logs left out) and of
    its weight files, or None if it is not a folder."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_dir():
        return None
    files = [f for f in p.rglob("*") if f.is_file() and f.name not in TOOL_FILES]
    return {"total": sum(f.stat().st_size for f in files),
            "weights": sum(f.stat().st_size for f in files if f.name.endswith(WEIGHT_SUFFIXES))}


def model_dir(loaded: LoadedModel) -> Path | None:
    """The folder ``loaded`` was read from, if it is on this machine (hub models: the cache)."""
    location = Path(loaded.source.location)
    if location.is_dir():
        return location
    if loaded.source.kind.startswith("hub"):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(loaded.source.location, local_files_only=True,
                                          allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]))
        except Exception:  # noqa: BLE001 - not cached: no size to report
            return None
    return None


def size_change(base: ModelSize, pruned: ModelSize) -> dict[str, float | None]:
    """The relative change of every size, by its field name (``Sizes.change``)."""
    return {f.name: relative_change(getattr(base, f.name), getattr(pruned, f.name))
            for f in fields(ModelSize) if f.name != "extra"}


def _size(loaded: LoadedModel, directory: Path | None) -> ModelSize:
    from ..model.analysis import analyze

    totals = analyze(loaded.model).totals
    counts = count_parameters(loaded.model)
    disk = dir_bytes(directory)
    return ModelSize(parameters=counts["total"], nonzero_parameters=counts["nonzero"],
                     bytes_on_disk=None if disk is None else disk["total"],
                     weight_bytes_on_disk=None if disk is None else disk["weights"],
                     state_bytes_per_sequence=totals.state_bytes_per_sequence, flops_per_token=totals.flops_per_token)


# --------------------------------------------------------------------------------------------
# counting


def _unique_params(model: torch.nn.Module) -> list[torch.Tensor]:
    seen, out = set(), []
    for _, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Total and nonzero parameters (tied tensors counted once)."""
    params = _unique_params(model)
    return {"total": int(sum(p.numel() for p in params)),
            "nonzero": int(sum(int(torch.count_nonzero(p.detach())) for p in params))}


# --------------------------------------------------------------------------------------------
# speed


@torch.inference_mode()
def _forward_seconds(model: torch.nn.Module, ids: torch.Tensor) -> float:
    start = time.perf_counter()
    model(input_ids=ids, use_cache=False)
    return time.perf_counter() - start


def measure_speed(models: dict[str, torch.nn.Module], vocab_size: int, batch: int = 1, seqlen: int = 128,
                  repeats: int = 5, warmup: int = 1, seed: int = 0) -> dict[str, Any]:
    """Median forward time over a fixed batch of token ids for each model, and for ``base`` vs
    ``pruned`` the mean paired change with its 95% interval (``change``).

    Each repeat times every model once, in an order that alternates between repeats, so drift on a
    shared machine and who-runs-first effects hit both models alike and the pairs can be compared."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, seqlen), generator=gen)
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for name in names:
        for _ in range(warmup):
            _timed(models[name], ids)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            times[name].append(_timed(models[name], ids))
    out: dict[str, Any] = {"batch": [batch, seqlen], "repeats": repeats, "warmup": warmup,
                           "threads": torch.get_num_threads()}
    for name, ts in times.items():
        median = statistics.median(ts)
        out[name] = {"latency_s": median, "tokens_per_s": batch * seqlen / median if median > 0 else None,
                     "runs_s": [round(t, 6) for t in ts]}
    if "base" in times and "pruned" in times:
        base, pruned = times["base"], times["pruned"]
        latency = paired_change(base, pruned)
        rate = paired_change([1 / t for t in base if t > 0], [1 / t for t in pruned if t > 0])
        low, high = latency["low"], latency["high"]
        out["change"] = {"pairs": repeats, "latency": latency, "tokens_per_s": rate,
                         "within_noise": None if low is None else bool(low <= 0.0 <= high)}
    return out


def _timed(model: torch.nn.Module, ids: torch.Tensor) -> float:
    """One forward of ``model`` in eval mode (its training flag restored), in seconds."""
    was_training = model.training
    model.eval()
    try:
        return _forward_seconds(model, ids.to(next(model.parameters()).device))
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# lm-eval


@contextlib.contextmanager
def _quiet_lm_eval(log_file: Path | None = None) -> Iterator[None]:
    """Keep lm-eval's and datasets' logs and progress bars off the terminal, and the messages of the
    programs they start too (lm-eval runs ``git describe``, which prints "fatal: not a git repository"
    outside one): both Python's stderr and file descriptor 2 go to ``log_file`` (appended) or nowhere."""
    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "datasets", "fsspec", "filelock")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sys.stderr.flush()
    with open(log_file if log_file is not None else os.devnull, "a", encoding="utf-8") as sink:
        saved_fd = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stderr(sink):
                yield
        finally:
            sink.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _builtin_include_dir(tmp: Path, names: Sequence[str]) -> Path:
    """Task YAMLs with absolute data paths and a private datasets cache (the shipped ones are relative)."""
    import yaml

    inc = tmp / "tasks"
    inc.mkdir(parents=True, exist_ok=True)
    for name in names:
        cfg = yaml.safe_load((TASKS_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
        kwargs = dict(cfg.get("dataset_kwargs") or {})
        kwargs["data_files"] = {split: str(TASKS_DIR / f) for split, f in kwargs.get("data_files", {}).items()}
        kwargs["cache_dir"] = str(tmp / "datasets-cache")
        cfg["dataset_kwargs"] = kwargs
        (inc / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return inc


class LmEvalRunner:
    """Loads the requested tasks once (failing fast with one line) and scores models on them."""

    def __init__(self, tasks: Sequence[str] = BUILTIN_TASKS, lm_eval_tasks: Sequence[str] = (),
                 limit: int | float | None = None, batch_size: int = 8, max_length: int = 2048):
        unknown = [t for t in tasks if t not in BUILTIN_TASKS]
        if unknown:
            raise SSMProfileError(f"unknown built-in task '{unknown[0]}'; shipped tasks: {', '.join(BUILTIN_TASKS)} "
                                  "(standard lm-eval tasks go to lm_eval_tasks / --tasks)")
        # a shipped task named among the standard ones runs as the shipped (offline) task
        self.tasks = list(dict.fromkeys([*tasks, *(t for t in lm_eval_tasks if t in BUILTIN_TASKS)]))
        self.lm_eval_tasks = [t for t in dict.fromkeys(lm_eval_tasks) if t not in self.tasks]
        self.limit, self.batch_size, self.max_length = limit, batch_size, max_length
        self._tmp = tempfile.TemporaryDirectory(prefix="ssm-profile-lm-eval-")
        self.log_file = Path(self._tmp.name) / "lm-eval.log"  # what lm-eval and its tools printed
        self.items: dict[str, int] = {}
        self.per_item: dict[str, dict[str, dict[int, float]]] = {}  # the last model's task -> metric -> {doc: score}
        try:
            import lm_eval  # noqa: F401
            from lm_eval.models.huggingface import HFLM  # noqa: F401  (needs the [hf] extra)
        except ImportError:
            raise SSMProfileError("lm-eval tasks need lm-eval with its hf extra: pip install 'ssm-profile[eval]' "
                                  "(or pass --no-lm-eval)") from None
        self._load()

    @property
    def names(self) -> list[str]:
        return [*self.tasks, *self.lm_eval_tasks]

    def _load(self) -> None:
        from lm_eval.tasks import TaskManager

        with _quiet_lm_eval(self.log_file):
            include = _builtin_include_dir(Path(self._tmp.name), self.tasks) if self.tasks else None
            manager = TaskManager(include_path=str(include) if include else None,
                                  include_defaults=bool(self.lm_eval_tasks), verbosity="ERROR")
            if self.lm_eval_tasks:
                known = set(manager.all_tasks)
                missing = [t for t in self.lm_eval_tasks if t not in known]
                if missing:
                    raise SSMProfileError(f"unknown lm-eval task '{missing[0]}'; see `lm-eval ls tasks` for names")
            self.manager = manager
            loaded: dict[str, Any] = {}
            for name in self.names:
                try:
                    loaded[name] = manager.load([name])
                except Exception as err:  # noqa: BLE001 - datasets raises many types for "cannot fetch"
                    offline = os.environ.get("HF_DATASETS_OFFLINE", "0") in ("1", "true", "TRUE") or \
                        os.environ.get("HF_HUB_OFFLINE", "0") in ("1", "true", "TRUE")
                    how = "offline mode is on" if offline else "the Hugging Face Hub cannot be reached"
                    if name in self.tasks:
                        raise SSMProfileError(f"cannot load the shipped task '{name}': {type(err).__name__}: "
                                              f"{str(err).splitlines()[0] if str(err) else ''}") from None
                    raise DataError(f"lm-eval task '{name}' needs its dataset from the Hugging Face Hub; {how} and it "
                                    "is not in the local cache (drop it from --tasks, or run where the hub is "
                                    "reachable once to cache it)") from None
            self.loaded = loaded

    def evaluate(self, loaded: LoadedModel) -> dict[str, dict[str, float]]:
        """``{task: {metric: value}}`` of one model (stderr columns dropped)."""
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        if loaded.tokenizer is None:
            raise DataError("lm-eval needs a tokenizer; save one beside the weights (tokenizer.json)")
        with _quiet_lm_eval(self.log_file):
            lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, max_length=self.max_length,
                      batch_size=self.batch_size)
            out = simple_evaluate(model=lm, tasks=self.names, task_manager=self.manager, limit=self.limit,
                                  bootstrap_iters=0, log_samples=True, random_seed=0, numpy_random_seed=0,
                                  torch_random_seed=0, fewshot_random_seed=0)
        results: dict[str, dict[str, float]] = {}
        for task, metrics in (out or {}).get("results", {}).items():
            clean = {}
            for key, value in metrics.items():
                metric, _, _filter = key.partition(",")
                if metric.endswith("_stderr") or metric in ("alias", "name", "sample_len") \
                        or not isinstance(value, (int, float)):
                    continue
                clean[metric] = float(value)
            results[task] = clean
        self.items = {task: int(n.get("effective", n.get("original", 0))) if isinstance(n, dict) else int(n)
                      for task, n in (out or {}).get("n-samples", {}).items()}
        self.per_item = {task: _item_scores(samples) for task, samples in (out or {}).get("samples", {}).items()}
        return results

    def intervals(self, base: dict[str, dict[str, dict[int, float]]],
                  pruned: dict[str, dict[str, dict[int, float]]], task: str) -> dict[str, list[float]]:
        """metric -> 95% paired bootstrap interval of the pruned model's score minus the base's, over
        the items both models were scored on."""
        from .comparison import paired_score_interval

        out = {}
        for metric, before in base.get(task, {}).items():
            after = pruned.get(task, {}).get(metric, {})
            ids = sorted(set(before) & set(after))
            interval = paired_score_interval([before[i] for i in ids], [after[i] for i in ids])
            if interval is not None:
                out[metric] = list(interval)
        return out

    def close(self, keep_log: str | Path | None = None) -> None:
        """Remove the temporary files; copy what lm-eval printed to ``keep_log`` first, if anything."""
        if keep_log is not None and self.log_file.is_file() and self.log_file.stat().st_size:
            shutil.copyfile(self.log_file, keep_log)
        self._tmp.cleanup()


def _item_scores(samples: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """metric -> {doc_id: score} of lm-eval's logged samples (scalar metrics only: a perplexity task's
    per-document (loglikelihood, words) pairs have no per-item score to pair)."""
    scores: dict[str, dict[int, float]] = {}
    for sample in samples or []:
        for metric in sample.get("metrics") or []:
            value = sample.get(metric)
            if isinstance(value, (int, float)):  # acc 0/1 (or a bool), acc_norm, exact_match
                scores.setdefault(metric, {})[int(sample.get("doc_id", len(scores.get(metric, {}))))] = float(value)
    return scores


# --------------------------------------------------------------------------------------------
# the report


def _increase(base: torch.Tensor, pruned: torch.Tensor, seed: int, source: str | None,
              max_ppl_increase: float | None) -> Increase:
    """Relative perplexity increase on one set of windows, with its paired bootstrap interval."""
    m = Increase.from_dict(paired_increase(base.tolist(), pruned.tolist(), seed=seed))
    m.rel_ppl_increase = m.rel_ppl_increase if math.isfinite(m.loss) else float("inf")
    m.source = source
    m.within_tolerance = (None if max_ppl_increase is None
                          else bool(math.isfinite(m.rel_ppl_increase) and m.rel_ppl_increase <= max_ppl_increase))
    return m


def _domain_increase(text: HeldOutText, base: torch.Tensor, pruned: torch.Tensor,
                     max_ppl_increase: float | None) -> DomainIncrease:
    """An --also-on text's held-out windows, measured as the verification windows are (with the plan's seed,
    so the interval is the one the plan drew)."""
    m = _increase(base, pruned, text.seed, text.check.source, max_ppl_increase)
    planned = text.check.verification
    return DomainIncrease(**{f.name: getattr(m, f.name) for f in fields(Increase)}, held_out_digest=text.digest,
                          plan_rel_ppl_increase=None if planned is None else planned.rel_ppl_increase)


def _all_within(checks: Sequence[Increase]) -> bool | None:
    """Whether every check is within tolerance (None: no tolerance to judge by)."""
    verdicts = [c.within_tolerance for c in checks]
    return None if any(v is None for v in verdicts) else all(verdicts)


@dataclass(frozen=True)
class ValidationOptions:
    """How a validation measures; every default is the CLI's.

    ``tasks``: shipped lm-eval tasks to run (default both; ``()`` for none); ``lm_eval_tasks``:
    standard lm-eval task names; ``limit``: items per lm-eval task (None = all). ``max_ppl_increase``:
    the tolerance (default: the plan's). ``data`` overrides the evaluation data (default: the plan's,
    else the embedded evaluation text); ``evaluations``: other text sources (files, ``hf:``) measured
    the same way on their own windows. ``lm_eval_log``: where to keep what lm-eval printed (written
    after the sizes are measured; default: dropped).
    """

    tasks: Sequence[str] = BUILTIN_TASKS
    lm_eval_tasks: Sequence[str] = ()
    max_ppl_increase: float | None = None
    data: DataSpec | None = None
    evaluations: Sequence[str] = ()
    limit: int | float | None = None
    batch_size: int = 8
    lm_eval_batch_size: int = 8
    max_length: int = 2048
    speed_batch: tuple[int, int] = (1, 128)
    speed_repeats: int = 5
    lm_eval_log: str | Path | None = None


def validate(base: LoadedModel, pruned: LoadedModel, plan: Plan | None = None,
             options: ValidationOptions | None = None, progress: Progress | None = None, *,
             base_dir: str | Path | None = None, pruned_dir: str | Path | None = None) -> ValidationReport:
    """Measure ``base`` and ``pruned`` the same way (:class:`ValidationOptions` says how); see the
    module docstring for what is in the report. ``base_dir``/``pruned_dir``: the models' folders, for
    their size on disk (default: where they were loaded from)."""
    o = options or ValidationOptions()
    tasks, lm_eval_tasks, max_ppl_increase, data, limit = o.tasks, o.lm_eval_tasks, o.max_ppl_increase, o.data, o.limit
    note = progress or (lambda done, total, label: None)
    started = time.perf_counter()
    if plan is not None:
        plan.check_model(base)
    check_batch_fits(base.model, o.speed_batch[0], o.speed_batch[1], "--speed-batch")  # before minutes of work
    if max_ppl_increase is not None and not max_ppl_increase >= 0:
        raise SSMProfileError(f"--max-ppl-increase must be a non-negative fraction (0.1 = 10%), got {max_ppl_increase}")
    tolerance_source = "argument" if max_ppl_increase is not None else None
    if max_ppl_increase is None and plan is not None:
        max_ppl_increase, tolerance_source = float(plan.objective.max_ppl_increase), "plan"

    # Fail fast on lm-eval problems (unknown task, dataset not reachable) before any long work.
    runner = LmEvalRunner(tasks, lm_eval_tasks, limit, o.lm_eval_batch_size, o.max_length) \
        if (tasks or lm_eval_tasks) else None
    steps = 4 + (2 if runner else 0)
    calls_before = mixer_calls()
    try:
        note(0, steps, "evaluation data")
        spec = data or (plan.data.spec() if plan is not None else DataSpec())
        tokenizer = base.tokenizer or pruned.tokenizer
        check_vocabulary(tokenizer, base.model)
        check_vocabulary(tokenizer, pruned.model)
        dataset = load_dataset(tokenizer, spec)

        extra = [(source, text_windows(tokenizer, source, spec.eval_samples + spec.verify_samples, spec.seqlen))
                 for source in o.evaluations]
        held_out = held_out_texts(tokenizer, plan, spec)  # the plan's --also-on texts: a changed one fails here

        def losses(loaded: LoadedModel, windows: torch.Tensor) -> torch.Tensor:
            return batch_losses(loaded.model, windows, o.batch_size, TRANSFORMERS_KERNELS)

        note(1, steps, "perplexity (base)")
        base_search, base_verify = losses(base, dataset.evaluation), losses(base, dataset.verification)
        note(2, steps, "perplexity (pruned)")
        pruned_search, pruned_verify = losses(pruned, dataset.evaluation), losses(pruned, dataset.verification)
        base_loss, pruned_loss = float(base_search.mean()), float(pruned_search.mean())
        delta = pruned_loss - base_loss
        rel = perplexity(delta) - 1.0 if math.isfinite(pruned_loss) else float("inf")
        verification = _increase(base_verify, pruned_verify, spec.seed, dataset.sources.get("verification"),
                                 max_ppl_increase)
        others = [_increase(losses(base, windows), losses(pruned, windows), spec.seed, source, max_ppl_increase)
                  for source, windows in extra]
        domains = [_domain_increase(text, losses(base, text.windows), losses(pruned, text.windows), max_ppl_increase)
                   for text in held_out]
        # the promise holds where the plan made it: the verification windows and every --also-on text's
        within = _all_within([verification, *domains])

        predicted = plan.predicted.to_dict() if plan is not None else {}
        plan_dense = plan.dense.loss if plan is not None else None
        plan_measured = plan.measured.loss if plan is not None and plan.measured is not None else None
        measured = {"loss": pruned_loss, "delta_loss": delta, "rel_ppl_increase": rel, "within_tolerance": within,
                    "predicted_delta_loss": predicted.get("delta_loss"),
                    "predicted_rel_ppl_increase": predicted.get("rel_ppl_increase"),
                    "prediction_error": (delta - predicted["delta_loss"])
                    if isinstance(predicted.get("delta_loss"), (int, float)) else None,
                    "plan_measured_loss": plan_measured,
                    "matches_plan_measurement": None if not isinstance(plan_measured, (int, float))
                    else bool(abs(plan_measured - pruned_loss) <= 1e-4 * max(1.0, abs(pruned_loss))),
                    "plan_dense_loss": plan_dense,
                    "dense_loss_matches_plan": None if not isinstance(plan_dense, (int, float))
                    else bool(abs(plan_dense - base_loss) <= 1e-3 * max(1.0, abs(base_loss)))}

        lm_eval: dict[str, Any] = {"tasks": {}, "limit": limit, "skipped": None}
        if runner is not None:
            note(3, steps, "lm-eval (base)")
            with installed(base.model, TRANSFORMERS_KERNELS):  # counted in mixer_forwards, like every step
                scores_base = runner.evaluate(base)
            items_base = runner.per_item
            note(4, steps, "lm-eval (pruned)")
            with installed(pruned.model, TRANSFORMERS_KERNELS):
                scores_pruned = runner.evaluate(pruned)
            for task in runner.names:
                b, p = scores_base.get(task, {}), scores_pruned.get(task, {})
                lm_eval["tasks"][task] = {"builtin": task in BUILTIN_TASKS, "items": runner.items.get(task),
                                          "base": b, "pruned": p,
                                          "delta": {m: p[m] - b[m] for m in b if m in p},
                                          "interval": runner.intervals(items_base, runner.per_item, task)}
        else:
            lm_eval["skipped"] = "no tasks requested"

        note(steps - 1, steps, "size and speed")
        pruned_dir = pruned_dir if pruned_dir is not None else model_dir(pruned)
        base_dir = base_dir if base_dir is not None else model_dir(base)
        size_base, size_pruned = _size(base, Path(base_dir) if base_dir else None), \
            _size(pruned, Path(pruned_dir) if pruned_dir else None)
        vocab = int(getattr(base.model.config, "vocab_size", 0) or base.model.get_input_embeddings().num_embeddings)
        with installed(base.model, TRANSFORMERS_KERNELS), installed(pruned.model, TRANSFORMERS_KERNELS):
            speed = measure_speed({"base": base.model, "pruned": pruned.model}, vocab, batch=o.speed_batch[0],
                                  seqlen=o.speed_batch[1], repeats=o.speed_repeats)
        b_lat, p_lat = speed["base"]["latency_s"], speed["pruned"]["latency_s"]
        speed["speedup"] = b_lat / p_lat if p_lat else None
    finally:
        if runner is not None:
            runner.close(keep_log=o.lm_eval_log)

    note(steps, steps, "done")
    return ValidationReport(
        schema_version=VALIDATION_SCHEMA_VERSION,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        models=ComparedModels(
            base=ModelRef(name=base.source.name, location=base.source.location, fingerprint=base.fingerprint,
                          directory=str(base_dir) if base_dir else None),
            pruned=ModelRef(name=pruned.source.name, location=pruned.source.location, fingerprint=pruned.fingerprint,
                            directory=str(pruned_dir) if pruned_dir else None)),
        plan=None if plan is None else PlanSummary(model=plan.model.name, objective=copy.deepcopy(plan.objective),
                                                   predicted=copy.deepcopy(plan.predicted), actions=len(plan.actions)),
        data=RunData.from_dict(dataset.describe()),
        perplexity=SearchPerplexity(base=LossPerplexity(loss=base_loss, perplexity=perplexity(base_loss)),
                                    pruned=LossPerplexity(loss=pruned_loss, perplexity=perplexity(pruned_loss)),
                                    delta_loss=delta, rel_ppl_increase=rel),
        measured=AgainstPlan.from_dict(measured),
        tolerance=Tolerance(max_ppl_increase=max_ppl_increase, source=tolerance_source, within_tolerance=within,
                            decided_by="verification+also-on" if domains else "verification"),
        verification=verification, evaluations=others, domains=domains or None,
        within_tolerance=within,
        lm_eval=LmEval.from_dict(lm_eval),
        size=Sizes(base=size_base, pruned=size_pruned, change=size_change(size_base, size_pruned)),
        speed=Speed.from_dict(speed),
        versions={"ssm-profile": __version__, "torch": torch.__version__},
        threads=torch.get_num_threads(),
        seconds=round(time.perf_counter() - started, 3),
        mixer_forwards=read_mixer_usage(mixer_usage(calls_before)))
