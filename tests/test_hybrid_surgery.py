"""Structured surgery on the Mamba layers of hybrid models: Zamba2, Jamba, NemotronH, Bamba,
GraniteMoeHybrid (Granite 4.0-H), FalconH1 (its µP multipliers kept) and Zamba (v1, multi-head Mamba-1).

* uniform unit cuts the stock config expresses are sliced for real (config updated, plain
  ``AutoModelForCausalLM.from_pretrained`` reloads them); others stay zeros and analyze says so;
* a cut of zero units leaves logits bit-identical; slicing zeroed units gives the zeroed model's logits;
* removing whole layers keeps each model's layer bookkeeping (layer type lists, attention/expert
  periods, shared-block adapters) right, or is refused with one line and the model untouched.
"""

from __future__ import annotations

import pytest
import torch
from conftest import HYBRIDS, cached_step_logits, tiny_hybrid
from transformers import AutoModelForCausalLM
from transformers.utils import logging

from ssm_profile.model.analysis import analyze
from ssm_profile.model.arch import find_mixers
from ssm_profile.pruning.surgery import remove_layers, slice_cuts, slice_units, sync_config, zero_units

logging.set_verbosity_error()
IDS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))  # 12 > chunk_size 8


def logits(model) -> torch.Tensor:
    with torch.no_grad():  # no cache: transformers cannot build one for a model without attention layers
        return model(IDS, use_cache=False).logits


def per_head(drop: int, heads: int, p: int) -> list[int]:
    """``drop`` head channels in every head, a different set in each (only the count must match)."""
    return [h * p + (h + k) % p for h in range(heads) for k in range(drop)]


# (model, kind, units removed in every mixer): uniform cuts the stock config expresses
SLICED = [
    ("zamba2", "head", [0, 5, 6, 7]),  # 4 heads x 8 = 32 = 1 x hidden_size
    ("zamba2", "head_channel", per_head(4, 8, 8)),
    ("zamba2", "state", [1, 3, 4]),
    ("jamba", "channel", list(range(0, 32, 2))),  # 16 = 1 x hidden_size
    ("nemotron_h", "head", [0, 3]),  # one head per group
    ("nemotron_h", "head_channel", per_head(3, 4, 16)),  # 4 x 13: NemotronH's width is free of hidden_size
    ("nemotron_h", "state", [1, 9]),  # one state per group
    ("bamba", "head", [1, 2]),
    ("bamba", "head_channel", per_head(4, 4, 8)),
    ("bamba", "state", [0, 5]),
    ("granitemoehybrid", "head", [1, 2]),  # one head per group: 2 x 8 = 16 = 1 x hidden_size
    ("granitemoehybrid", "head_channel", per_head(4, 4, 8)),
    ("granitemoehybrid", "state", [0, 5]),
    ("falcon_h1", "head", [0, 3]),  # FalconH1's width (mamba_d_ssm) is free of hidden_size
    ("falcon_h1", "head_channel", per_head(3, 4, 8)),
    ("falcon_h1", "state", [1, 6]),
    ("zamba", "channel", list(range(0, 16, 2))),  # channel p of both heads: 2 x 8 = 16 = 1 x hidden_size
    ("zamba", "head", [1]),  # 1 x 16
    ("zamba", "state", [0, 3]),
    ("zamba", "dt_rank", [1]),
]
# cuts no stock config expresses: executed as zeros
ZEROS = [
    ("zamba2", "head", [7], "not an integer multiple of hidden_size"),  # 7 x 8 = 56
    ("zamba2", "head_channel", per_head(1, 8, 8), "not an integer multiple of hidden_size"),  # 8 x 7
    ("jamba", "channel", [0, 1, 2, 3], "not an integer multiple of hidden_size"),
    ("jamba", "state", [0], "normalises"),  # B/C RMSNorms average over the states
    ("jamba", "dt_rank", [1], "normalises"),
    ("bamba", "head_channel", per_head(2, 4, 8), "not an integer multiple of hidden_size"),  # 4 x 6 = 24
    ("granitemoehybrid", "head_channel", per_head(2, 4, 8), "not an integer multiple of hidden_size"),
    ("zamba", "channel", [0, 1, 2, 3], "not an integer multiple of hidden_size"),  # 2 x 12 = 24
]


def cut_everywhere(model, kind: str, drop: list[int]) -> dict[int, list[int]]:
    return {m.layer: list(drop) for m in find_mixers(model)}


def compensate_norm_eps(model, kind: str, drop: list[int]) -> None:
    """Give sliced gated norms eps * n_full / n_kept: the one term the norm-weight rescale cannot
    absorb (see surgery._rescale_gated_norm); everything else must then match exactly."""
    for m in find_mixers(model):
        norm = getattr(m.module, "norm", None)
        if kind in ("head", "head_channel") and norm is not None:
            kept = m.num_heads if kind == "head" else m.intermediate_size
            norm.variance_epsilon *= (kept + len(drop)) / kept


@pytest.mark.parametrize("name,kind", sorted({(n, k) for n, k, _ in SLICED}))
def test_zero_unit_cut_is_bit_identical(name, kind):
    model = tiny_hybrid(name)
    before = logits(model)
    for m in find_mixers(model):
        slice_units(m, kind, range(m.unit_family(kind).count))
        zero_units(m, kind, [])
    assert sync_config(model) == []
    assert torch.equal(logits(model), before)


@pytest.mark.parametrize("name,kind,drop", SLICED, ids=[f"{n}-{k}-{len(d)}" for n, k, d in SLICED])
def test_uniform_cut_is_sliced_reloads_and_matches_the_zeroed_model(tmp_path, name, kind, drop):
    model = tiny_hybrid(name)
    n_before = sum(p.numel() for p in model.parameters())
    per_unit = sum(m.unit_family(kind).elements_per_unit(m) for m in find_mixers(model))
    for m in find_mixers(model):
        zero_units(m, kind, drop)
    zeroed = logits(model)
    outcome = slice_cuts(model, {kind: cut_everywhere(model, kind, drop)})[kind]
    assert outcome.sliced, outcome.reason
    assert outcome.config  # the config fields that describe the new width changed
    assert n_before - sum(p.numel() for p in model.parameters()) == len(drop) * per_unit
    sliced = logits(model)

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert {k: tuple(v.shape) for k, v in reloaded.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert torch.equal(logits(reloaded), sliced)

    # Up to the gated norms' eps term (as for stock Mamba-2), the sliced model is the zeroed one;
    # state and Jamba channel cuts do not touch a norm group and match without compensation.
    if kind in ("head", "head_channel"):
        assert (sliced - zeroed).abs().max() < 0.1
    else:  # float32 rounding of shorter sums, relative to the logits' scale (2.3e-5 on Zamba2 in 5.16)
        assert (sliced - zeroed).abs().max() <= 1e-5 * max(1.0, zeroed.abs().max().item())
    compensate_norm_eps(model, kind, drop)
    # Relative to the logits' scale: float32 rounding of the rescaled norm weights and of the
    # shorter sums (Zamba2 head channels: 4e-5 on logits of magnitude 3.6; 1e-6 in float64).
    tolerance = 1e-5 * max(1.0, zeroed.abs().max().item()) if kind not in ("head", "head_channel") \
        else 2e-5 * zeroed.abs().max().item()
    assert (logits(model) - zeroed).abs().max() <= tolerance


@pytest.mark.parametrize("name,kind,drop,why", ZEROS, ids=[f"{n}-{k}-{len(d)}" for n, k, d, _ in ZEROS])
def test_inexpressible_cut_stays_zeros(name, kind, drop, why):
    model = tiny_hybrid(name)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    outcome = slice_cuts(model, {kind: cut_everywhere(model, kind, drop)})[kind]
    assert not outcome.sliced and why in outcome.reason
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes


@pytest.mark.parametrize("name", HYBRIDS)
def test_analyze_says_expressible_only_where_apply_slices(name):
    """Unconditional "expressible" kinds slice any uniform cut; "applied as zeros" kinds never slice."""
    rows = {u.kind: u.stock_config for u in analyze(tiny_hybrid(name)).units if u.layer is not None and u.prunable}
    sliced = {k for n, k, _ in SLICED if n == name}
    zeros = {k for n, k, _, _ in ZEROS if n == name}
    for kind, text in rows.items():
        if text.startswith("expressible:"):
            assert kind in sliced and kind not in zeros
        elif text.startswith("applied as zeros"):
            assert kind not in sliced
        else:  # conditional on the kept width: slices in SLICED, stays zeros in ZEROS
            assert text.startswith("expressible only when") and kind in sliced
    layer_row = next(u.stock_config for u in analyze(tiny_hybrid(name)).units if u.kind == "layer")
    assert layer_row.startswith("expressible only when" if name in ("jamba", "zamba") else "expressible:")


def skip_layer(model, layer: int):
    """A hook that makes decoder layer ``layer`` return its input: the model without that layer."""
    def identity(module, args, kwargs, out):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden
    return model.model.layers[layer].register_forward_hook(identity, with_kwargs=True)


def cached_step(model) -> torch.Tensor:
    """Logits of the last token computed from the cache of the others (positions given: a model
    without attention layers cannot count the cached tokens)."""
    n = IDS.shape[1]
    with torch.no_grad():
        return cached_step_logits(model, IDS[:, :-1], IDS[:, -1:], position_ids=torch.tensor([[n - 1]]))[:, -1]


def unique_params(module) -> dict[int, torch.nn.Parameter]:
    return {id(p): p for p in module.parameters()}


def zamba2_adapter_params(block, k: int) -> int:
    """Parameters of hybrid layer k's adapters (attention q/k/v, MLP gate/up) in a shared Zamba2 block."""
    lists = [getattr(block.self_attn, f"linear_{x}_adapter_list", None) for x in "qkv"]
    lists.append(block.feed_forward.gate_up_proj_adapter_list)
    return sum(p.numel() for adapters in lists if adapters is not None for p in adapters[k].parameters())


# (model, layers removed, config fields expected afterwards, config overrides)
REMOVALS = [
    ("zamba2", [0], {"layers_block_type": ["hybrid", "linear_attention", "hybrid"], "hybrid_layer_ids": [0, 2]}, {}),
    ("zamba2", [1], {"layers_block_type": ["linear_attention"] * 2 + ["hybrid"], "hybrid_layer_ids": [2]}, {}),
    ("zamba2", [1], {"hybrid_layer_ids": [2]}, {"use_shared_attention_adapter": True, "adapter_rank": 4}),
    ("jamba", [0], {"attn_layer_period": 2, "attn_layer_offset": 0, "expert_layer_period": 2}, {}),
    ("jamba", [1], {"attn_layer_period": 3, "attn_layer_offset": 2}, {}),
    ("nemotron_h", [0], {"hybrid_override_pattern": "*M-"}, {}),
    ("nemotron_h", [1], {"hybrid_override_pattern": "MM-"}, {}),
    ("bamba", [0], {"attn_layer_indices": [0]}, {}),
    ("bamba", [1], {"attn_layer_indices": None}, {}),
    ("granitemoehybrid", [0], {"num_hidden_layers": 2}, {}),  # layer_types follows (checked by the reload)
    ("falcon_h1", [0], {"num_hidden_layers": 1}, {}),
]


@pytest.mark.parametrize("name,drop,fields,kw", REMOVALS, ids=[f"{n}-{d}-{len(k)}" for n, d, _, k in REMOVALS])
def test_remove_layers_round_trip(tmp_path, name, drop, fields, kw):
    model = tiny_hybrid(name, **kw)
    hooks = [skip_layer(model, i) for i in drop]
    skipped, skipped_step = logits(model), cached_step(model)  # before removal: attention still there
    for h in hooks:
        h.remove()
    kept_params = {id(p) for i, layer in enumerate(model.model.layers) if i not in drop for p in layer.parameters()}
    gone = {k: p for k, p in unique_params(model).items() if k not in kept_params and
            any(p is q for i in drop for q in model.model.layers[i].parameters())}
    n_before = sum(p.numel() for p in unique_params(model).values())
    n_layers = len(model.model.layers)
    # a removed Zamba2 hybrid layer's adapters live in the (shared, kept) transformer block
    adapters = zamba2_adapter_params(model.model.layers[1].shared_transformer, 0) if name == "zamba2" and 1 in drop \
        else 0

    remove_layers(model, drop)
    assert len(model.model.layers) == n_layers - len(drop) == model.config.num_hidden_layers
    for key, value in fields.items():
        assert getattr(model.config, key) == value
    assert sync_config(model) == []
    in_memory = logits(model)
    torch.testing.assert_close(in_memory, skipped, atol=1e-6, rtol=0)
    removed = n_before - sum(p.numel() for p in unique_params(model).values())
    assert removed == sum(p.numel() for p in gone.values()) + adapters

    # The cache follows the renumbered layers (the reference is the original's own cached path);
    # transformers cannot run a cache without any attention layer.
    if any(t in ("full_attention", "hybrid") for t in model.config.layer_types):
        torch.testing.assert_close(cached_step(model), skipped_step, atol=1e-6, rtol=0)

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert sum(p.numel() for p in unique_params(reloaded).values()) == n_before - removed
    assert torch.equal(logits(reloaded), in_memory)


@pytest.mark.parametrize("name,layers,kw,message", [
    # six layers M A M A M A; dropping layer 2 leaves attention at 1, 2, 4: no period/offset
    ("jamba", 6, {}, "no period describes"),
    # two shared blocks used in turn by four hybrid layers: dropping the first swaps the others' blocks
    ("zamba2", None, {"num_mem_blocks": 2, "layers_block_type": ["hybrid"] * 4, "num_hidden_layers": 4},
     "different block"),
])
def test_remove_layers_refuses_what_the_config_cannot_express(name, layers, kw, message):
    model = tiny_hybrid(name, **({"num_hidden_layers": layers} if layers else kw))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    with pytest.raises(ValueError, match=message) as err:
        remove_layers(model, [2] if name == "jamba" else [0])
    assert "\n" not in str(err.value)
    assert model.config.to_dict() == config
    assert {k: v for k, v in model.state_dict().items()}.keys() == state.keys()
