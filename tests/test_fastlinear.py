"""oneDNN float32 linear (ssm_profile.fastlinear): inference only, agrees with F.linear, restored on exit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssm_profile import fastlinear
from ssm_profile.fastscan2 import use_fast_kernels

torch.set_num_threads(1)
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
        with fastlinear.use_fast_linear():
            assert fastlinear.is_fast_linear_enabled() and F.linear is not fastlinear._ORIGINAL_LINEAR
            got = layer(x)
    assert calls == [1] and got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert F.linear is fastlinear._ORIGINAL_LINEAR and not fastlinear.is_fast_linear_enabled()


def test_gradients_and_other_dtypes_keep_torchs_path():
    x, w = rand(4, 16), rand(8, 16, seed=1).requires_grad_()
    with fastlinear.use_fast_linear():
        assert not fastlinear.applies(x, w, None)  # w needs a gradient: oneDNN's op has no backward
        F.linear(x, w).sum().backward()
        assert not fastlinear.applies(x.double(), w.detach().double(), None)
        assert not fastlinear.applies(x, w.detach().t(), None)  # non-contiguous weight
    assert w.grad is not None and torch.equal(w.grad, x.sum(0).expand(8, 16))


def test_switch_and_self_check(monkeypatch):
    x, w = rand(4, 16), rand(8, 16, seed=1)
    monkeypatch.setenv("SSM_PROFILE_FAST_SCAN", "0")
    assert not fastlinear.applies(x, w, None)
    monkeypatch.delenv("SSM_PROFILE_FAST_SCAN")
    # a oneDNN op that disagrees with F.linear turns the route off for the process, with the reason
    monkeypatch.setattr(fastlinear, "_state", {"checked": False, "ok": False})
    monkeypatch.setattr(fastlinear, "_op", lambda: (lambda x, w, b, *rest: F.linear(x, w, b) * 1.01))
    assert not fastlinear.applies(x, w, None)
    assert "disagrees" in fastlinear.REASON
    with fastlinear.use_fast_linear():
        torch.testing.assert_close(F.linear(x, w), x @ w.t())
    monkeypatch.setattr(fastlinear, "_state", {"checked": False, "ok": False})
    monkeypatch.setattr(fastlinear, "_op", lambda: None)
    assert not fastlinear.applies(x, w, None) and "no oneDNN" in fastlinear.REASON


@needs_onednn
def test_use_fast_kernels_includes_the_linear_route():
    with use_fast_kernels(True):
        assert fastlinear.is_fast_linear_enabled()
    with use_fast_kernels(False):
        assert not fastlinear.is_fast_linear_enabled()
    assert not fastlinear.is_fast_linear_enabled()


def test_env_command_names_the_kernels(capsys):
    from ssm_profile.cli.main import main

    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "- fast scan backend: numba" in out and "- fast linear (float32 inference): " in out
    assert fastlinear.backend() in out


def test_overlapping_fast_kernel_blocks_in_threads_restore_everything():
    """Block A enters, block B enters (another thread), A leaves first: B keeps the drop-ins until
    it leaves, and afterwards every global is torch's and transformers' own again."""
    import threading

    from transformers.models.mamba import modeling_mamba

    scan_before = modeling_mamba.mamba_selective_scan
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def block_a():
        with use_fast_kernels(True):
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def block_b():
        a_in.wait(5)
        with use_fast_kernels(True):
            b_in.set()
            a_out.wait(5)
            seen["linear_after_a_left"] = fastlinear.is_fast_linear_enabled()
            seen["scan_after_a_left"] = modeling_mamba.mamba_selective_scan is not scan_before

    threads = [threading.Thread(target=block_a), threading.Thread(target=block_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"linear_after_a_left": True, "scan_after_a_left": True}
    assert F.linear is fastlinear._ORIGINAL_LINEAR and modeling_mamba.mamba_selective_scan is scan_before
    with use_fast_kernels(True), use_fast_kernels(False):  # a reference block nested in a fast one
        assert F.linear is fastlinear._ORIGINAL_LINEAR
    assert F.linear is fastlinear._ORIGINAL_LINEAR


def test_a_fast_block_and_a_reference_block_in_threads_leave_nothing_installed():
    """Thread A enters a fast block, thread B a reference block, A leaves, then B leaves: afterwards
    every global is torch's and transformers' own again (B must not restore A's drop-ins)."""
    import threading

    from transformers.models.mamba import modeling_mamba

    scan_before, linear_before = modeling_mamba.mamba_selective_scan, F.linear
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def block_a():
        with use_fast_kernels(True):
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def block_b():
        a_in.wait(5)
        with use_fast_kernels(False):
            b_in.set()
            a_out.wait(5)

    threads = [threading.Thread(target=block_a), threading.Thread(target=block_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert F.linear is linear_before and modeling_mamba.mamba_selective_scan is scan_before
