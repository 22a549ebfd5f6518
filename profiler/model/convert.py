"""Load checkpoints in the original mamba-ssm format as transformers models.

The original ``state-spaces/mamba-*`` and ``mamba2-*`` repositories hold a ``config.json`` with
``d_model`` / ``n_layer`` / ``ssm_cfg`` and a ``pytorch_model.bin``. The mixer parameter names
match transformers'; only ``backbone.embedding`` is renamed to ``backbone.embeddings``.
Weights are read with ``torch.load(weights_only=True)`` so no pickled code can run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from ..base.errors import UnsupportedModelError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = directory / name
        if path.exists():
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                return load_file(path)
            return torch.load(path, map_location="cpu", weights_only=True)
    raise UnsupportedModelError(f"{directory} has neither {' nor '.join(WEIGHT_FILES)}")


def transformers_config(ssm_config: dict[str, Any], vocab_size: int) -> Any:
    """Translate a mamba-ssm ``MambaConfig`` dict into a transformers config."""
    from transformers import Mamba2Config, MambaConfig

    if ssm_config.get("attn_layer_idx") or ssm_config.get("d_intermediate", 0):
        raise UnsupportedModelError(
            "this mamba-ssm checkpoint has attention or MLP layers, which transformers' Mamba "
            "classes cannot hold; convert it to a transformers hybrid first"
        )
    cfg = dict(ssm_config.get("ssm_cfg") or {})
    layer = cfg.get("layer", "Mamba1")
    d_model = int(ssm_config["d_model"])
    common = dict(
        vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=int(ssm_config["n_layer"]),
        expand=int(cfg.get("expand", 2)), conv_kernel=int(cfg.get("d_conv", 4)),
        use_bias=bool(cfg.get("bias", False)), use_conv_bias=bool(cfg.get("conv_bias", True)),
        residual_in_fp32=bool(ssm_config.get("residual_in_fp32", True)),
        tie_word_embeddings=bool(ssm_config.get("tie_embeddings", True)),
        layer_norm_epsilon=float(ssm_config.get("norm_epsilon", 1e-5)),
    )
    if layer == "Mamba1":
        dt_rank = cfg.get("dt_rank", "auto")
        dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        return MambaConfig(state_size=int(cfg.get("d_state", 16)), time_step_rank=dt_rank, **common)
    if layer == "Mamba2":
        head_dim = int(cfg.get("headdim", 64))
        intermediate = common["expand"] * d_model
        return Mamba2Config(
            state_size=int(cfg.get("d_state", 128)), head_dim=head_dim, num_heads=intermediate // head_dim,
            n_groups=int(cfg.get("ngroups", 1)), chunk_size=int(cfg.get("chunk_size", 256)), **common,
        )
    raise UnsupportedModelError(f"unknown mamba-ssm layer type '{layer}' (expected Mamba1 or Mamba2)")


def load_mamba_ssm_checkpoint(directory: Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    ssm_config = json.loads((directory / "config.json").read_text())
    state = read_state_dict(directory)
    state = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in state.items()}
    if "backbone.embeddings.weight" not in state:
        raise UnsupportedModelError(f"{directory}: no backbone.embedding.weight; not a mamba-ssm language model")
    config = transformers_config(ssm_config, vocab_size=state["backbone.embeddings.weight"].shape[0])
    model = AutoModelForCausalLM.from_config(config)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise UnsupportedModelError(
            f"{directory}: checkpoint does not match a {type(model).__name__}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    if dtype is not None:
        model.to(dtype)
    return model


def save_as_mamba_ssm(model: torch.nn.Module, directory: Path) -> None:
    """Write a transformers Mamba/Mamba-2 model in the original format (used by tests)."""
    config = model.config
    directory.mkdir(parents=True, exist_ok=True)
    if config.model_type == "mamba":
        ssm_cfg = {"layer": "Mamba1", "d_state": config.state_size, "d_conv": config.conv_kernel,
                   "expand": config.expand, "dt_rank": config.time_step_rank}
    else:
        ssm_cfg = {"layer": "Mamba2", "d_state": config.state_size, "d_conv": config.conv_kernel,
                   "expand": config.expand, "headdim": config.head_dim, "ngroups": config.n_groups,
                   "chunk_size": config.chunk_size}
    ssm_config = {"d_model": config.hidden_size, "d_intermediate": 0, "n_layer": config.num_hidden_layers,
                  "vocab_size": config.vocab_size, "ssm_cfg": ssm_cfg, "rms_norm": True,
                  "residual_in_fp32": config.residual_in_fp32, "fused_add_norm": True,
                  "pad_vocab_size_multiple": 8, "tie_embeddings": config.tie_word_embeddings}
    (directory / "config.json").write_text(json.dumps(ssm_config, indent=2))
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v.clone() for k, v in model.state_dict().items()}
    torch.save(state, directory / "pytorch_model.bin")
