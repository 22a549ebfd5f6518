"""`ssm-profile apply`: prune a model as a plan says and save the checkpoint (optionally validate it)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..documents import PruningRecord

from .common import add_model_args, human_count, load_from_args
from .validate_cmd import LM_EVAL_LOG, add_validation_args, finish, print_validation, validation_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("apply", help="apply a pruning plan and save the pruned checkpoint", description=__doc__)
    p.add_argument("model", nargs="?", default=None, metavar="MODEL",
                   help="the model the plan was made for (default: where the plan says it came from)")
    p.add_argument("plan", nargs="?", default=None, metavar="PLAN", help="plan JSON written by `ssm-profile plan`")
    add_model_args(p, positional=False)
    p.add_argument("-o", "--output", required=True, help="output directory for the pruned checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--allow-edited-plan", action="store_true",
                   help="apply a plan whose actions were edited after `ssm-profile plan` wrote it (refused otherwise)")
    p.add_argument("--allow-broken-promise", action="store_true",
                   help="apply a plan whose promise broke when it was made, on its verification windows or an "
                   "--also-on text's held-out windows (refused otherwise)")
    p.add_argument("--validate", action="store_true",
                   help="also compare the pruned model with the base (writes OUT_DIR/validation.json); "
                   "validates an existing OUT_DIR of the same plan that has no validation.json yet")
    add_validation_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..pruning.apply import apply_plan
    from ..model.resolve import use_tokenizer
    from ..base.lock import output_lock
    from ..documents import check_not_edited, check_promise_kept, load_plan
    from .progress import rich_progress

    _plan_and_model(args)
    # lm-eval's messages go to a log beside the output, off the terminal
    options = validation_options(args, lm_eval_log=Path(args.output) / LM_EVAL_LOG) if args.validate else None
    plan = load_plan(args.plan)  # a bad plan fails before the model loads
    edited = check_not_edited(plan, f"plan '{args.plan}'", allow=args.allow_edited_plan)  # printed with apply's notes
    if args.model is None:
        args.model = model_of(plan)
    mode = _check_output(args, plan)
    if mode == "apply":  # a broken promise is refused before the model loads (apply_plan notes it when allowed)
        check_promise_kept(plan, f"plan '{args.plan}'", allow=args.allow_broken_promise)
    if args.validate:  # validation measures the plan's --also-on texts: a gone one is said before any work
        from ..validation.domains import check_texts_are_there

        check_texts_are_there(plan)
    with output_lock(args.output):  # a second apply to this output is refused now, not after its work
        if mode == "validate":
            return _validate_existing(args)
        loaded = use_tokenizer(load_from_args(args), args.tokenizer, args.trust_remote_code)
        with rich_progress("applying", enabled=not args.quiet) as progress:
            report = apply_plan(loaded, plan, args.output, validate=args.validate, overwrite=args.overwrite,
                                progress=progress, validate_options=options,
                                allow_broken_promise=args.allow_broken_promise)
    print_apply(report)
    if edited:
        print(f"note: {edited}")
    print(f"pruned checkpoint: {args.output}")
    if report.validation is not None:
        print_validation(report.validation)
        print(f"report: {Path(args.output) / 'validation.json'}")
    if plan.recover is not None:
        print(f"next: {recover_command(args.output, plan)}")
    if report.validation is not None:
        return finish(report.validation)
    print(f"next: ssm-profile validate {args.model} {args.output}")
    return 0


def recover_command(pruned: str, plan) -> str:
    """The `ssm-profile recover` line the plan's recover section asks for (its budget is read from the
    plan's copy in pruning.json, so the line needs no options)."""
    import shlex
    from pathlib import Path

    from ..base.io import free_path

    out = Path(pruned)
    target = free_path(out.with_name(out.name + "-recovered"))
    return shlex.join(["ssm-profile", "recover", str(out), "-o", target])


def _plan_and_model(args: argparse.Namespace) -> None:
    """``apply PLAN -o OUT`` (one positional) is the plan; the model then comes from it."""
    from ..base.errors import SSMProfileError

    if args.plan is None:
        if args.model is None:
            raise SSMProfileError("give a plan: ssm-profile apply [MODEL] PLAN -o OUT_DIR")
        args.model, args.plan = None, args.model


def model_of(plan) -> str:
    """Where the plan's model was loaded from: its directory when local, else its name."""
    return plan.source_model()


def _check_output(args: argparse.Namespace, plan) -> str:
    """Refuse, before loading the model, an output that is, holds or lies inside an input, or that exists
    (without --overwrite); 'validate' when OUT_DIR is this plan's complete but unvalidated checkpoint and
    --validate is given."""
    import sys
    from pathlib import Path

    from ..base.errors import OutputExistsError
    from ..base.outputs import Output, check_paths, source_input
    from .common import data_inputs, model_input, text_input

    out = Path(args.output).expanduser()
    inputs = [source_input(args.plan, "the plan"), model_input(args.model),
              source_input(args.tokenizer, "the --tokenizer folder"),
              *(data_inputs(plan.data.spec(), "the plan's") if plan.data is not None else ()),
              *(text_input(d.source, "the plan's --also-on text") for d in plan.domains or ()),
              *(text_input(text, "the --evaluation text") for text in getattr(args, "evaluation", None) or ())]
    check_paths([Output(out, "output", folder=True, overwrite=True if args.overwrite else None)], inputs)
    if not out.exists() or args.overwrite:
        return "apply"
    if args.validate and _unvalidated_checkpoint_of(out, plan):
        print(f"ssm-profile: note: '{out}' already holds this plan's pruned checkpoint without a validation; "
              "validating it (pass --overwrite to prune again)", file=sys.stderr)
        return "validate"
    raise OutputExistsError(f"output '{out}' already exists; choose another path or pass --overwrite")


def _unvalidated_checkpoint_of(out, plan) -> bool:
    from ..documents import PRUNING_FILE, VALIDATION_FILE, load_pruning_record
    from ..base.errors import SSMProfileError

    if (out / VALIDATION_FILE).exists() or not (out / "config.json").is_file():
        return False
    try:
        record = load_pruning_record(out / PRUNING_FILE)
    except SSMProfileError:
        return False
    return record.plan is not None and record.plan.to_dict() == plan.to_dict()


def _validate_existing(args: argparse.Namespace) -> int:
    from . import validate_cmd

    args.pruned, args.output = args.output, None  # validate's OUT_DIR; its report goes to the default place
    return validate_cmd.run(args)


def print_apply(report: PruningRecord) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..validation.comparison import relative_change
    from ..base.fmt import percent_of
    from ..pruning.summary import UNITS_HINT

    console = Console()
    table = Table(title="Plan actions")
    for col in ("#", "target", "layers", "criterion", "sparsity", "done as", "zeroed"):
        table.add_column(col, justify="right" if col in ("#", "sparsity", "zeroed") else "left")
    for a in report.actions:
        text = f"{len(a.layers)} layers" if len(a.layers) > 4 else ",".join(str(x) for x in a.layers)
        executed = a.execution + ("" if a.execution == a.requested else f" (asked {a.requested})")
        table.add_row(str(a.index), a.target, text, a.criterion, f"{a.sparsity:.0%}", executed,
                      human_count(a.elements_zeroed))
    console.print(table)
    p, before, after = report.parameters, report.analysis.before, report.analysis.after
    rows = [("parameters", p.before, p.after), ("nonzero parameters", p.nonzero_before, p.nonzero_after),
            ("FLOPs / token", before.flops_per_token, after.flops_per_token),
            ("state bytes / sequence", before.state_bytes_per_sequence, after.state_bytes_per_sequence)]
    st = Table(title="Before / after")
    for col in ("", "before", "after", "change"):
        st.add_column(col, justify="left" if not col else "right")
    for label, old, new in rows:
        st.add_row(label, f"{old:,}", f"{new:,}", percent_of(relative_change(old, new), "base", signed=True))
    console.print(st)
    if report.actions and all(old == new for label, old, new in rows if label != "nonzero parameters"):
        console.print(f"WARNING: nothing physical changed: every action was applied as zeros, so the parameter "
                      f"count, weights on disk, FLOPs/token and state are the same as before. {UNITS_HINT}",
                      style="bold yellow", markup=False)
    for note in report.notes:
        console.print(f"note: {note}", markup=False)
