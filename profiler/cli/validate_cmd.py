"""`ssm-profile validate`: compare a pruned checkpoint with its base (perplexity, lm-eval, size, speed)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from ..documents import LM_EVAL_LOG  # noqa: F401  (re-exported for apply)
from .common import add_model_args, load_from_args
from .options import proportion

if TYPE_CHECKING:
    from ..documents import ValidationReport
    from ..validation.check import ValidationOptions


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _limit(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of items (e.g. 20) or a fraction (0.2), got '{text}'") \
            from None
    if value <= 0:
        raise argparse.ArgumentTypeError("--limit must be positive")
    return int(value) if value >= 1 else value


def add_validation_args(p: argparse.ArgumentParser) -> None:
    """Options shared by `validate` and `apply --validate`."""
    p.add_argument("--tasks", type=_names, default=[],
                   help="extra standard lm-eval tasks, comma-separated (e.g. hellaswag,arc_easy); their datasets "
                   "must be reachable or cached. The shipped offline tasks (ssm_next_verse, ssm_heldout_ppl) "
                   "always run unless --no-builtin-tasks")
    p.add_argument("--no-builtin-tasks", action="store_true", help="skip the shipped lm-eval tasks")
    p.add_argument("--no-lm-eval", action="store_true", help="run no lm-eval task at all")
    p.add_argument("--limit", type=_limit, default=None, help="items per lm-eval task (number or fraction; default all)")
    p.add_argument("--max-ppl-increase", type=proportion(0.1, allow_zero=True), default=None,
                   help="allowed relative perplexity increase, e.g. 0.1 or 10%% (default: the plan's objective)")
    p.add_argument("--speed-batch", type=int, nargs=2, default=(1, 128), metavar=("BATCH", "SEQLEN"),
                   help="fixed batch of the latency measurement (default 1 128)")
    p.add_argument("--speed-repeats", type=int, default=5, help="timed forwards per model (median; default 5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--evaluation", action="append", default=[], metavar="SOURCE",
                   help="also measure on this text (.txt, .jsonl or hf:NAME...; repeatable), e.g. another domain; "
                   "the plan's held-out verification windows are always measured and decide the exit code")
    p.add_argument("--tokenizer", default=None, metavar="PATH|embedded",
                   help="tokenizer folder to use instead of the model's own (embedded: the shipped one)")


def validation_options(args: argparse.Namespace, lm_eval_log: Path | None = None) -> ValidationOptions:
    from ..tasks import BUILTIN_TASKS
    from ..validation.check import ValidationOptions

    if args.speed_repeats < 1 or min(args.speed_batch) < 1:
        from ..base.errors import SSMProfileError

        raise SSMProfileError("--speed-batch and --speed-repeats must be positive")
    builtin = () if (args.no_builtin_tasks or args.no_lm_eval) else BUILTIN_TASKS
    extra = () if args.no_lm_eval else tuple(args.tasks)
    return ValidationOptions(tasks=builtin, lm_eval_tasks=extra, limit=args.limit,
                             max_ppl_increase=args.max_ppl_increase, speed_batch=tuple(args.speed_batch),
                             speed_repeats=args.speed_repeats, evaluations=tuple(args.evaluation),
                             lm_eval_log=lm_eval_log)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="compare a pruned checkpoint with its base model", description=__doc__)
    add_model_args(p, required=True)
    p.add_argument("pruned", metavar="OUT_DIR", help="directory written by `ssm-profile apply`")
    p.add_argument("--plan", default=None,
                   help="plan JSON (default: the plan recorded in OUT_DIR/pruning.json, if any)")
    p.add_argument("-o", "--output", default=None, help="report file (default: OUT_DIR/validation.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing -o file")
    add_validation_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..documents import PRUNING_FILE, load_plan, load_pruning_record
    from ..base.errors import ModelNotFoundError
    from ..base.io import write_json_atomic
    from ..model.resolve import load_model, use_tokenizer
    from ..validation.check import validate
    from ..validation.domains import check_texts_are_there
    from .progress import rich_progress

    validation_options(args)  # bad options fail before anything loads
    out_dir = Path(args.pruned)
    if not (out_dir / "config.json").is_file():
        raise ModelNotFoundError(f"'{out_dir}' is not a pruned model directory (no config.json); "
                                 "pass the OUT_DIR written by `ssm-profile apply`")
    recorded = load_pruning_record(out_dir / PRUNING_FILE).plan if (out_dir / PRUNING_FILE).is_file() else None
    plan = recorded
    if args.plan:
        plan = load_plan(args.plan)
        _check_same_plan(plan, recorded, args.plan, out_dir)
    output = _check_report_path(args, out_dir, plan)  # before loading any model
    check_texts_are_there(plan)
    base = use_tokenizer(load_from_args(args), args.tokenizer, args.trust_remote_code)
    pruned = load_model(str(out_dir), dtype=next(base.model.parameters()).dtype, device=args.device)
    options = validation_options(args, lm_eval_log=output.parent / LM_EVAL_LOG)  # lm-eval's messages, off the terminal
    with rich_progress("validating", enabled=not args.quiet) as progress:
        report = validate(base, pruned, plan, options, progress=progress, pruned_dir=out_dir)
    write_json_atomic(output, report.to_dict())
    print_validation(report)
    print(f"report: {output}")
    return finish(report)


def _check_same_plan(plan, recorded, path: str, out_dir: Path) -> None:
    """Refuse a --plan the checkpoint was not pruned with (its pruning.json records the plan apply used):
    the verdict would compare the checkpoint with another plan's promise."""
    from ..base.errors import PlanError
    from ..documents import actions_digest

    if recorded is None:
        return
    if (plan.model.fingerprint, actions_digest(plan)) != (recorded.model.fingerprint, actions_digest(recorded)):
        raise PlanError(f"plan '{path}' is not the plan '{out_dir}' was pruned with (its pruning.json records "
                        "other actions or weights); leave --plan out to use the recorded plan")


def _check_report_path(args: argparse.Namespace, out_dir: Path, plan=None) -> Path:
    """-o, or the default OUT_DIR/validation.json, must be new (or --overwrite), writable and none of the
    inputs (the pruned checkpoint's files, the base model, --plan, --tokenizer, --evaluation texts and
    the plan's texts): nothing a user has is replaced without being asked."""
    from ..documents import VALIDATION_FILE
    from ..base.outputs import Output, check_paths, source_input
    from .common import data_inputs, folder_files, model_input, text_input

    output = Path(args.output) if args.output else out_dir / VALIDATION_FILE
    written = (LM_EVAL_LOG,) + (() if args.output else (VALIDATION_FILE,))  # this command's own files there
    inputs = [*folder_files(out_dir, "the pruned checkpoint's file", leave=written),
              model_input(args.model, "the base model"), source_input(args.plan, "the --plan file"),
              source_input(args.tokenizer, "the --tokenizer folder"),
              *(text_input(text, "the --evaluation text") for text in args.evaluation)]
    if plan is not None and plan.data is not None:
        inputs += data_inputs(plan.data.spec(), "the plan's")
    if plan is not None:
        inputs += [text_input(d.source, "the plan's --also-on text") for d in plan.domains or ()]
    check_paths([Output(output, "validation report", overwrite=args.overwrite),
                 Output(output.parent / LM_EVAL_LOG, "lm-eval log", overwrite=True)], inputs)
    return output


_SOURCE = {"plan": "plan's objective", "argument": "--max-ppl-increase"}


def finish(report: ValidationReport) -> int:
    """0, or raise the tolerance error (exit code 3) when the perplexity rose too much."""
    from ..validation.check import ToleranceBreachedError

    tol, verification = report.tolerance, report.verification
    if tol.within_tolerance is False:
        broken = [d.phrase(f"held-out windows of {d.source}") for d in report.domains or [] if not d.within_tolerance]
        if verification is None:
            rose = f"{report.perplexity.rel_ppl_increase:.1%}"
        elif verification.within_tolerance is False or not broken:
            rose = " and by ".join([verification.phrase("held-out verification windows"), *broken])
        else:  # the verification windows kept it: name only the --also-on texts that broke it
            rose = " and by ".join(broken)
        raise ToleranceBreachedError(
            f"perplexity rose by {rose}, beyond the tolerance of +{tol.max_ppl_increase:.1%} (from the "
            f"{_SOURCE.get(tol.source, tol.source)}); prune less or relax --max-ppl-increase")
    return 0


def _pct(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "" if x is None else str(x)
    return f"{x:+.1%}"


def print_validation(report: ValidationReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped or captured: wide enough for whole labels and intervals
        console = Console(width=max(console.width, 140))
    from ..validation.comparison import comparison_rows

    rows = comparison_rows(report)
    table = Table(title="Before / after pruning")
    for col in ("metric", "base", "pruned", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right", no_wrap=col == "metric")
    for row in rows:
        if row.section == "model":
            table.add_row(row.label, row.text(row.before), row.text(row.after), row.change_text())
    console.print(table)

    tasks = [row for row in rows if row.section == "lm-eval"]
    if tasks:
        limit = report.lm_eval.limit
        lt = Table(title="lm-eval" + (f" (limit {limit})" if limit else ""))
        for col in ("task", "items", "metric", "base", "pruned", "change"):
            lt.add_column(col, justify="left" if col in ("task", "metric") else "right")
        for row in tasks:
            task, _, metric = row.label.partition(" ")
            lt.add_row(task, str(row.items or ""), metric, row.text(row.before), row.text(row.after),
                       row.change_text())
        console.print(lt)

    m, tol, ppl = report.measured, report.tolerance, report.perplexity
    for split in [*([report.verification] if report.verification else []), *(report.evaluations or [])]:
        console.print(f"{split.source}: perplexity {split.phrase('windows')}")
    if m.predicted_delta_loss is not None:
        console.print(f"loss change on the search windows: measured {m.delta_loss:+.4f}, plan predicted "
                      f"{m.predicted_delta_loss:+.4f}")
    if tol.max_ppl_increase is not None:
        within = report.verification.within_tolerance if report.verification else tol.within_tolerance
        rel = report.verification.rel_ppl_increase if report.verification else ppl.rel_ppl_increase
        console.print(f"perplexity {_pct(rel)}"
                      f"{' on verification' if report.verification else ''} vs allowed +{tol.max_ppl_increase:.1%} "
                      f"({_SOURCE.get(tol.source, tol.source)}): {_verdict(within)}")
    for domain in report.domains or []:  # the plan's --also-on texts: the promise was made on them too
        console.print(domain.sentence(tol.max_ppl_increase), style=_STYLE.get(domain.within_tolerance), markup=False)


_STYLE = {True: "green", False: "red"}


def _verdict(within: bool | None) -> str:
    return "[green]within tolerance[/green]" if within else "[red]tolerance breached[/red]"
