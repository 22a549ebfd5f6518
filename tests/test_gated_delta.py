"""Gated DeltaNet (Qwen3-Next ``Qwen3NextGatedDeltaNet``, Qwen3.5 ``Qwen3_5GatedDeltaNet``) as a mixer
family the analysis, the surgery and the configs understand.

* anatomy: parameter groups, FLOPs, state bytes and dynamics against numbers computed by hand;
* coupled units: every unit's indices against an oracle read off transformers' own layout
  (``fix_query_key_value_ordering`` for Qwen3-Next's packed projections);
* invariants on tiny random checkpoints: a cut of zero units is identical; slicing zeroed value or
  key heads gives the zeroed model's logits and reloads with plain ``from_pretrained``; channel cuts
  stay zeros, and are exact sliced only once the gated norm's eps is compensated (measured here);
* refusals in one line: uneven value-head cuts, per-layer widths.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import (GATED_DELTA, apply_and_check_realised, cached_step_logits, save_with_embedded_tokenizer,
                      score_or_say_why, tiny_gated_delta)
from transformers import AutoModelForCausalLM
from transformers.utils import logging

from ssm_profile.model.analysis import analyze
from ssm_profile.model.arch import GATED_DELTA as KIND, find_mixers, other_recurrent_layers
from ssm_profile.pruning.surgery import remove_layers, slice_cuts, slice_units, sync_config, zero_units

logging.set_verbosity_error()
IDS = torch.randint(0, 64, (2, 70), generator=torch.Generator().manual_seed(1))  # 70 > the chunk size 64
# tiny_gated_delta: hidden 16, 2 key heads of 8, 4 value heads of 16, conv kernel 4, GDN layers 0 and 2
HIDDEN, KH, H, DK, DV, K = 16, 2, 4, 8, 16, 4
KEY_DIM, VALUE_DIM, R = KH * DK, H * DV, H // KH


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS, use_cache=False).logits


def _group(result, layer: int, name: str):
    return next(g for g in result.groups if g.layer == layer and g.group == name)


# ------------------------------------------------------------------------------------------ anatomy


@pytest.mark.parametrize("model_type", GATED_DELTA)
def test_anatomy_by_hand(model_type):
    model = tiny_gated_delta(model_type)
    mixers = find_mixers(model)
    assert [(m.layer, m.kind) for m in mixers] == [(0, KIND), (2, KIND)]
    assert other_recurrent_layers(model) == {}  # recognised, so no longer refused
    assert mixers[0].dims() == {"hidden_size": HIDDEN, "num_k_heads": KH, "num_v_heads": H, "head_k_dim": DK,
                                "head_v_dim": DV, "conv_kernel": K}
    r = analyze(model)
    conv = 2 * KEY_DIM + VALUE_DIM
    inputs = ({"in_proj_qkvz": (2 * KEY_DIM + 2 * VALUE_DIM) * HIDDEN, "in_proj_ba": 2 * H * HIDDEN}
              if model_type == "qwen3_next" else
              {"in_proj_qkv": conv * HIDDEN, "in_proj_z": VALUE_DIM * HIDDEN, "in_proj_b": H * HIDDEN,
               "in_proj_a": H * HIDDEN})
    expected = {**inputs, "conv1d": conv * K, "dt_bias": H, "A_log": H, "norm": DV, "out_proj": HIDDEN * VALUE_DIM}
    assert {g.group: g.numel for g in r.groups if g.layer == 2 and g.scope == "mixer"} == expected
    for name, numel in inputs.items():
        assert _group(r, 0, name).flops_per_token == 2 * numel
    assert _group(r, 0, "conv1d").flops_per_token == 2 * conv * K
    # per value head: decay, Sᵀk, update, Sᵀq (7·dk·dv) + v − Sᵀk and β (2·dv); per key head: L2 norms, q scale
    assert _group(r, 0, "A_log").flops_per_token == H * (7 * DK * DV + 2 * DV) + 7 * KH * DK
    assert _group(r, 0, "A_log").state_bytes == H * DK * DV * 4  # the delta-rule state, float32
    assert _group(r, 0, "conv1d").state_bytes == conv * (K - 1) * 4
    assert r.totals.state_bytes_per_sequence == 2 * (H * DK * DV + conv * (K - 1)) * 4
    assert r.totals.parameters == sum(p.numel() for p in model.parameters())
    assert r.model.mixer_kinds == [KIND]
    units = {u.kind: u for u in r.units if u.layer == 0}
    # value head: v and z rows, b and a rows, conv channels, A_log, dt_bias, out_proj columns
    value_head = 2 * DV * HIDDEN + 2 * HIDDEN + DV * K + 2 + HIDDEN * DV
    value_channel = 2 * H * HIDDEN + H * K + 1 + H * HIDDEN  # v/z rows and conv in every head, norm, out_proj
    key_channel = 2 * KH * HIDDEN + 2 * KH * K  # q and k rows of every key head, their conv channels
    key_head = 2 * DK * (HIDDEN + K) + R * value_head
    assert {k: (u.count, u.params_per_unit) for k, u in units.items()} == {
        "value_head": (H, value_head), "value_channel": (DV, value_channel), "key_channel": (DK, key_channel),
        "key_head": (KH, key_head)}
    # key heads own every mixer parameter but the shared norm
    assert KH * key_head + DV == sum(expected.values())
    assert units["value_head"].stock_config.startswith("expressible:")
    assert units["key_head"].stock_config.startswith("expressible:")
    for kind in ("value_channel", "key_channel"):
        assert units[kind].stock_config.startswith("applied as zeros") and "eps" in units[kind].stock_config


@pytest.mark.parametrize("model_type", GATED_DELTA)
def test_dynamics_by_hand(model_type):
    model = tiny_gated_delta(model_type)
    d = analyze(model).dynamics[1]
    mod = model.model.layers[2].linear_attn
    A = [math.exp(v) for v in mod.A_log.tolist()]
    dt = [math.log1p(math.exp(b)) for b in mod.dt_bias.tolist()]
    decay = [math.exp(-a * t) for a, t in zip(A, dt)]  # per token, at a = 0
    horizon = [1 / (1 - x) for x in decay]
    assert (d.layer, d.mixer_kind) == (2, KIND)
    assert d.horizon_per_channel == pytest.approx(horizon, rel=1e-5)
    assert d.decay_per_token["max"] == pytest.approx(max(decay), rel=1e-9)
    assert d.decay_rate["median"] == pytest.approx(sorted(A)[1] / 2 + sorted(A)[2] / 2, rel=1e-9)
    assert d.dt["min"] == pytest.approx(min(dt), rel=1e-9)
    assert "a = 0" in d.assumes
    data = analyze(model).to_dict()
    assert "assumes" in data["dynamics"][0]
    assert analyze(model).from_dict(data).dynamics[1].assumes == d.assumes


def test_mamba_analysis_json_has_no_gated_delta_fields(mamba2_model):
    assert all("assumes" not in d and "decay_per_token" not in d for d in analyze(mamba2_model).to_dict()["dynamics"])


# ------------------------------------------------------------------------------------------ unit indices


def _oracle_rows(mixer) -> dict[str, dict[str, dict]]:
    """(role -> {(head, channel): row}) per input projection, read off transformers' own layout: Qwen3-Next's
    ``fix_query_key_value_ordering`` on row numbers, Qwen3.5's plain split and reshape."""
    mod = mixer.module
    if mixer.packed:
        qkvz = torch.arange(mod.in_proj_qkvz.weight.shape[0], dtype=torch.float64)[None, None]
        ba = torch.arange(mod.in_proj_ba.weight.shape[0], dtype=torch.float64)[None, None]
        q, k, v, z, b, a = (t[0, 0].long() for t in mod.fix_query_key_value_ordering(qkvz, ba))
        first, second = "in_proj_qkvz", "in_proj_ba"
    else:
        rows = torch.arange(mod.in_proj_qkv.weight.shape[0])
        q, k, v = rows[:KEY_DIM].view(KH, DK), rows[KEY_DIM:2 * KEY_DIM].view(KH, DK), rows[2 * KEY_DIM:].view(H, DV)
        z, b, a = torch.arange(VALUE_DIM).view(H, DV), torch.arange(H), torch.arange(H)
        first = "in_proj_qkv"
    split = {"q": (first, q), "k": (first, k), "v": (first, v)}
    if mixer.packed:
        split.update(z=(first, z), b=(second, b), a=(second, a))
    else:
        split.update(z=("in_proj_z", z), b=("in_proj_b", b), a=("in_proj_a", a))
    return split


def _expected(mixer, kind: str, u: int) -> set[tuple[str, int, int]]:
    """Every (param, dim, index) unit ``u`` of ``kind`` must touch, from the oracle layout; conv channels
    are [q, k, v] head after head, out_proj columns value head after value head."""
    rows = _oracle_rows(mixer)
    out: set[tuple[str, int, int]] = set()

    def add(role: str, heads, channels) -> None:
        param, table = rows[role]
        for h in heads:
            for c in channels:
                out.add((f"{param}.weight", 0, int(table[h, c] if table.ndim == 2 else table[h])))
        width = DK if role in "qk" else DV
        start = {"q": 0, "k": KEY_DIM, "v": 2 * KEY_DIM}.get(role)
        if start is not None:
            out.update(("conv1d.weight", 0, start + h * width + c) for h in heads for c in channels)
        if role == "v":
            out.update(("out_proj.weight", 1, h * DV + c) for h in heads for c in channels)

    def head_params(heads) -> None:
        add("v", heads, range(DV))
        add("z", heads, range(DV))
        add("b", heads, [0])
        add("a", heads, [0])
        out.update((p, 0, h) for h in heads for p in ("A_log", "dt_bias"))

    if kind == "value_head":
        head_params([u])
    elif kind == "key_head":
        add("q", [u], range(DK))
        add("k", [u], range(DK))
        head_params(range(u * R, (u + 1) * R))
    elif kind == "value_channel":
        add("v", range(H), [u])
        add("z", range(H), [u])
        out.add(("norm.weight", 0, u))
    else:  # key_channel
        add("q", range(KH), [u])
        add("k", range(KH), [u])
    return out


@pytest.mark.parametrize("model_type", GATED_DELTA)
@pytest.mark.parametrize("kind", ["value_head", "key_head", "value_channel", "key_channel"])
def test_unit_indices_match_transformers_layout(model_type, kind):
    mixer = find_mixers(tiny_gated_delta(model_type))[0]
    family = mixer.unit_family(kind)
    for u in range(family.count):
        got = {(p, d, int(i)) for p, d, idx in family.indices([u]) for i in idx}
        assert got == _expected(mixer, kind, u), (kind, u)


@pytest.mark.parametrize("model_type", GATED_DELTA)
def test_conv_input_rows_follow_the_forward(model_type):
    """The conv input the calibration hooks read off the first projection is the forward's [q, k, v]."""
    mixer = find_mixers(tiny_gated_delta(model_type))[0]
    rows = _oracle_rows(mixer)
    want = torch.cat([rows["q"][1].reshape(-1), rows["k"][1].reshape(-1), rows["v"][1].reshape(-1)])
    assert torch.equal(mixer.conv_input_rows(), want)


# ------------------------------------------------------------------------------------------ criteria

ALL = {"inputs", "hessians", "grads", "tokens"}


def _stats(model):
    from ssm_profile.calibration.stats import collect_stats

    calibration = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    return collect_stats(model, calibration, ALL, batch_size=2), calibration


@pytest.mark.parametrize("model_type", GATED_DELTA)
def test_calibration_statistics_follow_the_forward(model_type):
    model = tiny_gated_delta(model_type)
    st, calibration = _stats(model)
    mixer = find_mixers(model)[1]
    conv = 2 * KEY_DIM + VALUE_DIM
    for key, size in {"in_proj": HIDDEN, "conv1d": conv, "out_proj": VALUE_DIM}.items():
        entry = st.inputs[f"{mixer.path}.{key}"]
        assert entry["sq"].shape == (size,) and int(entry["n"]) == 64
    assert st.hessians[f"{mixer.path}.in_proj"].shape == (HIDDEN, HIDDEN)
    assert st.hessians[f"{mixer.path}.out_proj"].shape == (VALUE_DIM, VALUE_DIM)
    assert set(st.grad_sum) == {m.full_name(p) for m in find_mixers(model) for p in m.params}
    # the conv input, rebuilt from transformers' own reordering of the projection's output
    captured = []
    first = mixer.module.in_proj_qkvz if mixer.packed else mixer.module.in_proj_qkv
    handle = first.register_forward_hook(lambda mod, args, out: captured.append(out.detach()))
    with torch.no_grad():
        model(calibration, use_cache=False)
    handle.remove()
    out = captured[0]
    if mixer.packed:
        ba = mixer.module.in_proj_ba(torch.zeros(*out.shape[:2], HIDDEN))
        q, k, v, _z, _b, _a = mixer.module.fix_query_key_value_ordering(out, ba)
        out = torch.cat([x.reshape(*x.shape[:2], -1) for x in (q, k, v)], dim=-1)
    want = out.double().pow(2).reshape(-1, conv).sum(0)
    assert torch.allclose(st.inputs[f"{mixer.path}.conv1d"]["sq"], want, rtol=1e-6)


@pytest.mark.parametrize("model_type", GATED_DELTA)
def test_every_criterion_scores_or_says_why(model_type):
    from ssm_profile import criteria as C

    model = tiny_gated_delta(model_type)
    st, _ = _stats(model)
    ctx = C.ScoringContext(model, st, seed=1)
    mixer = find_mixers(model)[0]
    names = [n for n in C.available() if n != "captum" or has_captum()]
    reasons = score_or_say_why(ctx, mixer, names)
    assert all(reasons.values())
    # the selective-scan criteria say why they do not apply to any of it
    for name in ("ssm_energy", "ssm_gramian"):
        assert all("Gated DeltaNet" in reasons[name, x] for x in [*mixer.params, *mixer.unit_families()])
    assert ("horizon", "value_head") not in reasons and "horizon of its own" in reasons["horizon", "key_channel"]
    assert ("wanda", "conv1d.weight") not in reasons and ("obs", "out_proj.weight") not in reasons
    assert ("flap", "key_channel") in reasons  # key channels own no out_proj input


def has_captum() -> bool:
    try:
        import captum  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------ surgery

HEAD_CUTS = [("value_head", [1, 2]), ("key_head", [1])]  # value heads: one under each key head
CHANNEL_CUTS = [("value_channel", [0, 5, 9]), ("key_channel", [2, 7])]
CASES = [(m, k, d) for m in GATED_DELTA for k, d in HEAD_CUTS + CHANNEL_CUTS]


@pytest.mark.parametrize("model_type,kind,drop", CASES, ids=[f"{m}-{k}" for m, k, _ in CASES])
def test_zero_unit_cut_is_bit_identical(model_type, kind, drop):
    model = tiny_gated_delta(model_type)
    before = logits(model)
    for m in find_mixers(model):
        slice_units(m, kind, range(m.unit_family(kind).count))
        zero_units(m, kind, [])
    assert sync_config(model) == []
    assert torch.equal(logits(model), before)


@pytest.mark.parametrize("model_type", GATED_DELTA)
@pytest.mark.parametrize("kind,drop", HEAD_CUTS)
def test_head_cut_is_sliced_matches_the_zeroed_model_and_reloads(tmp_path, model_type, kind, drop):
    model = tiny_gated_delta(model_type)
    n_before = sum(p.numel() for p in model.parameters())
    per_unit = sum(m.unit_family(kind).elements_per_unit(m) for m in find_mixers(model))
    for m in find_mixers(model):
        zero_units(m, kind, drop)
    zeroed = logits(model)
    outcome = slice_cuts(model, {kind: {m.layer: drop for m in find_mixers(model)}})[kind]
    assert outcome.sliced, outcome.reason
    fields = {"value_head": {"linear_num_value_heads": [H, H - len(drop)]},
              "key_head": {"linear_num_key_heads": [KH, KH - 1], "linear_num_value_heads": [H, H - R]}}[kind]
    assert outcome.config == fields
    assert n_before - sum(p.numel() for p in model.parameters()) == len(drop) * per_unit
    sliced = logits(model)
    # a zeroed head outputs exact zeros, so only float rounding of shorter sums differs (1.5e-5 measured)
    # float32 rounding of the narrower matmuls and norms: 1.5e-5 measured on transformers 5.25, 5.9e-5 on 5.15
    assert (sliced - zeroed).abs().max() <= 3e-5 * max(1.0, zeroed.abs().max().item())

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert {k: tuple(v.shape) for k, v in reloaded.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert torch.equal(logits(reloaded), sliced)
    # decoding with the cache the sliced config builds gives the full forward's last logits
    with torch.no_grad():
        step = cached_step_logits(reloaded, IDS[:, :-1], IDS[:, -1:])[:, -1]
    assert torch.allclose(step, sliced[:, -1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("model_type", GATED_DELTA)
@pytest.mark.parametrize("kind,drop", CHANNEL_CUTS)
def test_channel_cuts_stay_zeros_and_slice_exactly_only_with_the_norms_eps(model_type, kind, drop):
    """Slicing a zeroed key channel raises q's 1/sqrt(head_k_dim) scale; a value channel narrows the gated
    norm's mean (its weights are rescaled). The norm divides both out up to its eps: with eps x
    full/kept in the gated norms the sliced model is the zeroed one; with the config's one eps it is
    not (norm inputs of these checkpoints sit near eps), so plans run these cuts as zeros."""
    model = tiny_gated_delta(model_type)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for m in find_mixers(model):
        zero_units(m, kind, drop)
    zeroed = logits(model)
    outcome = slice_cuts(model, {kind: {m.layer: drop for m in find_mixers(model)}})[kind]
    assert not outcome.sliced and "eps" in outcome.reason
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes

    full = {"value_channel": DV, "key_channel": DK}[kind]
    for m in find_mixers(model):
        slice_units(m, kind, [u for u in range(full) if u not in drop])
    assert sync_config(model) == []  # the shapes themselves are expressible
    plain = (logits(model) - zeroed).abs().max().item()
    for m in find_mixers(model):
        m.module.norm.variance_epsilon *= full / (full - len(drop))
    compensated = (logits(model) - zeroed).abs().max().item()
    assert compensated <= 1e-5 * max(1.0, zeroed.abs().max().item())  # 8.4e-6 measured
    assert plain > 100 * compensated  # 0.44 .. 1.27 measured: the eps share is what breaks it


@pytest.mark.parametrize("model_type", GATED_DELTA)
def test_uneven_value_head_cut_is_refused_in_one_line(model_type):
    model = tiny_gated_delta(model_type)
    mixer = find_mixers(model)[0]
    with pytest.raises(ValueError, match="same number of units in every key head") as err:
        slice_units(mixer, "value_head", [0, 1, 2])  # key head 0 keeps 2, key head 1 keeps 1
    assert "\n" not in str(err.value)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    outcome = slice_cuts(model, {"value_head": {m.layer: [3] for m in find_mixers(model)}})["value_head"]
    assert not outcome.sliced and "key head" in outcome.reason
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    # zeroing any set is fine: those heads output zeros
    zero_units(mixer, "value_head", [3])


@pytest.mark.parametrize("model_type", GATED_DELTA)
def test_per_layer_widths_stay_zeros(model_type):
    model = tiny_gated_delta(model_type)
    outcome = slice_cuts(model, {"value_head": {0: [0, 2], 2: [1, 3]}, "key_head": {0: [1]}})
    assert outcome["value_head"].sliced  # two heads in each layer (other heads: only the count matters)
    assert not outcome["key_head"].sliced and "layers differ in num_k_heads" in outcome["key_head"].reason
    assert [m.num_k_heads for m in find_mixers(model)] == [KH, KH]  # the one-layer slice was undone


def skip_layer(model, layer: int):
    """A hook that makes decoder layer ``layer`` return its input: the model without that layer."""
    def identity(module, args, kwargs, out):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden
    return model.model.layers[layer].register_forward_hook(identity, with_kwargs=True)


@pytest.mark.parametrize("model_type,kw,fields", [
    ("qwen3_5_text", {}, {"layer_types": ["full_attention", "linear_attention"]}),
    # experts on layer 1 only (decoder_sparse_step 2): kept layers [1, 2] are sparse, dense
    ("qwen3_next", {"num_experts": 2, "num_experts_per_tok": 1, "moe_intermediate_size": 16,
                    "shared_expert_intermediate_size": 16, "decoder_sparse_step": 2},
     {"mlp_only_layers": [1], "decoder_sparse_step": 1, "layer_types": ["full_attention", "linear_attention"]}),
])
def test_remove_layers_round_trip(tmp_path, model_type, kw, fields):
    model = tiny_gated_delta(model_type, **kw)
    hook = skip_layer(model, 0)
    skipped = logits(model)
    hook.remove()
    assert remove_layers(model, [0]) == {1: 0, 2: 1}
    for key, value in fields.items():
        assert getattr(model.config, key) == value
    assert torch.equal(logits(model), skipped)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(logits(reloaded), skipped)


def test_kimi_delta_attention_is_not_mistaken_for_gated_delta():
    """Kimi Linear's delta attention is a family of its own (tests/test_kda.py), not a Gated DeltaNet variant."""
    from conftest import tiny_kda

    assert {m.kind for m in find_mixers(tiny_kda())} == {"kda"}


# ------------------------------------------------------------------------------------------ the pipeline


@pytest.mark.slow
@pytest.mark.parametrize("model_type", GATED_DELTA)
def test_cli_pipeline_realises_the_plans_numbers(tmp_path, model_type):
    """analyze -> profile -> plan --metric state / params -> apply -> analyze: the applied model loses
    exactly the state, FLOPs and parameters the plan states."""
    from ssm_profile.cli.main import main
    from ssm_profile.model.resolve import load_model

    base, run = tmp_path / "base", tmp_path / "run"
    save_with_embedded_tokenizer(lambda **kw: tiny_gated_delta(model_type, **kw), base)
    assert main(["analyze", str(base), "--json", str(tmp_path / "analysis.json")]) == 0
    assert main(["profile", str(base), "-o", str(run), "--nsamples", "2", "--eval-samples", "8", "--seqlen", "16",
                 "--sparsities", "0.5", "--criteria", "magnitude,wanda", "--no-per-layer", "--quiet",
                 "--targets", "unit:value_head,unit:key_head,unit:value_channel,out_proj"]) == 0
    before = analyze(load_model(str(base)).model).totals
    for metric, extra in (("state", ["--structures", "units"]), ("params", ["--no-measure"])):
        plan_path, out = tmp_path / f"plan-{metric}.json", tmp_path / f"out-{metric}"
        assert main(["plan", str(run), "-o", str(plan_path), "--metric", metric, "--ratio", "0.2",
                     "--max-ppl-increase", "0.5", "--quiet", *extra]) == 0
        plan, _, physical = apply_and_check_realised(base, plan_path, out, before)
        if metric == "state":  # a state budget is met by sliced head cuts
            assert physical["state"] > 0 and {a.execution for a in plan.actions} == {"slice"}
