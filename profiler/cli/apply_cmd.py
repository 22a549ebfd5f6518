"""`ssm-profile apply`: prune a model as a plan says and save the checkpoint (optionally validate it)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..documents import PruningRecord

from .common import add_model_args, human_count, load_from_args
from .validate_cmd import add_validation_args, finish, print_validation, validation_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("apply", help="apply a pruning plan and save the pruned checkpoint", description=__doc__)
    add_model_args(p, required=True)
    p.add_argument("plan", metavar="PLAN", help="plan JSON written by `ssm-profile plan`")
    p.add_argument("-o", "--output", required=True, help="output directory for the pruned checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--validate", action="store_true",
                   help="also compare the pruned model with the base (writes OUT_DIR/validation.json)")
    add_validation_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path


    from ..apply import apply_plan
    from ..resolve import use_tokenizer
    from ..documents import load_plan
    from ..errors import OutputExistsError
    from .progress import rich_progress

    options = validation_options(args) if args.validate else None
    plan = load_plan(args.plan)  # a bad plan fails before the model loads
    if Path(args.output).exists() and not args.overwrite:
        raise OutputExistsError(f"output '{args.output}' already exists; choose another path or pass --overwrite")
    loaded = use_tokenizer(load_from_args(args), args.tokenizer, args.trust_remote_code)
    with rich_progress("applying", enabled=not args.quiet) as progress:
        report = apply_plan(loaded, plan, args.output, validate=args.validate, overwrite=args.overwrite,
                            progress=progress, validate_options=options)
    print_apply(report)
    print(f"pruned checkpoint: {args.output}")
    if report.validation is not None:
        print_validation(report.validation)
        print(f"report: {Path(args.output) / 'validation.json'}")
        return finish(report.validation)
    print(f"next: ssm-profile validate {args.model} {args.output}")
    return 0


def print_apply(report: PruningRecord) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="Plan actions")
    for col in ("#", "target", "layers", "criterion", "sparsity", "done as", "zeroed"):
        table.add_column(col, justify="right" if col in ("#", "sparsity", "zeroed") else "left")
    for a in report.actions:
        layers = a["layers"] or []
        text = f"{len(layers)} layers" if len(layers) > 4 else ",".join(str(x) for x in layers)
        executed = a["execution"] + ("" if a["execution"] == a["requested"] else f" (asked {a['requested']})")
        table.add_row(str(a["index"]), a["target"], text, str(a["criterion"]),
                      f"{a['sparsity']:.0%}" if isinstance(a["sparsity"], (int, float)) else "",
                      executed, human_count(a["elements_zeroed"]))
    console.print(table)
    p, an = report.parameters, report.analysis
    st = Table(title="Before / after")
    for col in ("", "before", "after"):
        st.add_column(col, justify="left" if not col else "right")
    st.add_row("parameters", f"{p['before']:,}", f"{p['after']:,}")
    st.add_row("nonzero parameters", f"{p['nonzero_before']:,}", f"{p['nonzero_after']:,}")
    st.add_row("FLOPs / token", f"{an['before']['flops_per_token']:,}", f"{an['after']['flops_per_token']:,}")
    st.add_row("state bytes / sequence", f"{an['before']['state_bytes_per_sequence']:,}",
               f"{an['after']['state_bytes_per_sequence']:,}")
    console.print(st)
    for note in report.notes:
        console.print(f"note: {note}")
