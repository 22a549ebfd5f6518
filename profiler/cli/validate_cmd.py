"""`ssm-profile validate`: compare a pruned checkpoint with its base (perplexity, lm-eval, size, speed)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from .common import add_model_args, human_bytes, human_count, load_from_args


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
    p.add_argument("--max-ppl-increase", type=float, default=None,
                   help="allowed relative perplexity increase, e.g. 0.1 (default: the plan's objective)")
    p.add_argument("--speed-batch", type=int, nargs=2, default=(1, 128), metavar=("BATCH", "SEQLEN"),
                   help="fixed batch of the latency measurement (default 1 128)")
    p.add_argument("--speed-repeats", type=int, default=5, help="timed forwards per model (median; default 5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def validation_options(args: argparse.Namespace) -> dict[str, Any]:
    from ..tasks import BUILTIN_TASKS

    if args.speed_repeats < 1 or min(args.speed_batch) < 1:
        from ..errors import SSMProfileError

        raise SSMProfileError("--speed-batch and --speed-repeats must be positive")
    builtin = () if (args.no_builtin_tasks or args.no_lm_eval) else BUILTIN_TASKS
    extra = () if args.no_lm_eval else tuple(args.tasks)
    from ..errors import SSMProfileError

    if args.max_ppl_increase is not None and not args.max_ppl_increase >= 0:
        raise SSMProfileError("--max-ppl-increase must be a non-negative fraction (0.1 = 10%)")
    return {"tasks": builtin, "lm_eval_tasks": extra, "limit": args.limit, "max_ppl_increase": args.max_ppl_increase,
            "speed_batch": tuple(args.speed_batch), "speed_repeats": args.speed_repeats}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="compare a pruned checkpoint with its base model", description=__doc__)
    add_model_args(p, required=True)
    p.add_argument("pruned", metavar="OUT_DIR", help="directory written by `ssm-profile apply`")
    p.add_argument("--plan", default=None,
                   help="plan JSON (default: the plan recorded in OUT_DIR/pruning.json, if any)")
    p.add_argument("-o", "--output", default=None, help="report file (default: OUT_DIR/validation.json)")
    add_validation_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json


    from ..errors import ModelNotFoundError, PlanError
    from ..io import write_json_atomic
    from ..resolve import load_model
    from ..validate import VALIDATION_FILE, validate
    from .progress import rich_progress

    options = validation_options(args)
    out_dir = Path(args.pruned)
    if not (out_dir / "config.json").is_file():
        raise ModelNotFoundError(f"'{out_dir}' is not a pruned model directory (no config.json); "
                                 "pass the OUT_DIR written by `ssm-profile apply`")
    plan = None
    if args.plan:
        from ..apply import load_plan

        plan = load_plan(args.plan)
    elif (out_dir / "pruning.json").is_file():
        try:
            plan = json.loads((out_dir / "pruning.json").read_text(encoding="utf-8")).get("plan")
        except (OSError, json.JSONDecodeError):
            raise PlanError(f"'{out_dir / 'pruning.json'}' is not readable JSON; pass --plan") from None
    base = load_from_args(args)
    pruned = load_model(str(out_dir), dtype=next(base.model.parameters()).dtype, device=args.device)
    with rich_progress("validating", enabled=not args.quiet) as progress:
        report = validate(base, pruned, plan, progress=progress, pruned_dir=out_dir, **options)
    output = Path(args.output) if args.output else out_dir / VALIDATION_FILE
    write_json_atomic(output, report)
    print_validation(report)
    print(f"report: {output}")
    return finish(report)


_SOURCE = {"plan": "plan's objective", "argument": "--max-ppl-increase"}


def finish(report: dict[str, Any]) -> int:
    """0, or raise the tolerance error (exit code 3) when the perplexity rose too much."""
    from ..validate import ToleranceBreachedError

    tol = report["tolerance"]
    if tol["within_tolerance"] is False:
        raise ToleranceBreachedError(
            f"perplexity rose by {report['perplexity']['rel_ppl_increase']:.1%}, beyond the tolerance of "
            f"+{tol['max_ppl_increase']:.1%} (from the {_SOURCE.get(tol['source'], tol['source'])}); prune less or relax --max-ppl-increase")
    return 0


def _pct(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "" if x is None else str(x)
    return f"{x:+.1%}"


def _num(x: Any, fmt: str = "{:.4f}") -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return fmt.format(x)


def print_validation(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    ppl, size, speed = report["perplexity"], report["size"], report["speed"]
    table = Table(title="Before / after pruning")
    for col in ("metric", "base", "pruned", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    table.add_row("held-out loss", _num(ppl["base"]["loss"]), _num(ppl["pruned"]["loss"]),
                  _num(ppl["delta_loss"], "{:+.4f}"))
    table.add_row("held-out perplexity", _num(ppl["base"]["perplexity"], "{:.2f}"),
                  _num(ppl["pruned"]["perplexity"], "{:.2f}"), _pct(ppl["rel_ppl_increase"]))
    b, p, c = size["base"], size["pruned"], size["change"]
    table.add_row("parameters", human_count(b["parameters"]), human_count(p["parameters"]), _pct(c["parameters"]))
    table.add_row("nonzero parameters", human_count(b["nonzero_parameters"]), human_count(p["nonzero_parameters"]),
                  _pct(c["nonzero_parameters"]))
    for key, label in (("weight_bytes_on_disk", "weights on disk"), ("bytes_on_disk", "directory on disk")):
        table.add_row(label, "—" if b[key] is None else human_bytes(b[key]),
                      "—" if p[key] is None else human_bytes(p[key]), _pct(c[key]))
    table.add_row("state bytes / sequence", human_bytes(b["state_bytes_per_sequence"]),
                  human_bytes(p["state_bytes_per_sequence"]), _pct(c["state_bytes_per_sequence"]))
    table.add_row("FLOPs / token", human_count(b["flops_per_token"]), human_count(p["flops_per_token"]),
                  _pct(c["flops_per_token"]))
    batch = "x".join(str(v) for v in speed["batch"])
    table.add_row(f"latency ({batch}, {speed['threads']} thr)", _num(speed["base"]["latency_s"] * 1e3, "{:.1f} ms"),
                  _num(speed["pruned"]["latency_s"] * 1e3, "{:.1f} ms"),
                  _pct(_ratio(speed["pruned"]["latency_s"], speed["base"]["latency_s"])))
    table.add_row("tokens / s", _num(speed["base"]["tokens_per_s"], "{:,.0f}"),
                  _num(speed["pruned"]["tokens_per_s"], "{:,.0f}"),
                  _pct(_ratio(speed["pruned"]["tokens_per_s"], speed["base"]["tokens_per_s"])))
    console.print(table)

    tasks = report["lm_eval"]["tasks"]
    if tasks:
        lt = Table(title="lm-eval" + (f" (limit {report['lm_eval']['limit']})" if report["lm_eval"]["limit"] else ""))
        for col in ("task", "items", "metric", "base", "pruned", "change"):
            lt.add_column(col, justify="left" if col in ("task", "metric") else "right")
        for task, row in tasks.items():
            for metric, value in row["base"].items():
                after = row["pruned"].get(metric)
                lt.add_row(task, str(row.get("items") or ""), metric, _num(value), _num(after),
                           _num(row["delta"].get(metric), "{:+.4f}"))
        console.print(lt)

    m, tol = report["measured"], report["tolerance"]
    if m.get("predicted_delta_loss") is not None:
        console.print(f"loss change: measured {m['delta_loss']:+.4f}, plan predicted {m['predicted_delta_loss']:+.4f}")
    if tol["max_ppl_increase"] is not None:
        verdict = "[green]within tolerance[/green]" if tol["within_tolerance"] else "[red]tolerance breached[/red]"
        console.print(f"perplexity {_pct(ppl['rel_ppl_increase'])} vs allowed +{tol['max_ppl_increase']:.1%} "
                      f"({_SOURCE.get(tol['source'], tol['source'])}): {verdict}")


def _ratio(after: float | None, before: float | None) -> float | None:
    if after is None or not before:
        return None
    return after / before - 1.0
