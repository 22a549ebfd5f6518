"""Entry point of `ssm-profile`. Each subcommand lives in its own module with ``register``/``run``.

``ssm-profile MODEL`` (no subcommand) opens the terminal UI on MODEL.
"""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import signal
import sys
from types import ModuleType
from typing import Sequence

from .. import __version__
from ..base.errors import SSMProfileError
from ..base.registry import Registry

# name -> its module (``register(subparsers)``, ``run(args)``), imported lazily so `ssm-profile models`
# does not pay for torch/textual; other packages add commands through "ssm_profile.commands" entry points.
COMMANDS: Registry[ModuleType] = Registry("command", "ssm_profile.commands")
COMMANDS.add_lazy("analyze", "ssm_profile.cli.analyze")
COMMANDS.add_lazy("profile", "ssm_profile.cli.profile_cmd")
COMMANDS.add_lazy("plan", "ssm_profile.cli.plan_cmd")
COMMANDS.add_lazy("apply", "ssm_profile.cli.apply_cmd")
COMMANDS.add_lazy("validate", "ssm_profile.cli.validate_cmd")
COMMANDS.add_lazy("recover", "ssm_profile.cli.recover_cmd")
COMMANDS.add_lazy("report", "ssm_profile.cli.report_cmd")
COMMANDS.add_lazy("bench", "ssm_profile.cli.bench_cmd")
COMMANDS.add_lazy("tui", "ssm_profile.cli.tui_cmd")
COMMANDS.add_lazy("models", "ssm_profile.cli.models_cmd")
COMMANDS.add_lazy("env", "ssm_profile.cli.env_cmd")


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line, like every other user error (the usage is one --help away)."""

    def error(self, message: str):  # type: ignore[override]
        message = message.replace("\n", "\\n")  # user text inside a message stays on the line
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(names: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="ssm-profile",
        description="Profile, plan and apply pruning of state-space language models (Mamba, Mamba-2, "
        "hybrids). `ssm-profile [MODEL]` opens the terminal UI.",
    )
    parser.add_argument("--version", action="version", version=f"ssm-profile {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in names or COMMANDS.names():
        COMMANDS.get(name).register(sub)
    return parser



def _degrade_output() -> None:
    """On a terminal or pipe that cannot encode Unicode (PYTHONIOENCODING=ascii, LANG=C), print '?' for
    what it cannot show instead of dying with a UnicodeEncodeError (plan and profile print ≥, →, ━)."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="replace")
            except (ValueError, OSError, TypeError):  # a detached or exotic stream: leave it as it is
                pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user error is one line and exit 2, Ctrl-C one line and exit 130 at any moment
    (while the parser imports the commands too, and when a library swallowed the interrupt)."""
    entry = argv is None  # the console script: the process ends with this call
    argv = list(sys.argv[1:] if argv is None else argv)
    _degrade_output()
    state: dict = {}
    previous = _count_interrupts()
    try:
        code = _main(argv, state)
        if _INTERRUPTS:  # a library caught Ctrl-C (a traceback, then it ran on): still an interruption
            raise KeyboardInterrupt
        return code
    except KeyboardInterrupt:
        return _interrupted(argv, state, entry)
    except Exception:
        if not _INTERRUPTS:
            raise
        # a library turned the interrupt into another error (transformers' lazy imports re-raise what an
        # interrupted import left: a traceback and exit 1 from analyze): still an interruption
        return _interrupted(argv, state, entry)
    finally:
        if not entry and previous is not None:  # called in-process (tests, scripts): as it was
            signal.signal(signal.SIGINT, previous)
        elif entry and previous is not None:  # the work is done: a Ctrl-C during shutdown changes nothing
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _interrupted(argv: list[str], state: dict, entry: bool) -> int:
    """The one line of an interrupted command, then exit 130 (the process ends here when ``entry``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the line or the exit short
    args = state.get("args")
    hint = getattr(args, "interrupt_hint", None) or f"run it again with: {shlex.join(['ssm-profile', *argv])}"
    print(f"ssm-profile: interrupted; {hint}", file=sys.stderr)
    if entry:
        _exit_interrupted()
    return 130


def _exit_interrupted() -> None:
    """End the process with 130 now. Outputs were cleaned up while the interrupt unwound; returning
    instead let CPython end some runs by SIGINT itself (exit -2, no status) when a library had seen the
    KeyboardInterrupt first (its unhandled-interrupt flag)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(130)


_INTERRUPTS: list[float] = []  # when SIGINT arrived during this call of main


def _count_interrupts():
    """Install a SIGINT handler that notes the interrupt before raising KeyboardInterrupt as Python's
    does; the previous handler (None off the main thread, where handlers cannot be set)."""
    import threading
    import time

    _INTERRUPTS.clear()
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupted(signum, frame):
        _INTERRUPTS.append(time.monotonic())
        raise KeyboardInterrupt

    return signal.signal(signal.SIGINT, interrupted)


def _main(argv: list[str], state: dict) -> int:
    if not argv or (argv[0] not in COMMANDS and not argv[0].startswith("-")):
        unknown = _not_a_model(argv[0]) if argv else None
        if unknown:
            return _fail(unknown)
        argv = ["tui", *argv]  # `ssm-profile mamba-1.4b` opens the UI
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # usage errors (one line, exit 2), --help and --version
        return 0 if done.code is None else done.code if isinstance(done.code, int) else 2
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    args.argv = argv  # the user's command line (after the program name), for hints that repeat it
    state["args"] = args
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if getattr(args, "locate_model_first", False):  # an unknown name: one line in a second, not after torch
            from ..model.resolve import locate

            locate(args.model)
        return int(args.handler(args) or 0)
    except SSMProfileError as err:
        return _fail(str(err), err.exit_code)
    except UnicodeDecodeError as err:
        return _fail(f"a file given is not UTF-8 text (byte {err.start}: {err.reason}); pass a text file")
    except OSError as err:
        return _fail(os_error_message(err))
    except Exception as err:
        from ..base.errors import first_line
        from ..model.resolve import is_safetensors_error

        if not is_safetensors_error(err):
            raise
        return _fail(f"a .safetensors file is damaged ({first_line(err)}); download or save it again")


def _not_a_model(word: str) -> str | None:
    """Why ``word`` (the first argument, not a command) cannot be a model or a run directory for the
    UI, with the nearest command; None when it may be one (a path, a hub id, an embedded or alias name)."""
    import difflib
    from pathlib import Path

    near = difflib.get_close_matches(word, COMMANDS.names(), n=1, cutoff=0.6)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    if Path(word).exists() or "/" in word:
        return None
    if near and not word.startswith("tiny-"):  # a typo of a command is never a model name worth loading
        return f"unknown command '{word}'{hint} (see ssm-profile --help)"
    from ..model.resolve import ALIASES, EMBEDDED_MODELS

    if word in EMBEDDED_MODELS or word in ALIASES:
        return None
    return (f"'{word}' is neither a command, a model nor a run directory{hint} (see ssm-profile --help; "
            "models: ssm-profile models)")


def _fail(message: str, code: int = 2) -> int:
    print(f"ssm-profile: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def os_error_message(err: OSError) -> str:
    """One line for a failed read or write: what, where, and what to do."""
    where = f" '{err.filename}'" if err.filename else ""
    reason = err.strerror or type(err).__name__
    if isinstance(err, PermissionError) or err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{reason}:{where}; choose a location you can write to or fix its permissions"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{reason}:{where}; free some disk space or write elsewhere"
    return f"{reason}:{where}; check the path"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
