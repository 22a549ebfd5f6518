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
    p.add_argument("--overwrite", action="store_true", help="replace existing --json / --markdown files")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..bench import markdown, render, run_bench
    from ..io import check_output, write_text_atomic
    from ..runtime import check_threads

    check_threads(args.threads)  # and the outputs, before minutes of measuring
    for path, what in ((args.json_path, "--json file"), (args.markdown, "--markdown file")):
        if path:
            check_output(path, overwrite=args.overwrite, what=what)
    if args.json_path and args.markdown and Path(args.json_path).resolve() == Path(args.markdown).resolve():
        from ..errors import OutputExistsError

        raise OutputExistsError("--json and --markdown name the same file; give two paths")
    console = Console(stderr=True)

    def note(what: str) -> None:
        if not args.quiet:
            console.print(f"[dim]bench: {what}…[/dim]")

    report = run_bench(threads=args.threads, quick=args.quick, reference=args.reference_profile, note=note)
    render(report)
    if args.json_path:
        path = write_text_atomic(args.json_path, json.dumps(report, indent=2, default=str) + "\n")
        print(f"results written to {path}")
    if args.markdown:
        path = write_text_atomic(args.markdown, markdown(report))
        print(f"tables written to {path}")
    return 0
