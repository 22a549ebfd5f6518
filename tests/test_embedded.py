"""The embedded models are genuinely trained: they beat a bigram model on held-out text."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ssm_profile.calibration.data import consecutive_windows
from ssm_profile.model.resolve import embedded_data, embedded_dir, load_model

SEQ_LEN = 256  # the protocol of examples/train_embedded.py


@pytest.mark.parametrize("name", [pytest.param("tiny-mamba", marks=pytest.mark.slow),
                                  pytest.param("tiny-mamba2", marks=pytest.mark.slow), "tiny-deltanet"])  # one by default
def test_embedded_model_beats_bigram_on_held_out_text(name):
    metrics = json.loads((embedded_dir(name) / "metrics.json").read_text())
    loaded = load_model(name)
    ids = torch.tensor(loaded.tokenizer(embedded_data("evaluation.txt").read_text())["input_ids"])
    windows = consecutive_windows(ids, 10_000, SEQ_LEN, "evaluation")
    total = 0.0
    with torch.no_grad():
        for batch in windows.split(16):
            total += float(loaded.model(input_ids=batch, labels=batch).loss) * batch.numel()
    loss = total / windows.numel()
    # The card's number is reproducible from the shipped weights and text ...
    assert loss == pytest.approx(metrics["eval_loss"], abs=2e-3)
    # ... and clearly better than the bigram baseline fitted on the same training text.
    assert math.exp(loss) < 0.8 * metrics["bigram_eval_perplexity"]


def test_the_gated_deltanet_hybrid_beats_the_bigram_by_at_least_tiny_mamba2s_margin():
    """The third embedded model is a hybrid in the Qwen3.5 layout (Gated DeltaNet layers and a full-
    attention layer), about 1M parameters, trained as well as the Mamba-2 one or better."""
    from ssm_profile.model.arch import find_mixers

    ours, theirs = (json.loads((embedded_dir(n) / "metrics.json").read_text()) for n in ("tiny-deltanet", "tiny-mamba2"))
    assert ours["bigram_eval_loss"] - ours["eval_loss"] >= theirs["bigram_eval_loss"] - theirs["eval_loss"]
    model = load_model("tiny-deltanet").model
    types = model.config.layer_types
    assert "full_attention" in types and len(find_mixers(model)) == types.count("linear_attention") >= 1
    assert 0.8e6 < sum(p.numel() for p in model.parameters()) < 1.2e6


def test_package_data_is_small():
    root = embedded_dir("")
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert size < 15 * 2**20


def test_calibration_and_evaluation_texts_do_not_overlap():
    calib = set(embedded_data("calibration.txt").read_text().splitlines())
    evals = set(embedded_data("evaluation.txt").read_text().splitlines())
    assert len(calib) > 500 and len(evals) > 500
    assert not (calib & evals)


@pytest.mark.slow
def test_the_embedded_hybrid_runs_the_default_commands_offline_and_keeps_its_promise(tmp_path):
    """``profile`` (defaults), ``plan --ratio 0.3``, ``apply --validate`` and ``report`` on tiny-deltanet,
    with no network: the plan's promise holds on the verification windows it never saw."""
    from ssm_profile.cli.main import main
    from ssm_profile.documents import load_plan, load_validation

    run, plan, out = tmp_path / "run", tmp_path / "plan.json", tmp_path / "pruned"
    assert main(["profile", "tiny-deltanet", "-o", str(run), "--quiet"]) == 0
    assert main(["plan", str(run), "--ratio", "0.3", "-o", str(plan)]) == 0
    promise = load_plan(plan).verification
    assert promise is not None and promise.kept
    assert main(["apply", "tiny-deltanet", str(plan), "-o", str(out), "--validate", "--quiet"]) == 0
    assert load_validation(out / "validation.json").within_tolerance is True
    assert main(["report", str(run), "--plan", str(plan), "--validation", str(out / "validation.json"),
                 "-o", str(tmp_path / "report.html")]) == 0
