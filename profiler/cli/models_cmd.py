"""`ssm-profile models`: the embedded models and the hub aliases a MODEL argument accepts."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list embedded models and hub aliases", description=__doc__)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..model.resolve import list_models

    table = Table(title="Models (`ssm-profile analyze NAME`; also any hub id or local directory)")
    for col in ("name", "source", "architecture", "params", "note"):
        table.add_column(col, no_wrap=col in ("name", "source"), overflow="fold")
    for row in list_models():
        table.add_row(*(row[c] for c in ("name", "source", "architecture", "params", "note")))
    console = Console()
    if not console.is_terminal:  # piped: as wide as the names need (a cut hub id cannot be pasted)
        console = Console(width=max(console.width, 160))
    console.print(table)
    return 0
