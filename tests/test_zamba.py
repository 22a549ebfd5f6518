"""Zamba (v1): its multi-head Mamba-1 mixers (``ZambaMambaMixer``: per-head ``x_proj_weight``,
``dt_proj_weight``, ``dt_proj_bias``; x and z rows interleaved in ``in_proj``) as kind ``mamba1``.

* anatomy: parameter groups, FLOPs, state bytes, units and dynamics against numbers computed by hand;
* coupled units: every unit's zeroed elements against an oracle read off transformers' own layout
  (``in_proj`` output viewed as (..., E, 2), channel c = h·P + p, per-head tensors indexed [h, ..., p]);
* the other invariants (zero-unit cut identical, sliced = zeroed, plain reload, config fields, cuts the
  config cannot express stay zeros) run in tests/test_hybrid_surgery.py with the other hybrids; here
  the cache path after slicing, layer removal, and ``analyze`` on a saved checkpoint.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import cached_step_logits, tiny_hybrid
from transformers import AutoModelForCausalLM
from transformers.utils import logging

from ssm_profile.cli.main import main
from ssm_profile.model.analysis import analyze
from ssm_profile.model.arch import MAMBA1, find_mixers, other_recurrent_layers
from ssm_profile.pruning.surgery import remove_layers, slice_cuts, zero_units

logging.set_verbosity_error()
IDS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
# tiny_hybrid("zamba"): hidden 16, mamba_expand 2 (E 32), 2 heads of 16, d_state 4, dt_rank 4, conv kernel 4
HIDDEN, E, H, P, N, R, K = 16, 32, 2, 16, 4, 4, 4


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS, use_cache=False).logits


def _group(result, layer: int, name: str):
    return next(g for g in result.groups if g.layer == layer and g.group == name)


def test_anatomy_by_hand():
    model = tiny_hybrid("zamba")
    mixers = find_mixers(model)
    assert [(m.layer, m.kind) for m in mixers] == [(i, MAMBA1) for i in range(4)]
    assert other_recurrent_layers(model) == {}  # recognised, so no longer refused
    assert mixers[0].dims() == {"hidden_size": HIDDEN, "intermediate_size": E, "state_size": N, "conv_kernel": K,
                                "dt_rank": R, "num_heads": H, "head_dim": P}
    r = analyze(model)
    numel = {"in_proj": 2 * E * HIDDEN, "conv1d": E * K + E, "x_proj": H * (R + 2 * N) * P,
             "dt_proj": H * P * R + E, "A_log": E * N, "D": E, "out_proj": HIDDEN * E}
    assert {g.group: g.numel for g in r.groups if g.layer == 1 and g.scope == "mixer"} == numel
    flops = {"in_proj": 2 * 2 * E * HIDDEN, "conv1d": 2 * E * K, "x_proj": 2 * H * (R + 2 * N) * P,
             "dt_proj": 2 * H * P * R, "A_log": 8 * E * N, "D": 2 * E, "out_proj": 2 * HIDDEN * E}
    assert {g.group: g.flops_per_token for g in r.groups if g.layer == 0 and g.scope == "mixer"} == flops
    assert _group(r, 0, "A_log").state_bytes == E * N * 4 and _group(r, 0, "conv1d").state_bytes == E * (K - 1) * 4
    assert r.totals.state_bytes_per_sequence == 4 * (E * N + E * (K - 1)) * 4
    assert r.totals.parameters == sum(p.numel() for p in model.parameters())
    units = {u.kind: (u.count, u.params_per_unit) for u in r.units if u.layer == 0}
    channel = H * (2 * HIDDEN + K + 1 + (R + 2 * N) + R + 1 + N + 1 + HIDDEN)  # one channel in every head
    assert units == {"channel": (P, channel), "state": (N, 2 * H * P + H * P), "dt_rank": (R, 2 * H * P),
                     "head": (H, sum(numel.values()) // H)}
    # dynamics per channel (head after head): 1 / (softplus(dt_proj_bias) * |A|)
    m = mixers[0].module
    horizon = 1 / (torch.nn.functional.softplus(m.dt_proj_bias.double()).reshape(E, 1)
                   * torch.exp(m.A_log.double()).reshape(E, N))
    assert r.dynamics[0].horizon_per_channel == pytest.approx(horizon.median(dim=1).values.tolist(), rel=1e-5)


def oracle(module, kind: str, units: list[int]) -> dict[str, torch.Tensor]:
    """The elements a cut of ``units`` must zero, read off transformers' ZambaMambaMixer.forward: in_proj's
    output viewed as (..., E, 2) [x, z], E = heads x head_dim head-major; x_proj_weight (H, R+2N, P);
    dt_proj_weight (H, P, R); dt_proj_bias, D (H, P); A_log (H, P, N); out_proj reads y head after head."""
    masks = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in module.named_parameters()}
    in_w = masks["in_proj.weight"].view(H, P, 2, HIDDEN)
    conv, out = masks["conv1d.weight"].view(H, P, K), masks["out_proj.weight"].view(HIDDEN, H, P)
    conv_b = masks["conv1d.bias"].view(H, P)
    x_proj, dt_w, dt_b = masks["x_proj_weight"], masks["dt_proj_weight"], masks["dt_proj_bias"]
    a_log, d = masks["A_log"], masks["D"]
    for u in units:
        if kind == "channel":
            for t in (in_w[:, u], conv[:, u], conv_b[:, u], out[:, :, u], x_proj[:, :, u], dt_w[:, u], dt_b[:, u],
                      a_log[:, u], d[:, u]):
                t.fill_(True)
        elif kind == "head":
            for t in (in_w[u], conv[u], conv_b[u], out[:, u], x_proj[u], dt_w[u], dt_b[u], a_log[u], d[u]):
                t.fill_(True)
        elif kind == "state":
            x_proj[:, R + u].fill_(True)
            x_proj[:, R + N + u].fill_(True)
            a_log[:, :, u].fill_(True)
        elif kind == "dt_rank":
            x_proj[:, u].fill_(True)
            dt_w[:, :, u].fill_(True)
    return masks


@pytest.mark.parametrize("kind,units", [("channel", [0, 5, 15]), ("head", [1]), ("state", [0, 3]),
                                        ("dt_rank", [2])])
def test_units_match_transformers_layout(kind, units):
    mixer = find_mixers(tiny_hybrid("zamba"))[0]
    with torch.no_grad():
        for p in mixer.module.parameters():
            p.fill_(1.0)
    zero_units(mixer, kind, units)
    want = oracle(mixer.module, kind, units)
    for name, p in mixer.module.named_parameters():
        assert torch.equal(p == 0, want[name]), (kind, name)


@pytest.mark.parametrize("kind,drop,fields", [
    ("channel", list(range(1, 16, 2)), {"mamba_expand": [2, 1]}),  # 8 of 16 per head: E 16 = 1 x hidden
    ("head", [0], {"mamba_expand": [2, 1], "n_mamba_heads": [2, 1]}),
    ("state", [1, 2], {"mamba_d_state": [4, 2]}),
    ("dt_rank", [0, 3], {"mamba_dt_rank": [4, 2]}),
])
def test_sliced_model_runs_its_cache_and_reloads(tmp_path, kind, drop, fields):
    """The sliced model equals the zeroed one bit for bit (heads are independent, no norm over a cut
    width), and up to float rounding through the cache (ZambaHybridDynamicCache is built from the
    rewritten config); the plain reload is bit-identical."""
    model = tiny_hybrid("zamba")
    for m in find_mixers(model):
        zero_units(m, kind, drop)
    zeroed = copy.deepcopy(model)
    outcome = slice_cuts(model, {kind: {m.layer: drop for m in find_mixers(model)}})[kind]
    assert outcome.sliced and outcome.config == fields, outcome
    assert torch.equal(logits(model), logits(zeroed))
    with torch.no_grad():
        step, want = (cached_step_logits(m, IDS[:, :-1], IDS[:, -1:]) for m in (model, zeroed))
    # the single-step update sums over fewer channels: float32 rounding, measured 3.6e-7 on logits of
    # magnitude 3 (transformers 5.25), the order of the cached step vs the full forward (9e-7)
    assert (step - want).abs().max() <= 1e-6 * max(1.0, want.abs().max().item())
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(logits(reloaded), logits(zeroed))
    assert {k: v for k, v in json.loads((tmp_path / "config.json").read_text()).items() if k in fields} == \
        {k: v[1] for k, v in fields.items()}


def test_a_channel_cut_the_config_cannot_express_stays_zeros():
    model = tiny_hybrid("zamba")
    outcome = slice_cuts(model, {"channel": {m.layer: [0, 1, 2] for m in find_mixers(model)}})["channel"]
    assert not outcome.sliced  # 2 heads x 13 = 26 channels: no integer mamba_expand
    assert "Zamba mixer width 26 is not an integer multiple of hidden_size 16" in outcome.reason
    assert outcome.reason.count("\n") == 0


def test_layer_removal_keeps_two_hybrid_layers_or_none(tmp_path):
    model = tiny_hybrid("zamba")  # mamba, hybrid, mamba, hybrid
    with pytest.raises(ValueError, match="leaves one hybrid layer"):
        remove_layers(model, [1])
    assert len(model.model.layers) == 4  # refused before anything changed
    remove_layers(model, [0])
    assert model.config.layers_block_type == ["hybrid", "linear_attention", "hybrid"]  # "mamba", remapped
    model.save_pretrained(tmp_path)
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path).eval()), logits(model))


def test_cli_analyze_names_the_mixers(tmp_path, capsys):
    tiny_hybrid("zamba").save_pretrained(tmp_path / "zamba")
    out = tmp_path / "a.json"
    assert main(["analyze", str(tmp_path / "zamba"), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["model"]["architecture"] == "zamba" and data["model"]["num_ssm_layers"] == 4
    assert data["model"]["mixer_kinds"] == [MAMBA1]
    assert any(p.startswith("model.layers.1.mamba_decoder.mamba.") for g in data["groups"] for p in g["params"])


@pytest.mark.parametrize("kind,drop", [("channel", list(range(0, 16, 2))), ("head", [0]), ("state", [1])])
def test_the_owned_forward_runs_a_sliced_mixer(kind, drop):
    """The project's selective-scan forward reads heads, head width and states off the sliced tensors."""
    from ssm_profile import mixers

    model = tiny_hybrid("zamba")
    assert slice_cuts(model, {kind: {m.layer: drop for m in find_mixers(model)}})[kind].sliced
    module = find_mixers(model)[0].module
    family = mixers.family_of(module)
    h = torch.randn(2, 13, HIDDEN, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        owned, stock = family.run(module, h, "numba"), module(h)
    assert (owned - stock).abs().max() <= 1e-5 * max(1.0, stock.abs().max().item())
