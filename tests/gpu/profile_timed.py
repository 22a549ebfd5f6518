"""Run `ssm-profile profile ARGS...` in this process; print its wall time and peak GPU memory.

    python tests/gpu/profile_timed.py MODEL_DIR [profile options...]

Interrupted (SIGINT, e.g. from `timeout -s INT`), the profile stops cleanly and the figures of
the part that ran are printed all the same.
"""

from __future__ import annotations

import sys
import time

import torch

from ssm_profile.cli.main import main


def run(argv: list[str]) -> int:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    code = 130
    try:
        code = main(["profile", *argv])
    except KeyboardInterrupt:
        pass
    finally:
        wall = time.perf_counter() - started
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if cuda else "n/a (no CUDA)"
        status = "complete" if code == 0 else f"exit {code}" + (" (interrupted)" if code == 130 else "")
        print(f"profile {status}: wall {wall:.1f} s, peak GPU memory {peak}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
