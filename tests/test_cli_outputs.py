"""Outputs of every command: --overwrite, atomic replacement, hints that work when copied, Ctrl-C."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssm_profile.cli.main import main

TINY = ["--nsamples", "2", "--eval-samples", "2", "--seqlen", "16", "--sparsities", "0.5",
        "--criteria", "magnitude", "--no-per-layer", "--quiet"]
NO_EVAL = ["--no-lm-eval", "--speed-repeats", "1", "--speed-batch", "1", "8", "--quiet"]


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith((".partial", ".tmp"))]


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> tuple[Path, Path]:
    """A run and a plan made from it (no measurement)."""
    base = tmp_path_factory.mktemp("outputs")
    run, plan = base / "run", base / "plan.json"
    assert main(["profile", "tiny-mamba", "-o", str(run), *TINY]) == 0
    assert main(["plan", str(run), "-o", str(plan), "--ratio", "0.1", "--no-measure", "--quiet"]) == 0
    return run, plan


def test_profile_overwrite_replaces_the_run_and_leaves_nothing(planned, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["profile", "tiny-mamba", "-o", str(run), *TINY]) == 0
    assert main(["profile", "tiny-mamba", "-o", str(run), *TINY, "--seed", "1"]) == 2  # refused without it
    assert "--overwrite" in capsys.readouterr().err
    assert main(["profile", "tiny-mamba", "-o", str(run), *TINY, "--seed", "1", "--overwrite"]) == 0
    assert json.loads((run / "run.json").read_text())["settings"]["seed"] == 1
    assert _leftovers(tmp_path) == []


def test_interrupted_overwrite_keeps_the_old_run(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert main(["profile", "tiny-mamba", "-o", str(run), *TINY]) == 0
    before = _tree(run)

    def interrupted(loaded, dataset, settings, run_dir, **kwargs):
        (Path(run_dir) / "run.json").write_text("{}")  # half a new run
        raise KeyboardInterrupt

    monkeypatch.setattr("ssm_profile.profiling.profile.profile_model", interrupted)
    capsys.readouterr()
    assert main(["profile", "tiny-mamba", "-o", str(run), *TINY, "--overwrite"]) == 130
    err = capsys.readouterr().err
    assert "old run is unchanged" in err and len(err.strip().splitlines()) == 1
    assert _tree(run) == before and _leftovers(tmp_path) == []


def test_ctrl_c_prints_the_exact_resume_command(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("ssm_profile.profiling.profile.profile_model", interrupted)
    monkeypatch.chdir(tmp_path)
    assert main(["profile", "tiny-mamba", *TINY, "--seed", "3"]) == 130
    err = capsys.readouterr().err.strip()
    expected = "ssm-profile profile tiny-mamba " + " ".join(TINY) + " --seed 3 -o runs/tiny-mamba --resume"
    assert err.endswith("continue with: " + expected), err


def test_next_step_names_a_plan_path_that_does_not_exist(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plan.json").write_text("mine")
    assert main(["profile", "tiny-mamba", "-o", "run", *TINY]) == 0
    out = capsys.readouterr().out
    assert "ssm-profile plan run -o plan-2.json" in out
    assert main(["plan", "run", "-o", "plan-2.json", "--no-measure", "--quiet"]) == 0  # the hint works


def test_apply_takes_the_model_from_the_plan(planned, tmp_path):
    _, plan = planned
    out = tmp_path / "out"
    assert main(["apply", str(plan), "-o", str(out), "--quiet"]) == 0
    record = json.loads((out / "pruning.json").read_text())
    assert record["source"]["name"] == "tiny-mamba"


def test_apply_validate_finishes_an_unvalidated_checkpoint(planned, tmp_path, capsys):
    _, plan = planned
    out = tmp_path / "out"
    assert main(["apply", "tiny-mamba", str(plan), "-o", str(out), "--quiet"]) == 0
    checkpoint = _tree(out)
    capsys.readouterr()
    code = main(["apply", "tiny-mamba", str(plan), "-o", str(out), "--validate", *NO_EVAL])
    err = capsys.readouterr().err
    assert code in (0, 3) and "validating it" in err
    assert (out / "validation.json").is_file()
    assert {k: v for k, v in _tree(out).items() if k != "validation.json"} == checkpoint  # not pruned again
    assert main(["apply", "tiny-mamba", str(plan), "-o", str(out), "--validate", *NO_EVAL]) == 2  # now complete


def test_validate_output_needs_overwrite(planned, tmp_path, capsys):
    _, plan = planned
    out, report = tmp_path / "out", tmp_path / "v.json"
    assert main(["apply", "tiny-mamba", str(plan), "-o", str(out), "--quiet"]) == 0
    assert main(["validate", "tiny-mamba", str(out), "-o", str(report), *NO_EVAL]) in (0, 3)
    first = report.read_bytes()
    assert main(["validate", "tiny-mamba", str(out), "-o", str(report), *NO_EVAL]) == 2
    assert report.read_bytes() == first
    assert main(["validate", "tiny-mamba", str(out), "-o", str(report), "--overwrite", *NO_EVAL]) in (0, 3)
    # the default OUT_DIR/validation.json is the user's file too: replaced only with --overwrite
    assert main(["validate", "tiny-mamba", str(out), *NO_EVAL]) in (0, 3)
    default = (out / "validation.json").read_bytes()
    assert main(["validate", "tiny-mamba", str(out), *NO_EVAL]) == 2
    assert (out / "validation.json").read_bytes() == default and "--overwrite" in capsys.readouterr().err
    assert main(["validate", "tiny-mamba", str(out), "--overwrite", *NO_EVAL]) in (0, 3)


def test_the_default_report_is_replaced_only_with_overwrite(planned, capsys):
    run, _ = planned
    report = run / "report.md"
    assert main(["report", str(run), "--format", "md"]) == 0
    first = report.read_bytes()
    assert main(["report", str(run), "--format", "md"]) == 2
    assert report.read_bytes() == first and "--overwrite" in capsys.readouterr().err
    assert main(["report", str(run), "--format", "md", "--overwrite"]) == 0
    report.unlink()


def test_report_takes_another_runs_plan_only_when_allowed(planned, tmp_path, capsys):
    run, plan = planned
    other = json.loads(plan.read_text())
    other["model"]["fingerprint"] = "sha256:" + "0" * 64
    other_plan = tmp_path / "other.json"
    other_plan.write_text(json.dumps(other))
    assert main(["report", str(run), "--plan", str(other_plan), "-o", str(tmp_path / "r.html")]) == 2
    assert "--allow-other-plan" in capsys.readouterr().err and not (tmp_path / "r.html").exists()
    assert main(["report", str(run), "--plan", str(other_plan), "-o", str(tmp_path / "r.html"),
                 "--allow-other-plan"]) == 0
    assert "warning:" in capsys.readouterr().err


def test_configure_threads_refuses_what_the_machine_lacks():
    from ssm_profile.base.errors import SSMProfileError
    from ssm_profile.base.runtime import configure_threads

    for bad in (0, -1, (os.cpu_count() or 1) + 1):
        with pytest.raises(SSMProfileError, match="--threads must be between 1 and"):
            configure_threads(bad)


def test_time_check_refuses_beyond_the_limit_unless_forced():
    from ssm_profile.base.errors import SSMProfileError
    from ssm_profile.profiling.estimate import check_time, duration_text

    check_time(3600, force=False)
    check_time(10**7, force=True)
    with pytest.raises(SSMProfileError, match="--force"):
        check_time(10**7, force=False)
    assert duration_text(30) == "30 s" and duration_text(600) == "10 min" and duration_text(7200) == "2.0 h"


def test_the_time_estimate_counts_one_time_costs_once(monkeypatch):
    """A first statistics pass that compiles kernels is paid once by the run; the estimate scaled it by
    the windows of every calibration batch (x16 at the defaults: 46 min said for a 6-minute profile)."""
    import contextlib
    import time

    import torch

    from ssm_profile.model.resolve import load_model
    from ssm_profile.profiling import estimate
    from ssm_profile.profiling.record import ProfileSettings

    calls = []

    class Recipe:
        def installed(self, model):
            return contextlib.nullcontext()

        def statistics(self, model, windows, needs):
            calls.append(len(windows))
            time.sleep(0.6 if len(calls) == 1 else 0.01)  # the first pass compiles

    monkeypatch.setattr("ssm_profile.calibration.data.batch_losses", lambda *a: None)
    data = type("Data", (), {"evaluation": torch.zeros(16, 8, dtype=torch.long),
                             "calibration": torch.zeros(32, 8, dtype=torch.long)})()
    settings = ProfileSettings(criteria=["fisher"], sparsities=[0.5], per_layer=False, sweep="grid")
    seconds = estimate.estimate_profile_seconds(Recipe(), load_model("tiny-mamba").model, data, settings)
    assert 0.55 < seconds < 1.5  # 0.6 once + 4 batches of a warm 0.04 s with scoring; was 0.61 x 16 = 9.8


def test_profile_prints_its_time_estimate(tmp_path, capsys):
    tiny = [arg for arg in TINY if arg != "--quiet"]
    assert main(["profile", "tiny-mamba", "-o", str(tmp_path / "run"), *tiny]) == 0
    assert "this profile should take about" in capsys.readouterr().err


def test_stale_tmp_of_a_dead_writer_is_removed(tmp_path):
    from ssm_profile.base.io import write_text_atomic

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".out.json.pid{dead}.abc.tmp"
    stale.write_text("half")
    live = tmp_path / f".out.json.pid{os.getpid()}.def.tmp"  # a live writer's: kept
    live.write_text("writing")
    write_text_atomic(tmp_path / "out.json", "{}")
    assert not stale.exists() and live.exists() and (tmp_path / "out.json").read_text() == "{}"


def test_failed_replacement_keeps_the_old_directory(tmp_path):
    from ssm_profile.base.io import atomic_directory

    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(final, overwrite=True) as fresh:
            (fresh / "new.txt").write_text("new")
            raise RuntimeError("failed half-way")
    assert [p.name for p in final.iterdir()] == ["old.txt"] and _leftovers(tmp_path) == []
    with atomic_directory(final, overwrite=True) as fresh:
        (fresh / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"] and _leftovers(tmp_path) == []


def test_ctrl_c_of_other_commands_prints_the_command_to_run_again(planned, tmp_path, monkeypatch, capsys):
    _, plan = planned

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("ssm_profile.pruning.apply.apply_plan", interrupted)
    argv = ["apply", "tiny-mamba", str(plan), "-o", str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == "ssm-profile: interrupted; run it again with: ssm-profile " + " ".join(argv)


def test_a_long_profile_is_announced_even_when_quiet(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("ssm_profile.profiling.estimate.estimate_profile_seconds", lambda *a: 3 * 3600.0)
    monkeypatch.setattr("ssm_profile.profiling.profile.profile_model", interrupted)
    assert main(["profile", "tiny-mamba", "-o", str(tmp_path / "run"), *TINY]) == 130
    assert "this profile should take about 3.0 h" in capsys.readouterr().err


def test_free_path_names_a_path_that_does_not_exist_yet(tmp_path):
    """Next-step hints (profile -> plan -> apply) and the TUI's save path must work when copied."""
    from ssm_profile.base.io import free_path

    assert free_path("plan.json", tmp_path) == "plan.json"
    (tmp_path / "plan.json").write_text("{}")
    (tmp_path / "plan-2.json").write_text("{}")
    assert free_path("plan.json", tmp_path) == "plan-3.json"
    (tmp_path / "pruned-tiny").mkdir()
    assert free_path("pruned-tiny", tmp_path) == "pruned-tiny-2"


def test_the_estimate_counts_only_the_pairs_a_sweep_measures():
    """A criterion that cannot score a target costs no trial: tiny-deltanet's estimate read 1.54x its
    run while it counted all 117 (target, criterion) pairs; 82 apply."""
    from ssm_profile.criteria import applicability
    from ssm_profile.criteria.masks import targets_for
    from ssm_profile.model.arch import find_mixers
    from ssm_profile.model.resolve import load_skeleton
    from ssm_profile.profiling.estimate import _applicable_pairs
    from ssm_profile.profiling.record import ProfileSettings

    criteria = ProfileSettings().criteria
    model = load_skeleton("tiny-deltanet")
    targets = {t.name for t in targets_for(find_mixers(model))}
    rows = applicability(model, criteria)
    refused = [r for r in rows if not r["applies"]]
    pairs = _applicable_pairs(model, criteria, targets)
    assert refused and pairs == len(targets) * len(criteria) - len(refused)
    assert _applicable_pairs(model, criteria, {"in_proj_qkv"}) == sum(
        1 for r in rows if r["group"] == "in_proj_qkv" and r["applies"])
