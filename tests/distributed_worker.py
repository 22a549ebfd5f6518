"""One rank of a test profile, launched by torchrun from tests/test_distributed.py.

``python -m torch.distributed.run --standalone --nproc-per-node N tests/distributed_worker.py RUN_DIR
[--resume] [--cancel-after K]`` profiles the embedded tiny-mamba with :data:`SETTINGS` and
:data:`DATA` (the same options as :data:`CLI_ARGS`); ``--cancel-after K`` cancels (rank 0's
``cancel``) at its K+1-th check, as Ctrl-C in the TUI would.
"""

from __future__ import annotations

import sys

import torch

from ssm_profile.calibration.data import DataSpec
from ssm_profile.profiling.record import ProfileSettings

MODEL = "tiny-mamba"
DATA = DataSpec(nsamples=5, eval_samples=4, seqlen=16)
CRITERIA = ["wanda", "obs", "ssm_gramian", "fisher"]  # every statistic: inputs, hessians, ssm, grads
TARGETS = ["in_proj", "unit:state"]
SPARSITIES = [0.3, 0.5, 0.7]
SETTINGS = dict(criteria=CRITERIA, targets=TARGETS, sparsities=SPARSITIES, batch_size=2)
CLI_ARGS = ["--criteria", ",".join(CRITERIA), "--targets", ",".join(TARGETS),
            "--sparsities", ",".join(map(str, SPARSITIES)), "--batch-size", "2",
            "--nsamples", str(DATA.nsamples), "--eval-samples", str(DATA.eval_samples), "--seqlen", str(DATA.seqlen)]


def settings() -> ProfileSettings:
    return ProfileSettings(**SETTINGS)


def main(argv: list[str]) -> int:
    from ssm_profile.profiling.distributed import RankStopped, World
    from ssm_profile.profiling.profile import profile_model
    from ssm_profile.model.resolve import load_model

    torch.set_num_threads(1)
    run_dir, resume = argv[0], "--resume" in argv
    limit = int(argv[argv.index("--cancel-after") + 1]) if "--cancel-after" in argv else None
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return limit is not None and calls["n"] > limit

    world = World.from_env()
    try:
        with world.running():
            profile_model(load_model(MODEL), DATA, settings(), run_dir=run_dir, resume=resume, cancel=cancel,
                          world=world)
    except KeyboardInterrupt:
        return 130
    except RankStopped as err:
        print(err, file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
