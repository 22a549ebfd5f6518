"""Recover a pruned model's quality by knowledge distillation from its dense teacher.

``recover(pruned_dir, output_dir)`` trains the checkpoint ``apply`` wrote to match the token
distributions of the model it was pruned from (the teacher; ``pruning.json`` names it), as Minitron
and Minitron-SSM heal pruned models: KL on temperature-softened logits, optionally mixed with the
plain LM loss. What apply zeroed stays zero: the gradients of pruned entries are zeroed before
every optimiser step (so Adam's moments never move them) and the entries are written back to zero
after it, so unstructured stays unstructured and N:M stays N:M; sliced models train as they are.

Data: the run's calibration text (every offset of it, :func:`ssm_profile.calibration.data.calibration_windows`),
or a file the user gives; never the verification windows the result is judged on (a training text
that contains any 64-token span of them is refused). Verification perplexity (with its paired
bootstrap interval, against the teacher) and the shipped offline tasks are measured before and
after; the verification loss is also sampled during training for the curve, never to choose
anything. Everything goes to ``recovery.json`` (:class:`ssm_profile.documents.RecoveryRecord`).

Checkpoints (weights, optimiser state, loss curve) go to ``OUT_DIR.checkpoint`` every
``checkpoint_every`` steps; ``resume=True`` continues from there with the same optimiser state and
the same batches (they are a function of the step), so the result equals an uninterrupted run's.
Under ``torchrun`` the run is data-parallel (gloo on the CPU, nccl on CUDA); rank 0 alone writes.
The output appears atomically and loads with plain ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from .. import __version__
from ..base.defaults import RECOVER_LR, RECOVER_STEPS, RECOVER_TEMPERATURE
from .distill import (Diverged, batch_at, frozen_entries, frozen_masks, learning_rate, ngram_overlap, rank_rows,
                      train_step)
from ..profiling.distributed import World
from ..documents import (PRUNING_FILE, RECOVERY_FILE, CurvePoint, Plan, PlanRecover, PrunedFrom, RecoveredFrom,
                         RecoveryCheck, RecoveryData, RecoveryKernels, RecoveryOutput, RecoveryProgress, RecoveryRecord,
                         RecoverySettings, RecoveryWorld, Sparsity, Teacher, check_weights, load_pruning_record)
from ..base.errors import DataError, ModelNotFoundError, OutputExistsError, SSMProfileError
from ..base.io import atomic_directory, write_json_atomic
from ..calibration.memory import check_batch_fits
from ..mixers.choice import Kernels, installed
from ..mixers import family_of, snapshot as mixer_calls, usage as mixer_usage
from ..model.resolve import LoadedModel, embedding_rows, weights_fingerprint
from ..validation.check import count_parameters

Progress = Callable[[int, int, str], None]

DEFAULT_STEPS, DEFAULT_LR, DEFAULT_TEMPERATURE = RECOVER_STEPS, RECOVER_LR, RECOVER_TEMPERATURE
OVERLAP_SPAN = 64  # tokens: a training text sharing a span this long with verification is refused
PROBE_STEPS = 3  # a --minutes budget is turned into steps from the time of these (after the first)


@dataclass(frozen=True)
class RecoverSettings:
    """How to train; ``steps`` and ``minutes`` None: the plan's budget, else :data:`DEFAULT_STEPS`."""

    steps: int | None = None
    minutes: float | None = None
    lr: float = DEFAULT_LR
    temperature: float = DEFAULT_TEMPERATURE
    lm_weight: float | None = None  # None: the plan's, else 0
    batch_size: int = 8
    seqlen: int | None = None  # None: the plan's data seqlen
    seed: int = 0
    checkpoint_every: int = 50
    eval_every: int | None = None  # None: ten checks over the run
    data: str | None = None  # training text; None: the run's calibration text
    lm_eval: bool = True
    lm_eval_limit: int | float | None = None

    def resolved(self, plan: Plan | None) -> "RecoverSettings":
        """Unset budget and LM weight from the plan's ``recover`` section, else the defaults."""
        asked = (plan.recover if plan is not None else None) or PlanRecover()
        steps, minutes = self.steps, self.minutes
        if steps is None and minutes is None:
            steps, minutes = asked.steps, asked.minutes
            if steps is None and minutes is None:
                steps = DEFAULT_STEPS
        lm_weight = self.lm_weight if self.lm_weight is not None else (asked.lm_weight or 0.0)
        return replace(self, steps=steps, minutes=minutes if steps is None else None, lm_weight=lm_weight)

    def check(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "eval_every", "seqlen"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SSMProfileError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        for name in ("minutes", "lr", "temperature"):  # inf would train to non-finite weights
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise SSMProfileError(f"--{name.replace('_', '-')} must be a positive finite number, got {value}")
        if self.lm_weight is not None and not (math.isfinite(self.lm_weight) and self.lm_weight >= 0):
            raise SSMProfileError(f"--lm-weight must be a finite number of 0 or more, got {self.lm_weight}")
        if not 0 <= int(self.seed) < 2**32:
            raise SSMProfileError(f"--seed must be between 0 and {2**32 - 1}, got {self.seed}")


def checkpoint_dir(output: str | Path) -> Path:
    """Where a run writing ``output`` keeps its checkpoints (a sibling: the output is atomic)."""
    output = Path(output)
    return output.with_name(output.name + ".checkpoint")


# --------------------------------------------------------------------------------------------
# inputs


def check_recover_paths(pruned_dir: str | Path, output: str | Path, overwrite: bool, teacher: str | None = None,
                        data: str | None = None) -> None:
    """One line, before anything loads: the pruned checkpoint must exist, and the output and its
    checkpoint folder must be new (or ``overwrite``), writable and apart from everything recover reads:
    the pruned checkpoint, the teacher, the training text and the plan's texts
    (:func:`ssm_profile.base.outputs.check_paths`)."""
    from ..base.outputs import Input, Output, check_paths as check_outputs, source_input
    from ..model.resolve import locate

    pruned, out = Path(pruned_dir).expanduser(), Path(output).expanduser()
    if not (pruned / "config.json").is_file():
        raise ModelNotFoundError(f"'{pruned}' is not a pruned model directory (no config.json); pass the "
                                 "OUT_DIR written by `ssm-profile apply`")
    plan, _ = pruning_plan(pruned)
    inputs = [Input(pruned, "the pruned checkpoint"), source_input(data, "the --data text")]
    if teacher is not None or plan is not None:
        source = locate(teacher or teacher_name(plan))
        inputs.append(None if source.kind.startswith("hub") else Input(Path(source.location), "the teacher"))
    if plan is not None and plan.data is not None:
        spec = plan.data.spec()
        inputs += [source_input(spec.calibration, "the plan's calibration text"),
                   source_input(spec.evaluation, "the plan's evaluation text")]
    check_outputs([Output(out, "output", folder=True, overwrite=overwrite),
                   Output(checkpoint_dir(out), "checkpoint folder", folder=True, overwrite=None)], inputs)


def pruning_plan(pruned_dir: Path) -> tuple[Plan | None, PrunedFrom | None]:
    """The plan and source model recorded by apply (None, None for a checkpoint without pruning.json)."""
    if not (pruned_dir / PRUNING_FILE).is_file():
        return None, None
    record = load_pruning_record(pruned_dir / PRUNING_FILE)
    return record.plan, record.source


def zeroed_parameters(pruned_dir: Path) -> set[str] | None:
    """Names of the parameters apply wrote pruned zeros into (its record's actions); None when the
    record does not say (no pruning.json, or one written before apply recorded them)."""
    if not (pruned_dir / PRUNING_FILE).is_file():
        return None
    actions = load_pruning_record(pruned_dir / PRUNING_FILE).actions
    if any(a.zeroed_params is None for a in actions if a.elements_zeroed):
        return None
    return {name for a in actions for name in a.zeroed_params or ()}


def teacher_name(plan: Plan | None) -> str:
    """The model apply pruned: its directory when local, else its name."""
    if plan is not None:
        return plan.source_model()
    raise SSMProfileError("the pruned directory has no pruning.json naming its source model; pass --teacher MODEL")


def check_teacher(teacher: LoadedModel, student: LoadedModel) -> None:
    """Distillation compares token distributions: the vocabularies must be the same size."""
    rows_t, rows_s = embedding_rows(teacher.model), embedding_rows(student.model)
    if rows_t != rows_s:
        raise SSMProfileError(f"teacher '{teacher.source.name}' has a vocabulary of {rows_t} tokens, the pruned model "
                              f"{rows_s}: distillation needs the same tokens; pass --teacher with the model it was "
                              "pruned from")


def training_stream(tokenizer: Any, spec, data: str | None) -> tuple[torch.Tensor, str]:
    """The training tokens (one stream) and where they came from."""
    from ..calibration.data import calibration_windows, text_windows

    if data is not None:
        windows = text_windows(tokenizer, data, 1 << 30, spec.seqlen)
        return windows.reshape(-1), data
    windows, source = calibration_windows(tokenizer, spec)
    return windows.reshape(-1), source


def check_disjoint(stream: torch.Tensor, verification: torch.Tensor, source: str) -> int:
    """The span length checked; one line when the training text holds a span of the verification windows."""
    span = min(OVERLAP_SPAN, verification.shape[1])
    shared = ngram_overlap(stream, verification, span)
    if shared:
        raise DataError(f"the training text '{source}' contains {shared} spans of {span} tokens of the "
                        "verification windows the result is judged on; train on other text (--data)")
    return span


# --------------------------------------------------------------------------------------------
# measurement


def measure(loaded: LoadedModel, teacher_losses: torch.Tensor, verification: torch.Tensor, kernels: Kernels,
            runner: Any, seed: int) -> dict[str, Any]:
    """Verification perplexity change vs the teacher (paired interval) and the offline task scores."""
    from ..calibration.data import batch_losses, paired_increase

    was_training = loaded.model.training
    loaded.model.eval()
    try:
        losses = batch_losses(loaded.model, verification, kernels=kernels)
        out: dict[str, Any] = {"verification": paired_increase(teacher_losses, losses, seed=seed)}
        out["lm_eval"] = runner.evaluate(loaded) if runner is not None else {}
    finally:
        loaded.model.train(was_training)
    return out


def verification_loss(model: torch.nn.Module, verification: torch.Tensor, kernels: Kernels) -> float:
    from ..calibration.data import batch_losses

    was_training = model.training
    model.eval()
    try:
        return float(batch_losses(model, verification, kernels=kernels).mean())
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# checkpoints


def _save_checkpoint(where: Path, student: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     state: dict[str, Any]) -> None:
    with atomic_directory(where, overwrite=True) as tmp:
        torch.save(student.state_dict(), tmp / "student.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        write_json_atomic(tmp / "state.json", state)


# identity keys that name an input, and the input in words
CHANGED_INPUT = {"pruned": "the pruned checkpoint's weights", "pruning_record": "the pruned checkpoint's pruning.json",
                 "teacher": "the teacher's weights", "training_text": "the training text"}


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _load_checkpoint(where: Path, student: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     identity: dict[str, Any]) -> dict[str, Any]:
    from ..base.safe_read import read_user_json

    state = read_user_json(where / "state.json", "checkpoint state", error=SSMProfileError)
    for key, value in identity.items():
        old = state.get("identity", {}).get(key)
        if old == value:
            continue
        if key not in state.get("identity", {}):
            raise SSMProfileError(f"the checkpoint in '{where}' does not record its {key.replace('_', ' ')} (an older "
                                  "version wrote it); pass --overwrite without --resume to start over")
        if key in CHANGED_INPUT:  # an input replaced between the runs: its checkpoint trained on the old one
            raise SSMProfileError(f"cannot resume from '{where}': {CHANGED_INPUT[key]} changed since its checkpoint "
                                  "was written; restore it, or pass --overwrite without --resume to start over")
        raise SSMProfileError(f"the checkpoint in '{where}' was made with another {key} ({old!r}, this run: "
                              f"{value!r}); resume with the same options, or pass --overwrite without --resume to "
                              "start over")
    if not isinstance(state.get("step"), int) or not isinstance(state.get("curve"), list):
        raise SSMProfileError(f"the checkpoint state '{where / 'state.json'}' is damaged (no step or curve); "
                              "pass --overwrite without --resume to start over")
    for name, target in (("student.pt", student), ("optimizer.pt", optimizer)):
        try:
            target.load_state_dict(torch.load(where / name, weights_only=True))
        except Exception as err:  # noqa: BLE001 - torch raises many types for a truncated or foreign file
            raise SSMProfileError(f"the checkpoint file '{where / name}' is damaged or not this run's "
                                  f"({type(err).__name__}); pass --overwrite without --resume to start over") from None
    if not all(bool(torch.isfinite(p).all()) for p in student.state_dict().values() if p.is_floating_point()):
        raise SSMProfileError(f"the checkpoint file '{where / 'student.pt'}' holds non-finite weights; "
                              "pass --overwrite without --resume to start over")
    return state


# --------------------------------------------------------------------------------------------
# the run


def _kernel_notes(student: torch.nn.Module, device: torch.device) -> tuple[Kernels, dict[str, Any]]:
    kernels = Kernels.for_run(True, device)
    if not kernels.fast_scan:
        return kernels, {"choice": asdict(kernels), "training": "transformers' forward (fast kernels are switched off)"}
    families = {family.name for family in map(family_of, student.modules()) if family is not None}
    how = {"selective_scan": "the owned Mamba-1 forward, its scan and backward in one numba kernel",
           "ssd": "the owned Mamba-2 forward: the chunked SSD in torch for training (the numba recurrence is "
                  "forward-only and serves the teacher and the measurements)",
           "gated_delta": "the owned Gated DeltaNet forward: the chunked delta rule in torch for training (the numba "
                          "recurrence is forward-only and serves the teacher and the measurements)"}
    if device.type != "cpu":
        how = {name: "the owned forward with mamba-ssm's kernels where they import, else transformers'"
               for name in how}
        how["gated_delta"] = ("the owned Gated DeltaNet forward: the chunked delta rule in torch for training "
                              "(fla's kernels, where they import, serve the teacher)")
    return kernels, {"choice": asdict(kernels), "training": "; ".join(how[f] for f in sorted(families)) or
                     "transformers' forward (no SSM mixer the project owns)"}


@dataclass
class _Inputs:
    """What a recovery run reads: the two models, the plan and the data."""

    student: LoadedModel
    teacher: LoadedModel
    is_source: bool  # the teacher is the model apply pruned (not a --teacher)
    plan: Plan | None
    spec: Any  # DataSpec
    dataset: Any  # Dataset (its verification windows judge the result)
    stream: torch.Tensor  # training tokens
    stream_source: str
    span: int  # the overlap check's span length


def _load_inputs(pruned_dir: Path, teacher: str | None, settings: RecoverSettings, plan: Plan | None,
                 source: PrunedFrom | None, device: str) -> _Inputs:
    from ..calibration.data import DataSpec, load_dataset
    from ..model.resolve import load_model

    student = load_model(str(pruned_dir), device=device)
    on = str(next(student.model.parameters()).device)
    teacher_loaded = load_model(teacher or teacher_name(plan), device=on)
    check_teacher(teacher_loaded, student)
    if teacher is None and source is not None:
        check_weights(source.fingerprint, teacher_loaded, "the checkpoint was pruned from",
                      expected_name=source.name, error=SSMProfileError,
                      hint="its weights changed on disk since apply; pass --teacher")
    student.tokenizer = student.tokenizer or teacher_loaded.tokenizer
    spec = plan.data.spec() if plan is not None else DataSpec()
    if settings.seqlen is not None:
        spec = replace(spec, seqlen=settings.seqlen)
    dataset = load_dataset(student.tokenizer, spec)
    stream, stream_source = training_stream(student.tokenizer, spec, settings.data)
    if len(stream) < spec.seqlen + 1:
        raise DataError(f"the training text has {len(stream)} tokens, fewer than one window of {spec.seqlen}")
    span = check_disjoint(stream, dataset.verification, stream_source)
    return _Inputs(student, teacher_loaded, teacher is None, plan, spec, dataset, stream, stream_source, span)


def _start(where: Path, resume: bool, overwrite: bool, student: torch.nn.Module, optimizer: torch.optim.Optimizer,
           identity: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The checkpoint's state (weights and optimiser loaded) when resuming, else an empty state."""
    if resume and (where / "state.json").is_file():
        state = _load_checkpoint(where, student, optimizer, identity)
        return state, [f"resumed from step {state['step']} ({where})"]
    if resume:
        return {}, [f"--resume: no checkpoint in '{where}', started from step 0"]
    if where.exists() and not overwrite:
        raise OutputExistsError(f"'{where}' holds the checkpoint of an interrupted run; continue it with --resume, "
                                "or pass --overwrite to start over")
    return {}, []


def _measure_before(inputs: _Inputs, settings: RecoverSettings, kernels: Kernels, runner: Any,
                    identity: dict[str, Any], world: World, note: Progress) -> dict[str, Any]:
    """A fresh run's state: the teacher's verification losses and the pruned model's scores (rank 0)."""
    from ..calibration.data import batch_losses

    state: dict[str, Any] = {"step": 0, "total_steps": settings.steps, "warmup": max(1, (settings.steps or 100) // 20),
                             "curve": [], "train_seconds": 0.0, "train_cpu_seconds": 0.0, "identity": identity}
    if world.writer:
        note(0, 1, "measuring before recovery")
        verification = inputs.dataset.verification
        teacher_losses = batch_losses(inputs.teacher.model, verification, kernels=kernels)
        state["teacher_losses"] = teacher_losses.tolist()
        state["before"] = measure(inputs.student, teacher_losses, verification, kernels, runner, inputs.spec.seed)
        state["teacher_scores"] = runner.evaluate(inputs.teacher) if runner is not None else None
        state["curve"].append({"step": 0, "verification_loss": state["before"]["verification"]["loss"]})
    return state


def recover(pruned_dir: str | Path, output_dir: str | Path, teacher: str | None = None,
            settings: RecoverSettings | None = None, resume: bool = False, overwrite: bool = False,
            device: str = "auto", progress: Progress | None = None) -> RecoveryRecord:
    """Distil the pruned checkpoint in ``pruned_dir`` into ``output_dir`` (see the module docstring);
    under torchrun every process runs it, in the launcher's process group."""
    from ..base.lock import output_lock

    with World.from_env().running() as world, world.writer_holds(lambda: output_lock(output_dir)):
        # a second recover to this output is refused now, not after its training
        return _recover(world, pruned_dir, output_dir, teacher, settings, resume, overwrite, device, progress)


def _recover(world: World, pruned_dir: str | Path, output_dir: str | Path, teacher: str | None,
             settings: RecoverSettings | None, resume: bool, overwrite: bool, device: str,
             progress: Progress | None) -> RecoveryRecord:
    note = progress or (lambda done, total, label: None)
    pruned_dir, out = Path(pruned_dir).expanduser(), Path(output_dir).expanduser()
    check_recover_paths(pruned_dir, out, overwrite, teacher=teacher, data=settings.data if settings else None)
    plan, source = pruning_plan(pruned_dir)
    settings = (settings or RecoverSettings()).resolved(plan)
    settings.check()
    started = time.perf_counter()
    note(0, 1, "loading models")
    inputs = _load_inputs(pruned_dir, teacher, settings, plan, source, device)
    student, verification = inputs.student, inputs.dataset.verification
    check_batch_fits(student.model, -(-settings.batch_size // world.size), inputs.spec.seqlen, "--batch-size",
                     training=True)  # each rank trains on its share of the batch
    masks = frozen_masks(student.model, zeroed_parameters(pruned_dir))
    nonzero_before = count_parameters(student.model)["nonzero"]
    kernels, kernel_notes = _kernel_notes(student.model, next(student.model.parameters()).device)
    calls_before = mixer_calls()
    inputs.teacher.model.eval().requires_grad_(False)
    student.model.train()
    optimizer = torch.optim.AdamW(student.model.parameters(), lr=settings.lr, betas=(0.9, 0.95), weight_decay=0.0)
    record_file = pruned_dir / PRUNING_FILE
    identity = {"pruned": student.fingerprint, "teacher": inputs.teacher.fingerprint,
                "pruning_record": _digest(record_file.read_bytes()) if record_file.is_file() else None,
                "training_text": _digest(inputs.stream.cpu().contiguous().numpy().tobytes()),
                "settings": {k: v for k, v in asdict(settings).items() if k not in ("lm_eval", "lm_eval_limit")},
                "seqlen": inputs.spec.seqlen}
    where = checkpoint_dir(out)
    state, notes = _start(where, resume, overwrite, student.model, optimizer, identity)

    runner = None
    if world.writer and settings.lm_eval:
        from ..validation.check import LmEvalRunner

        runner = LmEvalRunner(limit=settings.lm_eval_limit)
    after: dict[str, Any] = {}
    try:
        with installed(student.model, kernels), installed(inputs.teacher.model, kernels):
            state = state or _measure_before(inputs, settings, kernels, runner, identity, world, note)
            state = _train(student.model, inputs.teacher.model, optimizer, masks, inputs.stream, verification,
                           settings, inputs.spec.seqlen, world, kernels, state, where, note)
            if world.writer:
                note(state["step"], state["step"], "measuring after recovery")
                teacher_losses = torch.tensor(state["teacher_losses"], dtype=torch.float64)
                after = measure(student, teacher_losses, verification, kernels, runner, inputs.spec.seed)
    finally:
        if runner is not None:
            runner.close()
    # rank 0 measured before and after; every rank returns the same record
    before, after = world.from_writer(lambda: (state["before"], after))
    record = RecoveryRecord(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        pruned=RecoveredFrom(directory=str(pruned_dir), fingerprint=identity["pruned"],
                             plan_model=plan.model.name if plan is not None else None),
        teacher=Teacher(name=inputs.teacher.source.name, location=inputs.teacher.source.location,
                        fingerprint=inputs.teacher.fingerprint, source_model=inputs.is_source),
        output=RecoveryOutput(), settings=RecoverySettings.from_dict(asdict(settings)),
        data=RecoveryData(training=inputs.stream_source, training_tokens=int(len(inputs.stream)),
                          seqlen=inputs.spec.seqlen, verification=inputs.dataset.sources.get("verification"),
                          verification_windows=int(verification.shape[0]), overlap_check_span=inputs.span),
        kernels=RecoveryKernels.from_dict({**kernel_notes, "mixer_forwards": mixer_usage(calls_before)}),
        world=RecoveryWorld(size=world.size, rank_weights=world.gather(lambda: weights_fingerprint(student.model))),
        progress=RecoveryProgress(steps_done=state["step"], total_steps=state["total_steps"],
                                  train_seconds=round(state["train_seconds"], 3),
                                  train_cpu_seconds=round(state["train_cpu_seconds"], 3),
                                  seconds=round(time.perf_counter() - started, 3)),
        curve=[CurvePoint.from_dict(p) for p in state["curve"]], before=RecoveryCheck.from_dict(before),
        after=RecoveryCheck.from_dict(after),
        sparsity=Sparsity(nonzero_before=nonzero_before, nonzero_after=count_parameters(student.model)["nonzero"],
                          frozen_entries=frozen_entries(masks)),
        notes=notes, versions={"ssm-profile": __version__, "torch": torch.__version__},
        teacher_scores=state.get("teacher_scores"))
    if world.writer:
        note(state["step"], state["step"], "saving")
        _save(student, record, pruned_dir, out, overwrite)
        shutil.rmtree(where, ignore_errors=True)
    world.barrier()
    return record


def _train(student: torch.nn.Module, teacher: torch.nn.Module, optimizer: torch.optim.Optimizer, masks,
           stream: torch.Tensor, verification: torch.Tensor, settings: RecoverSettings, seqlen: int, world: World,
           kernels: Kernels, state: dict[str, Any], where: Path, note: Progress) -> dict[str, Any]:
    """Train from ``state["step"]`` to the budget; checkpoints and the curve go into ``state``."""
    total, warmup = state["total_steps"], state["warmup"]
    step = state["step"]
    clock, cpu = time.perf_counter(), time.process_time()
    probe_started = None
    while total is None or step < total:
        if total is None and step == 1:
            probe_started = time.perf_counter()  # step 0 compiles kernels: not typical
        batch = batch_at(stream, step, settings.batch_size, seqlen, settings.seed)
        rows = rank_rows(batch, world.rank, world.size)
        lr = learning_rate(step, total or 100 * warmup, settings.lr, warmup)
        try:
            kd, lm = train_step(student, teacher, optimizer, rows, batch[:, 1:].numel(), masks, world,
                                settings.temperature, settings.lm_weight or 0.0, lr)
        except Diverged as err:  # never train on, never write non-finite weights
            raise SSMProfileError(f"training diverged at step {step + 1}: {err}; nothing was written; recover again "
                                  f"with a smaller --lr (now {settings.lr:g}) or --temperature") from None
        step += 1
        point: dict[str, Any] = {"step": step, "kd_loss": kd, "lm_loss": lm if settings.lm_weight else None,
                                 "lr": lr}
        if total is None and step == 1 + PROBE_STEPS:
            per_step = (time.perf_counter() - probe_started) / PROBE_STEPS
            total = world.from_writer(lambda: max(step, int(settings.minutes * 60 / per_step)))
            state["total_steps"] = total
        every = settings.eval_every or max(1, (total or 1) // 10)
        if world.writer and total is not None and (step % every == 0 or step == total):
            point["verification_loss"] = verification_loss(student, verification, kernels)
        state["curve"].append(point)
        state["step"] = step
        if step % settings.checkpoint_every == 0 and (total is None or step < total):
            state["train_seconds"] += time.perf_counter() - clock
            state["train_cpu_seconds"] += time.process_time() - cpu
            clock, cpu = time.perf_counter(), time.process_time()
            if world.writer:
                _save_checkpoint(where, student, optimizer, state)
            world.barrier()
        note(step, total or step + 1, f"KD loss {kd:.4f}")
    state["train_seconds"] += time.perf_counter() - clock
    state["train_cpu_seconds"] += time.process_time() - cpu
    return state


def _save(student: LoadedModel, record: RecoveryRecord, pruned_dir: Path, out: Path, overwrite: bool) -> None:
    was_training = student.model.training
    student.model.eval()
    with atomic_directory(out, overwrite=overwrite) as tmp:
        student.model.save_pretrained(tmp)
        if student.tokenizer is not None:
            student.tokenizer.save_pretrained(tmp)
        if (pruned_dir / PRUNING_FILE).is_file():  # the plan travels on: validate and report read it
            shutil.copyfile(pruned_dir / PRUNING_FILE, tmp / PRUNING_FILE)
        student._fingerprint = None
        record.output = RecoveryOutput(fingerprint=student.fingerprint,
                                       files=sorted([p.name for p in tmp.iterdir()] + [RECOVERY_FILE]))
        write_json_atomic(tmp / RECOVERY_FILE, record.to_dict())
    student.model.train(was_training)
