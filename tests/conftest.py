"""Shared fixtures: tiny models of every supported family, offline hub settings, one thread."""

from __future__ import annotations

import os
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
