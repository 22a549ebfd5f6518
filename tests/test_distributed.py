"""Several processes, one profile (torchrun, gloo on the CPU): the same trials bit for bit as one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distributed_worker import CLI_ARGS, DATA, MODEL, settings
from ssm_profile.profiling.distributed import World, balanced_owners, sharded_statistics
from ssm_profile.base.errors import SSMProfileError
from ssm_profile.profiling.profile import profile_model
from ssm_profile.model.resolve import load_model
from ssm_profile.calibration.stats import collect_stats

WORKER = str(Path(__file__).with_name("distributed_worker.py"))
CLI = str(Path(sys.executable).with_name("ssm-profile"))


def torchrun(ranks: int, *command: str) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    return subprocess.run([*launcher, *command], capture_output=True, text=True, timeout=600)


def journal(run_dir: Path) -> list[tuple]:
    """(key, loss, window losses) of every journaled trial, in journal order."""
    rows = [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines()]
    return [(r["target"], r["criterion"], r["sparsity"], r["layer"], r["loss"], r["window_losses"]) for r in rows]


@pytest.fixture(scope="module")
def loaded():
    return load_model(MODEL)


@pytest.fixture(scope="module")
def one_run(loaded, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("one") / "run"
    profile_model(loaded, DATA, settings(), run_dir=run_dir)
    return run_dir


@pytest.fixture(scope="module")
def one_process(one_run) -> list[tuple]:
    return journal(one_run)


@pytest.mark.slow  # 23 s; the default run keeps the 2 -> 1 resume and the rank-0 error of torchrun
def test_two_ranks_share_the_plans_back_off_measurements(one_run, tmp_path):
    """A run whose trials all claim ΔL = 0 makes the first plan prune everything; measuring it backs
    off, and the leave-one-out measurements are shared by 2 ranks: the plan equals one process's."""
    import shutil
    from dataclasses import replace

    from ssm_profile.profiling.journal import append_journal
    from ssm_profile.profiling.results import ProfileResult

    run = tmp_path / "optimistic"
    shutil.copytree(one_run, run)
    result = ProfileResult.load(run)
    (run / "trials.jsonl").unlink()
    for t in result.trials:
        append_journal(run / "trials.jsonl", replace(t, delta_loss=0.0, rel_ppl_increase=0.0,
                                                     loss=result.dense_loss,
                                                     window_losses=list(result.dense_window_losses)))
    ask = ["plan", str(run), "--max-ppl-increase", "0.02", "--metric", "params"]
    single = subprocess.run([CLI, *ask, "-o", str(tmp_path / "one.json")], capture_output=True, text=True, timeout=600)
    # the optimistic losses can make the plan break its promise on the verification windows: exit 3 (the
    # plan is still written); one process and two must agree on that too
    assert single.returncode in (0, 3), single.stderr
    done = torchrun(2, "--no-python", CLI, *ask, "-o", str(tmp_path / "two.json"))
    # (torchrun reports a rank's exit 3 as its own failure, exit 1, with its ChildFailedError summary)
    assert (done.returncode == 0) == (single.returncode == 0), done.stderr[-2000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["measured"]["backoff_steps"] >= 1
    for key in ("actions", "measured", "predicted", "verification"):
        assert one[key] == two[key], key


@pytest.mark.slow  # 10-13 s: keeps the default run under 5 minutes
def test_two_ranks_measure_what_one_process_measures(tmp_path, one_process):
    # The user's command: torchrun ... --no-python ssm-profile profile.
    done = torchrun(2, "--no-python", CLI, "profile", MODEL, "-o", str(tmp_path / "run"), "--quiet", *CLI_ARGS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert journal(tmp_path / "run") == one_process  # same trials, same order, same losses bit for bit
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["processes"] == 2 and meta["status"] == "complete"
    assert done.stdout.count("run directory:") == 1  # rank 0 alone reports


@pytest.mark.slow  # ~11 s: two torchrun launches
def test_resume_with_one_process_after_two(tmp_path, loaded, one_process):
    # the probe batch (7 trials: one round of up to 8) completes; the next round is cancelled at its start
    cut = torchrun(2, WORKER, str(tmp_path / "run"), "--cancel-after", "8")
    assert cut.returncode != 0
    assert len(journal(tmp_path / "run")) == 7 < len(one_process)
    profile_model(loaded, DATA, settings(), run_dir=tmp_path / "run", resume=True)
    assert journal(tmp_path / "run") == one_process


@pytest.mark.slow
def test_resume_with_two_processes_after_one(tmp_path, loaded, one_process):
    with pytest.raises(KeyboardInterrupt):
        profile_model(loaded, DATA, settings(), run_dir=tmp_path / "run", cancel=iter([False] * 5 + [True]).__next__)
    assert len(journal(tmp_path / "run")) == 5
    done = torchrun(2, WORKER, str(tmp_path / "run"), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert journal(tmp_path / "run") == one_process


@pytest.mark.slow  # 5 s of two processes starting
def test_an_error_on_rank_zero_stops_every_rank(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("not a run")
    done = torchrun(2, "--no-python", CLI, "profile", MODEL, "-o", str(tmp_path / "taken"), *CLI_ARGS)
    assert done.returncode != 0
    assert "is not a profile run" in done.stderr
    assert "rank 1 stopped: rank 0 failed" in done.stderr
    assert (tmp_path / "taken" / "notes.txt").read_text() == "not a run"


def test_chunked_statistics_equal_collect_stats_bit_for_bit(loaded):
    """The sharded sum adds each batch's partial sums in batch order, as collect_stats does."""
    tokens = torch.randint(0, 64, (7, 16), generator=torch.Generator().manual_seed(0))
    needs = {"inputs", "hessians", "ssm", "grads", "tokens"}
    whole = collect_stats(loaded.model, tokens, needs, batch_size=3)
    chunked = sharded_statistics(World(), loaded.model, tokens, needs, batch_size=3)
    for field in ("inputs", "ssm"):
        a, b = getattr(whole, field), getattr(chunked, field)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k][f], b[k][f]) for k in a for f in a[k])
    for field in ("hessians", "grad_sum", "grad_sq_sum"):
        a, b = getattr(whole, field), getattr(chunked, field)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (whole.grad_batches, whole.grad_tokens) == (chunked.grad_batches, chunked.grad_tokens)
    assert torch.equal(whole.tokens, chunked.tokens)


def test_balanced_owners_put_the_costliest_trials_apart():
    assert balanced_owners([4, 1, 3, 2], 2) == [0, 0, 1, 1]  # 4 and 3 apart, then 2 and 1 even them out
    assert balanced_owners([1, 1, 1], 1) == [0, 0, 0]


@pytest.mark.parametrize("env,message", [
    ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, "outside WORLD_SIZE"),
    ({"WORLD_SIZE": "two"}, "must be integers"),
])
def test_world_from_env_refuses_a_broken_launch(env, message):
    with pytest.raises(SSMProfileError, match=message):
        World.from_env(env)


def test_world_from_env_reads_torchrun_variables():
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}
    assert World.from_env(env) == World(rank=3, size=4, local_rank=1)
    assert World.from_env({}) == World() and World().writer and not World().sharded
