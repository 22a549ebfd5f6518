"""`ssm-profile bench --scaling`: how a profile's cost grows with the model, on random-weight models
at real Mamba shapes (mamba-130m, mamba-370m; mamba-1.4b only on a CUDA GPU).

Per shape, in a fresh process (so ``peak_rss_mib`` is that shape's). With ``full``, the default
profile (:func:`ssm_profile.profiling.profile.profile_model`, adaptive sweep) runs for real and every number
is measured (``extrapolated: false``). Without it: the calibration statistics of every default
criterion on ``CALIBRATION_WINDOWS`` windows, scaled to the default count (statistics are sums over
windows, so the cost is linear in them), the scoring and trial planning, the incremental
evaluator's activation cache, and a few timed full trials; ``trials_adaptive`` is the adaptive
schedule's own expectation (:meth:`AdaptiveSchedule.expected_total` before any trial) and
``profile_seconds`` = calibration + scoring + caching + ``trials_adaptive`` × ``trial_seconds``,
flagged ``extrapolated: true`` (an overestimate: early stopping makes many trials shorter). The data are random token windows of the default profile's size; the weights are random,
so the losses mean nothing, only the seconds and bytes do.
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

CALIBRATION_WINDOWS = 2  # windows the statistics are timed on without ``full``
TIMED_TRIALS = 3


@dataclass(frozen=True)
class ModelShape:
    name: str
    layers: int
    hidden: int
    state: int = 16
    expand: int = 2
    vocab: int = 50280  # the real GPT-NeoX vocabulary of the state-spaces/mamba-* models
    cuda_only: bool = False


SHAPES = (ModelShape("mamba-130m", 24, 768), ModelShape("mamba-370m", 48, 1024),
          ModelShape("mamba-1.4b", 48, 2048, cuda_only=True))


def parse_shape(text: str) -> ModelShape:
    """'NAME:LAYERS:HIDDEN[:VOCAB]' (e.g. tiny:2:64:512) -> a shape, for tests and quick looks
    (ValueError with a one-line reason otherwise)."""
    parts = text.split(":")
    try:
        numbers = [int(p) for p in parts[1:]]
        if len(numbers) not in (2, 3) or min(numbers) < 1:
            raise ValueError
    except ValueError:
        raise ValueError(f"shape '{text}' is not NAME:LAYERS:HIDDEN[:VOCAB]; e.g. small:4:256:4096") from None
    shape = ModelShape(parts[0], *numbers[:2], **({"vocab": numbers[2]} if len(numbers) == 3 else {}))
    _check_fits(shape, text)
    return shape


def _check_fits(shape: ModelShape, text: str) -> None:
    """ValueError when the shape's weights alone exceed the memory available (a huge shape was a traceback)."""
    from ..base.runtime import available_memory
    from ..model.fits import least_parameters

    params = least_parameters({"num_hidden_layers": shape.layers, "hidden_size": shape.hidden,
                               "expand": shape.expand, "vocab_size": shape.vocab})
    available = available_memory()
    if available is not None and params * 4 > available:
        raise ValueError(f"shape '{text}' has at least {params:,} parameters ({params * 4 / 2**30:.1f} GiB in "
                         "float32), "
                         f"more than the {available / 2**30:.1f} GiB of memory available; choose a smaller shape")


def _random_model(shape: ModelShape, device: torch.device) -> torch.nn.Module:
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    config = MambaConfig(hidden_size=shape.hidden, num_hidden_layers=shape.layers, state_size=shape.state,
                         expand=shape.expand, vocab_size=shape.vocab)
    with torch.device(device):
        return MambaForCausalLM(config).eval()


def measure_shape(shape: ModelShape, threads: int = 1, full: bool = False, quick: bool = False) -> dict[str, Any]:
    """The measurements of the module docstring for one shape (run it in a fresh process);
    ``quick``: tiny data windows for a smoke test (the numbers mean nothing)."""
    from ..calibration.data import DataSpec, Dataset
    from ..base.runtime import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = _random_model(shape, device)
    spec = DataSpec(nsamples=4, eval_samples=4, seqlen=32) if quick else DataSpec()
    gen = torch.Generator().manual_seed(0)
    data = Dataset(calibration=torch.randint(0, shape.vocab, (spec.nsamples, spec.seqlen), generator=gen),
                   evaluation=torch.randint(0, shape.vocab, (spec.eval_samples, spec.seqlen), generator=gen),
                   spec=spec, sources={"calibration": "random tokens", "evaluation": "random tokens"})
    entry = _measure_profile(shape, model, data) if full else _measure_parts(model, data)
    entry.update({"shape": asdict(shape), "device": device.type, "threads": threads,
                  "params": sum(p.numel() for p in model.parameters()), "extrapolated": not full,
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
    if device.type == "cuda":
        entry["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return entry


def _measure_profile(shape: ModelShape, model: torch.nn.Module, data) -> dict[str, Any]:
    """The default profile, run and timed end to end."""
    from ..profiling.profile import profile_model
    from ..model.resolve import LoadedModel, ModelSource

    loaded = LoadedModel(model=model, tokenizer=None, source=ModelSource(shape.name, "random", "memory"))
    start = time.perf_counter()
    result = profile_model(loaded, data)
    total = time.perf_counter() - start
    timings, sweep = result.record.timings, result.record.sweep
    return {"calibration_seconds": round(timings["calibration"], 3), "calibration_windows": data.spec.nsamples,
            "calibration_windows_measured": data.spec.nsamples, "scoring_seconds": round(timings["scoring"], 3),
            "caching_seconds": round(timings.get("caching", 0.0), 3),
            "dense_eval_seconds": round(timings["dense_eval"], 3),
            "trial_seconds": round(timings["trials"] / max(1, sweep.trials), 4), "trials_timed": sweep.trials,
            "trials_stopped_early": sweep.stopped, "trials_adaptive": sweep.trials,
            "trials_grid": result.record.trials_grid, "profile_seconds": round(total, 3),
            "statistics_offloaded": False}


def _measure_parts(model: torch.nn.Module, data) -> dict[str, Any]:
    """Calibration on a few windows, scoring, caching and a few timed trials (see the module docstring)."""
    from ..model.arch import find_mixers
    from ..calibration.data import batch_losses
    from ..profiling.incremental import IncrementalEvaluator
    from ..mixers.choice import Kernels, model_device
    from ..criteria.masks import targets_for
    from ..profiling.record import ProfileSettings
    from ..profiling.profile import make_schedule
    from ..profiling.recipe import RunRecipe, needs_of
    from ..profiling.sensitivity import plan_trials, run_trial

    settings, spec, evaluation = ProfileSettings(), data.spec, data.evaluation
    windows = min(CALIBRATION_WINDOWS, spec.nsamples)
    recipe = RunRecipe(data=spec, batch_size=settings.batch_size, seed=settings.seed,
                       kernels=Kernels.for_run(settings.fast_scan, model_device(model)))
    criteria = list(dict.fromkeys([*settings.criteria, settings.layer_criterion]))
    seconds: dict[str, float] = {}
    with recipe.installed(model):
        dense = _timed(seconds, "dense_eval", lambda: batch_losses(model, evaluation, settings.batch_size))
        stats = _timed(seconds, "calibration",
                       lambda: recipe.statistics(model, data.calibration[:windows], needs_of(criteria)))
        seconds["calibration"] *= spec.nsamples / windows
        scorer = recipe.scorer(model, stats, criteria)
        mixers = find_mixers(model)
        specs, _skipped = _timed(seconds, "scoring", lambda: plan_trials(
            scorer, mixers, targets_for(mixers), settings.criteria, settings.sparsities, settings.per_layer,
            settings.probe_sparsity, settings.layer_criterion))
        trials_adaptive = make_schedule(settings, specs, scorer, mixers, dense.tolist()).expected_total({})
        evaluate = _timed(seconds, "caching", lambda: IncrementalEvaluator(
            model, evaluation, settings.batch_size).prepare(dense))
        timed = specs[:: max(1, len(specs) // TIMED_TRIALS)][:TIMED_TRIALS]
        dense_loss = float(dense.mean())
        _timed(seconds, "trials", lambda: [run_trial(model, s, scorer, mixers, evaluation, dense_loss,
                                                     settings.structure, settings.batch_size, evaluate=evaluate)
                                           for s in timed])
    trial_seconds = seconds["trials"] / max(1, len(timed))
    fixed = seconds["calibration"] + seconds["scoring"] + seconds["caching"] + seconds["dense_eval"]
    return {"calibration_seconds": round(seconds["calibration"], 3), "calibration_windows": spec.nsamples,
            "calibration_windows_measured": windows, "scoring_seconds": round(seconds["scoring"], 3),
            "caching_seconds": round(seconds["caching"], 3), "dense_eval_seconds": round(seconds["dense_eval"], 3),
            "trial_seconds": round(trial_seconds, 4), "trials_timed": len(timed),
            "trials_adaptive": trials_adaptive, "trials_grid": len(specs),
            "profile_seconds": round(fixed + trials_adaptive * trial_seconds, 3),
            "statistics_offloaded": not isinstance(stats.hessians, dict)}


def _timed(seconds: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    out = fn()
    seconds[name] = time.perf_counter() - start
    return out


def bench_scaling(shapes: list[ModelShape] | None = None, threads: int = 1, full: bool = False,
                  quick: bool = False, isolate: bool = True,
                  note: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One :func:`measure_shape` entry per shape (each in a fresh process unless ``isolate`` is off);
    by default :data:`SHAPES`, the CUDA-only ones only where a CUDA GPU is present."""
    from .bench import isolated

    if shapes is None:
        shapes = [s for s in SHAPES if not s.cuda_only or torch.cuda.is_available()]
    out = []
    for shape in shapes:
        if note:
            note(f"scaling: {shape.name} ({shape.layers} layers, hidden {shape.hidden})")
        args = (shape, threads, full, quick)
        out.append(isolated(measure_shape, *args) if isolate else measure_shape(*args))
    return out


def render_scaling(entries: list[dict[str, Any]], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..base.fmt import human_count

    table = Table(title="Profile cost by model shape (random weights; ~ = extrapolated from timed trials)")
    for col in ("shape", "params", "calibration s", "s / trial", "trials (default / grid)", "profile s",
                "peak RSS MiB"):
        table.add_column(col, justify="left" if col == "shape" else "right")
    for e in entries:
        mark = "~" if e["extrapolated"] else ""
        table.add_row(e["shape"]["name"], human_count(e["params"]), f"{e['calibration_seconds']:.1f}",
                      f"{e['trial_seconds']:.2f}", f"{e['trials_adaptive']} / {e['trials_grid']}",
                      f"{mark}{e['profile_seconds']:.0f}", f"{e['peak_rss_mib']:.0f}")
    (console or Console()).print(table)
