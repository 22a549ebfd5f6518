"""`ssm-profile tui [MODEL | RUN_DIR]`: the terminal UI (also what `ssm-profile MODEL` opens).

MODEL is loaded in the background (any form the other commands accept); a RUN_DIR written by
`ssm-profile profile` shows the saved profile and its analysis without loading the model.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator

from ..base.errors import SSMProfileError
from .common import add_model_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tui", help="terminal UI on a model or a run directory (also `ssm-profile MODEL`)",
                       description=__doc__)
    p.add_argument("model", nargs="?", default=None,
                   help="embedded name, alias, hub id or local model directory, or a run directory written by "
                   "`ssm-profile profile`; default: the embedded tiny-mamba")
    add_model_args(p, positional=False)  # includes --threads
    p.set_defaults(handler=run)


def _has_terminal() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def run(args: argparse.Namespace) -> int:
    missing = [m for m in ("textual", "textual_plotext") if importlib.util.find_spec(m) is None]
    if missing:
        raise SSMProfileError(f"the terminal UI needs {' and '.join(missing)}; install it with "
                              "pip install 'ssm-profile[tui]'")
    import threading

    from ssm_profile.base.runtime import check_threads
    from ssm_profile.tui.app import SSMProfileApp, is_run_dir

    check_threads(args.threads)  # a one-line error here, not inside the UI
    if not _has_terminal():  # a UI with its input or output redirected would wait forever
        raise SSMProfileError("the terminal UI needs a terminal (input or output is redirected); run a command "
                              "instead, e.g. ssm-profile analyze MODEL (see ssm-profile --help)")

    threading.Thread(target=_preload, args=(is_run_dir(args.model),), daemon=True).start()

    with _ui_owns_the_terminal():
        app = SSMProfileApp(
            args.model,
            load_options={"dtype": args.dtype, "device": args.device, "revision": args.revision,
                          "trust_remote_code": args.trust_remote_code, "allow_pickle": args.allow_pickle},
            threads=args.threads,
        )
        app.run()
    return int(app.return_code or 0)


@contextlib.contextmanager
def _ui_owns_the_terminal() -> Iterator[None]:
    """Give the UI a private copy of the terminal and point fd 2 at /dev/null while it runs.

    Textual draws on ``sys.__stderr__``; child processes (lm-eval runs git) and C libraries
    write to fd 2 directly, which would land on top of the UI. Python-level output is already
    captured by Textual.
    """
    try:
        interactive = os.isatty(2) and sys.__stderr__ is not None
    except (OSError, ValueError):
        interactive = False
    if not interactive:
        yield
        return
    original = sys.__stderr__
    original.flush()
    terminal = os.fdopen(os.dup(2), "w", encoding=original.encoding or "utf-8", errors=original.errors or "strict")
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.__stderr__ = terminal
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            terminal.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.__stderr__ = original
        with contextlib.suppress(OSError, ValueError):
            terminal.close()


def _preload(run_dir: bool) -> None:
    """Import torch (and transformers) while the UI starts: the loader needs them first."""
    try:
        if run_dir:
            from ssm_profile.profiling import ProfileResult  # noqa: F401
        else:
            from .common import quiet_libraries

            quiet_libraries()
            from transformers import AutoModelForCausalLM  # noqa: F401

            from ssm_profile.model import load_model  # noqa: F401
    except Exception:  # noqa: BLE001, S110 - only a head start; the loader reports real errors
        pass
