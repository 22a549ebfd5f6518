"""oneDNN float32 linear (ssm_profile.kernels.fastlinear): inference only, agrees with F.linear, installed per model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_mamba

from ssm_profile.kernels import fastlinear
from ssm_profile.mixers.choice import Kernels, installed

torch.set_num_threads(1)
LINEAR_ONLY = Kernels(fast_linear=True)
LINEAR_AT_IMPORT = F.linear  # torch's own: the kernels never replace it
needs_onednn = pytest.mark.skipif(fastlinear._op() is None, reason="this torch build has no oneDNN linear")


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@needs_onednn
@pytest.mark.parametrize("x_shape,out,bias", [((2, 33, 96), 70, True), ((64, 256), 40, False),
                                               ((3, 5, 8), 256, True), ((1, 1, 128), 4096, False)])
def test_routes_inference_and_agrees_with_torch(x_shape, out, bias, monkeypatch):
    x, w = rand(*x_shape), rand(out, x_shape[-1], seed=1)
    b = rand(out, seed=2) if bias else None
    want = F.linear(x, w, b)
    op, calls = fastlinear._op(), []
    assert fastlinear._self_check(), fastlinear.REASON
    monkeypatch.setattr(fastlinear, "_op", lambda: (lambda *a: calls.append(1) or op(*a)))
    layer = torch.nn.Linear(x_shape[-1], out, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(w)
        if bias:
            layer.bias.copy_(b)
        with installed(layer, LINEAR_ONLY):
            assert "forward" in layer.__dict__ and F.linear is LINEAR_AT_IMPORT
            got = layer(x)
    assert calls == [1] and got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert F.linear is LINEAR_AT_IMPORT and "forward" not in layer.__dict__


def test_gradients_and_other_dtypes_keep_torchs_path():
    x, w = rand(4, 16), rand(8, 16, seed=1).requires_grad_()
    assert not fastlinear.applies(x, w, None)  # w needs a gradient: oneDNN's op has no backward
    fastlinear.linear(x, w).sum().backward()
    assert not fastlinear.applies(x.double(), w.detach().double(), None)
    assert not fastlinear.applies(x, w.detach().t(), None)  # non-contiguous weight
    assert w.grad is not None and torch.equal(w.grad, x.sum(0).expand(8, 16))


def test_switch_and_self_check(monkeypatch):
    x, w = rand(4, 16), rand(8, 16, seed=1)
    monkeypatch.setenv("SSM_PROFILE_FAST_SCAN", "0")
    assert Kernels.for_run(True) == Kernels.transformers()  # the variable switches every fast kernel off
    monkeypatch.delenv("SSM_PROFILE_FAST_SCAN")
    assert Kernels.for_run(True) == Kernels.fast() and Kernels.for_run(False) == Kernels.transformers()
    # a oneDNN op that disagrees with F.linear turns the route off for the process, with the reason
    monkeypatch.setattr(fastlinear, "_state", {"checked": False, "ok": False})
    monkeypatch.setattr(fastlinear, "_op", lambda: (lambda x, w, b, *rest: F.linear(x, w, b) * 1.01))
    assert not fastlinear.applies(x, w, None)
    assert "disagrees" in fastlinear.REASON
    layer = torch.nn.Linear(16, 8, bias=False)
    with torch.no_grad(), installed(layer, LINEAR_ONLY):
        layer.weight.copy_(w)
        torch.testing.assert_close(layer(x), x @ w.t())
    monkeypatch.setattr(fastlinear, "_state", {"checked": False, "ok": False})
    monkeypatch.setattr(fastlinear, "_op", lambda: None)
    assert not fastlinear.applies(x, w, None) and "no oneDNN" in fastlinear.REASON


@needs_onednn
def test_fast_kernels_include_the_linear_route():
    model = tiny_mamba(layers=2)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with installed(model, Kernels.fast()):
        assert linears and all("forward" in m.__dict__ for m in linears)
        with installed(model, Kernels.transformers()):
            assert not any("forward" in m.__dict__ for m in linears)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_env_command_names_the_kernels(capsys):
    from ssm_profile.cli.main import main

    assert main(["env"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("- SSM mixers on cpu: "))
    assert "MambaMixer: own forward, numba kernel" in line and "Mamba2Mixer: own forward, numba kernel" in line
    assert "Qwen3_5GatedDeltaNet: own forward, numba kernel" in line
    assert "- fast linear (float32 inference): " in out
    assert fastlinear.backend() in out
