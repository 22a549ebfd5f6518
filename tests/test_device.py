"""Devices and dtypes: --device auto, CPU kernels only on the CPU, bf16 models with float32 losses and statistics."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_mamba

from ssm_profile import mixers
from ssm_profile.cli.main import build_parser, main
from ssm_profile.calibration.data import batch_losses, head_window_losses, logits_window_losses
from ssm_profile.base.errors import SSMProfileError
from ssm_profile.mixers.choice import Kernels, active, installed, model_device
from ssm_profile.model.resolve import check_device, load_model, resolve_device
from ssm_profile.calibration.stats import collect_stats

TINY = ["--nsamples", "2", "--eval-samples", "2", "--seqlen", "16", "--sparsities", "0.5",
        "--criteria", "magnitude", "--no-per-layer", "--quiet"]
MODEL_COMMANDS = {"analyze": [], "profile": [], "validate": ["m", "out"], "apply": ["p.json", "-o", "y"], "tui": []}


# --------------------------------------------------------------------------- --device auto

@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_model_command_defaults_to_auto(command):
    args = build_parser().parse_args([command, *MODEL_COMMANDS[command]])
    assert args.device == "auto"


def test_auto_is_cuda_when_torch_sees_a_gpu_else_cpu(monkeypatch):
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"


def test_explicit_devices_are_checked_and_kept():
    check_device("auto")  # always accepted: it falls back to the CPU
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(SSMProfileError, match="unknown device"):
        resolve_device("tpu9")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_cuda_is_a_one_line_error(capsys):
    assert main(["analyze", "tiny-mamba", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "CUDA is not available" in err and "--device cpu" in err and len(err.splitlines()) == 1


def test_load_model_resolves_auto():
    loaded = load_model("tiny-mamba", device="auto", with_tokenizer=False)
    assert model_device(loaded.model).type == resolve_device("auto")


# --------------------------------------------------------------------------- CPU kernels only on the CPU

@pytest.mark.parametrize("device", ["meta", "cuda", "cuda:1", torch.device("mps")])
def test_no_cpu_linear_off_the_cpu(device):
    """Off the CPU the owned mixer forwards stay (each family picks its device's kernel, or runs
    transformers' forward where it has none); the oneDNN linear is a CPU kernel and goes."""
    assert Kernels.for_run(True, device) == Kernels(fast_scan=True, fast_linear=False, blocked_head=True)
    assert Kernels.fast().on_device(device) == Kernels(fast_scan=True, fast_linear=False, blocked_head=True)
    assert Kernels.reference().on_device(device) == Kernels.reference()


def test_fast_kernels_on_the_cpu(monkeypatch):
    monkeypatch.delenv("SSM_PROFILE_FAST_SCAN", raising=False)
    assert Kernels.for_run(True, "cpu") == Kernels.for_run(True) == Kernels.fast()
    assert Kernels.for_run(False, "cpu") == Kernels.transformers()
    assert Kernels.fast().on_device(torch.device("cpu")) == Kernels.fast()


def test_a_model_off_the_cpu_gets_no_fast_kernels_installed():
    from transformers import MambaConfig, MambaForCausalLM

    with torch.device("meta"):  # stands in for CUDA: not the CPU
        model = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, state_size=4))
    assert model_device(model).type == "meta"
    with installed(model, Kernels.fast()):
        assert active(model) == Kernels(fast_scan=True, fast_linear=False, blocked_head=True)
        assert not any("forward" in m.__dict__ for m in model.modules() if isinstance(m, torch.nn.Linear))
        assert not any(mixers.owned_kernel(m) for m in model.modules())  # no owned kernel on this device
    cpu_model = tiny_mamba()
    with installed(cpu_model, Kernels.fast()):
        assert active(cpu_model) == Kernels.fast()
        assert any("forward" in m.__dict__ for m in cpu_model.modules())


# --------------------------------------------------------------------------- bf16: float32 losses and statistics

@pytest.fixture(scope="module")
def embedded_pair():
    """The embedded tiny-mamba in float32 and in bfloat16, with calibration-like windows."""
    fp32 = load_model("tiny-mamba", dtype=torch.float32, device="cpu", with_tokenizer=False).model
    bf16 = load_model("tiny-mamba", dtype=torch.bfloat16, device="cpu", with_tokenizer=False).model
    windows = torch.randint(0, fp32.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    return fp32, bf16, windows


@pytest.mark.parametrize("kernels", [Kernels.fast(), Kernels.reference()], ids=["blocked", "logits"])
def test_bf16_losses_are_float_and_close_to_float32(embedded_pair, kernels):
    fp32, bf16, windows = embedded_pair
    assert next(bf16.parameters()).dtype == torch.bfloat16
    want = batch_losses(fp32, windows, batch_size=2, kernels=kernels)
    got = batch_losses(bf16, windows, batch_size=2, kernels=kernels)
    assert got.dtype == torch.float64 and torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)  # bf16 weights: ~3 significant digits


def test_losses_of_bf16_logits_are_computed_in_float32():
    """Exactly the float32 loss of the bf16 logits (a bf16 log-softmax would differ)."""
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 9, 300, generator=gen) * 8).to(torch.bfloat16)
    ids = torch.randint(0, 300, (2, 9), generator=gen)
    want = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, 300), ids[:, 1:].reshape(-1),
                                             reduction="none").view(2, -1).mean(1)
    got = logits_window_losses(logits, ids)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)

    head = torch.nn.Linear(16, 300, bias=False).to(torch.bfloat16)
    hidden = torch.randn(2, 9, 16, generator=gen).to(torch.bfloat16)
    with torch.no_grad():
        blocked, whole = head_window_losses(head, hidden, ids), logits_window_losses(head(hidden), ids)
    assert blocked.dtype == torch.float32
    torch.testing.assert_close(blocked, whole, rtol=1e-6, atol=1e-6)


def test_bf16_statistics_accumulate_in_float32_or_wider(embedded_pair):
    fp32, bf16, windows = embedded_pair
    needs = {"inputs", "hessians", "ssm", "grads"}
    want = collect_stats(fp32, windows, needs, batch_size=2)
    got = collect_stats(bf16, windows, needs, batch_size=2)
    tensors = [t for v in got.inputs.values() for t in v.values() if t.is_floating_point()]
    tensors += [*got.hessians.values(), *got.grad_sum.values(), *got.grad_sq_sum.values()]
    tensors += [t for v in got.ssm.values() for t in v.values() if t.is_floating_point()]
    assert tensors and {t.dtype for t in tensors} <= {torch.float32, torch.float64}
    for key, entry in want.inputs.items():  # same statistics within bf16's precision
        torch.testing.assert_close(got.inputs[key]["sq"], entry["sq"], rtol=0.1, atol=1e-3)
    for key, hessian in want.hessians.items():
        torch.testing.assert_close(got.hessians[key], hessian, rtol=0.1, atol=0.05 * float(hessian.abs().max()))


def test_bf16_profile_completes_and_records_the_device(tmp_path):
    run = tmp_path / "run"
    assert main(["profile", "tiny-mamba", "--dtype", "bfloat16", "-o", str(run), *TINY]) == 0
    meta = json.loads((run / "run.json").read_text())
    assert meta["device"] == resolve_device("auto")
    assert meta["status"] == "complete" and meta["model"]["config"]["torch_dtype" if "torch_dtype" in
                                                                    meta["model"]["config"] else "dtype"] == "bfloat16"
