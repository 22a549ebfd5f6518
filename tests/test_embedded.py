"""The embedded models are genuinely trained: they beat a bigram model on held-out text."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ssm_profile.calibration.data import consecutive_windows
from ssm_profile.model.resolve import embedded_data, embedded_dir, load_model

SEQ_LEN = 256  # the protocol of examples/train_embedded.py


@pytest.mark.parametrize("name", [pytest.param("tiny-mamba", marks=pytest.mark.slow), "tiny-mamba2"])  # one in the default run
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


def test_package_data_is_small():
    root = embedded_dir("")
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert size < 15 * 2**20


def test_calibration_and_evaluation_texts_do_not_overlap():
    calib = set(embedded_data("calibration.txt").read_text().splitlines())
    evals = set(embedded_data("evaluation.txt").read_text().splitlines())
    assert len(calib) > 500 and len(evals) > 500
    assert not (calib & evals)
