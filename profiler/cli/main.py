"""Entry point of `ssm-profile`. Each subcommand lives in its own module with ``register``/``run``.

``ssm-profile MODEL`` (no subcommand) opens the terminal UI on MODEL.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from .. import __version__
from ..errors import SSMProfileError

# name -> module (imported lazily so `ssm-profile models` does not pay for torch/textual)
COMMANDS: dict[str, str] = {
    "analyze": "analyze",
    "profile": "profile_cmd",
    "plan": "plan_cmd",
    "apply": "apply_cmd",
    "validate": "validate_cmd",
    "report": "report_cmd",
    "bench": "bench_cmd",
    "tui": "tui_cmd",
    "models": "models_cmd",
    "env": "env_cmd",
}


def build_parser(names: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssm-profile",
        description="Profile, plan and apply pruning of state-space language models (Mamba, Mamba-2, "
        "hybrids). `ssm-profile [MODEL]` opens the terminal UI.",
    )
    parser.add_argument("--version", action="version", version=f"ssm-profile {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in names or COMMANDS:
        module = importlib.import_module(f".{COMMANDS[name]}", __package__)
        module.register(sub)
    return parser



def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and not argv[0].startswith("-")):
        argv = ["tui", *argv]  # `ssm-profile mamba-1.4b` opens the UI
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return int(args.handler(args) or 0)
    except SSMProfileError as err:
        print(f"ssm-profile: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("ssm-profile: interrupted; finished work is saved (rerun with --resume where offered)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
