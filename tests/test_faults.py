"""Fault injection: SIGKILL `profile`, `plan`, `apply`, `recover` and `validate` at random moments,
then resume or re-run.

Each command is first run uninterrupted for reference. Then each is killed at random delays (within
its measured duration) and re-run the way its hints say (`profile --resume`, `plan/apply --overwrite`
once an output exists); after every kill an output is either absent or complete, and at the end the
results equal the reference and nothing is left over (.partial directories, .tmp files, a held lock).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PYTHON = sys.executable
SETTINGS = ["--nsamples", "4", "--eval-samples", "4", "--seqlen", "32", "--sparsities", "0.3,0.5,0.7",
            "--criteria", "magnitude,wanda", "--no-per-layer", "--quiet"]
KILLS = {"profile": 10, "plan": 5, "apply": 5}  # 20 in all
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _cli(*args: str) -> list[str]:
    return [PYTHON, "-m", "ssm_profile.cli.main", *args]


def _profile(run: Path, *extra: str) -> list[str]:
    return _cli("profile", "tiny-mamba", "-o", str(run), *SETTINGS, *extra)


# a plan whose promise breaks on the verification windows is still written, with exit status 3
PLAN_OK = (0, 3)


def _plan(run: Path, plan: Path, *extra: str) -> list[str]:
    # 4 search windows of 32 tokens certify a 20% cut only within a wide tolerance (prediction bound)
    return _cli("plan", str(run), "-o", str(plan), "--ratio", "0.2", "--max-ppl-increase", "0.5", "--quiet", *extra)


def _apply(plan: Path, out: Path, *extra: str) -> list[str]:
    return _cli("apply", "tiny-mamba", str(plan), "-o", str(out), "--quiet", *extra)


def _run(command: list[str], ok: tuple[int, ...] = (0,)) -> float:
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode in ok, done.stderr
    return time.monotonic() - started


def _kill_after(command: list[str], delay: float) -> bool:
    """Start ``command``, SIGKILL it after ``delay`` seconds; whether it was still running."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    try:
        process.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return True


def _trials(run: Path) -> list[tuple]:
    records = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]
    return sorted((r["target"], r["criterion"], r["sparsity"], r.get("layer"), r["loss"]) for r in records)


def _plan_body(plan: Path) -> dict:
    data = json.loads(plan.read_text())
    return {key: data[key] for key in ("actions", "objective", "predicted", "measured", "dense")}


def _checkpoint(out: Path) -> tuple[str, list]:
    record = json.loads((out / "pruning.json").read_text())
    weights = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    return weights, record["actions"]


def _leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.endswith((".partial", ".tmp"))]


@pytest.mark.slow
def test_killed_commands_resume_to_the_uninterrupted_result(tmp_path):
    from ssm_profile.base.lock import run_dir_lock

    seed = int(os.environ.get("FAULT_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    print(f"fault seed {seed}")
    ref, hit = tmp_path / "ref", tmp_path / "hit"
    ref.mkdir(), hit.mkdir()
    durations = {"profile": _run(_profile(ref / "run")),
                 "plan": _run(_plan(ref / "run", ref / "plan.json"), PLAN_OK),
                 "apply": _run(_apply(ref / "plan.json", ref / "out"))}

    run, plan, out = hit / "run", hit / "plan.json", hit / "out"
    killed = 0
    for _ in range(KILLS["profile"]):
        resume = ("--resume",) if run.exists() else ()
        killed += _kill_after(_profile(run, *resume), rng.uniform(0.3, durations["profile"]))
    _run(_profile(run, "--resume"))
    for _ in range(KILLS["plan"]):
        if plan.exists():
            json.loads(plan.read_text())  # atomic: absent or complete
        killed += _kill_after(_plan(run, plan, "--overwrite"), rng.uniform(0.3, durations["plan"]))
    _run(_plan(run, plan, "--overwrite"), PLAN_OK)
    for _ in range(KILLS["apply"]):
        if out.exists():
            _checkpoint(out)  # atomic: absent or complete
        killed += _kill_after(_apply(plan, out, "--overwrite"), rng.uniform(0.3, durations["apply"]))
    _run(_apply(plan, out, "--overwrite"))
    print(f"{killed} of {sum(KILLS.values())} processes killed while running; durations {durations}")

    assert _trials(run) == _trials(ref / "run")
    for name in ("saliency.json", "unit_scores.json"):
        assert json.loads((run / name).read_text()) == json.loads((ref / "run" / name).read_text())
    assert _plan_body(plan) == _plan_body(ref / "plan.json")
    assert _checkpoint(out) == _checkpoint(ref / "out")
    assert _leftovers(tmp_path) == []
    with run_dir_lock(run):  # no lock is left held
        pass
    assert killed >= sum(KILLS.values()) // 2  # the delays did hit running processes


def _recover(pruned: Path, out: Path, *extra: str) -> list[str]:
    return _cli("recover", str(pruned), "-o", str(out), "--steps", "12", "--batch-size", "2", "--seqlen", "32",
                "--checkpoint-every", "3", "--no-lm-eval", "--quiet", *extra)


def _validate(pruned: Path, out: Path, *extra: str) -> list[str]:
    return _cli("validate", "tiny-mamba", str(pruned), "-o", str(out), "--no-lm-eval", "--quiet",
                "--speed-repeats", "1", "--speed-batch", "1", "8", *extra)


def _weights(out: Path) -> dict[str, float]:
    from safetensors.torch import load_file

    return {k: v.double().sum().item() for k, v in load_file(out / "model.safetensors").items()}


def _validation(report: Path) -> tuple:
    document = json.loads(report.read_text())
    return document["perplexity"], document["verification"]


@pytest.mark.slow
def test_killed_recover_and_validate_rerun_to_the_uninterrupted_result(tmp_path):
    """The two writing commands the first test leaves out: SIGKILL at random moments, then the rerun its
    hint names (`recover --resume` once a checkpoint exists, `--overwrite` once an output exists)."""
    seed = int(os.environ.get("FAULT_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    print(f"fault seed {seed}")
    base = tmp_path / "base"
    base.mkdir()
    _run(_profile(base / "run"))
    _run(_plan(base / "run", base / "plan.json"), PLAN_OK)
    _run(_apply(base / "plan.json", base / "pruned"))
    durations = {"recover": _run(_recover(base / "pruned", base / "recovered")),
                 "validate": _run(_validate(base / "pruned", base / "validation.json"), (0, 3))}

    recovered, report, killed = tmp_path / "recovered", tmp_path / "validation.json", 0
    for _ in range(4):
        if recovered.exists():
            _weights(recovered)  # atomic: absent or complete
        extra = ("--resume",) if Path(f"{recovered}.checkpoint").exists() else \
            ("--overwrite",) if recovered.exists() else ()
        killed += _kill_after(_recover(base / "pruned", recovered, *extra), rng.uniform(0.3, durations["recover"]))
    extra = ("--resume",) if Path(f"{recovered}.checkpoint").exists() else ("--overwrite",)
    _run(_recover(base / "pruned", recovered, *extra))
    for _ in range(4):
        if report.exists():
            json.loads(report.read_text())  # atomic: absent or complete
        delay = rng.uniform(0.3, durations["validate"])
        killed += _kill_after(_validate(base / "pruned", report, "--overwrite"), delay)
    _run(_validate(base / "pruned", report, "--overwrite"), (0, 3))
    print(f"{killed} of 8 processes killed while running; durations {durations}")

    assert _weights(recovered) == _weights(base / "recovered")
    assert _validation(report) == _validation(base / "validation.json")
    assert _leftovers(tmp_path) == []
    assert killed >= 4  # the delays did hit running processes
