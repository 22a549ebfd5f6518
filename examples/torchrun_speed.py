"""How much faster is the trial phase with two torchrun processes than with one?

Profiles the embedded tiny-mamba twice into temporary run directories, with the same options (light
ones, or the default profile's with ``--default-profile``) and one thread per process: once as one process, once as ``torchrun --nproc-per-node 2 --no-python
ssm-profile profile``. Prints the trial phase of each (``timings.trials`` in run.json, rank 0's
wall time, waiting for the other rank included), the ratio (goal on 2 cores: <= 0.6), and whether
the trials are identical.

    python examples/torchrun_speed.py [--processes 2] [--repeat 1] [--default-profile]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

LIGHT = ["--criteria", "magnitude,wanda", "--targets", "in_proj,x_proj,out_proj,unit:state",
         "--sparsities", "0.1,0.3,0.5,0.7,0.9", "--nsamples", "16", "--eval-samples", "16", "--seqlen", "128"]
OPTIONS = ["--threads", "1", "--quiet"]  # + LIGHT unless --default-profile
CLI = str(Path(sys.executable).with_name("ssm-profile"))


def profile(run_dir: Path, processes: int, options: list[str]) -> dict:
    command = [CLI, "profile", "tiny-mamba", "-o", str(run_dir), *options]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   "--no-python", *command]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((run_dir / "run.json").read_text())


def losses(run_dir: Path) -> list:
    rows = [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines()]
    return [(r["target"], r["criterion"], r["sparsity"], r["layer"], r["window_losses"]) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="measure both this many times (alternating)")
    parser.add_argument("--default-profile", action="store_true",
                        help="the default profile's settings (all criteria and targets, 16 x 256 windows) instead "
                        "of the light ones, whose trial phase lasts a few seconds")
    args = parser.parse_args()
    options = OPTIONS + ([] if args.default_profile else LIGHT)
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(args.repeat):
            one_dir, many_dir = Path(tmp) / f"one{attempt}", Path(tmp) / f"many{attempt}"
            one = profile(one_dir, 1, options)
            many = profile(many_dir, args.processes, options)
            t1, tn = one["timings"]["trials"], many["timings"]["trials"]
            print(f"{one['trials_planned']} trials: 1 process {t1:.1f} s, {args.processes} processes {tn:.1f} s, "
                  f"ratio {tn / t1:.2f} (total {many['timings']['total'] / one['timings']['total']:.2f}); "
                  f"identical trials: {losses(one_dir) == losses(many_dir)}")


if __name__ == "__main__":
    main()
