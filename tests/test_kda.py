"""Kimi Linear's delta attention (KDA, ``KimiLinearDeltaAttention``) as mixer kind ``kda``: analysis, surgery
and configs. Skipped where the transformers release has no ``kimi_linear`` (5.16 has none; 5.20 to 5.25 have
the same layout).

* anatomy: groups, FLOPs, state bytes and dynamics against numbers computed by hand; the MLA layers
  (``KimiLinearAttention``) are neither mixers nor refused;
* coupled units: every unit's indices against an oracle read off the forward's own reshapes;
* invariants on a tiny random checkpoint: a cut of zero units is identical; slicing zeroed heads gives the
  zeroed model's logits and reloads with plain ``from_pretrained`` (``linear_num_heads`` and the checkpoint's
  ``linear_attn_config`` both rewritten); channel cuts stay zeros and slice_units refuses them; low-rank
  cuts are exact sliced but stay zeros in plans (no config field);
* layer removal keeps layer_types, mlp_layer_types and linear_attn_config's 1-based lists right.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import (KDA_LAYOUT, apply_and_check_realised, cached_step_logits, save_with_embedded_tokenizer,
                      score_or_say_why, tiny_kda)
from transformers import AutoModelForCausalLM
from transformers.utils import logging

from ssm_profile.model.analysis import analyze
from ssm_profile.model.arch import KDA, find_mixers, other_recurrent_layers
from ssm_profile.pruning.surgery import remove_layers, slice_cuts, slice_units, sync_config, zero_units

logging.set_verbosity_error()
IDS = torch.randint(0, 64, (2, 70), generator=torch.Generator().manual_seed(1))  # 70 > the chunk size 64
# tiny_kda: hidden 16, 4 heads of 8 channels, conv kernel 4, KDA layers 0 and 2, MLA layer 1
HIDDEN, H, D, K = 16, 4, 8, 4
W = H * D  # q, k, v and value width


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS, use_cache=False).logits


def _group(result, layer: int, name: str):
    return next(g for g in result.groups if g.layer == layer and g.group == name)


# ------------------------------------------------------------------------------------------ anatomy


def test_anatomy_by_hand():
    model = tiny_kda()
    mixers = find_mixers(model)
    assert [(m.layer, m.kind, m.path) for m in mixers] == [(0, KDA, "model.layers.0.self_attn"),
                                                           (2, KDA, "model.layers.2.self_attn")]
    assert type(model.model.layers[1].self_attn).__name__ == "KimiLinearAttention"  # MLA: not a mixer, not refused
    assert other_recurrent_layers(model) == {}
    assert mixers[0].dims() == {"hidden_size": HIDDEN, "num_heads": H, "head_dim": D, "decay_rank": D,
                                "gate_rank": D, "conv_kernel": K}
    r = analyze(model)
    linears = {"q_proj": W * HIDDEN, "k_proj": W * HIDDEN, "v_proj": W * HIDDEN, "f_a_proj": D * HIDDEN,
               "f_b_proj": W * D, "b_proj": H * HIDDEN, "g_a_proj": D * HIDDEN, "g_b_proj": W * D,
               "o_proj": HIDDEN * W}
    expected = {**linears, "conv1d": 3 * W * K, "dt_bias": W, "A_log": H, "o_norm": D}
    assert {g.group: g.numel for g in r.groups if g.layer == 2 and g.scope == "mixer"} == expected
    assert [g.group for g in r.groups if g.layer == 0 and g.scope == "mixer"] == [
        "q_proj", "k_proj", "v_proj", "conv1d", "f_a_proj", "f_b_proj", "dt_bias", "A_log", "b_proj", "g_a_proj",
        "g_b_proj", "o_norm", "o_proj"]
    for name, numel in linears.items():
        assert _group(r, 0, name).flops_per_token == 2 * numel
    assert _group(r, 0, "conv1d").flops_per_token == 2 * 3 * W * K
    # per head: per-row decay, Sᵀk, update, Sᵀq (7·d·d) + v − Sᵀk and β (2·d) + L2 norms and q's scale (7·d)
    assert _group(r, 0, "A_log").flops_per_token == H * (7 * D * D + 2 * D + 7 * D)
    assert _group(r, 0, "dt_bias").flops_per_token == 4 * W + H  # the gate per key channel, β per head
    assert _group(r, 0, "A_log").state_bytes == H * D * D * 4  # the delta-rule state, float32
    assert _group(r, 0, "conv1d").state_bytes == 3 * W * (K - 1) * 4
    assert r.totals.state_bytes_per_sequence == 2 * (H * D * D + 3 * W * (K - 1)) * 4
    assert r.totals.parameters == sum(p.numel() for p in model.parameters())
    assert r.model.mixer_kinds == [KDA]
    units = {u.kind: u for u in r.units if u.layer == 0}
    head = 3 * D * HIDDEN + 3 * D * K + D * D + D + 1 + HIDDEN + D * D + HIDDEN * D
    key_channel = 2 * H * HIDDEN + 2 * H * K + H * D + H  # q, k rows and conv, its decay rows and dt_bias
    value_channel = H * HIDDEN + H * K + H * D + 1 + H * HIDDEN  # v rows, conv, gate rows, o_norm, o_proj
    rank = HIDDEN + W
    assert {k: (u.count, u.params_per_unit) for k, u in units.items()} == {
        "head": (H, head), "key_channel": (D, key_channel), "value_channel": (D, value_channel),
        "decay_rank": (D, rank), "gate_rank": (D, rank)}
    # heads own every mixer parameter but the shared o_norm and the two a-projections
    assert H * head + D + 2 * D * HIDDEN == sum(expected.values())
    assert units["head"].stock_config.startswith("expressible:") and "linear_num_heads" in units["head"].stock_config
    for kind in ("key_channel", "value_channel"):
        assert units[kind].stock_config.startswith("applied as zeros") and "linear_head_dim" in units[kind].stock_config
    for kind in ("decay_rank", "gate_rank"):
        assert units[kind].stock_config.startswith("applied as zeros: exact when sliced")


def test_dynamics_by_hand():
    model = tiny_kda()
    d = analyze(model).dynamics[1]
    gate = model.model.layers[2].self_attn.forget_gate
    A = [math.exp(v) for v in gate.A_log.reshape(-1).tolist()]
    bias = gate.dt_bias.view(H, D).tolist()
    decay = [math.exp(-A[h] * math.log1p(math.exp(b))) for h in range(H) for b in bias[h]]  # at f = 0
    horizon = [1 / (1 - x) for x in decay]
    assert (d.layer, d.mixer_kind) == (2, KDA)
    assert d.horizon_per_channel == pytest.approx(horizon, rel=1e-5)  # head-major, per key channel
    assert d.decay_per_token["min"] == pytest.approx(min(decay), rel=1e-9)
    assert d.decay_rate["max"] == pytest.approx(max(A), rel=1e-9)
    assert "f = 0" in d.assumes and "key channel" in d.assumes
    assert analyze(model).from_dict(analyze(model).to_dict()).dynamics[1].assumes == d.assumes


# ------------------------------------------------------------------------------------------ unit indices


def _expected(kind: str, u: int) -> set[tuple[str, int, int]]:
    """Every (param, dim, index) unit ``u`` of ``kind`` must touch, as the forward lays them out: q, k, v, the
    decay rows, dt_bias and the gate rows are viewed (..., heads, d); the conv runs over [q; k; v]; A_log is
    (1, 1, heads, 1); o_proj reads the heads' outputs one after another."""
    rows = torch.arange(W).view(H, D)
    out: set[tuple[str, int, int]] = set()
    heads, channels = ([u], range(D)) if kind == "head" else (range(H), [u])

    def add(param: str, dim: int = 0, offset: int = 0) -> None:
        out.update((param, dim, offset + int(rows[h, c])) for h in heads for c in channels)

    if kind in ("head", "key_channel"):
        for param in ("q_proj.weight", "k_proj.weight", "forget_gate.f_b_proj.weight", "forget_gate.dt_bias"):
            add(param)
        add("conv1d.weight")
        add("conv1d.weight", offset=W)
    if kind in ("head", "value_channel"):
        add("v_proj.weight")
        add("conv1d.weight", offset=2 * W)
        add("g_b_proj.weight")
        add("o_proj.weight", dim=1)
    if kind == "head":
        out |= {("forget_gate.A_log", 2, u), ("b_proj.weight", 0, u)}
    if kind == "value_channel":
        out.add(("o_norm.weight", 0, u))
    if kind == "decay_rank":
        out = {("forget_gate.f_a_proj.weight", 0, u), ("forget_gate.f_b_proj.weight", 1, u)}
    if kind == "gate_rank":
        out = {("g_a_proj.weight", 0, u), ("g_b_proj.weight", 1, u)}
    return out


@pytest.mark.parametrize("kind", ["head", "key_channel", "value_channel", "decay_rank", "gate_rank"])
def test_unit_indices_match_the_forward_layout(kind):
    mixer = find_mixers(tiny_kda())[0]
    family = mixer.unit_family(kind)
    for u in range(family.count):
        got = {(p, d, int(i)) for p, d, idx in family.indices([u]) for i in idx}
        assert got == _expected(kind, u), (kind, u)


def test_a_zeroed_head_contributes_nothing_and_a_zeroed_key_channel_changes_nothing_else():
    """The layout claims, measured on the mixer itself: zeroing head 1's units leaves the other heads'
    outputs (o_proj's inputs) unchanged; zeroing key channel 3 of every head equals zeroing only its q and k
    rows (its conv channels, decay rows and dt_bias then act on zeros)."""
    model = tiny_kda()
    mixer = find_mixers(model)[0]
    seen = []
    handle = mixer.module.o_proj.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach()))
    x = torch.randn(2, 40, HIDDEN, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        mixer.module(x)
        zero_units(mixer, "head", [1])
        mixer.module(x)
    dense, zeroed = (t.view(2, 40, H, D) for t in seen)
    assert torch.equal(zeroed[:, :, 1], torch.zeros_like(zeroed[:, :, 1]))
    assert torch.allclose(zeroed[:, :, [0, 2, 3]], dense[:, :, [0, 2, 3]], atol=1e-6, rtol=0)
    handle.remove()

    model, other = tiny_kda(), tiny_kda()
    a, b = find_mixers(model)[0], find_mixers(other)[0]
    zero_units(a, "key_channel", [3])
    with torch.no_grad():
        for name in ("q_proj", "k_proj"):
            getattr(b.module, name).weight.view(H, D, HIDDEN)[:, 3] = 0
        assert torch.allclose(a.module(x), b.module(x), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------ criteria


def test_calibration_statistics_and_every_criterion():
    from ssm_profile import criteria as C
    from ssm_profile.calibration.stats import collect_stats

    model = tiny_kda()
    calibration = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    st = collect_stats(model, calibration, {"inputs", "hessians", "grads", "tokens"}, batch_size=2)
    mixer = find_mixers(model)[1]
    for key, size in {"in_proj": HIDDEN, "conv1d": 3 * W, "f_b_proj": D, "g_b_proj": D, "out_proj": W}.items():
        entry = st.inputs[f"{mixer.path}.{key}"]
        assert entry["sq"].shape == (size,) and int(entry["n"]) == 64
        assert key == "conv1d" or st.hessians[f"{mixer.path}.{key}"].shape == (size, size)
    # the conv input is [q_proj(x); k_proj(x); v_proj(x)]
    captured = {}
    hooks = [getattr(mixer.module, n).register_forward_hook(lambda mod, a, out, n=n: captured.setdefault(n, out))
             for n in ("q_proj", "k_proj", "v_proj")]
    with torch.no_grad():
        model(calibration, use_cache=False)
    for hook in hooks:
        hook.remove()
    want = torch.cat([captured[n] for n in ("q_proj", "k_proj", "v_proj")], -1).double().pow(2).reshape(-1, 3 * W)
    assert torch.allclose(st.inputs[f"{mixer.path}.conv1d"]["sq"], want.sum(0), rtol=1e-6)

    ctx = C.ScoringContext(model, st, seed=1)
    reasons = score_or_say_why(ctx, mixer, [n for n in C.available() if n != "captum"])
    assert all(reasons.values())
    for name in ("ssm_energy", "ssm_gramian"):
        assert all("Kimi delta attention" in reasons[name, x] for x in [*mixer.params, *mixer.unit_families()])
    assert ("horizon", "head") not in reasons and ("horizon", "key_channel") not in reasons
    assert "no decay of its own" in reasons["horizon", "value_channel"]
    assert ("horizon", "forget_gate.A_log") not in reasons
    for name, param in (("wanda", "q_proj.weight"), ("obs", "o_proj.weight"), ("obs", "forget_gate.f_b_proj.weight"),
                        ("flap", "head"), ("flap", "value_channel"), ("wanda", "conv1d.weight")):
        assert (name, param) not in reasons
    assert ("flap", "key_channel") in reasons  # key channels own no o_proj input


# ------------------------------------------------------------------------------------------ surgery

KINDS = ["head", "key_channel", "value_channel", "decay_rank", "gate_rank"]


@pytest.mark.parametrize("kind", KINDS)
def test_zero_unit_cut_is_bit_identical(kind):
    model = tiny_kda()
    before = logits(model)
    for m in find_mixers(model):
        slice_units(m, kind, range(m.unit_family(kind).count))
        zero_units(m, kind, [])
    assert sync_config(model) == []
    assert torch.equal(logits(model), before)


def test_head_cut_is_sliced_matches_the_zeroed_model_and_reloads(tmp_path):
    model = tiny_kda()
    drop = [1, 2]
    n_before = sum(p.numel() for p in model.parameters())
    per_unit = sum(m.unit_family("head").elements_per_unit(m) for m in find_mixers(model))
    for m in find_mixers(model):
        zero_units(m, "head", drop)
    zeroed = logits(model)
    outcome = slice_cuts(model, {"head": {m.layer: drop for m in find_mixers(model)}})["head"]
    assert outcome.sliced, outcome.reason
    assert outcome.config == {"linear_num_heads": [H, H - 2],
                              "linear_attn_config": [KDA_LAYOUT, {**KDA_LAYOUT, "num_heads": H - 2}]}
    assert n_before - sum(p.numel() for p in model.parameters()) == len(drop) * per_unit
    sliced = logits(model)
    # a zeroed head outputs exact zeros: only float rounding of shorter sums differs (3.7e-6 measured)
    assert (sliced - zeroed).abs().max() <= 1e-5 * max(1.0, zeroed.abs().max().item())

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.linear_num_heads == H - 2 and reloaded.config.linear_attn_config["num_heads"] == H - 2
    assert {k: tuple(v.shape) for k, v in reloaded.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert torch.equal(logits(reloaded), sliced)
    with torch.no_grad():  # decoding with the cache the sliced config builds gives the full forward's last logits
        step = cached_step_logits(reloaded, IDS[:, :-1], IDS[:, -1:])[:, -1]
    assert torch.allclose(step, sliced[:, -1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["key_channel", "value_channel"])
def test_channel_cuts_stay_zeros_and_are_not_sliced(kind):
    model = tiny_kda()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for m in find_mixers(model):
        zero_units(m, kind, [0, 5])
    outcome = slice_cuts(model, {kind: {m.layer: [0, 5] for m in find_mixers(model)}})[kind]
    assert not outcome.sliced and "linear_head_dim" in outcome.reason and "\n" not in outcome.reason
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    with pytest.raises(ValueError, match="cannot be sliced out of a Kimi delta attention mixer") as err:
        slice_units(find_mixers(model)[0], kind, range(1, D))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["decay_rank", "gate_rank"])
def test_rank_cuts_are_exact_sliced_but_stay_zeros_in_plans(kind):
    """A zeroed low-rank direction adds nothing, so slicing it is exact; but KimiLinearConfig sizes both ranks as
    linear_head_dim, so a plan keeps the cut as zeros (the slice is undone) and says why."""
    model = tiny_kda()
    drop = [2, 6]
    for m in find_mixers(model):
        zero_units(m, kind, drop)
    zeroed = logits(model)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    outcome = slice_cuts(model, {kind: {m.layer: drop for m in find_mixers(model)}})[kind]
    assert not outcome.sliced and "linear_head_dim" in outcome.reason
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    assert torch.equal(logits(model), zeroed)
    for m in find_mixers(model):
        slice_units(m, kind, [u for u in range(D) if u not in drop])
    assert (logits(model) - zeroed).abs().max() <= 1e-5 * max(1.0, zeroed.abs().max().item())
    assert sync_config(model) and not sync_config(model)[0].count("\n")


def test_per_layer_head_counts_stay_zeros():
    model = tiny_kda()
    outcome = slice_cuts(model, {"head": {0: [1], 2: [1, 3]}})["head"]
    assert not outcome.sliced and "differs between layers" in outcome.reason
    assert [m.num_heads for m in find_mixers(model)] == [H, H]


def skip_layer(model, layer: int):
    """A hook that makes decoder layer ``layer`` return its input: the model without that layer."""
    def identity(module, args, kwargs, out):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden
    return model.model.layers[layer].register_forward_hook(identity, with_kwargs=True)


def test_remove_layers_round_trip(tmp_path):
    """Layer 0 (KDA, dense MLP) goes: the MLA layer and the sparse KDA layer stay, and the config's three
    descriptions of them (layer_types, mlp_layer_types, linear_attn_config's 1-based lists) follow."""
    model = tiny_kda(mlp_layer_types=["dense", "dense", "sparse"])
    hook = skip_layer(model, 0)
    skipped = logits(model)
    hook.remove()
    assert remove_layers(model, [0]) == {1: 0, 2: 1}
    assert model.config.layer_types == ["full_attention", "linear_attention"]
    assert model.config.mlp_layer_types == ["dense", "sparse"]
    assert model.config.linear_attn_config == {**KDA_LAYOUT, "kda_layers": [2], "full_attn_layers": [1]}
    assert torch.equal(logits(model), skipped)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(logits(reloaded), skipped)


# ------------------------------------------------------------------------------------------ the command line


def test_cli_analyze_names_the_kda_layers(tmp_path, capsys):
    from ssm_profile.cli.main import main

    tiny_kda().save_pretrained(tmp_path / "kimi")
    assert main(["analyze", str(tmp_path / "kimi"), "--json", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert "2/3 SSM layers" in out and "KDA rows, per head and key channel: f = 0" in out
    units = {u["kind"]: u for u in json.loads((tmp_path / "a.json").read_text())["units"] if u["layer"] == 0}
    assert units["head"]["stock_config"] == "expressible: uniform count across layers (linear_num_heads); exact"


@pytest.mark.slow  # 5 s; the KDA cuts themselves are tested in the default run
def test_cli_pipeline_realises_the_plans_numbers(tmp_path):
    """analyze -> profile -> plan -> apply -> analyze (8.6 s here): a state plan slices heads and the applied
    model loses exactly the state, FLOPs and parameters the plan states; a params plan over the other kinds
    (channels, low-rank directions) zeroes exactly the elements it states and changes no shape."""
    from ssm_profile.cli.main import main
    from ssm_profile.model.resolve import load_model

    base = tmp_path / "base"
    save_with_embedded_tokenizer(tiny_kda, base)
    dense = load_model(str(base)).model
    before = analyze(dense).totals
    zeros_before = sum(int((p == 0).sum()) for p in dense.parameters())
    runs = {"state": ("unit:head,o_proj", "0.2", ["--structures", "units"]),
            "params": ("unit:key_channel,unit:value_channel,unit:decay_rank,unit:gate_rank", "0.05", ["--no-measure"])}
    for metric, (targets, ratio, extra) in runs.items():
        run, plan_path, out = tmp_path / f"run-{metric}", tmp_path / f"plan-{metric}.json", tmp_path / f"out-{metric}"
        assert main(["profile", str(base), "-o", str(run), "--nsamples", "2", "--eval-samples", "8", "--seqlen", "16",
                     "--sparsities", "0.5", "--criteria", "magnitude,wanda", "--no-per-layer", "--quiet",
                     "--targets", targets]) == 0
        assert main(["plan", str(run), "-o", str(plan_path), "--metric", metric, "--ratio", ratio,
                     "--max-ppl-increase", "0.5", "--quiet", *extra]) == 0
        plan, pruned, physical = apply_and_check_realised(base, plan_path, out, before)
        if metric == "state":  # a state budget is met by sliced head cuts
            assert physical["state"] > 0 and {a.execution for a in plan.actions} == {"slice"}
            assert pruned.config.linear_num_heads < H
        else:  # channels and low-rank directions: zeros, every shape kept
            assert plan.actions and {a.execution for a in plan.actions} == {"zero"} and not any(physical.values())
            zeros = sum(int((p == 0).sum()) for p in pruned.parameters()) - zeros_before
            assert zeros == plan.predicted.params_removed > 0
