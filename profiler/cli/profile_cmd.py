"""`ssm-profile profile`: saliency under every criterion and measured sensitivity, to a run directory."""

from __future__ import annotations

import argparse

from .common import add_model_args, load_from_args


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="measure saliency and sensitivity of every SSM parameter group",
                       description=__doc__)
    add_model_args(p)
    p.add_argument("-o", "--output", default=None, help="run directory to write (default: runs/<model>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")
    p.add_argument("--criteria", type=_names, default=None,
                   help="comma-separated criteria (default: all); see `ssm-profile profile --list-criteria`")
    p.add_argument("--targets", "--groups", dest="targets", type=_names, default=None,
                   help="comma-separated groups/units to sweep, e.g. in_proj,out_proj,unit:state (default: all)")
    p.add_argument("--sparsities", type=_floats, default=None, help="comma-separated levels in (0,1) (default 0.1..0.9)")
    p.add_argument("--probe-sparsity", type=float, default=0.5, help="sparsity of the per-layer sweep (default 0.5)")
    p.add_argument("--layer-criterion", default="fisher", help="criterion of the per-layer sweep (default fisher)")
    p.add_argument("--no-per-layer", action="store_true", help="skip the per-layer sweep (no heatmap)")
    p.add_argument("--calibration", default=None, help=".txt/.jsonl file or hf:NAME[:CONFIG][:SPLIT] (default: embedded)")
    p.add_argument("--evaluation", default=None, help="same forms as --calibration (default: embedded)")
    p.add_argument("--nsamples", type=int, default=32, help="calibration windows (default 32)")
    p.add_argument("--eval-samples", type=int, default=16, help="evaluation windows (default 16)")
    p.add_argument("--seqlen", type=int, default=256, help="tokens per window (default 256)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tolerance", type=float, default=0.10, help="relative perplexity increase called safe (0.10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list-criteria", action="store_true", help="list criteria and what they can score, then exit")
    p.add_argument("--no-fast-scan", action="store_true",
                   help="use transformers' reference CPU kernels and torch's linear instead of the fast "
                   "Mamba-1/Mamba-2 scans and oneDNN matmuls (results agree to float32 rounding; much slower)")
    p.add_argument("--plain-sweep", action="store_true",
                   help="evaluate every trial with a full forward pass instead of the incremental evaluator "
                   "(identical results; slower)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:

    from ..data import DataSpec
    from ..profile import ProfileSettings, profile_model
    from .progress import rich_progress

    if args.list_criteria:
        return _list_criteria(args)
    settings = ProfileSettings(probe_sparsity=args.probe_sparsity, layer_criterion=args.layer_criterion,
                               per_layer=not args.no_per_layer, batch_size=args.batch_size,
                               tolerance=args.tolerance, seed=args.seed, targets=args.targets,
                               fast_scan=not args.no_fast_scan, incremental=not args.plain_sweep)
    if args.criteria:
        settings.criteria = args.criteria
    if args.sparsities:
        settings.sparsities = args.sparsities
    settings.validate()  # fail on bad options before loading a model
    spec = DataSpec(calibration=args.calibration, evaluation=args.evaluation, nsamples=args.nsamples,
                    eval_samples=args.eval_samples, seqlen=args.seqlen, seed=args.seed)
    loaded = load_from_args(args)
    output = args.output or f"runs/{loaded.source.name.replace('/', '--')}"
    with rich_progress("profiling", enabled=not args.quiet) as progress:
        result = profile_model(loaded, spec, settings, run_dir=output, resume=args.resume, progress=progress)
    print_summary(result)
    print(f"run directory: {output}  (next: ssm-profile plan {output} -o plan.json; ssm-profile report {output})")
    return 0


def _list_criteria(args: argparse.Namespace) -> int:
    from ..criteria import applicability, available

    loaded = load_from_args(args, with_tokenizer=False)
    rows = applicability(loaded.model, available())
    from rich.console import Console
    from rich.table import Table

    table = Table(title="What each criterion can score (first SSM layer)")
    for col in ("criterion", "target", "applies", "why not"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["criterion"], row.get("target", row.get("group", "")), "yes" if row["applies"] else "no",
                      row.get("reason", "") or "")
    Console().print(table)
    return 0


def print_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"dense evaluation loss {result.dense_loss:.4f} (perplexity {result.dense_perplexity:.2f}); "
                  f"{len(result.trials)} trials in {result.meta.get('timings', {}).get('total', 0):.0f} s")
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
            f"{name} ρ={a['spearman']:.2f} (n={a['n']})" for name, a in agreement.items()))
    ft = Table(title="Literature findings on this model")
    for col in ("finding", "holds", "numbers"):
        ft.add_column(col)
    for f in result.findings():
        ft.add_row(f.claim, {True: "holds", False: "does not hold", None: "not measured"}[f.holds], f.detail)
    console.print(ft)
