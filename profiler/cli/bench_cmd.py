"""`ssm-profile bench`: the fast kernels and the incremental sweep against their baselines, in one run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="benchmark the fast scans and the incremental sweep against their baselines",
        description=__doc__ + " Measures one Mamba-1 layer at mamba-130m width (forward 1,024 tokens: reference, "
        "fast, dense floor; forward+backward 512 tokens), the default profile of each embedded model (plain sweep vs "
        "incremental) and tokens/s dense vs structurally pruned. The full run takes several minutes.")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for every measurement (default 1)")
    p.add_argument("--json", dest="json_path", default=None, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--markdown", default=None, metavar="FILE", help="also write the tables as Markdown")
    p.add_argument("--quick", action="store_true",
                   help="shrink everything (tiny data and layers) for a smoke test; the numbers mean nothing")
    p.add_argument("--reference-profile", action="store_true",
                   help="also run each default profile the way the profiler did before the fast kernels and the "
                   "incremental sweep (plain sweep, transformers' kernels, torch's linear, whole-batch logits); "
                   "adds ~10 minutes")
    p.add_argument("--scaling", action="store_true",
                   help="instead: the profile's cost at the mamba-130m and mamba-370m shapes (mamba-1.4b on a CUDA GPU) "
                   "with random weights: calibration, seconds per trial, trial counts, total, peak memory "
                   "(a few trials timed and the rest extrapolated; a few minutes)")
    p.add_argument("--scaling-full", action="store_true", help="with --scaling: run every trial and all calibration "
                   "windows instead of extrapolating (hours on a CPU)")
    p.add_argument("--scaling-shapes", type=_shapes, default=None, metavar="NAME:LAYERS:HIDDEN[:VOCAB],...",
                   help="with --scaling: these shapes instead of the Mamba ones (e.g. small:4:256:4096)")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json / --markdown files")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..bench.bench import machine_info, markdown, render, run_bench
    from ..base.io import write_text_atomic
    from ..base.outputs import Output, check_paths
    from ..base.runtime import check_threads

    check_threads(args.threads)  # and the outputs (writable too), before minutes of measuring
    check_paths([Output(Path(path), what, overwrite=args.overwrite)
                 for path, what in ((args.json_path, "--json file"), (args.markdown, "--markdown file")) if path])
    console = Console(stderr=True)

    def note(what: str) -> None:
        if not args.quiet:
            console.print(f"[dim]bench: {what}…[/dim]")

    if args.scaling or args.scaling_full or args.scaling_shapes:
        from ..bench.scaling import bench_scaling, render_scaling

        entries = bench_scaling(args.scaling_shapes, threads=args.threads, full=args.scaling_full, quick=args.quick,
                                note=note)
        report = {"machine": machine_info(), "threads": args.threads, "scaling": entries}
        render_scaling(entries)
    else:
        report = run_bench(threads=args.threads, quick=args.quick, reference=args.reference_profile, note=note)
        render(report)
    if args.json_path:
        path = write_text_atomic(args.json_path, json.dumps(report, indent=2, default=str) + "\n")
        print(f"results written to {path}")
    if args.markdown:
        path = write_text_atomic(args.markdown, markdown(report) if "scaling" not in report else
                                 _scaling_markdown(report["scaling"]))
        print(f"tables written to {path}")
    return 0


def _shapes(text: str):
    from ..bench.scaling import parse_shape

    try:
        shapes = [parse_shape(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not shapes:
        raise argparse.ArgumentTypeError(f"expected NAME:LAYERS:HIDDEN[:VOCAB],... (e.g. small:4:256:4096), "
                                         f"got {text!r}")
    return shapes


def _scaling_markdown(entries) -> str:
    keys = ("params", "calibration_seconds", "trial_seconds", "trials_adaptive", "trials_grid", "profile_seconds",
            "extrapolated", "peak_rss_mib")
    lines = ["| shape | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += ["| " + e["shape"]["name"] + " | " + " | ".join(str(e[k]) for k in keys) + " |" for e in entries]
    return "\n".join(lines) + "\n"
