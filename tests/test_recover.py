"""`ssm-profile recover`: distillation keeps the pruning, resumes exactly, runs data-parallel, never
trains on the verification text, and refuses bad inputs in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssm_profile.pruning.apply import apply_plan
from ssm_profile.cli.main import main
from ssm_profile.calibration.data import DataSpec, load_dataset
from ssm_profile.recovery.distill import ngram_overlap
from ssm_profile.documents import RECOVERY_FILE, load_recovery
from ssm_profile.recovery.train import OVERLAP_SPAN, RecoverSettings, checkpoint_dir, recover, training_stream
from ssm_profile.model.resolve import embedded_data, load_model

from test_apply_validate import make_plan
from test_report import run_dir  # noqa: F401  (a fixture: a tiny profile run)

# small windows and batches: a step takes a fraction of a second on one thread
DATA = {"calibration": None, "evaluation": None, "nsamples": 4, "eval_samples": 2, "seqlen": 32, "seed": 0,
        "verify_samples": 4}
QUICK = RecoverSettings(steps=3, lr=1e-2, batch_size=2, checkpoint_every=2, lm_eval=False)
SPARSE_ACTIONS = [{"target": "in_proj", "structure": "unstructured", "criterion": "magnitude", "sparsity": 0.3},
                  {"target": "out_proj", "structure": "2:4", "criterion": "magnitude", "sparsity": 0.5}]


@pytest.fixture(scope="module")
def sparse_dir(tmp_path_factory) -> Path:
    """tiny-mamba with 30% of in_proj (unstructured) and out_proj at 2:4 zeroed."""
    loaded = load_model("tiny-mamba")
    out = tmp_path_factory.mktemp("recover") / "sparse"
    apply_plan(loaded, make_plan(loaded, SPARSE_ACTIONS, data=DATA), out)
    return out


@pytest.fixture(scope="module")
def recovered(tmp_path_factory, sparse_dir):
    """``sparse_dir`` after three quick steps of recovery: (output folder, record)."""
    out = tmp_path_factory.mktemp("recovered") / "recovered"
    return out, recover(sparse_dir, out, settings=QUICK)


def weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


def test_masks_hold_unstructured_and_nm_and_the_output_loads_plainly(recovered, sparse_dir):
    from transformers import AutoModelForCausalLM

    out, record = recovered
    before, after = weights(sparse_dir), weights(out)
    for name, tensor in after.items():
        if name.endswith(("mixer.in_proj.weight", "mixer.out_proj.weight")):
            assert torch.equal(tensor == 0, before[name] == 0), name  # the same zeros, no new ones
        if name.endswith("mixer.out_proj.weight"):
            assert ((tensor.reshape(-1, 4) == 0).sum(dim=1) == 2).all()  # still 2:4
    assert not torch.equal(after["backbone.layers.0.mixer.in_proj.weight"],
                           before["backbone.layers.0.mixer.in_proj.weight"])  # it did train
    assert record.sparsity.nonzero_before == record.sparsity.nonzero_after
    assert record.sparsity.frozen_entries == sum(int((t == 0).sum()) for t in before.values())
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(model.state_dict()["backbone.layers.1.mixer.out_proj.weight"],
                       after["backbone.layers.1.mixer.out_proj.weight"])
    saved = load_recovery(out / RECOVERY_FILE)
    assert saved.to_dict() == json.loads((out / RECOVERY_FILE).read_text())
    assert [p.step for p in saved.curve if p.kd_loss is not None] == [1, 2, 3]
    assert saved.verification_points()[0][0] == 0 and saved.verification_points()[-1][0] == 3
    assert (out / "pruning.json").is_file() and not checkpoint_dir(out).exists()
    assert sorted(p.name for p in sparse_dir.iterdir()) == sorted(["config.json", "generation_config.json",
                                                                    "model.safetensors", "pruning.json",
                                                                    "tokenizer.json", "tokenizer_config.json"])


def test_masks_come_from_the_pruning_record_not_from_any_zero(sparse_dir):
    """apply records which parameters it zeroed; an exact zero anywhere else is trainable."""
    from ssm_profile.recovery.distill import frozen_masks
    from ssm_profile.recovery.train import zeroed_parameters

    names = zeroed_parameters(sparse_dir)
    pruned = load_model(str(sparse_dir)).model
    zeroed = {n for n, p in pruned.named_parameters() if bool((p == 0).any())}
    assert names and names <= zeroed
    assert all(n.endswith(("mixer.in_proj.weight", "mixer.out_proj.weight")) for n in names)
    with torch.no_grad():
        pruned.backbone.layers[0].mixer.D[0] = 0.0  # a dense weight that happens to be zero
    assert "backbone.layers.0.mixer.D" in frozen_masks(pruned)  # inferring from zeros would freeze it
    assert set(frozen_masks(pruned, names)) == names


class Interrupt(Exception):
    pass


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, sparse_dir):
    settings = RecoverSettings(steps=5, lr=1e-2, batch_size=2, checkpoint_every=2, lm_eval=False)
    whole = recover(sparse_dir, tmp_path / "whole", settings=settings)

    def stop_at_three(done, total, label):
        if done == 3 and label.startswith("KD"):
            raise Interrupt

    with pytest.raises(Interrupt):
        recover(sparse_dir, tmp_path / "resumed", settings=settings, progress=stop_at_three)
    assert (checkpoint_dir(tmp_path / "resumed") / "state.json").is_file()
    assert not (tmp_path / "resumed").exists()
    resumed = recover(sparse_dir, tmp_path / "resumed", settings=settings, resume=True)
    assert any("resumed from step 2" in n for n in resumed.notes)
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "resumed")
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert [p.kd_loss for p in whole.curve[1:]] == [p.kd_loss for p in resumed.curve[1:]]


def test_resume_with_other_options_is_refused(tmp_path, sparse_dir):
    from ssm_profile.base.errors import SSMProfileError

    settings = RecoverSettings(steps=4, lr=1e-2, batch_size=2, checkpoint_every=2, lm_eval=False)

    def stop(done, total, label):
        if done == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        recover(sparse_dir, tmp_path / "out", settings=settings, progress=stop)
    with pytest.raises(SSMProfileError, match="another settings"):
        recover(sparse_dir, tmp_path / "out", settings=RecoverSettings(steps=4, lr=5e-3, batch_size=2,
                                                                       checkpoint_every=2, lm_eval=False), resume=True)
    with pytest.raises(SSMProfileError, match="--resume"):  # a leftover checkpoint is not silently dropped
        recover(sparse_dir, tmp_path / "out", settings=settings)


def test_a_checkpoint_of_other_inputs_is_not_resumed(tmp_path):
    from ssm_profile.base.errors import SSMProfileError
    from ssm_profile.recovery.train import _load_checkpoint

    identity = {"pruned": "sha256:a", "pruning_record": "sha256:b", "teacher": "sha256:c", "training_text": "sha256:d"}
    (tmp_path / "state.json").write_text(json.dumps({"identity": identity}))
    for key, says in (("pruning_record", "pruning.json changed"), ("training_text", "training text changed"),
                      ("pruned", "pruned checkpoint's weights changed"), ("teacher", "teacher's weights changed")):
        with pytest.raises(SSMProfileError, match=f"cannot resume from .*{says}.*--overwrite without --resume"):
            _load_checkpoint(tmp_path, None, None, {**identity, key: "sha256:other"})
    older = {k: v for k, v in identity.items() if k != "training_text"}
    (tmp_path / "state.json").write_text(json.dumps({"identity": older}))
    with pytest.raises(SSMProfileError, match="does not record its training text .an older version"):
        _load_checkpoint(tmp_path, None, None, identity)


@pytest.mark.slow  # ~4 s: an interrupted recovery and two refused resumes
def test_resume_from_a_replaced_input_is_refused(tmp_path, sparse_dir):
    """An input replaced between the runs (pruning.json, the training text): the checkpoint trained on the
    old one is not continued with the new."""
    from ssm_profile.base.errors import SSMProfileError

    pruned, text = tmp_path / "pruned", tmp_path / "train.txt"
    shutil.copytree(sparse_dir, pruned)
    text.write_text(embedded_data("calibration.txt").read_text())
    settings = RecoverSettings(steps=4, lr=1e-2, batch_size=2, checkpoint_every=2, lm_eval=False, data=str(text))

    def stop(done, total, label):
        if done == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        recover(pruned, tmp_path / "out", settings=settings, progress=stop)
    record = json.loads((pruned / "pruning.json").read_text())
    original, record["created"] = (pruned / "pruning.json").read_text(), "2000-01-01T00:00:00+00:00"
    (pruned / "pruning.json").write_text(json.dumps(record))  # apply run again: the same weights, another record
    with pytest.raises(SSMProfileError, match="pruning.json changed since its checkpoint"):
        recover(pruned, tmp_path / "out", settings=settings, resume=True)
    (pruned / "pruning.json").write_text(original)
    text.write_text(text.read_text().replace(" the ", " thy "))
    with pytest.raises(SSMProfileError, match="the training text changed since its checkpoint"):
        recover(pruned, tmp_path / "out", settings=settings, resume=True)
    assert not (tmp_path / "out").exists() and (checkpoint_dir(tmp_path / "out") / "state.json").is_file()


def test_training_text_never_holds_the_verification_windows():
    tokenizer = load_model("tiny-mamba").tokenizer
    spec = DataSpec(seqlen=64)
    verification = load_dataset(tokenizer, spec).verification
    stream, source = training_stream(tokenizer, spec, None)
    assert source == "embedded:calibration.txt"
    assert ngram_overlap(stream, verification, OVERLAP_SPAN) == 0
    # the check can fail: the evaluation text holds every verification window
    evaluation, _ = training_stream(tokenizer, spec, str(embedded_data("evaluation.txt")))
    assert ngram_overlap(evaluation, verification, OVERLAP_SPAN) > 0


def test_training_on_the_verification_text_is_refused(tmp_path, sparse_dir, capsys):
    code = main(["recover", str(sparse_dir), "-o", str(tmp_path / "out"), "--data",
                 str(embedded_data("evaluation.txt")), "--steps", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "verification windows" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_user_errors_are_one_line(tmp_path, sparse_dir, mamba1_dir, capsys):
    def fails(*argv: str, says: str) -> None:
        assert main(["recover", *argv, "--quiet", "--steps", "1", "--no-lm-eval"]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err

    fails(str(tmp_path / "missing"), "-o", str(tmp_path / "a"), says="not a pruned model directory")
    (tmp_path / "exists").mkdir()
    fails(str(sparse_dir), "-o", str(tmp_path / "exists"), says="already exists")
    fails(str(sparse_dir), "-o", str(sparse_dir / "inside"), says="lies inside the pruned checkpoint")
    fails(str(sparse_dir), "-o", str(tmp_path / "b"), "--teacher", str(mamba1_dir), says="vocabulary")
    fails(str(sparse_dir), "-o", str(tmp_path / "c"), "--lr", "0", says="--lr must be a positive finite number")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_plan_recover_section_sets_the_budget(tmp_path):
    from ssm_profile.documents import as_plan

    loaded = load_model("tiny-mamba")
    plan = make_plan(loaded, SPARSE_ACTIONS[:1], data=DATA)
    plan["recover"] = {"steps": 7, "lm_weight": 0.25}
    parsed = as_plan(plan)
    settings = RecoverSettings().resolved(parsed)
    assert (settings.steps, settings.minutes, settings.lm_weight) == (7, None, 0.25)
    assert RecoverSettings(minutes=2.0).resolved(parsed).steps is None  # the command line wins
    assert parsed.to_dict() == plan
    plan["recover"] = {"steps": 0}
    from ssm_profile.base.errors import PlanError

    with pytest.raises(PlanError, match="recover"):
        as_plan(plan)


def _torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--no-python",
            str(Path(sys.executable).with_name("ssm-profile"))]


def _recover_on_two_processes(sparse_dir: Path, out: Path, steps: int):
    args = ["recover", str(sparse_dir), "-o", str(out), "--steps", str(steps), "--batch-size", "2", "--lr", "0.01",
            "--no-lm-eval", "--quiet", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*_torchrun(), *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return load_recovery(out / RECOVERY_FILE)


@pytest.mark.slow  # 10-13 s: keeps the default run under 5 minutes
def test_two_processes_end_with_identical_weights(tmp_path, sparse_dir):
    from transformers import AutoModelForCausalLM

    record = _recover_on_two_processes(sparse_dir, tmp_path / "ddp", steps=1)
    assert record.world.size == 2 and len(set(record.world.rank_weights)) == 1
    assert record.world.rank_weights[0] == record.output.fingerprint
    AutoModelForCausalLM.from_pretrained(tmp_path / "ddp")


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, sparse_dir):
    record = _recover_on_two_processes(sparse_dir, tmp_path / "ddp", steps=3)
    single = recover(sparse_dir, tmp_path / "single", settings=RecoverSettings(steps=3, lr=1e-2, batch_size=2,
                                                                              lm_eval=False))
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "single")
    for name in a:  # the same updates, their gradients summed in another order
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
    assert [round(p.kd_loss, 4) for p in record.curve[1:]] == [round(p.kd_loss, 4) for p in single.curve[1:]]


def test_report_shows_the_recovery_curve(recovered, run_dir, tmp_path):  # noqa: F811
    out, record = recovered
    page = tmp_path / "report.html"
    assert main(["report", str(run_dir), "-o", str(page), "--recovery", str(out)]) == 0
    html = page.read_text()
    section = html[html.index('<section id="recovery"'):]
    section = section[:section.index("</section>")]
    assert section.count("<polyline") == 2 and "increase removed" in section
    assert f"{record.recovered_fraction():.0%}" in section
    markdown = tmp_path / "report.md"  # the same numbers in the Markdown summary
    assert main(["report", str(run_dir), "-o", str(markdown), "--format", "md", "--recovery", str(out)]) == 0
    recovery_md = markdown.read_text().split("## Recovery", 1)[1]
    assert f"| share of the increase removed | {record.recovered_fraction():.0%} |" in recovery_md
    assert all(f"| {step} | {loss:.4f} |" in recovery_md for step, loss in record.verification_points())
    run_copy = tmp_path / "run"  # found without the option when the run folder holds recovery.json
    shutil.copytree(run_dir, run_copy)
    shutil.copyfile(out / RECOVERY_FILE, run_copy / RECOVERY_FILE)
    assert main(["report", str(run_copy)]) == 0
    assert '<section id="recovery"' in (run_copy / "report.html").read_text()


def test_a_time_budget_is_turned_into_steps(tmp_path, sparse_dir):
    record = recover(sparse_dir, tmp_path / "out", settings=RecoverSettings(minutes=0.005, lr=1e-2, batch_size=2,
                                                                           lm_eval=False))
    assert record.progress.steps_done == record.progress.total_steps >= 4  # the probe steps at least
    assert record.settings.steps is None and record.settings.minutes == 0.005


def test_apply_names_the_recover_command_a_plan_asks_for(tmp_path, capsys):
    loaded = load_model("tiny-mamba")
    plan = make_plan(loaded, SPARSE_ACTIONS[:1], data=DATA)
    plan["recover"] = {"steps": 5}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert main(["apply", "tiny-mamba", str(tmp_path / "plan.json"), "-o", str(tmp_path / "pruned"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"next: ssm-profile recover {tmp_path / 'pruned'} -o {tmp_path / 'pruned-recovered'}" in out


def test_the_time_budget_says_it_bounds_training_only(recovered, capsys):
    """`--minutes 0.5` took 60 s: the help and the summary say the budget bounds the training, and the whole."""
    from ssm_profile.cli.recover_cmd import print_recovery

    assert main(["recover", "--help"]) == 0
    assert "bounds the training only" in " ".join(capsys.readouterr().out.split())
    _, record = recovered
    print_recovery(record)
    out = " ".join(capsys.readouterr().out.split())
    assert f"{record.progress.seconds:.0f} s in all with loading and measuring" in out


def test_diverging_training_stops_at_its_step_in_one_line_and_writes_nothing(tmp_path, sparse_dir, capsys):
    """--lr inf was refused earlier; a finite but absurd one trained to non-finite weights and exit 0."""
    out = tmp_path / "out"
    code = main(["recover", str(sparse_dir), "-o", str(out), "--lr", "1e30", "--steps", "4", "--batch-size", "2",
                 "--checkpoint-every", "1", "--no-lm-eval", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "training diverged at step" in err[0], err
    assert not out.exists()
    saved = checkpoint_dir(out) / "student.pt"
    if saved.exists():  # a checkpoint before the divergence holds finite weights only
        assert all(torch.isfinite(t).all() for t in torch.load(saved, weights_only=True).values()
                   if t.is_floating_point())


@pytest.mark.parametrize("damage", ["truncated student", "random optimizer", "state without a step"])
def test_resume_from_a_damaged_checkpoint_is_one_line(tmp_path, sparse_dir, capsys, damage):
    settings = RecoverSettings(steps=4, lr=1e-2, batch_size=2, checkpoint_every=2, lm_eval=False)

    def stop(done, total, label):
        if done == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        recover(sparse_dir, tmp_path / "out", settings=settings, progress=stop)
    where = checkpoint_dir(tmp_path / "out")
    if damage == "truncated student":
        (where / "student.pt").write_bytes((where / "student.pt").read_bytes()[:3000])
    elif damage == "random optimizer":
        (where / "optimizer.pt").write_bytes(os.urandom(5000))
    else:
        identity = json.loads((where / "state.json").read_text())["identity"]
        (where / "state.json").write_text(json.dumps({"identity": identity}))
    code = main(["recover", str(sparse_dir), "-o", str(tmp_path / "out"), "--resume", "--steps", "4", "--lr", "1e-2",
                 "--batch-size", "2", "--checkpoint-every", "2", "--no-lm-eval", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "checkpoint" in err[0] and "damaged" in err[0], err
