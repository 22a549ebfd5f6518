"""The profiler end to end: run directory, exact restore, resume, user errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ssm_profile.cli.main import main
from ssm_profile.calibration.data import DataSpec
from ssm_profile.profiling.record import ProfileSettings
from ssm_profile.profiling.profile import profile_model
from ssm_profile.model.resolve import load_model
from ssm_profile.profiling.results import ProfileResult

SMALL_DATA = DataSpec(nsamples=4, eval_samples=4, seqlen=32)


def small_settings(**kw) -> ProfileSettings:
    base = dict(sparsities=[0.25, 0.5], criteria=["magnitude", "fisher", "random"], per_layer=True,
                targets=["in_proj", "A_log", "unit:state"])
    base.update(kw)
    return ProfileSettings(**base)


@pytest.fixture(scope="module")
def loaded2():
    return load_model("tiny-mamba2")


def test_profile_writes_a_loadable_run(tmp_path, loaded2):
    before = {k: v.clone() for k, v in loaded2.model.state_dict().items()}
    result = profile_model(loaded2, SMALL_DATA, small_settings(sweep="grid"), run_dir=tmp_path / "run")
    # Every trial restored the weights bit for bit.
    assert all(torch.equal(before[k], v) for k, v in loaded2.model.state_dict().items())
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"run.json", "analysis.json", "trials.jsonl", "sweep.csv", "ranking.csv", "findings.csv"} <= files
    back = ProfileResult.load(tmp_path / "run")
    assert [r.target for r in back.ranking()] == [r.target for r in result.ranking()]
    assert back.record.model.fingerprint == loaded2.fingerprint
    written = json.loads((tmp_path / "run" / "run.json").read_text())  # run.json round-trips through RunRecord
    assert back.record.to_dict() == written and back.record.tokenizer.vocab_size > 0
    assert back.record.incremental.enabled and back.record.mixer_forwards["Mamba2Mixer"].checks
    # 3 targets x 3 criteria x 2 levels model-wide + 3 targets x 4 layers per-layer
    assert len(result.model_trials) == 18 and len(result.layer_trials) == 12
    import pandas as pd

    assert len(pd.read_csv(tmp_path / "run" / "sweep.csv")) == 18
    pruned = result.trial("unit:state", "magnitude", 0.5)
    assert pruned.pruned_params > 0 and pruned.delta_loss != 0
    # what the mixers ran, counted: every call the owned forward (numba for inference, the chunked
    # SSD in torch for fisher's gradients), its check recorded
    ran = back.record.mixer_forwards["Mamba2Mixer"]
    assert ran.family == "ssd" and set(ran.calls) == {"owned/numba", "owned/torch"}
    assert ran.calls["owned/numba"] >= 4 * (1 + 18 + 12) and all(c.ok for c in ran.checks)


def test_resume_after_cancel_gives_identical_results(tmp_path, loaded2):
    full = profile_model(loaded2, SMALL_DATA, small_settings(per_layer=False), run_dir=tmp_path / "full")
    calls = {"n": 0}

    def cancel_after_five() -> bool:
        calls["n"] += 1
        return calls["n"] > 5

    with pytest.raises(KeyboardInterrupt):
        profile_model(loaded2, SMALL_DATA, small_settings(per_layer=False), run_dir=tmp_path / "cut",
                      cancel=cancel_after_five)
    assert len((tmp_path / "cut" / "trials.jsonl").read_text().splitlines()) == 5
    resumed = profile_model(loaded2, SMALL_DATA, small_settings(per_layer=False), run_dir=tmp_path / "cut",
                            resume=True)
    key = lambda t: t.key  # noqa: E731
    assert [(t.key, t.loss) for t in sorted(resumed.trials, key=key)] == \
           [(t.key, t.loss) for t in sorted(full.trials, key=key)]


def test_resume_refuses_other_settings(tmp_path, loaded2):
    profile_model(loaded2, SMALL_DATA, small_settings(per_layer=False, targets=["A_log"]), run_dir=tmp_path / "r")
    from ssm_profile.base.errors import OutputExistsError, RunDirError

    with pytest.raises(OutputExistsError, match="--resume"):
        profile_model(loaded2, SMALL_DATA, small_settings(per_layer=False, targets=["A_log"]), run_dir=tmp_path / "r")
    with pytest.raises(RunDirError, match="settings or data differ"):
        profile_model(loaded2, SMALL_DATA, small_settings(per_layer=False, targets=["D"]), run_dir=tmp_path / "r",
                      resume=True)


@pytest.mark.parametrize("argv,message", [
    (["--sparsities", "0.5,1.5"], "outside (0, 1)"),
    (["--criteria", "magnitude,nonsense"], "unknown criterion 'nonsense'"),
    (["--targets", "q_proj"], "unknown group or unit 'q_proj'"),
    (["--calibration", "MISSING.txt"], "does not exist"),
])
def test_cli_user_errors_are_one_line(tmp_path, capsys, argv, message):
    code = main(["profile", "tiny-mamba2", "-o", str(tmp_path / "run"), "--quiet", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_malformed_calibration(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{oops\n')
    assert main(["profile", "tiny-mamba2", "-o", str(tmp_path / "run"), "--quiet", "--calibration", str(bad)]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_results(tmp_path):
    """A real SIGKILL mid-run, then --resume, equals an uninterrupted run."""
    args = ["-m", "ssm_profile.cli.main", "profile", "tiny-mamba2", "--quiet", "--threads", "1", "--nsamples", "4",
            "--eval-samples", "4", "--seqlen", "32", "--sparsities", "0.2,0.4,0.6,0.8", "--no-per-layer",
            "--criteria", "magnitude,random", "--targets", "in_proj,out_proj,A_log,D,unit:state"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run([sys.executable, *args, "-o", str(tmp_path / "full")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen([sys.executable, *args, "-o", str(tmp_path / "cut")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = tmp_path / "cut" / "trials.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not journal.exists() or len(journal.read_text().splitlines()) < 6):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(journal.read_text().splitlines())
    assert 0 < done_before < 40
    subprocess.run([sys.executable, *args, "-o", str(tmp_path / "cut"), "--resume"], check=True, env=env,
                   capture_output=True)
    full = ProfileResult.load(tmp_path / "full")
    cut = ProfileResult.load(tmp_path / "cut")
    assert {t.key: t.loss for t in cut.trials} == {t.key: t.loss for t in full.trials}
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "complete"


def test_statistics_left_by_a_killed_run_neither_block_nor_stay(tmp_path, loaded2):
    from ssm_profile.calibration.offload import STATS_PREFIX

    leftover = tmp_path / "run" / f"{STATS_PREFIX}killed"
    leftover.mkdir(parents=True)
    (leftover / "0.pt").write_bytes(b"half a tensor")
    profile_model(loaded2, SMALL_DATA, small_settings(per_layer=False, targets=["D"], criteria=["magnitude"]),
                  run_dir=tmp_path / "run")
    assert not leftover.exists() and (tmp_path / "run" / "run.json").exists()
