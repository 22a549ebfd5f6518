"""`ssm-profile models`: the embedded models and the hub aliases a MODEL argument accepts."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list embedded models and hub aliases", description=__doc__)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..resolve import list_models

    table = Table(title="Models (`ssm-profile analyze NAME`; also any hub id or local directory)")
    for col in ("name", "source", "architecture", "params", "note"):
        table.add_column(col)
    for row in list_models():
        table.add_row(*(row[c] for c in ("name", "source", "architecture", "params", "note")))
    Console().print(table)
    return 0
