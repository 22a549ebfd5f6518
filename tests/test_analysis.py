"""Static analysis numbers checked against counts computed by hand for small configs."""

from __future__ import annotations

import json

import pytest
import torch

from ssm_profile.model.analysis import AnalysisResult, analyze
from ssm_profile.model.arch import find_mixers
from ssm_profile.cli.main import main


def _group(result, layer, name):
    return next(g for g in result.groups if g.layer == layer and g.group == name)


def test_mamba1_counts_by_hand(mamba1_model):
    # H=16, E=32, N=4, R=ceil(16/16)=1, K=4, vocab 64, tied lm_head.
    r = analyze(mamba1_model)
    expected = {"in_proj": 2 * 32 * 16, "conv1d": 32 * 4 + 32, "x_proj": (1 + 2 * 4) * 32,
                "dt_proj": 1 * 32 + 32, "A_log": 32 * 4, "D": 32, "out_proj": 16 * 32}
    for name, numel in expected.items():
        assert _group(r, 0, name).numel == numel, name
    assert r.totals.parameters == sum(p.numel() for p in mamba1_model.parameters()) == 1024 + 2 * (2208 + 16) + 16
    assert sum(g.numel for g in r.groups) == r.totals.parameters
    assert _group(r, 0, "in_proj").flops_per_token == 2 * 64 * 16
    assert _group(r, 0, "A_log").state_bytes == 32 * 4 * 4  # E*N fp32
    assert _group(r, 0, "conv1d").state_bytes == 32 * 3 * 4  # E*(K-1) fp32
    units = {u.kind: u for u in r.units if u.layer == 0}
    assert (units["channel"].count, units["channel"].params_per_unit) == (32, 69)
    assert (units["state"].count, units["state"].params_per_unit) == (4, 2 * 32 + 32)
    assert (units["dt_rank"].count, units["dt_rank"].params_per_unit) == (1, 32 + 32)
    # Every Mamba-1 mixer parameter belongs to exactly one channel.
    assert units["channel"].count * units["channel"].params_per_unit == 2208
    sub = {b.name: b.numel for b in _group(r, 0, "x_proj").sub_blocks}
    assert sub == {"dt": 32, "B": 128, "C": 128}


def test_mamba2_counts_by_hand(mamba2_model):
    # H=16, E=32, 4 heads of P=8, G=2 groups, N=4, K=4; untied lm_head.
    r = analyze(mamba2_model)
    conv_ch = 32 + 2 * 2 * 4
    expected = {"in_proj": (32 + conv_ch + 4) * 16, "conv1d": conv_ch * 5, "dt_bias": 4, "A_log": 4,
                "D": 4, "norm": 32, "out_proj": 16 * 32}
    for name, numel in expected.items():
        assert _group(r, 1, name).numel == numel, name
    assert r.totals.parameters == sum(p.numel() for p in mamba2_model.parameters())
    assert sum(g.numel for g in r.groups) == r.totals.parameters
    units = {u.kind: u for u in r.units if u.layer == 0}
    head = 2 * 8 * 16 + 16 + 8 * 5 + 3 + 8 + 8 * 16
    assert (units["head"].count, units["head"].params_per_unit) == (4, head)
    assert (units["state"].count, units["state"].params_per_unit) == (8, 2 * 16 + 2 * 5)
    assert (units["head_channel"].count, units["head_channel"].params_per_unit) == (32, 2 * 16 + 5 + 1 + 16)
    assert units["group"].count == 2 and not units["group"].prunable
    # Heads and states together own every mixer parameter.
    assert 4 * head + 8 * 42 == sum(expected.values())
    assert _group(r, 0, "A_log").state_bytes == 4 * 8 * 4 * 4  # heads*P*N fp32


def test_dynamics_follow_the_weights(mamba1_model):
    mixer = find_mixers(mamba1_model)[0].module
    with torch.no_grad():
        mixer.A_log.fill_(0.0)  # |A| = 1
        mixer.dt_proj.bias.fill_(0.5413)  # softplus = 1.0
    d = analyze(mamba1_model).dynamics[0]
    assert d.decay_rate["median"] == pytest.approx(1.0)
    assert d.horizon["median"] == pytest.approx(1.0, rel=1e-3)
    assert len(d.horizon_per_state) == 4 and len(d.horizon_per_channel) == 32


def test_weight_stats_detect_outliers(mamba1_model):
    with torch.no_grad():
        w = find_mixers(mamba1_model)[0].module.out_proj.weight
        w.normal_(0, 1)
        w[0, :5] = 100.0
    g = _group(analyze(mamba1_model), 0, "out_proj")
    assert g.stats.outlier_fraction == pytest.approx(5 / w.numel())
    assert g.stats.kurtosis > 10


@pytest.mark.parametrize("family", ["zamba2", "jamba", "nemotron_h", "falcon_mamba"])
def test_hybrids_add_up(family):
    from transformers import AutoModelForCausalLM, FalconMambaConfig, JambaConfig, NemotronHConfig, Zamba2Config

    configs = {
        "zamba2": lambda: Zamba2Config(vocab_size=64, hidden_size=32, num_hidden_layers=4, mamba_d_state=8,
                                       mamba_headdim=8, n_mamba_heads=8, num_attention_heads=4,
                                       num_key_value_heads=4, attention_head_dim=8, intermediate_size=32,
                                       layers_block_type=["mamba", "hybrid", "mamba", "mamba"], hybrid_layer_ids=[1]),
        "jamba": lambda: JambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     num_key_value_heads=2, intermediate_size=32, mamba_d_state=4,
                                     attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, num_experts=2),
        "nemotron_h": lambda: NemotronHConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3,
                                              hybrid_override_pattern="M*M", mamba_num_heads=4, mamba_head_dim=16,
                                              ssm_state_size=8, n_groups=2, num_attention_heads=2,
                                              num_key_value_heads=2, head_dim=16, intermediate_size=32),
        "falcon_mamba": lambda: FalconMambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, state_size=4),
    }
    model = AutoModelForCausalLM.from_config(configs[family]())
    r = analyze(model)
    unique = {id(p): p for p in model.parameters()}
    assert r.totals.parameters == sum(p.numel() for p in unique.values())
    assert sum(g.numel for g in r.groups) == r.totals.parameters
    assert r.model.num_ssm_layers >= 1 and r.mixer_groups()


def test_json_round_trip(mamba2_model, tmp_path):
    r = analyze(mamba2_model, name="tiny")
    path = tmp_path / "a.json"
    r.to_json(path)
    back = AnalysisResult.from_json(path)
    assert back == r
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1
    # the file keeps the layout older versions wrote (and read by key): "class", no "extra"
    assert list(data["model"]) == ["name", "class", "architecture", "mixer_kinds", "num_layers", "num_ssm_layers",
                                   "dims", "vocab_size", "dtype", "tied_embeddings", "source"]
    assert data["model"]["class"] == "Mamba2ForCausalLM" and "extra" not in data["totals"]
    data["model"]["added_later"] = 1  # a newer version's key survives a read and write
    assert json.loads(json.dumps(AnalysisResult.from_dict(data).to_dict())) == data


def test_cli_analyze_local_dir_writes_json(mamba1_dir, tmp_path, capsys):
    out = tmp_path / "out.json"
    assert main(["analyze", str(mamba1_dir), "--json", str(out), "--layers"]) == 0
    data = json.loads(out.read_text())
    assert data["totals"]["parameters"] == 5488
    assert "Parameter groups" in capsys.readouterr().out


def test_output_projection_flops_counted_tied_or_not(mamba1_model, mamba2_model):
    tied, untied = analyze(mamba1_model), analyze(mamba2_model)  # Mamba-1 ties, Mamba-2 does not
    assert _group(tied, None, "embeddings").flops_per_token == 2 * 64 * 16
    assert _group(untied, None, "lm_head").flops_per_token == 2 * 64 * 16
    assert _group(untied, None, "embeddings").flops_per_token == 0
    assert tied.totals.lm_head_flops_per_token == untied.totals.lm_head_flops_per_token == 2 * 64 * 16


def test_cli_analyze_local_hybrid_checkpoint(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, Zamba2Config

    cfg = Zamba2Config(vocab_size=64, hidden_size=32, num_hidden_layers=4, mamba_d_state=8, mamba_headdim=8,
                       n_mamba_heads=8, num_attention_heads=4, num_key_value_heads=4, attention_head_dim=8,
                       intermediate_size=32, layers_block_type=["mamba", "hybrid", "mamba", "mamba"],
                       hybrid_layer_ids=[1])
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(tmp_path / "zamba2")
    out = tmp_path / "z.json"
    assert main(["analyze", str(tmp_path / "zamba2"), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["model"]["architecture"] == "zamba2" and data["model"]["num_ssm_layers"] == 4
    assert data["totals"]["parameters"] == sum({id(p): p.numel() for p in model.parameters()}.values())
