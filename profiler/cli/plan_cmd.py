"""`ssm-profile plan`: the cheapest cuts that meet a budget, from a profile run, measured for safety."""

from __future__ import annotations

import argparse
import math
import re
from typing import TYPE_CHECKING

from ..plan import DEFAULT_MAX_PPL_INCREASE, METRICS, SCOPES
from .options import proportion

if TYPE_CHECKING:
    from ..documents import Plan

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}


def _amount(text: str) -> int:
    """``300000``, ``300k``, ``1.5M``, ``2G`` -> int."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmMgGbB]?)\s*", text.replace(",", "").replace("_", ""))
    if not match:
        raise argparse.ArgumentTypeError(f"expected a count such as 300000, 300k or 1.5M, got '{text}'")
    value = float(match.group(1)) * _SUFFIX[match.group(2).lower()]
    if not math.isfinite(value) or value > 1e18:  # 1e400 overflowed to inf (a traceback); no model has 10^18
        raise argparse.ArgumentTypeError(f"--absolute must be a count below 10^18, got '{text}'")
    if value < 1:
        raise argparse.ArgumentTypeError(f"--absolute must be at least 1, got '{text}'")
    return round(value)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="choose the cuts that meet a reduction budget within a perplexity tolerance",
                       description=__doc__ + " Solves a multiple-choice knapsack exactly over the run's measured "
                       "sensitivity curves, then measures the combined plan and backs off if needed.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="profile run directory (from `ssm-profile profile -o DIR`)")
    p.add_argument("-o", "--output", default="plan.json", help="plan file to write (default: plan.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--metric", choices=METRICS, default="params",
                   help="what to reduce: parameters, dense FLOPs per token or recurrent-state bytes (default params)")
    p.add_argument("--target", dest="metric", choices=METRICS, help=argparse.SUPPRESS)  # the older name
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--ratio", type=proportion(0.3, below_one=True), default=None,
                        help="remove at least this fraction of --scope's total for --metric (e.g. 0.3 or 30%%)")
    budget.add_argument("--absolute", type=_amount, default=None,
                        help="remove at least this many params / FLOPs per token / state bytes (e.g. 300k)")
    p.add_argument("--scope", choices=SCOPES, default="ssm",
                   help="what --ratio and the reduction are fractions of: the SSM mixers (default, as the "
                   "literature reports sparsity) or the whole model")
    p.add_argument("--max-ppl-increase", type=proportion(0.1), default=DEFAULT_MAX_PPL_INCREASE,
                   help="largest relative perplexity increase allowed (default 0.10 = +10%%)")
    p.add_argument("--criterion", default=None,
                   help="use this criterion wherever the run measured it (default: the best one per target and level)")
    p.add_argument("--structures", default=None,
                   help="comma-separated structures allowed: unstructured, N:M (e.g. 2:4), units (default: all measured), "
                        "layers (whole SSM layers removed, each measured by the plan; only when listed)")
    p.add_argument("--also-on", action="append", default=[], metavar="TEXT",
                   help="another text the promise must hold on too (repeatable; .txt, .jsonl or hf:NAME): its first "
                   "windows take part in certifying the plan, its last windows, which no step sees, check the "
                   "promise. A plan certified on the run's text alone holds for text like it, not for another domain")
    p.add_argument("--no-measure", action="store_true",
                   help="trust the additive prediction; do not load the model to measure the combined plan")
    p.add_argument("--model", default=None,
                   help="where to load the run's model from if it moved (its weights must match the run)")
    p.add_argument("--device", default="auto", help="torch device for the measurement: auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--recover-steps", type=int, default=None, metavar="N",
                   help="ask for recovery by distillation after apply (the plan's recover section; "
                   "`ssm-profile recover` then trains N steps)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..base.outputs import Output, check_paths
    from ..profiling.results import ProfileResult
    from ..base.runtime import check_threads
    from .common import read_run

    check_threads(args.threads)  # before any heavy work
    if args.recover_steps is not None and args.recover_steps < 1:
        from ..base.errors import SSMProfileError

        raise SSMProfileError(f"--recover-steps must be a positive integer, got {args.recover_steps}")
    for text in args.also_on:  # a missing or empty text is said before the model loads
        path = Path(text).expanduser()
        problem = None if text.startswith("hf:") else (
            "is not a file" if not path.is_file() else "is empty" if path.stat().st_size == 0 else None)
        if problem:
            from ..base.errors import DataError

            raise DataError(f"--also-on text '{text}' {problem}; pass a .txt or .jsonl file or "
                            "hf:NAME[:CONFIG][:SPLIT]")
    result: ProfileResult = read_run(args.run_dir)  # a missing, damaged or busy run is the first thing to say
    check_paths([Output(Path(args.output), "plan", overwrite=args.overwrite)], _inputs(args, result))

    from ..documents import write_plan
    from ..plan import PlanRequest, load_run_model, make_plan
    from .common import SMALL_MODEL, configure_threads, quiet_libraries
    from .progress import rich_progress

    from ..profiling.distributed import World

    quiet_libraries()
    small = result.analysis.totals.parameters < SMALL_MODEL
    configure_threads(args.threads or (1 if small else None))
    request = PlanRequest(metric=args.metric, ratio=args.ratio, absolute=args.absolute, scope=args.scope,
                          max_ppl_increase=args.max_ppl_increase, criterion=args.criterion,
                          structures=args.structures, measure=not args.no_measure, also_on=tuple(args.also_on))
    world = World.from_env()  # under torchrun: the ranks share the back-off's measurements, rank 0 writes
    args.device = world.device(args.device)
    with world.running():
        loaded = None
        if args.model and not args.no_measure:
            loaded = load_run_model(result, name=args.model, device=args.device)
        with rich_progress("planning", enabled=not args.quiet and world.writer) as progress:
            plan = make_plan(result, request, loaded=loaded, progress=progress, run_path=args.run_dir,
                             device=args.device, world=world)
    if not world.writer:
        return 0
    if not result.record.complete:  # the plan says so wherever it goes
        plan.notes.append(f"made from an unfinished profile run ({len(result.trials)} trials measured"
                          + (f" of about {result.record.trials_planned} planned)" if result.record.trials_planned
                             else ")"))
    if args.recover_steps is not None:
        from ..documents import PlanRecover

        plan.recover = PlanRecover(steps=args.recover_steps)
    output = Path(args.output)
    write_plan(plan, output, overwrite=args.overwrite)
    print_plan(plan)
    import shlex

    from ..base.io import free_path

    if plan.promise_kept is False:
        # the promise broke on text no step of the plan saw: say so, suggest no apply, exit as validate does
        broken = ["the verification windows" if source is None else f"{source}'s held-out windows"
                  for source, check in plan.held_out_checks() if not check.kept]
        print(f"plan: {output}  (its promise is NOT kept on {' and '.join(broken)}: do not apply it; plan again "
              "with a smaller --ratio or a larger --max-ppl-increase)")
        return BROKEN_PROMISE_EXIT
    out_dir = free_path(f"pruned-{plan.model.name.replace('/', '--')}")
    print(f"plan: {output}  (next: ssm-profile apply {shlex.quote(str(output))} -o {shlex.quote(out_dir)} --validate)")
    return 0


def _inputs(args: argparse.Namespace, result) -> list:
    """What plan reads: the run's files and, to measure, the run's model and texts."""
    from .common import data_inputs, folder_files, model_input, text_input

    inputs = [*folder_files(args.run_dir, "the run's file")]
    if not args.no_measure:
        inputs += [model_input(args.model or result.record.model.load_name(), "the run's model"),
                   *data_inputs(result.record.data_spec(), "the run's")]
        inputs += [text_input(text, "an --also-on text") for text in args.also_on]
    return inputs


BROKEN_PROMISE_EXIT = 3  # the exit status of `validate` when the verification increase breaks the promise


def _layer_span(layers: list[int]) -> str:
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}–{layers[-1]}"
    return ",".join(map(str, layers))


def _certification_line(plan: Plan) -> str:
    """What the plan was accepted on before verification, and why that rule."""
    from ..documents import OLD_CERTIFICATION_RULE

    c = plan.certification
    if c is None:  # an older plan
        return (f"certified on the search windows' mean increase (rule '{OLD_CERTIFICATION_RULE}', "
                "from before the prediction bound)")
    return f"{c.sentence()} (why a bound, not the mean: {c.why})"


def print_plan(plan: Plan) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from ..base.fmt import percent_of, scope_name, share
    from ..pruning.summary import changes_nothing, plan_summary_lines
    from .common import human_bytes, human_count

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 120))
    obj, dense, pred, meas = plan.objective, plan.dense, plan.predicted, plan.measured
    metric = obj.metric
    fmt = human_bytes if metric == "state" else human_count
    of = pred.reduction_of or scope_name(obj.scope, metric)
    goal = (f"remove ≥ {percent_of(obj.ratio, of)}" if obj.ratio is not None else
            f"remove ≥ {fmt(obj.absolute)} {metric}" if obj.absolute is not None else
            f"remove as much {metric} as possible")
    console.print(f"[bold]{escape(plan.model.name)}[/bold]: {goal} within +{obj.max_ppl_increase:.0%} perplexity "
                  f"(dense loss {dense.loss:.4f}, perplexity {dense.perplexity:.2f})")
    lead, *rest = plan_summary_lines(plan)  # what physically changes first
    console.print(escape(lead), style="bold yellow" if changes_nothing(plan) else "bold")
    for line in rest:
        console.print(escape(line))
    table = Table(title="Plan actions")
    for col in ("target", "structure", "criterion", "sparsity", "layers", "params", "FLOPs/tok", "state",
                "ΔL alone", "exec"):
        table.add_column(col, justify="left" if col in ("target", "structure", "criterion", "exec") else "right",
                         no_wrap=True, min_width=5 if col == "exec" else None)
    for a in plan.actions:
        table.add_row(a.target, a.structure, a.criterion, f"{a.sparsity:.0%}", _layer_span(a.layers),
                      human_count(a.params_removed), human_count(a.flops_removed),
                      human_bytes(a.state_bytes_removed), f"{a.predicted_delta_loss:+.4f}", a.execution)
    if plan.actions:
        console.print(table)
    summary = Table(title="Predicted vs measured")
    total = pred.scope_total if pred.scope_total is not None else dense.total(metric)
    model_of = pred.reduction_model_of or scope_name("model", metric)
    for col in ("", "ΔL", "perplexity", f"{metric} removed/zeroed", "reduction", "of the whole model"):
        summary.add_column(col, justify="left" if not col else "right")
    summary.add_row("predicted (additive)", f"{pred.delta_loss:+.4f}", f"{pred.rel_ppl_increase:+.1%}",
                    fmt(pred.removed(metric)), percent_of(pred.reduction_ratio, of),
                    percent_of(pred.reduction_ratio_model, model_of))
    if meas is not None:
        removed = meas.params_removed if metric == "params" else None
        summary.add_row("measured (combined)", f"{meas.delta_loss:+.4f}", f"{meas.rel_ppl_increase:+.1%}",
                        fmt(removed) if removed is not None else "—", share(removed, total, of),
                        share(removed, dense.total(metric), model_of))
    console.print(summary)
    if meas is not None:
        status = "[green]within tolerance[/green]" if meas.within_tolerance else "[red]above tolerance[/red]"
        console.print(f"measured: {status}; back-off steps: {meas.backoff_steps}")
        console.print(escape(_certification_line(plan)))
    else:
        console.print("[yellow]not measured (--no-measure): the additive prediction ignores interactions[/yellow]")
    if plan.verification is not None:
        colour = "green" if plan.verification.kept else "red"
        console.print(f"[{colour}]{plan.verification.sentence()}[/{colour}]")
    for domain in plan.domains or []:
        colour = "green" if domain.kept and domain.certification.certified else "red"
        console.print(f"[{colour}]{escape(domain.sentence())}[/{colour}]")
    if plan.verification is not None and not plan.domains:  # a cut's damage on another domain is its own
        console.print("[dim]the promise is for text like the run's evaluation text; another domain: plan with "
                      "--also-on TEXT, or check it with `ssm-profile validate --evaluation TEXT`[/dim]")
    for line in plan.notes:
        console.print(f"· {escape(line)}")
