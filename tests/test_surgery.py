"""Invariants of structured surgery on tiny random Mamba-1 and Mamba-2 models.

* a cut of zero units leaves logits bit-identical;
* zeroing units and then slicing them out gives the zeroed model's logits;
* a uniform cut + sync_config survives save_pretrained -> from_pretrained exactly, and removes
  exactly units x elements_per_unit parameters per layer;
* what stock configs cannot express is reported, and constraint violations raise ValueError.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import cached_step_logits, tiny_mamba, tiny_mamba2
from transformers import AutoModelForCausalLM
from transformers.utils import logging

from ssm_profile.model.arch import find_mixers
from ssm_profile.pruning.surgery import is_expressible, remove_layers, slice_units, sync_config, zero_units

torch.set_num_threads(1)
logging.set_verbosity_error()

IDS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))  # 12 > chunk_size 8


# time_step_rank=4: the default ceil(16/16) = 1 leaves no dt-rank direction to cut but the last.
MODELS = {
    "m1": lambda: tiny_mamba(time_step_rank=4),
    "m1_bias": lambda: tiny_mamba(time_step_rank=4, use_bias=True),
    "m2g2": lambda: tiny_mamba2(n_groups=2),
    "m2g1_bias": lambda: tiny_mamba2(n_groups=1, use_bias=True),
}


def _head_channels(drop_per_head: int, heads: int = 4, p: int = 8) -> list[int]:
    # A different set of channels in each head (only the count must match).
    return [h * p + (h + k) % p for h in range(heads) for k in range(drop_per_head)]


# (model, kind, units removed in every layer, stock-config expressible)
CUTS = [
    ("m1", "channel", [1, 5, 7, 9, 11, 13, 17, 19, 23, 29, 30, 31], True),  # E 32 -> 20, not k*hidden
    ("m1", "state", [2], True),
    ("m1", "dt_rank", [0, 3], True),
    ("m1_bias", "channel", [0, 2, 4, 6], True),
    ("m2g2", "head", [0, 3], True),  # one head per group -> E = 16 = 1 x hidden
    ("m2g2", "head_channel", _head_channels(4), True),
    ("m2g2", "state", [1, 6], True),  # one state per group
    ("m2g1_bias", "head", [1, 2], True),
    ("m2g1_bias", "head", [2], False),  # 3 heads x 8 = 24: not an int multiple of hidden_size 16
    ("m2g1_bias", "head_channel", _head_channels(4), True),
    ("m2g1_bias", "head_channel", _head_channels(2), False),  # 4 x 6 = 24
    ("m2g1_bias", "state", [0], True),
]
CUT_IDS = [f"{m}-{k}-{len(u)}" for m, k, u, _ in CUTS]


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def keep_of(mixer, kind: str, drop: list[int]) -> list[int]:
    return [u for u in range(mixer.unit_family(kind).count) if u not in set(drop)]


def scale_norm_eps(model, kind: str, drop: list[int], total: int) -> None:
    """Give the sliced gated norms eps * n_full/n_kept: the only term the weight rescale cannot absorb."""
    if kind in ("head", "head_channel"):
        for m in find_mixers(model):
            m.module.norm.variance_epsilon *= total / (total - len(drop))


@pytest.mark.parametrize("name,kind", sorted({(m, k) for m, k, _, _ in CUTS}))
def test_zero_unit_cut_is_bit_identical(name, kind):
    model = MODELS[name]()
    before = logits(model)
    for m in find_mixers(model):
        slice_units(m, kind, range(m.unit_family(kind).count))
        zero_units(m, kind, [])
    assert torch.equal(logits(model), before)


@pytest.mark.parametrize("name,kind,drop,_expr", CUTS, ids=CUT_IDS)
def test_slicing_zeroed_units_matches_zeroed_model(name, kind, drop, _expr):
    model = MODELS[name]()
    before = logits(model)
    total = find_mixers(model)[0].unit_family(kind).count
    for m in find_mixers(model):
        zero_units(m, kind, drop)
    zeroed = logits(model)
    assert not torch.allclose(zeroed, before, atol=1e-3)  # the cut is not trivially a no-op
    for m in find_mixers(model):
        slice_units(m, kind, keep_of(m, kind, drop))
    scale_norm_eps(model, kind, drop, total)
    torch.testing.assert_close(logits(model), zeroed, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kind,drop", [("head", [0, 3]), ("head_channel", _head_channels(4))])
def test_mamba2_gated_norm_rescale_exact_up_to_eps(kind, drop):
    model = MODELS["m2g2"]()
    for m in find_mixers(model):
        zero_units(m, kind, drop)
    zeroed = logits(model)
    for m in find_mixers(model):
        slice_units(m, kind, keep_of(m, kind, drop))
    sliced = logits(model)
    # With the stock eps the only difference is eps vs eps * n_kept/n_full: small, not zero.
    assert (sliced - zeroed).abs().max() < 0.05
    scale_norm_eps(model, kind, drop, 32 if kind == "head_channel" else 4)
    torch.testing.assert_close(logits(model), zeroed, atol=2e-5, rtol=1e-5)
    # Without the sqrt(n_full/n_kept) weight rescale the sliced model is far off.
    with torch.no_grad():
        for m in find_mixers(model):
            m.module.norm.weight /= math.sqrt(2.0)  # half of each group's channels were cut
    assert (logits(model) - zeroed).abs().max() > 0.1


@pytest.mark.parametrize("name,kind,drop,expressible", CUTS, ids=CUT_IDS)
def test_uniform_cut_round_trip(tmp_path, name, kind, drop, expressible):
    model = MODELS[name]()
    n_before = sum(p.numel() for p in model.parameters())
    per_unit = [m.unit_family(kind).elements_per_unit(m) for m in find_mixers(model)]
    for m in find_mixers(model):
        slice_units(m, kind, keep_of(m, kind, drop))
    assert n_before - sum(p.numel() for p in model.parameters()) == len(drop) * sum(per_unit)
    config_before = model.config.to_dict()
    problems = sync_config(model)
    assert is_expressible(model) == (not problems, problems)
    if not expressible:
        assert problems and "hidden_size" in problems[0]
        assert model.config.to_dict() == config_before  # nothing half-written
        return
    assert problems == []
    sliced = logits(model)
    model.save_pretrained(tmp_path)
    assert list(tmp_path.glob("*.safetensors"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model)
    assert torch.equal(logits(reloaded), sliced)
    assert [m.dims() for m in find_mixers(reloaded)] == [m.dims() for m in find_mixers(model)]


def test_mamba1_intermediate_size_wins_over_expand(tmp_path):
    model = MODELS["m1"]()
    for m in find_mixers(model):
        slice_units(m, "channel", range(20))
    assert sync_config(model) == []
    assert (model.config.intermediate_size, model.config.expand) == (20, 2)  # 20 is not 2 x 16
    model.save_pretrained(tmp_path)
    cfg = AutoModelForCausalLM.from_pretrained(tmp_path).config
    assert cfg.intermediate_size == 20


def test_dt_rank_zeroing_is_equivalent_to_slicing():
    # dt = dt_proj.W @ x_proj_dt(x) + bias: zeroing x_proj row r makes input r of dt_proj 0, so
    # column r no longer contributes, exactly as if it were sliced. Zeroing only the dt_proj
    # column (one side of the coupling) already gives the same function.
    model = MODELS["m1"]()
    before = logits(model)
    with torch.no_grad():
        for m in find_mixers(model):
            m.module.dt_proj.weight[:, 1] = 0
    one_side = logits(model)
    assert not torch.allclose(one_side, before, atol=1e-3)
    for m in find_mixers(model):
        zero_units(m, "dt_rank", [1])
    assert torch.equal(logits(model), one_side)
    for m in find_mixers(model):
        slice_units(m, "dt_rank", [0, 2, 3])
    torch.testing.assert_close(logits(model), one_side, atol=2e-5, rtol=1e-5)
    assert model.backbone.layers[0].mixer.time_step_rank == 3


@pytest.mark.parametrize("name", ["m1", "m2g2"])
def test_per_layer_widths_run_with_cache_but_are_not_expressible(name):
    model = MODELS[name]()
    m0, m1 = find_mixers(model)
    if m0.kind == "mamba1":
        slice_units(m0, "channel", range(20))
        slice_units(m1, "state", [0, 3])
    else:
        slice_units(m0, "head", [0, 2])
        slice_units(m1, "head_channel", [c for c in range(32) if c % 8 < 5])
        slice_units(m1, "state", [0, 3, 4, 5])
    config_before = model.config.to_dict()
    problems = sync_config(model)
    assert problems and all("layers differ" in p for p in problems)
    assert model.config.to_dict() == config_before
    assert is_expressible(model)[0] is False
    # The recurrent (one-token) path reads the updated sizes too.
    with torch.no_grad():
        full = model(IDS).logits
        step = cached_step_logits(model, IDS[:, :-1], IDS[:, -1:])
    torch.testing.assert_close(step[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["m1", "m2g2"])
def test_remove_layers_round_trip(tmp_path, name):
    make = tiny_mamba if name == "m1" else tiny_mamba2
    model = make(layers=3)
    # Reference: the same model with layer 0 skipped (its block returns its input).
    hook = model.backbone.layers[0].register_forward_hook(lambda mod, args, out: args[0])
    skipped = logits(model)
    hook.remove()
    assert remove_layers(model, [0]) == {1: 0, 2: 1}
    assert model.config.num_hidden_layers == 2 and len(model.config.layer_types) == 2
    assert [b.layer_idx for b in model.backbone.layers] == [0, 1]
    assert [b.mixer.layer_idx for b in model.backbone.layers] == [0, 1]
    assert torch.equal(logits(model), skipped)
    with torch.no_grad():  # the cache is indexed by the renumbered layer_idx
        step = cached_step_logits(model, IDS[:, :-1], IDS[:, -1:])
    torch.testing.assert_close(step[:, -1], skipped[:, -1], atol=1e-5, rtol=1e-5)
    assert sync_config(model) == []
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 2
    assert torch.equal(logits(reloaded), skipped)


def test_constraint_violations_raise_and_leave_model_untouched():
    model = MODELS["m2g2"]()
    before = logits(model)
    m = find_mixers(model)[0]
    bad = [
        ("head", [0, 1]),  # both heads of group 0, none of group 1
        ("head_channel", list(range(8)) + list(range(8, 12)) + list(range(16, 24)) + list(range(24, 32))),
        ("state", [0, 1, 2, 4]),  # 3 states in group 0, 1 in group 1
        ("head", []),  # everything
        ("head", [0, 9]),  # out of range
        ("head", [1, 1, 2]),  # repeated
        ("group", [0]),  # not prunable
        ("channel", [0]),  # a Mamba-1 kind
    ]
    for kind, keep in bad:
        with pytest.raises(ValueError):
            slice_units(m, kind, keep)
    with pytest.raises(ValueError):
        zero_units(m, "state", [8])
    for layers in ([0, 1], [2], [0, 0]):
        with pytest.raises(ValueError):
            remove_layers(model, layers)
    assert torch.equal(logits(model), before)
    assert m.dims() == {"hidden_size": 16, "intermediate_size": 32, "state_size": 4, "conv_kernel": 4,
                        "num_heads": 4, "head_dim": 8, "n_groups": 2}


def test_mamba1_constraints():
    model = MODELS["m1"]()
    m = find_mixers(model)[0]
    for kind, keep in [("channel", []), ("state", [4]), ("dt_rank", [-1]), ("head", [0])]:
        with pytest.raises(ValueError):
            slice_units(m, kind, keep)


@pytest.mark.parametrize("use_bias", [False, True])
def test_mamba2_groups_cover_every_mixer_parameter(use_bias):
    # Every Mamba-2 mixer element except out_proj.bias (hidden-sized) belongs to exactly one
    # group; in_proj.bias was once missing from the group family.
    m = find_mixers(tiny_mamba2(n_groups=2, use_bias=use_bias))[0]
    fam = m.unit_family("group")
    total = sum(p.numel() for n, p in m.module.named_parameters() if n != "out_proj.bias")
    assert fam.count * fam.elements_per_unit(m) == total
    zero_units(m, "group", [0, 1])
    assert all(p.abs().sum() == 0 for n, p in m.module.named_parameters() if n != "out_proj.bias")
