"""`ssm-profile report`: one self-contained HTML page (or a Markdown summary) of a profile run.

The page needs no network: charts are inline SVG, styles and the small script are inline. Add
`--plan plan.json` and `--validation validation.json` to include a pruning plan and its validation,
and `--csv DIR` to export the tables (ranking, sweep, layers, findings, groups, ...) as CSV files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..documents import RecoveryRecord


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="render a self-contained HTML (or Markdown) report of a profile run",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="profile run directory (from `ssm-profile profile -o RUN_DIR`)")
    p.add_argument("-o", "--output", default=None,
                   help="file to write; '-' prints to stdout (default: RUN_DIR/report.html, or report.md)")
    p.add_argument("--plan", default=None, metavar="PLAN.json", help="include a pruning plan (ssm-profile plan)")
    p.add_argument("--validation", default=None, metavar="VALIDATION.json",
                   help="include a validation (ssm-profile validate)")
    p.add_argument("--recovery", default=None, metavar="RECOVERY.json",
                   help="include a recovery curve (ssm-profile recover; default: the recovery.json beside "
                   "--validation or in RUN_DIR, if any)")
    p.add_argument("--format", choices=("html", "md"), default=None,
                   help="html (default) or md; inferred from -o when it ends in .md")
    p.add_argument("--csv", default=None, metavar="DIR", help="also export the report's tables as CSV files to DIR")
    p.add_argument("--allow-other-plan", action="store_true",
                   help="include a plan made for other weights than the profiled ones (refused by default)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing -o file and CSV files in an existing, non-empty --csv DIR")
    p.set_defaults(handler=run)


# What `ProfileResult.load` reads: a report must never be written over one of them.
RUN_INPUTS = ("run.json", "analysis.json", "dense.json", "trials.jsonl", "unit_scores.json", "saliency.json")


def _check_outputs(args: argparse.Namespace, output: str, recovery_path: Path | None) -> None:
    """Refuse, before anything is written, outputs that exist (without --overwrite; the default report in
    RUN_DIR too), that are inputs (the run's files, --plan, --validation, the recovery.json read) or
    that cannot be written: the report and every CSV table."""
    from ssm_profile.base.errors import OutputExistsError
    from ssm_profile.base.outputs import Input, Output, check_paths, source_input
    from ssm_profile.reports.tables import TABLES

    inputs = [source_input(args.plan, "the --plan file"), source_input(args.validation, "the --validation file"),
              Input(recovery_path, "the recovery record") if recovery_path is not None else None]
    inputs += [Input(Path(args.run_dir) / name, "the run's file") for name in RUN_INPUTS]
    outputs = [] if output == "-" else [Output(Path(output), "report", overwrite=args.overwrite)]
    if args.csv:
        csv_dir = Path(args.csv)
        if csv_dir.exists() and not csv_dir.is_dir():
            raise OutputExistsError(f"--csv '{csv_dir}' is a file, not a directory; give a directory")
        if csv_dir.is_dir() and any(csv_dir.iterdir()) and not args.overwrite:
            raise OutputExistsError(f"--csv directory '{csv_dir}' is not empty; choose a new directory "
                                    "or pass --overwrite to replace its CSV files")
        outputs += [Output(csv_dir / f"{name}.csv", "--csv table", overwrite=None) for name in TABLES]
    check_paths(outputs, inputs)


def run(args: argparse.Namespace) -> int:
    from ssm_profile.documents import load_plan, load_validation
    from ssm_profile.reports import write_report
    from .common import read_run

    fmt = args.format or ("md" if args.output and str(args.output).lower().endswith((".md", ".markdown")) else "html")
    # Read every input before rendering, so a bad path fails fast with one line.
    plan = load_plan(args.plan) if args.plan else None
    validation = load_validation(args.validation) if args.validation else None
    recovery, recovery_path = _recovery(args)
    result = read_run(args.run_dir)  # refused while a profile writes it; a note when it is unfinished
    output = args.output or str(Path(args.run_dir) / f"report.{fmt}")
    _check_outputs(args, output, recovery_path)
    _check_plan_matches(plan, result, args.allow_other_plan)
    written = write_report(result, output, fmt=fmt, plan=plan, validation=validation, csv_dir=args.csv,
                           recovery=recovery, plan_path=args.plan)
    if isinstance(written, str):
        sys.stdout.write(written)
        return 0
    size = written.stat().st_size
    print(f"report: {written} ({size / 1024:.0f} KiB)" + (f"; tables: {args.csv}" if args.csv else ""))
    return 0


def _recovery(args: argparse.Namespace) -> tuple[RecoveryRecord | None, Path | None]:
    """--recovery, else the recovery.json beside --validation (a recovered checkpoint validated) or in
    RUN_DIR; with the file it was read from."""
    from ssm_profile.documents import RECOVERY_FILE, load_recovery

    if args.recovery:
        path = Path(args.recovery)
        found = path / RECOVERY_FILE if path.is_dir() else path
        return load_recovery(found), found
    places = ([Path(args.validation).parent] if args.validation else []) + [Path(args.run_dir)]
    found = next((place / RECOVERY_FILE for place in places if (place / RECOVERY_FILE).is_file()), None)
    return (load_recovery(found), found) if found is not None else (None, None)


def _check_plan_matches(plan, result, allow: bool) -> None:
    """A plan of other weights is refused (its numbers would be reported as this run's), or a warning with --allow-other-plan."""
    from ssm_profile.base.errors import PlanError
    from ssm_profile.reports.facts import plan_mismatch

    mismatch = plan_mismatch(plan, result) if plan is not None else None
    if mismatch and not allow:
        raise PlanError(f"{mismatch}; pass the run's own plan, or --allow-other-plan to include it anyway")
    if mismatch:
        print(f"ssm-profile: warning: {mismatch}", file=sys.stderr)
