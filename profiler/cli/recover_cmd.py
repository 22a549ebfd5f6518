"""`ssm-profile recover`: heal a pruned checkpoint by distillation from its dense teacher.

Trains PRUNED_DIR (written by `ssm-profile apply`) to match the model it was pruned from (KL on
temperature-softened logits, optionally mixed with the LM loss), keeping every pruned entry at zero,
on the run's calibration text (or --data), and writes OUT_DIR (a plain transformers checkpoint with
recovery.json: the loss curve and the verification perplexity before and after). Checkpoints go to
OUT_DIR.checkpoint; --resume continues an interrupted run. Data-parallel under
`torchrun --standalone --nproc-per-node N --no-python ssm-profile recover ...`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from ..documents import Increase, RecoveryRecord


def register(sub: argparse._SubParsersAction) -> None:
    from ..base.defaults import RECOVER_LR, RECOVER_STEPS, RECOVER_TEMPERATURE
    from .options import seed

    p = sub.add_parser("recover", help="recover a pruned checkpoint's quality by distillation", description=__doc__)
    p.add_argument("pruned", metavar="PRUNED_DIR", help="directory written by `ssm-profile apply`")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="directory for the recovered checkpoint")
    p.add_argument("--teacher", default=None, metavar="MODEL",
                   help="dense teacher (default: the model PRUNED_DIR was pruned from, as pruning.json records)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None,
                        help=f"optimiser steps (default: the plan's recover budget, else {RECOVER_STEPS})")
    budget.add_argument("--minutes", type=float, default=None, help="training time budget instead of --steps; it bounds the training "
                        "only: loading both models and measuring before and after come on top")
    p.add_argument("--lr", type=float, default=RECOVER_LR,
                   help=f"peak learning rate of AdamW (default {RECOVER_LR})")
    p.add_argument("--temperature", type=float, default=RECOVER_TEMPERATURE,
                   help=f"distillation temperature (default {RECOVER_TEMPERATURE})")
    p.add_argument("--lm-weight", type=float, default=None,
                   help="weight of the plain LM loss added to the KD loss (default: the plan's, else 0)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="windows per optimiser step, over all processes (default 8)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per window (default: the plan's)")
    p.add_argument("--data", default=None, metavar="SOURCE",
                   help="training text (.txt, .jsonl, hf:NAME...; default: the run's calibration text); it must "
                   "not contain the verification text")
    p.add_argument("--seed", type=seed, default=0, help="seed of the batch offsets (0 to 2**32-1; default 0)")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints (default 50)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="steps between verification-loss samples of the curve (default: ten over the run)")
    p.add_argument("--no-lm-eval", action="store_true", help="skip the offline tasks before and after")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR.checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR (and its checkpoint)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import os
    import shlex

    from ..recovery.train import RecoverSettings, check_recover_paths, checkpoint_dir, recover
    from ..base.runtime import check_threads, configure_threads, quiet_libraries
    from .progress import rich_progress

    check_threads(args.threads)
    # before anything loads
    check_recover_paths(args.pruned, args.output, args.overwrite, teacher=args.teacher, data=args.data)
    settings = RecoverSettings(steps=args.steps, minutes=args.minutes, lr=args.lr, temperature=args.temperature,
                               lm_weight=args.lm_weight, batch_size=args.batch_size, seqlen=args.seqlen,
                               seed=args.seed, checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
                               data=args.data, lm_eval=not args.no_lm_eval)
    settings.check()
    quiet_libraries()
    configure_threads(args.threads or _default_threads(args.pruned))
    rank = int(os.environ.get("RANK", "0"))
    again = args.argv if "--resume" in args.argv else [*args.argv, "--resume"]
    args.interrupt_hint = f"continue from {checkpoint_dir(args.output)} with: {shlex.join(['ssm-profile', *again])}"
    with rich_progress("recovering", enabled=not args.quiet and rank == 0) as progress:
        record = recover(args.pruned, args.output, teacher=args.teacher, settings=settings, resume=args.resume,
                         overwrite=args.overwrite, device=args.device, progress=progress)
    if rank == 0:
        print_recovery(record)
        print(f"recovered checkpoint: {args.output}")
        print(f"next: ssm-profile validate {record.teacher.name} {args.output}")
    return 0


def _default_threads(pruned: str) -> int | None:
    """One thread per process under torchrun and for small models (under SMALL_MODEL float32 parameters
    by the size of their weight files), else torch's choice."""
    import os
    from pathlib import Path

    from ..base.runtime import SMALL_MODEL

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return 1
    weight_bytes = sum(f.stat().st_size for f in Path(pruned).glob("*.safetensors"))
    return 1 if weight_bytes < 4 * SMALL_MODEL else None


def print_recovery(record: RecoveryRecord) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="Recovery (verification windows, against the teacher)")
    for col in ("", "before", "after"):
        table.add_column(col, justify="left" if not col else "right")
    before, after = record.before.verification, record.after.verification
    table.add_row("perplexity change", _interval(before), _interval(after))
    for task, metrics in (record.before.lm_eval or {}).items():
        for metric, value in metrics.items():
            later = (record.after.lm_eval or {}).get(task, {}).get(metric)
            table.add_row(f"{task} {metric}", f"{value:.4f}", "" if later is None else f"{later:.4f}")
    console.print(table)
    fraction = record.recovered_fraction()
    if fraction is not None:
        console.print(f"recovery removed {fraction:.0%} of the perplexity increase in "
                      f"{record.progress.steps_done} steps ({record.progress.train_seconds:.0f} s of training, "
                      f"{record.progress.seconds:.0f} s in all with loading and measuring)")
    s = record.sparsity
    console.print(f"nonzero parameters: {s.nonzero_before:,} before, {s.nonzero_after:,} after "
                  f"({s.frozen_entries:,} pruned entries held at zero)")
    console.print(f"kernels: {record.kernels.training}", markup=False)
    for note in record.notes:
        console.print(f"note: {note}", markup=False)


def _interval(split: Increase) -> str:
    return split.phrase("windows")
