"""Model resolution: embedded models, aliases, local directories, mamba-ssm checkpoints, failures."""

from __future__ import annotations

import pytest
import torch

from ssm_profile.cli.main import main
from ssm_profile.model.convert import save_as_mamba_ssm
from ssm_profile.base.errors import HubUnreachableError, ModelNotFoundError, SSMProfileError
from ssm_profile.model.resolve import ALIASES, load_model, locate


def test_aliases_point_at_hub_repos():
    assert locate("mamba-1.4b").location == "state-spaces/mamba-1.4b-hf"
    assert locate("mamba2-130m").kind == "hub"
    assert all("/" in a.repo for a in ALIASES.values())


def test_default_is_embedded_tiny_mamba():
    src = locate(None)
    assert (src.name, src.kind) == ("tiny-mamba", "embedded")


@pytest.mark.parametrize("name", ["tiny-mamba", "tiny-mamba2"])
def test_embedded_models_load_offline_with_tokenizer(name):
    loaded = load_model(name)
    assert loaded.tokenizer is not None
    ids = loaded.tokenizer("In the beginning", return_tensors="pt")["input_ids"]
    logits = loaded.model(ids).logits
    assert logits.shape[-1] == loaded.config.vocab_size and torch.isfinite(logits).all()


def test_local_transformers_dir(mamba2_dir, mamba2_model):
    loaded = load_model(str(mamba2_dir))
    assert loaded.source.kind == "local"
    ids = torch.randint(0, 64, (1, 12))
    assert torch.equal(loaded.model(ids).logits, mamba2_model(ids).logits)


@pytest.mark.parametrize("fixture", ["mamba1_model", "mamba2_model"])
def test_mamba_ssm_checkpoint_is_converted(tmp_path, request, fixture):
    model = request.getfixturevalue(fixture)
    save_as_mamba_ssm(model, tmp_path / "orig")
    loaded = load_model(str(tmp_path / "orig"))
    assert loaded.source.kind == "local-mamba-ssm"
    assert type(loaded.model) is type(model)
    ids = torch.randint(0, 64, (1, 12))
    torch.testing.assert_close(loaded.model(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ModelNotFoundError, match="unknown model 'no-such-model'"):
        locate("no-such-model")


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        locate(str(tmp_path))


def test_unreachable_hub_is_one_clear_error():
    with pytest.raises(HubUnreachableError, match="not in the local cache"):
        load_model("mamba-1.4b")


def test_pickled_weights_refused_by_default(tmp_path, mamba1_model):
    mamba1_model.save_pretrained(tmp_path / "bin")
    (tmp_path / "bin" / "model.safetensors").unlink()
    torch.save(mamba1_model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(SSMProfileError, match="--allow-pickle"):
        load_model(str(tmp_path / "bin"))


def test_cli_unreachable_hub_prints_one_line(capsys):
    code = main(["analyze", "mamba-1.4b"])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and "Traceback" not in err and "mamba-1.4b" in err


def test_cli_model_without_mixers(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=32)).save_pretrained(tmp_path / "gpt2")
    assert main(["analyze", str(tmp_path / "gpt2")]) == 2
    assert "no Mamba" in capsys.readouterr().err


# Tiny random checkpoints of recurrent families ssm-profile does not support yet, and the layer
# class the refusal must name.
OTHER_RECURRENT = {
    "recurrent_gemma": ({"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "num_key_value_heads": 1, "lru_width": 16, "head_dim": 8,
                         "attention_window_size": 8, "block_types": ["recurrent", "attention"]},
                        "1 RecurrentGemmaRecurrentBlock (layer 0)"),
    "rwkv": ({"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2, "attention_hidden_size": 16,
              "intermediate_size": 32, "context_length": 64}, "2 RwkvSelfAttention (layers 0, 1)"),
    "lfm2": ({"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1, "layer_types": ["conv", "full_attention"]},
             "1 Lfm2ShortConv (layer 0)"),
    "xlstm": ({"vocab_size": 64, "hidden_size": 16, "embedding_dim": 16, "num_hidden_layers": 2, "num_blocks": 2,
               "num_heads": 2}, "2 xLSTMLayer (layers 0, 1)"),
}


def test_zamba_v1_is_analysed_not_refused(tmp_path, capsys):
    """Zamba's multi-head Mamba-1 layers (x_proj/dt_proj per head) were refused in one line; they are
    mixers of kind mamba1 now, with their coupled units (tests/test_zamba.py)."""
    from conftest import tiny_hybrid

    tiny_hybrid("zamba").save_pretrained(tmp_path / "zamba")
    assert main(["analyze", str(tmp_path / "zamba")]) == 0
    out = capsys.readouterr().out
    assert "ZambaForCausalLM (zamba), 4/4 SSM layers" in out and "not supported yet" not in out


@pytest.mark.parametrize("model_type", OTHER_RECURRENT)
def test_other_recurrent_families_are_named_in_one_line(model_type, tmp_path, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM

    from conftest import has_model_type

    if not has_model_type(model_type):
        pytest.skip(f"this transformers release has no {model_type}")
    fields, named = OTHER_RECURRENT[model_type]
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **fields)).save_pretrained(tmp_path / "m")
    assert main(["analyze", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err and "not supported yet" in err, err
