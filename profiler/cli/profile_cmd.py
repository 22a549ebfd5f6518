"""`ssm-profile profile`: saliency under every criterion and measured sensitivity, to a run directory."""

from __future__ import annotations

import argparse

from ..base.fmt import agreement_text
from .common import add_model_args, load_from_args
from .options import at_least, check_threads, duration, fraction, names, proportion, seed, sparsity_list


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="measure saliency and sensitivity of every SSM parameter group",
                       description=__doc__)
    add_model_args(p)
    p.add_argument("-o", "--output", default=None, help="run directory to write (default: runs/<model>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the profile run in --output (the old run stays until the new one is complete)")
    p.add_argument("--criteria", type=names, default=None,
                   help="comma-separated criteria (default: all); see `ssm-profile profile --list-criteria`")
    p.add_argument("--targets", "--groups", dest="targets", type=names, default=None,
                   help="comma-separated groups/units to sweep, e.g. in_proj,out_proj,unit:state (default: all)")
    p.add_argument("--sparsities", type=sparsity_list, default=None,
                   help="comma-separated levels in (0,1) (default 0.1..0.9)")
    p.add_argument("--sweep", default="adaptive",
                   help="adaptive (default): screen every criterion on the first windows and complete the leader, "
                   "then bisect each target's curve with it, layer blocks refined where they differ, trials far outside tolerance stopped early; "
                   "grid: every target x criterion x sparsity and every layer")
    p.add_argument("--budget", type=duration, default=None, metavar="TIME",
                   help="bound the whole adaptive run, e.g. 30s, 10m, 1h; spent where uncertainty is largest")
    p.add_argument("--probe-sparsity", type=fraction, default=0.5, help="sparsity of the per-layer sweep (default 0.5)")
    p.add_argument("--layer-criterion", default="fisher", help="criterion of the per-layer sweep (default fisher)")
    p.add_argument("--no-per-layer", action="store_true", help="skip the per-layer sweep (no heatmap)")
    p.add_argument("--calibration", default=None, help=".txt/.jsonl file or hf:NAME[:CONFIG][:SPLIT] (default: embedded)")
    p.add_argument("--evaluation", default=None, help="same forms as --calibration (default: embedded)")
    p.add_argument("--nsamples", type=at_least(1), default=32, help="calibration windows (default 32)")
    p.add_argument("--eval-samples", type=at_least(1), default=16, help="evaluation windows (default 16)")
    p.add_argument("--seqlen", type=at_least(2, " (a window needs a token and the one it predicts)"), default=256, help="tokens per window (default 256)")
    p.add_argument("--batch-size", type=at_least(1), default=8)
    p.add_argument("--tolerance", type=proportion(0.1), default=0.10,
                   help="relative perplexity increase called safe (0.10 or 10%%)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the data windows and random criteria (0 to 2**32-1)")
    p.add_argument("--list-criteria", action="store_true", help="list criteria and what they can score, then exit")
    p.add_argument("--no-fast-scan", action="store_true",
                   help="use transformers' reference CPU kernels and torch's linear instead of the fast "
                   "Mamba-1/Mamba-2 scans and oneDNN matmuls (results agree to float32 rounding; much slower)")
    p.add_argument("--plain-sweep", action="store_true",
                   help="evaluate every trial with a full forward pass instead of the incremental evaluator "
                   "(identical results; slower)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--tokenizer", default=None, metavar="PATH|embedded",
                   help="tokenizer folder to use instead of the model's own (embedded: the shipped one)")
    p.add_argument("--force", action="store_true",
                   help="run even when the up-front memory or time estimate exceeds the available memory "
                   "or 24 hours")
    p.set_defaults(handler=run)


def _check_disjoint_texts(calibration: str | None, evaluation: str | None) -> None:
    """The same text named for calibration and evaluation was split silently: calibration and the
    search windows are disjoint roles, so naming one text for both is refused with what to do instead."""
    import os

    from ..base.errors import DataError

    if calibration is None or evaluation is None:
        return
    same = calibration == evaluation or (os.path.exists(calibration) and os.path.exists(evaluation)
                                         and os.path.samefile(calibration, evaluation))
    if same:
        raise DataError(f"--calibration and --evaluation name the same text '{calibration}', but calibration and "
                        "evaluation windows must come from disjoint text; pass another --evaluation, or give "
                        "--calibration alone (its last 20% then becomes the evaluation text)")


def run(args: argparse.Namespace) -> int:
    if args.list_criteria:  # before the imports a profile needs
        return _list_criteria(args)
    from pathlib import Path

    from ..calibration.data import DataSpec
    from ..profiling.distributed import World
    from ..base.errors import SSMProfileError
    from ..profiling.record import ProfileSettings
    from ..profiling.profile import check_run_dir
    from ..model.resolve import check_device, locate, use_tokenizer

    check_threads(args.threads)
    if args.resume and args.overwrite:
        raise SSMProfileError("--resume continues the run in --output and --overwrite replaces it; pass one of them")
    settings = ProfileSettings(probe_sparsity=args.probe_sparsity, layer_criterion=args.layer_criterion,
                               per_layer=not args.no_per_layer, batch_size=args.batch_size,
                               tolerance=args.tolerance, seed=args.seed, targets=args.targets,
                               fast_scan=not args.no_fast_scan, incremental=not args.plain_sweep,
                               sweep=args.sweep, budget=args.budget)
    if args.criteria:
        settings.criteria = args.criteria
    if args.sparsities:
        settings.sparsities = args.sparsities
    settings.validate()  # fail on bad options before loading a model
    _check_disjoint_texts(args.calibration, args.evaluation)
    spec = DataSpec(calibration=args.calibration, evaluation=args.evaluation, nsamples=args.nsamples,
                    eval_samples=args.eval_samples, seqlen=args.seqlen, seed=args.seed)
    world = World.from_env()  # launched by torchrun / accelerate launch: one of several ranks
    args.device = world.device(args.device)
    args.quiet = args.quiet or not world.writer
    check_device(args.device)
    output = args.output or f"runs/{locate(args.model).name.replace('/', '--')}"
    if world.writer:
        _check_paths(args, Path(output))
    with world.running(), world.writer_lock(output):  # a second writer is refused now, not after loading a model
        replace = args.overwrite and (Path(output) / "run.json").exists()  # (an interrupted swap settled by the lock)
        args.interrupt_hint = (_rerun_hint(args, output, replace) if world.writer
                               else f"rank {world.rank} stopped (rank 0 says how to continue)")
        world.from_writer(lambda: check_run_dir(Path(output), resume=args.resume, overwrite=args.overwrite))
        loaded = use_tokenizer(load_from_args(args), args.tokenizer, args.trust_remote_code)
        _check_memory(loaded, spec, settings, args.force)
        dataset = _load_data(loaded, spec)
        _check_time(loaded, dataset, settings, args)
        result = _profile_into(loaded, dataset, settings, Path(output), args, replace, world)
    if not world.writer:
        return 0
    print_summary(result)
    from ..base.io import free_path

    print(f"run directory: {output}  (next: ssm-profile plan {output} -o {free_path('plan.json')}; "
          f"ssm-profile report {output})")
    return 0


def _check_paths(args: argparse.Namespace, output) -> None:
    """The run directory apart from what profile reads (model, tokenizer, texts): --overwrite deletes the
    old run, and whatever lies in it; writable before a model loads."""
    from ..base.outputs import Output, check_paths, source_input
    from .common import model_input, text_input

    check_paths([Output(output, "run directory", folder=True, overwrite=True if args.overwrite else None)],
                [model_input(args.model), source_input(args.tokenizer, "the --tokenizer folder"),
                 text_input(args.calibration, "the --calibration text"),
                 text_input(args.evaluation, "the --evaluation text")])


def _profile_into(loaded, dataset, settings, output, args: argparse.Namespace, replace: bool, world):
    """Profile into ``output``; with ``replace``, into a sibling that takes the old run's place only
    once complete (an interrupted --overwrite leaves the old run as it was). Ranks other than 0 never
    touch the run directory, so they pass ``output`` as it is."""
    from ..base.io import atomic_directory
    from ..profiling.profile import profile_model
    from .progress import rich_progress

    with rich_progress("profiling", enabled=not args.quiet) as progress:
        if not replace or not world.writer:
            return profile_model(loaded, dataset, settings, run_dir=output, resume=args.resume,
                                 progress=progress, world=world)
        with atomic_directory(output, overwrite=True) as fresh:
            return profile_model(loaded, dataset, settings, run_dir=fresh, progress=progress, world=world)


def _rerun_hint(args: argparse.Namespace, output: str, replace: bool) -> str:
    """The command that continues this profile after Ctrl-C: the user's own options, with -o and
    --resume (or, for an interrupted --overwrite, which leaves the old run, the same command again)."""
    import shlex

    words = list(getattr(args, "argv", None) or ["profile"])
    if not replace:
        words = [w for w in words if w != "--overwrite"]
        if not args.output:
            words += ["-o", output]
        if not args.resume:
            words.append("--resume")
        return "continue with: " + shlex.join(["ssm-profile", *words])
    return "the old run is unchanged; start again with: " + shlex.join(["ssm-profile", *words])


QUIET_NOTE_S = 600  # with --quiet, the estimate is printed from this duration on


def _check_time(loaded, dataset, settings, args: argparse.Namespace) -> None:
    import sys

    from ..profiling.estimate import check_time, duration_text, estimate_profile_seconds
    from ..profiling.recipe import RunRecipe
    from ..mixers.choice import Kernels

    from ..mixers import describe, snapshot, usage

    recipe = RunRecipe(data=dataset.spec, batch_size=settings.batch_size, seed=settings.seed,
                       kernels=Kernels.for_run(settings.fast_scan))
    before = snapshot()
    seconds = estimate_profile_seconds(recipe, loaded.model, dataset, settings)
    check_time(seconds, args.force)
    if not args.quiet or seconds >= QUIET_NOTE_S:  # a long run is never silent
        print(f"ssm-profile: note: this profile should take about {duration_text(seconds)}", file=sys.stderr)
    if not args.quiet:  # what the estimate's evaluations actually ran, counted call by call
        print(f"ssm-profile: note: mixers run {describe(usage(before), calls=False)}", file=sys.stderr)


def _check_memory(loaded, spec, settings, force: bool) -> None:
    from ..profiling.estimate import check_memory
    from ..profiling.incremental import DEFAULT_CACHE_BYTES
    from ..profiling.recipe import needs_of

    check_memory(loaded.model, force, nsamples=spec.nsamples, eval_samples=spec.eval_samples, seqlen=spec.seqlen,
                 batch_size=settings.batch_size, needs=needs_of([*settings.criteria, settings.layer_criterion]),
                 cache_bytes=DEFAULT_CACHE_BYTES if settings.incremental else 0)


def _load_data(loaded, spec):
    """Tokenised windows; says so when the evaluation text holds fewer windows than asked for, or a text
    was longer than the token cap."""
    import sys

    from ..calibration.data import load_dataset

    dataset = load_dataset(loaded.tokenizer, spec)
    for note in dataset.notes:  # a text past the token cap (also in run.json's data.notes)
        print(f"ssm-profile: note: {note}", file=sys.stderr)
    got = int(dataset.evaluation.shape[0])
    if got < spec.eval_samples:
        print(f"ssm-profile: note: the evaluation text holds {got} windows of {spec.seqlen} tokens; "
              f"using {got}, not --eval-samples {spec.eval_samples}", file=sys.stderr)
    return dataset


def _list_criteria(args: argparse.Namespace) -> int:
    from ..base.runtime import quiet_libraries
    from ..criteria import applicability, available
    from ..model.resolve import load_skeleton

    quiet_libraries()
    model = load_skeleton(args.model, revision=args.revision, trust_remote_code=args.trust_remote_code)
    rows = applicability(model, available())  # from the architecture alone: no weights are read
    from rich.console import Console
    from rich.table import Table

    table = Table(title="What each criterion can score (first SSM layer)")
    for col in ("criterion", "target", "applies", "why not"):
        table.add_column(col)
    for row in rows:
        target = row.get("group") or f"unit:{row.get('unit')}"  # a unit row has no group: name its target
        table.add_row(row["criterion"], target, "yes" if row["applies"] else "no", row.get("reason", "") or "")
    Console().print(table)
    return 0


def print_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"dense evaluation loss {result.dense_loss:.4f} (perplexity {result.dense_perplexity:.2f}); "
                  f"{len(result.trials)} trials in {result.record.timings.get('total', 0):.0f} s")
    table = Table(title="Sensitivity ranking (most sensitive first; best criterion per target)")
    for col in ("#", "target", "best criterion", "AUC ΔL", "95% CI", f"safe sparsity (≤{result.tolerance:.0%} ppl)",
                "ΔL @50%"):
        table.add_column(col, justify="right" if col not in ("target", "best criterion") else "left")
    for r in result.ranking():
        table.add_row(str(r.rank), r.target, r.best_criterion, f"{r.auc:.4f}", f"{r.auc_ci[0]:.4f}..{r.auc_ci[1]:.4f}",
                      f"{r.max_safe_sparsity:.0%}", "" if r.delta_at_50 is None else f"{r.delta_at_50:.4f}")
    console.print(table)
    agreement = result.prediction_agreement()
    if agreement:
        console.print("predicted vs measured ΔL (Spearman over the sweep): " + ", ".join(
            agreement_text(name, a) for name, a in agreement.items()))
    ft = Table(title="Literature findings on this model")
    for col in ("finding", "verdict", "windows", "numbers (95% paired t intervals)"):
        ft.add_column(col)
    for f in result.findings():
        ft.add_row(f.claim, f.verdict, f.windows_text, f.detail)
    console.print(ft)
