"""CUDA checks (`pytest -m gpu tests/gpu`; skipped without a GPU): the GPU agrees with the CPU."""

from __future__ import annotations

import json

import pytest
import torch

from ssm_profile.cli.main import main
from ssm_profile.calibration.data import batch_losses
from ssm_profile.mixers.choice import Kernels, active, installed
from ssm_profile.model.resolve import EMBEDDED_MODELS, load_model, resolve_device
from ssm_profile.calibration.stats import collect_stats

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
REDUCED = ["--nsamples", "4", "--eval-samples", "4", "--seqlen", "64", "--sparsities", "0.3,0.6",
           "--criteria", "magnitude,wanda,fisher", "--quiet"]


def _windows(model: torch.nn.Module, count: int = 8, seqlen: int = 64) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, (count, seqlen), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", EMBEDDED_MODELS)
def test_dense_losses_agree_on_cpu_and_gpu(name):
    cpu = load_model(name, device="cpu", dtype="float32", with_tokenizer=False).model
    gpu = load_model(name, device="cuda", dtype="float32", with_tokenizer=False).model
    windows = _windows(cpu)
    want = batch_losses(cpu, windows, batch_size=4, kernels=Kernels.for_run(True, "cpu"))
    got = batch_losses(gpu, windows, batch_size=4, kernels=Kernels.for_run(True, "cuda"))
    assert got.device.type == "cpu"
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", EMBEDDED_MODELS)
def test_bf16_on_gpu_is_close_to_float32(name):
    cpu = load_model(name, device="cpu", dtype="float32", with_tokenizer=False).model
    gpu = load_model(name, device="cuda", dtype="bfloat16", with_tokenizer=False).model
    windows = _windows(cpu)
    got = batch_losses(gpu, windows, batch_size=4)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, batch_losses(cpu, windows, batch_size=4), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name", EMBEDDED_MODELS)
def test_a_gpu_model_runs_the_owned_forward_with_mamba_ssm_or_says_why_not(name):
    """No CPU kernel on the GPU; the mixers run the owned forward on mamba-ssm's kernels when they
    import (checked against transformers' forward first), else transformers' forward, recorded."""
    from ssm_profile import mixers
    from ssm_profile.mixers._kernels import cuda_kernels

    gpu = load_model(name, device="cuda", with_tokenizer=False).model
    before = mixers.snapshot()
    with torch.no_grad(), installed(gpu, Kernels.fast()):
        assert active(gpu) == Kernels(fast_scan=True, fast_linear=False, blocked_head=True)
        gpu(input_ids=_windows(gpu, count=2).cuda(), use_cache=False)
    (entry,) = mixers.usage(before).values()
    if cuda_kernels() is not None:
        assert entry["calls"].keys() == {"owned/mamba-ssm"}, entry
    else:
        assert entry["calls"].keys() == {"transformers"} and "no owned kernel on this device" in \
            entry["transformers_because"], entry


def test_statistics_agree_on_cpu_and_gpu():
    cpu = load_model("tiny-mamba", device="cpu", dtype="float32", with_tokenizer=False).model
    gpu = load_model("tiny-mamba", device="cuda", dtype="float32", with_tokenizer=False).model
    windows = _windows(cpu, count=4)
    needs = {"inputs", "hessians", "ssm", "grads"}
    want, got = collect_stats(cpu, windows, needs, batch_size=2), collect_stats(gpu, windows, needs, batch_size=2)
    for key, hessian in want.hessians.items():
        assert got.hessians[key].device.type == "cpu"
        torch.testing.assert_close(got.hessians[key], hessian, rtol=1e-3, atol=1e-3 * float(hessian.abs().max()))
    for key, grad in want.grad_sum.items():
        torch.testing.assert_close(got.grad_sum[key], grad, rtol=1e-2, atol=1e-3 * float(grad.abs().max()) + 1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_profile_on_gpu(tmp_path, dtype):
    run = tmp_path / "run"
    assert resolve_device("auto") == "cuda"
    assert main(["profile", "tiny-mamba2", "-o", str(run), "--dtype", dtype, *REDUCED]) == 0  # --device auto
    meta = json.loads((run / "run.json").read_text())
    assert meta["device"].startswith("cuda") and meta["status"] == "complete"
