"""The console script `ssm-profile`. Its first statements set a SIGINT handler, so a Ctrl-C while Python
still imports the command line (before :func:`ssm_profile.cli.main.main` installs its own) is one line
and exit 130 instead of a KeyboardInterrupt traceback. Only the interpreter's own start-up and the two
package ``__init__`` files (a few milliseconds) come before it."""

import signal as _signal
import sys as _sys


def _interrupted_while_starting(signum, frame) -> None:
    import os
    import shlex

    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)  # a second Ctrl-C must not cut the line short
    try:
        _sys.stdout.flush()
        print("ssm-profile: interrupted while starting; run it again with: "
              f"{shlex.join(['ssm-profile', *_sys.argv[1:]])}", file=_sys.stderr, flush=True)
    finally:
        os._exit(130)


if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:  # not when SIGINT is ignored or taken
    _signal.signal(_signal.SIGINT, _interrupted_while_starting)


def main() -> int:
    """Run the command line; main() replaces the start-up handler with its own as it begins."""
    from .main import main as run

    return run()
