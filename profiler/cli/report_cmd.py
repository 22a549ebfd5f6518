"""`ssm-profile report`: one self-contained HTML page (or a Markdown summary) of a profile run.

The page needs no network: charts are inline SVG, styles and the small script are inline. Add
`--plan plan.json` and `--validation validation.json` to include a pruning plan and its validation,
and `--csv DIR` to export the tables (ranking, sweep, layers, findings, groups, ...) as CSV files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="render a self-contained HTML (or Markdown) report of a profile run",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="profile run directory (from `ssm-profile profile -o RUN_DIR`)")
    p.add_argument("-o", "--output", default=None,
                   help="file to write; '-' prints to stdout (default: RUN_DIR/report.html, or report.md)")
    p.add_argument("--plan", default=None, metavar="PLAN.json", help="include a pruning plan (ssm-profile plan)")
    p.add_argument("--validation", default=None, metavar="VALIDATION.json",
                   help="include a validation (ssm-profile validate)")
    p.add_argument("--format", choices=("html", "md"), default=None,
                   help="html (default) or md; inferred from -o when it ends in .md")
    p.add_argument("--csv", default=None, metavar="DIR", help="also export the report's tables as CSV files to DIR")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ssm_profile.results import ProfileResult
    from ssm_profile.reports import load_json_input, write_report

    fmt = args.format or ("md" if args.output and str(args.output).lower().endswith((".md", ".markdown")) else "html")
    # Read every input before rendering, so a bad path fails fast with one line.
    plan = load_json_input(args.plan, "plan")
    validation = load_json_input(args.validation, "validation")
    result = ProfileResult.load(args.run_dir)
    output = args.output or str(Path(args.run_dir) / f"report.{fmt}")
    written = write_report(result, output, fmt=fmt, plan=plan, validation=validation, csv_dir=args.csv)
    if isinstance(written, str):
        sys.stdout.write(written)
        return 0
    size = written.stat().st_size
    print(f"report: {written} ({size / 1024:.0f} KiB)" + (f"; tables: {args.csv}" if args.csv else ""))
    from ssm_profile.reports.facts import plan_mismatch

    warning = plan_mismatch(plan, result)
    if warning:
        print(f"ssm-profile: warning: {warning}", file=sys.stderr)
    return 0
