"""Shared fixtures: tiny models of every supported family, offline hub settings, one thread."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # tiny ops on 2 busy cores are ~1000x slower with more threads


@pytest.fixture(autouse=True)
def _offline_hub(tmp_path_factory, monkeypatch):
    """No test may reach (or wait for) the network; the hub cache is an empty temporary folder."""
    home = tmp_path_factory.getbasetemp() / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")


def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Add noise to every parameter so no test passes because a tensor happens to be 0 or 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


def cached_step_logits(model, prefix: torch.Tensor, last: torch.Tensor, **kw) -> torch.Tensor:
    """Logits of ``last`` computed from the cache of ``prefix``, whatever this transformers release
    calls the cache (``cache`` since 5.2x, ``cache_params`` or ``past_key_values`` before)."""
    out = model(prefix, use_cache=True)
    name = next(n for n in ("cache", "cache_params", "past_key_values") if getattr(out, n, None) is not None)
    return model(last, use_cache=True, **{name: getattr(out, name)}, **kw).logits


def tiny_mamba(layers: int = 2, **kw):
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    cfg = MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=layers, state_size=4, **kw)
    return perturb(MambaForCausalLM(cfg))


def tiny_mamba2(layers: int = 2, n_groups: int = 2, **kw):
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(0)
    cfg = Mamba2Config(vocab_size=64, hidden_size=16, num_hidden_layers=layers, state_size=4, num_heads=4,
                       head_dim=8, n_groups=n_groups, chunk_size=8, **kw)
    return perturb(Mamba2ForCausalLM(cfg))


@pytest.fixture
def mamba1_model():
    return tiny_mamba()


@pytest.fixture
def mamba2_model():
    return tiny_mamba2()


@pytest.fixture
def mamba1_dir(tmp_path, mamba1_model) -> Path:
    out = tmp_path / "tiny-m1"
    mamba1_model.save_pretrained(out)
    return out


@pytest.fixture
def mamba2_dir(tmp_path, mamba2_model) -> Path:
    out = tmp_path / "tiny-m2"
    mamba2_model.save_pretrained(out)
    return out


def _hybrid_configs() -> dict:
    from transformers import (BambaConfig, FalconH1Config, GraniteMoeHybridConfig, JambaConfig, NemotronHConfig,
                              ZambaConfig, Zamba2Config)

    return {
        # two hybrid layers sharing one transformer block, each with its own adapter
        "zamba2": lambda **kw: Zamba2Config(**{
            "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 4, "mamba_d_state": 8, "n_mamba_heads": 8,
            "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 32, "chunk_size": 8,
            "layers_block_type": ["mamba", "hybrid", "mamba", "hybrid"], **kw}),
        # layers: mamba, attention + experts, mamba, attention + experts
        "jamba": lambda **kw: JambaConfig(**{
            "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 4, "num_attention_heads": 2,
            "num_key_value_heads": 2, "intermediate_size": 32, "mamba_d_state": 4, "mamba_dt_rank": 4,
            "attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1,
            "num_experts": 2, "num_experts_per_tok": 1, **kw}),
        "nemotron_h": lambda **kw: NemotronHConfig(**{
            "vocab_size": 64, "hidden_size": 32, "hybrid_override_pattern": "M*M-", "mamba_num_heads": 4,
            "mamba_head_dim": 16, "ssm_state_size": 8, "n_groups": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 32, "chunk_size": 8, **kw}),
        "bamba": lambda **kw: BambaConfig(**{
            "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2,
            "num_key_value_heads": 2, "intermediate_size": 32, "mamba_n_heads": 4, "mamba_n_groups": 2,
            "mamba_d_state": 4, "mamba_chunk_size": 8, "attn_layer_indices": [1], **kw}),
        # multi-head Mamba-1 layers; attention shared by the hybrid layers
        "zamba": lambda **kw: ZambaConfig(**{
            "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 4, "num_attention_heads": 2,
            "num_key_value_heads": 2, "attention_hidden_size": 32, "intermediate_size": 32, "n_mamba_heads": 2,
            "mamba_d_state": 4, "mamba_dt_rank": 4, "layers_block_type": ["mamba", "hybrid", "mamba", "hybrid"], **kw}),
        "granitemoehybrid": lambda **kw: GraniteMoeHybridConfig(**{
            "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2,
            "num_key_value_heads": 2, "intermediate_size": 32, "shared_intermediate_size": 32, "num_local_experts": 0,
            "layer_types": ["mamba", "attention", "mamba"], "mamba_n_heads": 4, "mamba_n_groups": 2,
            "mamba_d_state": 4, "mamba_d_head": 8, "mamba_chunk_size": 8, **kw}),
        # every layer runs attention and a Mamba-2 mixer side by side; µP multipliers away from 1
        "falcon_h1": lambda **kw: FalconH1Config(**{
            "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "intermediate_size": 32, "mamba_n_heads": 4, "mamba_n_groups": 2,
            "mamba_d_state": 4, "mamba_d_head": 8, "mamba_chunk_size": 8, "mamba_d_ssm": 32,
            "ssm_multipliers": [0.5, 1.5, 0.75, 1.25, 2.0], "ssm_in_multiplier": 0.8, "ssm_out_multiplier": 1.1,
            "mlp_multipliers": [0.9, 1.2], "mamba_rms_norm": True, **kw}),  # the gated norm (before the gate)
    }


HYBRIDS = ("zamba2", "jamba", "nemotron_h", "bamba", "granitemoehybrid", "falcon_h1", "zamba")


def tiny_hybrid(name: str, **kw):
    """A tiny random (perturbed) hybrid of ``_hybrid_configs`` in eval mode; ``kw`` overrides config fields."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return perturb(AutoModelForCausalLM.from_config(_hybrid_configs()[name](**kw)))


def tiny_falcon_mamba(layers: int = 2, **kw):
    from transformers import FalconMambaConfig, FalconMambaForCausalLM

    torch.manual_seed(0)
    cfg = FalconMambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=layers, state_size=4, **kw)
    return perturb(FalconMambaForCausalLM(cfg))


GATED_DELTA = ("qwen3_next", "qwen3_5_text")


def has_model_type(model_type: str) -> bool:
    """Whether this transformers release knows ``model_type`` (Qwen3.5 and Kimi Linear are recent)."""
    from transformers import CONFIG_MAPPING

    return model_type in CONFIG_MAPPING


def tiny_gated_delta(model_type: str, **kw):
    """A tiny random (perturbed) Gated DeltaNet hybrid: ``qwen3_next`` (dense MLP: no experts; packed
    in_proj_qkvz/in_proj_ba) or ``qwen3_5_text`` (split projections). Layers: linear attention, full
    attention, linear attention; 2 key heads of 8 channels serve 4 value heads of 16 (the GQA-like
    layout, head_k_dim != head_v_dim so a transposed state cannot pass)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if not has_model_type(model_type):
        pytest.skip(f"this transformers release has no {model_type}")
    fields = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 3,
              "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8, "linear_num_key_heads": 2,
              "linear_num_value_heads": 4, "linear_key_head_dim": 8, "linear_value_head_dim": 16,
              "linear_conv_kernel_dim": 4, "layer_types": ["linear_attention", "full_attention", "linear_attention"],
              **({"num_experts": 0} if model_type == "qwen3_next" else {}), **kw}
    torch.manual_seed(0)
    return perturb(AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **fields)))


KDA_LAYOUT = {"num_heads": 4, "head_dim": 8, "short_conv_kernel_size": 4, "kda_layers": [1, 3], "full_attn_layers": [2]}


def tiny_kda(**kw):
    """A tiny random (perturbed) Kimi Linear: KDA layers 0 and 2 (4 heads of 8 channels, conv kernel 4) around
    an MLA layer 1, dense MLPs (no expert routing to flip on rounding). The KDA sizes come in the checkpoints'
    own ``linear_attn_config`` (1-based ``kda_layers`` / ``full_attn_layers``), which KimiLinearConfig reads
    over its ``linear_*`` fields; ``kw`` overrides config fields (``mlp_layer_types``, ``vocab_size`` ...)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if not has_model_type("kimi_linear"):
        pytest.skip("this transformers release has no kimi_linear")
    fields = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "moe_intermediate_size": 16,
              "num_hidden_layers": 3, "num_attention_heads": 2, "num_key_value_heads": 2, "kv_lora_rank": 8,
              "qk_rope_head_dim": 4, "qk_nope_head_dim": 4, "v_head_dim": 8, "num_local_experts": 2,
              "num_experts_per_tok": 1, "mlp_layer_types": ["dense"] * 3, "pad_token_id": 0, "bos_token_id": 1,
              "eos_token_id": 2, "linear_attn_config": dict(KDA_LAYOUT), **kw}
    torch.manual_seed(0)
    return perturb(AutoModelForCausalLM.from_config(AutoConfig.for_model("kimi_linear", **fields)))


# Every architecture whose SSM mixers the project computes itself, by mixer family.
MIXER_ARCHITECTURES = {"selective_scan": ("mamba", "falcon_mamba", "jamba", "zamba"),
                       "ssd": ("mamba2", "bamba", "nemotron_h", "zamba2", "granitemoehybrid", "falcon_h1"),
                       "gated_delta": GATED_DELTA}


def tiny_architecture(name: str):
    """A tiny random (perturbed) causal LM of any architecture in ``MIXER_ARCHITECTURES``."""
    makers = {"mamba": tiny_mamba, "mamba2": tiny_mamba2, "falcon_mamba": tiny_falcon_mamba}
    if name in GATED_DELTA:
        return tiny_gated_delta(name)
    return makers[name]() if name in makers else tiny_hybrid(name)


def score_or_say_why(ctx, mixer, names) -> dict[tuple[str, str], str]:
    """Every criterion in ``names`` on every parameter and unit family of ``mixer``: a finite score of the
    right shape, or the reason it does not apply. Returns {(criterion, param or unit kind): reason}."""
    from ssm_profile import criteria as C

    reasons = {}
    for name in names:
        crit = C.get(name)
        for param, p in mixer.params.items():
            try:
                crit.check(mixer, param)
            except C.NotApplicable as err:
                reasons[name, param] = str(err)
                continue
            s = crit.score(ctx, mixer, param)
            assert s.shape == p.shape and torch.isfinite(s).all(), (name, param)
        for kind, family in mixer.unit_families().items():
            try:
                crit.check_units(mixer, family)
            except C.NotApplicable as err:
                reasons[name, kind] = str(err)
                continue
            u = crit.unit_scores(ctx, mixer, family)
            assert u.shape == (family.count,) and torch.isfinite(u).all(), (name, kind)
    return reasons


def save_with_embedded_tokenizer(build, base: Path) -> None:
    """``build(vocab_size=...)`` saved to ``base`` with the embedded tokenizer, so the CLI can run on it."""
    from transformers import AutoTokenizer

    from ssm_profile.model.resolve import embedded_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_dir("tokenizer"))
    build(vocab_size=len(tokenizer)).save_pretrained(base)
    tokenizer.save_pretrained(base)


def apply_and_check_realised(base: Path, plan_path: Path, out: Path, before):
    """``ssm-profile apply`` the plan, then check the applied model lost exactly the state, FLOPs and
    parameters the plan states (``before``: the dense model's analysis totals). Returns (plan, pruned
    model, physical change)."""
    from ssm_profile.cli.main import main
    from ssm_profile.documents import load_plan
    from ssm_profile.model.analysis import analyze
    from ssm_profile.model.resolve import load_model
    from ssm_profile.pruning.summary import physical_change

    assert main(["apply", str(base), str(plan_path), "-o", str(out), "--quiet"]) == 0
    plan = load_plan(plan_path)
    pruned = load_model(str(out)).model
    after = analyze(pruned).totals
    physical = physical_change(plan)
    assert before.state_bytes_per_sequence - after.state_bytes_per_sequence \
        == plan.predicted.state_bytes_removed == physical["state"]
    assert before.flops_per_token - after.flops_per_token == plan.predicted.flops_removed == physical["flops"]
    assert before.parameters - after.parameters == physical["params"]
    return plan, pruned, physical
