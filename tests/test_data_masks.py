"""Data windows and the mask frontend."""

from __future__ import annotations

import json

import pytest
import torch

from ssm_profile.model.arch import find_mixers
from conftest import tiny_mamba, tiny_mamba2

from ssm_profile.calibration import data as data_module
from ssm_profile.calibration.data import (DataSpec, batch_losses, consecutive_windows, has_blocked_head, load_dataset, read_text,
                           sample_windows)
from ssm_profile.base.errors import DataError, SSMProfileError
from ssm_profile.mixers.choice import Kernels
from ssm_profile.criteria.masks import MaskApplier, Target, element_mask, select_units, targets_for, unit_mask
from ssm_profile.model.resolve import load_model


@pytest.fixture(scope="module")
def tokenizer():
    return load_model("tiny-mamba").tokenizer


def logits_path_losses(model, windows, batch_size):
    """batch_losses as a textbook: full logits, cross_entropy per token, mean per window."""
    out = []
    with torch.no_grad():
        for batch in windows.split(batch_size):
            logits = model(input_ids=batch).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                     batch[:, 1:].reshape(-1), reduction="none")
            out.append(loss.view(batch.shape[0], -1).mean(dim=1))
    return torch.cat(out).double()


@pytest.mark.parametrize("make", [tiny_mamba, tiny_mamba2], ids=["mamba1", "mamba2"])
@pytest.mark.parametrize("head_rows", [7, 128])
def test_blocked_head_losses_equal_the_logits_path(make, head_rows, monkeypatch):
    monkeypatch.setattr(data_module, "HEAD_ROWS", head_rows)
    model = make(layers=2)
    windows = torch.randint(0, model.config.vocab_size, (5, 19), generator=torch.Generator().manual_seed(0))
    assert has_blocked_head(model)
    got, want = batch_losses(model, windows, 2), logits_path_losses(model, windows, 2)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # the bench's "profiler as it was": the loss from whole-batch logits
    assert not has_blocked_head(model, Kernels.reference())
    assert torch.equal(batch_losses(model, windows, 2, kernels=Kernels.reference()), want)
    # a hook on the head could see or change the logits: such a model takes the logits path
    handle = model.lm_head.register_forward_hook(lambda module, args, out: out * 2)
    try:
        assert not has_blocked_head(model)
        assert torch.equal(batch_losses(model, windows, 2), logits_path_losses(model, windows, 2))
    finally:
        handle.remove()


def test_embedded_data_is_disjoint_and_seeded(tokenizer):
    a = load_dataset(tokenizer, DataSpec(nsamples=4, eval_samples=3, seqlen=64, seed=1))
    b = load_dataset(tokenizer, DataSpec(nsamples=4, eval_samples=3, seqlen=64, seed=1))
    c = load_dataset(tokenizer, DataSpec(nsamples=4, eval_samples=3, seqlen=64, seed=2))
    assert a.calibration.shape == (4, 64) and a.evaluation.shape == (3, 64)
    assert torch.equal(a.calibration, b.calibration) and not torch.equal(a.calibration, c.calibration)
    assert a.sources["calibration"] != a.sources["evaluation"]


def test_one_file_is_split_without_overlap(tmp_path, tokenizer):
    path = tmp_path / "t.txt"
    path.write_text(" ".join(f"word{i}" for i in range(3000)))
    ds = load_dataset(tokenizer, DataSpec(calibration=str(path), nsamples=2, eval_samples=2, seqlen=32))
    assert "first 80%" in ds.sources["calibration"] and "last 20%" in ds.sources["evaluation"]


@pytest.mark.parametrize("content,match", [
    ('{"text": "ok"}\nnot json\n', "not valid JSON"),
    ('{"txt": "missing"}\n', '"text" field'),
    ("", "no records"),
])
def test_malformed_jsonl_is_one_clear_error(tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        read_text(str(path))


def test_missing_and_short_data(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_text(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="fewer than --seqlen"):
        sample_windows(torch.arange(10), 2, 64, 0, "calibration")
    with pytest.raises(DataError, match="positive"):
        DataSpec(seqlen=0)
    assert consecutive_windows(torch.arange(100), 10, 30, "evaluation").shape == (3, 30)


def test_element_mask_rows_and_nm():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    row = element_mask(scores, 0.5, "row")
    assert row.tolist() == [[True, False, True, False], [False, False, True, True]]
    tensor = element_mask(scores, 0.25, "tensor")
    assert (~tensor).sum() == 2
    nm = element_mask(scores, 0.0, nm=(2, 4))
    assert nm.sum(dim=1).tolist() == [2, 2]


def test_select_units_balances_blocks(mamba2_model):
    mixer = find_mixers(mamba2_model)[0]
    fam = mixer.unit_family("state")  # 2 groups x 4 states
    units = select_units(torch.tensor([5.0, 1, 2, 3, 0, 9, 9, 9]), fam, 0.5)
    assert units.tolist() == [1, 2, 4, 5]  # two lowest of each group
    assert select_units(torch.zeros(8), fam, 0.99).numel() == 6  # a group keeps one state


def test_mask_applier_restores_bits(mamba1_model):
    mixer = find_mixers(mamba1_model)[0]
    before = {k: v.clone() for k, v in mamba1_model.state_dict().items()}
    fam = mixer.unit_family("channel")
    with MaskApplier(mamba1_model) as applier:
        applier.apply(unit_mask(mixer, fam, torch.tensor([0, 3])))
        assert (mixer.module.out_proj.weight[:, 3] == 0).all() and (mixer.module.D[[0, 3]] == 0).all()
    assert all(torch.equal(before[k], v) for k, v in mamba1_model.state_dict().items())


def test_targets_cover_groups_and_units(mamba1_model, mamba2_model):
    names1 = [t.name for t in targets_for(find_mixers(mamba1_model))]
    names2 = [t.name for t in targets_for(find_mixers(mamba2_model))]
    assert {"in_proj", "x_proj", "dt_proj", "A_log", "unit:channel", "unit:state", "unit:dt_rank"} <= set(names1)
    assert {"dt_bias", "norm", "unit:head", "unit:head_channel", "unit:state"} <= set(names2)
    assert "unit:group" not in names2
    assert Target.parse("unit:state").kind == "unit"


@pytest.mark.parametrize("comparison", ["tensor", "row"])
def test_element_mask_equals_a_stable_sort_with_ties(comparison):
    """The selection-based mask removes exactly a stable argsort's k lowest (ties: lower index first)."""
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        rows, cols = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 30, (1,), generator=g))
        x = torch.randint(0, 3, (rows, cols), generator=g).float() if trial % 2 else torch.randn(rows, cols, generator=g)
        flat = x.reshape(rows, -1) if comparison == "row" else x.reshape(1, -1)
        for sparsity in (0.1, 0.5, 0.9, 1.0):
            k = int(round(sparsity * flat.shape[1]))
            expected = torch.ones_like(flat, dtype=torch.bool)
            expected.scatter_(1, torch.argsort(flat, dim=1, stable=True)[:, :k], False)
            assert torch.equal(element_mask(x, sparsity, comparison), expected.view_as(x))
