"""Options and helpers shared by subcommands."""

from __future__ import annotations

import argparse

from ..base.outputs import Input, data_inputs, folder_files, source_input, text_input  # noqa: F401  (re-exported)
from ..model.resolve import model_input  # noqa: F401  (re-exported: the TUI checks its outputs with the same inputs)

# The subcommands take these core helpers from here, with the options that use them.
from ..base.fmt import human_bytes, human_count  # noqa: F401  (re-exported)
from ..base.runtime import SMALL_MODEL, check_threads, configure_threads, quiet_libraries  # noqa: F401  (re-exported)


def add_model_args(parser: argparse.ArgumentParser, positional: bool = True, required: bool = False) -> None:
    if positional:
        parser.add_argument("model", nargs=None if required else "?", default=None,
                            help="embedded name (tiny-mamba, tiny-mamba2, tiny-deltanet), alias (mamba-1.4b), hub id or "
                            "local directory" + ("" if required else "; default: the embedded tiny-mamba"))
        parser.set_defaults(locate_model_first=True)  # main checks the name before the command imports torch
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 | auto (default: as saved)")
    parser.add_argument("--device", default="auto",
                        help="torch device: auto, cpu, cuda or cuda:N (default: auto = CUDA when available, else cpu)")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow model code from the hub repository to run (off by default)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow pickled .bin weights (they can run code); safetensors only by default")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch CPU threads (default: 1 for models under {SMALL_MODEL // 10**6}M parameters, "
                        "else torch's choice)")


def load_from_args(args: argparse.Namespace, with_tokenizer: bool = True):
    from ..model.resolve import load_model, locate

    check_threads(getattr(args, "threads", None))  # before seconds of loading, not after
    locate(args.model)  # an unknown name fails in one line before torch and transformers are imported
    quiet_libraries()

    loaded = load_model(args.model, dtype=args.dtype, device=args.device, revision=args.revision,
                        trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle,
                        with_tokenizer=with_tokenizer)
    configure_threads(getattr(args, "threads", None), loaded.model)
    return loaded


def read_run(run_dir: str):
    """The profile run in ``run_dir``, read under its shared lock (refused while a profile writes it);
    a note on stderr when the run is unfinished (interrupted, or stopped before its last trial)."""
    import sys

    from ..base.errors import RunDirError
    from ..base.lock import run_dir_lock
    from ..profiling.results import ProfileResult

    if run_dir == "-":
        raise RunDirError("RUN_DIR '-' would be standard input, which holds no run; give the run directory "
                          "(./- for a directory named '-')")
    with run_dir_lock(run_dir, shared=True):
        result = ProfileResult.load(run_dir)
    if not result.record.complete:
        print(f"ssm-profile: note: {unfinished_run(run_dir, result)}", file=sys.stderr)
    return result


def unfinished_run(run_dir: str, result) -> str:
    """One sentence: this run stopped before its end, what it holds, how to finish it."""
    import shlex

    record = result.record
    planned = f" of about {record.trials_planned} planned" if record.trials_planned else ""
    return (f"'{run_dir}' holds an unfinished profile (status '{record.status}', {len(result.trials)} trials"
            f"{planned}); what follows rests on the trials it holds; finish it with: "
            f"ssm-profile profile {shlex.quote(record.model.load_name())} -o {shlex.quote(str(run_dir))} --resume "
            "(with its original options)")
