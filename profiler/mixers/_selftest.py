"""What the mixer families run on this machine, found by running them (``ssm-profile env``)."""

from __future__ import annotations

from typing import Any

import torch


def self_test(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Run a tiny random Mamba, Mamba-2 and Qwen3.5 (Gated DeltaNet) once each with the profiler's
    kernels on ``device`` and return what their mixers ran (:func:`ssm_profile.mixers.usage` of those calls)."""
    from transformers import (AutoConfig, AutoModelForCausalLM, Mamba2Config, Mamba2ForCausalLM, MambaConfig,
                              MambaForCausalLM)

    from .choice import Kernels, installed
    from ._ledger import snapshot, usage

    before = snapshot()
    torch.manual_seed(0)
    models = [MambaForCausalLM(MambaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, state_size=4)),
              Mamba2ForCausalLM(Mamba2Config(vocab_size=32, hidden_size=16, num_hidden_layers=1, state_size=4,
                                             num_heads=4, head_dim=8, n_groups=1, chunk_size=8)),
              AutoModelForCausalLM.from_config(AutoConfig.for_model(
                  "qwen3_5_text", vocab_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=8, linear_num_key_heads=1,
                  linear_num_value_heads=2, linear_key_head_dim=8, linear_value_head_dim=8,
                  layer_types=["linear_attention"]))]
    ids = torch.randint(0, 32, (1, 16), device=device)
    for model in models:
        model = model.to(device).eval()
        with torch.no_grad(), installed(model, Kernels.for_run(True, device)):
            model(input_ids=ids, use_cache=False)
    return usage(before)
