"""ssm_profile.kernels.fastscan: the fused selective scan equals transformers' reference function (an
independent oracle here), values and gradients; installed, it is what the Mamba-1 mixers run."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from conftest import tiny_mamba
from transformers.models.mamba import modeling_mamba

from ssm_profile import mixers
from ssm_profile.kernels import fastscan
from ssm_profile.mixers import choice as kernels
from ssm_profile.mixers.choice import Kernels, installed

torch.set_num_threads(1)
SCAN_ONLY, TRANSFORMERS = Kernels(fast_scan=True), Kernels()  # the scan alone, torch's linear either way

ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def reference_scan():
    """transformers' own function (the kernels never replace it)."""
    return modeling_mamba.mamba_selective_scan


def make_inputs(batch, channels, length, state, *, D=True, z=True, bias=True, softplus=True, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    delta = rand(batch, channels, length) if softplus else torch.rand(batch, channels, length, generator=gen,
                                                                     dtype=torch.float64) * 0.5 + 0.01
    return {"u": rand(batch, channels, length), "delta": delta,
            "A": -torch.exp(rand(channels, state) * 0.5), "B": rand(batch, state, length),
            "C": rand(batch, state, length), "D": rand(channels) if D else None,
            "z": rand(batch, channels, length) if z else None,
            "delta_bias": rand(channels) * 0.5 if bias else None}


def run(fn, inputs, softplus, last, dtype=None, grads=True):
    """Output, last state and input gradients of ``fn`` for a fixed random upstream gradient."""
    leaves = {k: None if v is None else v.detach().to(dtype or v.dtype).requires_grad_(grads)
              for k, v in inputs.items()}
    args = [leaves[k] for k in ARGS]
    res = fn(*args[:5], D=args[5], z=args[6], delta_bias=args[7], delta_softplus=softplus,
             return_last_state=True)
    out, state = res
    if not grads:
        return out, state, {}
    gen = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)).sum()
    if last:
        loss = loss + (state * torch.randn(state.shape, generator=gen, dtype=torch.float64).to(state.dtype)).sum()
    loss.backward()
    return out, state, {k: v.grad for k, v in leaves.items() if v is not None}


def assert_close(actual, expected, rtol=1e-4, atol=1e-5, what=""):
    assert actual.shape == expected.shape, what
    actual, expected = actual.double(), expected.double()
    err = (actual - expected).abs().max().item()
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), f"{what}: max abs err {err}"


CASES = [  # batch, channels, length, state, D, z, bias, softplus
    (2, 5, 7, 3, True, True, True, True),
    (1, 3, 1, 4, True, True, True, True),  # L = 1
    (2, 17, 9, 1, False, False, False, False),  # N = 1, a partial second channel block
    (1, 33, 70, 16, True, False, True, True),  # several time tiles and channel blocks
    (2, 6, 12, 5, False, True, False, True),
    (1, 4, 10, 2, True, True, True, False),
]


@pytest.mark.parametrize("batch,channels,length,state,D,z,bias,softplus", CASES)
@pytest.mark.parametrize("last", [False, True])
def test_matches_reference_values_and_gradients(batch, channels, length, state, D, z, bias, softplus, last):
    inputs = make_inputs(batch, channels, length, state, D=D, z=z, bias=bias, softplus=softplus)
    ref_out, ref_state, ref_grads = run(reference_scan(), inputs, softplus, last)  # float64
    out, state_, grads = run(fastscan.selective_scan, inputs, softplus, last, dtype=torch.float32)
    assert out.dtype == state_.dtype == torch.float32
    assert_close(out, ref_out, what="out")
    assert_close(state_, ref_state, what="last state")
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert_close(grad, ref_grads[name], what=f"grad {name}")


def test_plain_call_returns_only_output():
    inputs = make_inputs(1, 4, 6, 3)
    args = [inputs[k].float() for k in ARGS[:5]]
    out = fastscan.selective_scan(*args)
    assert_close(out, reference_scan()(*args))


def test_non_contiguous_inputs():
    """transformers passes the gate as a strided half of in_proj and B/C as slices of x_proj."""
    inputs = {k: v.float() for k, v in make_inputs(2, 20, 11, 4).items()}
    proj = torch.randn(2, 11, 50)
    proj[:, :, 25:45] = inputs["z"].transpose(1, 2)
    inputs["z"] = proj[:, :, 25:45].transpose(1, 2)  # channels contiguous, time stride 50
    inputs["u"] = inputs["u"].transpose(1, 2).contiguous().transpose(1, 2)  # time-major
    bc = torch.randn(2, 11, 9)
    bc[:, :, 1:5], bc[:, :, 5:9] = inputs["B"].transpose(1, 2), inputs["C"].transpose(1, 2)
    inputs["B"], inputs["C"] = bc[:, :, 1:5].transpose(1, 2), bc[:, :, 5:9].transpose(1, 2)
    assert not any(inputs[k].is_contiguous() for k in ("u", "z", "B", "C"))
    ref = run(reference_scan(), inputs, True, True, dtype=torch.float64)
    ours = run(fastscan.selective_scan, inputs, True, True)
    assert_close(ours[0], ref[0], what="out")
    for name, grad in ours[2].items():
        assert_close(grad, ref[2][name], what=f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_other_dtypes_follow_reference(dtype):
    inputs = {k: None if v is None else v.to(dtype) for k, v in make_inputs(1, 6, 9, 4).items()}
    inputs["A"], inputs["D"], inputs["delta_bias"] = (inputs[k].float() for k in ("A", "D", "delta_bias"))
    ref_out, ref_state, _ = run(reference_scan(), inputs, True, False, grads=False)
    out, state, grads = run(fastscan.selective_scan, inputs, True, False)
    assert (out.dtype, state.dtype) == (ref_out.dtype, ref_state.dtype)
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-4
    assert_close(out, ref_out, rtol=tol, atol=tol, what="out")
    assert_close(state, ref_state, rtol=tol, atol=tol, what="last state")
    assert all(grads[k].dtype == inputs[k].dtype for k in grads)


def test_results_do_not_depend_on_thread_count():
    inputs = make_inputs(2, 40, 45, 4)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            results.append(run(fastscan.selective_scan, inputs, True, True, dtype=torch.float32))
        finally:
            torch.set_num_threads(1)
    (out1, st1, g1), (out2, st2, g2) = results
    assert torch.equal(out1, out2) and torch.equal(st1, st2)
    assert all(torch.equal(g1[k], g2[k]) for k in g1)


def test_torch_fallback_matches_reference():
    inputs = make_inputs(2, 5, 70, 3)  # longer than one chunk of the fallback
    ref_out, ref_state, ref_grads = run(reference_scan(), inputs, True, True)
    out, state, grads = run(fastscan.selective_scan_torch, inputs, True, True, dtype=torch.float32)
    assert_close(out, ref_out, what="out")
    assert_close(state, ref_state, what="last state")
    for name, grad in grads.items():
        assert_close(grad, ref_grads[name], what=f"grad {name}")


def test_without_numba_the_torch_backend_is_used(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)  # makes `import numba` fail
    spec = importlib.util.spec_from_file_location("ssm_profile._fastscan_no_numba", fastscan.__file__)  # a package member, for its relative imports
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.BACKEND == "torch"
    inputs = make_inputs(1, 4, 6, 3)
    out, state, _ = run(module.selective_scan, inputs, True, True, dtype=torch.float32, grads=False)
    ref_out, ref_state, _ = run(reference_scan(), inputs, True, True, grads=False)
    assert_close(out, ref_out)
    assert_close(state, ref_state)
    x = torch.randn(1, 6, 10)[:, :, :5].transpose(1, 2)  # (b, e=5, l=6), channels contiguous
    assert module.causal_conv1d(x, torch.randn(5, 4), None, "silu") is not None


# --------------------------------------------------------------------------- conv


def reference_conv():
    return modeling_mamba.causal_conv1d_fn


@pytest.mark.parametrize("bias,activation", [(True, "silu"), (False, None)])
@pytest.mark.parametrize("grad", [False, True])
def test_causal_conv1d_matches_reference(bias, activation, grad):
    proj = torch.randn(2, 37, 2 * 20)
    x = proj[:, :, 20:].transpose(1, 2).requires_grad_(False)  # (b, e, l), channels contiguous
    weight, b = torch.randn(20, 4), (torch.randn(20) if bias else None)
    with torch.set_grad_enabled(grad):
        if grad:
            weight.requires_grad_(True)
        out = fastscan.causal_conv1d(x, weight, b, activation)
        expected = reference_conv()(x, weight, b, activation=activation)
    assert_close(out, expected, what="conv")
    if grad:
        (g,) = torch.autograd.grad(out.sum(), weight)
        (ref_g,) = torch.autograd.grad(expected.sum(), weight)
        assert_close(g, ref_g, what="conv weight grad")


def test_causal_conv1d_declines_what_it_does_not_handle():
    x = torch.randn(1, 8, 5)  # time contiguous: F.conv1d is already fast there
    assert fastscan.causal_conv1d(x, torch.randn(8, 4)) is None
    xt = torch.randn(1, 5, 8).transpose(1, 2)
    assert fastscan.causal_conv1d(xt, torch.randn(8, 4), activation="gelu") is None
    assert fastscan.causal_conv1d(xt.bfloat16(), torch.randn(8, 4).bfloat16()) is None


# --------------------------------------------------------------------------- transformers hook


def test_installing_routes_only_that_models_mixers_and_restores_them(monkeypatch):
    scan, conv = modeling_mamba.mamba_selective_scan, modeling_mamba.causal_conv1d_fn
    calls = []
    real = fastscan.selective_scan
    monkeypatch.setattr(fastscan, "selective_scan", lambda *a: calls.append(1) or real(*a))
    model, other = tiny_mamba(layers=2), tiny_mamba(layers=2)
    ids = torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(0))
    layers = [layer.mixer for layer in model.backbone.layers]
    with torch.no_grad(), installed(model, SCAN_ONLY):
        assert all(mixers.owned_kernel(m) == "numba" for m in layers) and kernels.active(model) == SCAN_ONLY
        calls.clear()  # the first use checked the owned forward
        model(ids, use_cache=False)
        assert len(calls) == 2  # one fast scan per mixer
        other(ids, use_cache=False)  # another model: transformers' own scan
        with installed(model, TRANSFORMERS):  # a reference block nested in a fast one
            assert not any(mixers.owned_kernel(m) for m in layers)
            model(ids, use_cache=False)
        with installed(model, SCAN_ONLY):  # the same choice again changes nothing
            model(ids, use_cache=False)
        assert len(calls) == 4 and all(mixers.owned_kernel(m) == "numba" for m in layers)
        assert modeling_mamba.mamba_selective_scan is scan and modeling_mamba.causal_conv1d_fn is conv
    assert not any("forward" in m.__dict__ for m in model.modules()) and kernels.active(model) == TRANSFORMERS
    assert modeling_mamba.mamba_selective_scan is scan and modeling_mamba.causal_conv1d_fn is conv


def _logits_and_grads(model, ids, enabled):
    model.zero_grad(set_to_none=True)
    with installed(model, SCAN_ONLY if enabled else TRANSFORMERS):
        out = model(ids, labels=ids)
        out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_tiny_mamba_same_logits_and_gradients(mode):
    model = tiny_mamba(layers=2)
    model.train(mode == "train")
    ids = torch.randint(0, 64, (2, 19), generator=torch.Generator().manual_seed(0))
    ref_logits, ref_grads = _logits_and_grads(model, ids, False)
    logits, grads = _logits_and_grads(model, ids, True)
    assert_close(logits, ref_logits, what="logits")
    for name, grad in grads.items():
        assert_close(grad, ref_grads[name], atol=1e-5 * max(1.0, ref_grads[name].abs().max().item()),
                     what=f"grad {name}")
    with torch.no_grad(), installed(model, SCAN_ONLY):  # the no-autograd path (numba conv kernel)
        assert_close(model(ids).logits, ref_logits, what="no-grad logits")


def test_tiny_mamba_generation_unchanged():
    model = tiny_mamba(layers=2)
    ids = torch.randint(0, 64, (1, 7), generator=torch.Generator().manual_seed(0))
    kwargs = {"max_new_tokens": 4, "do_sample": False}
    with torch.no_grad():
        expected = model.generate(ids, **kwargs)
        with installed(model, SCAN_ONLY):
            assert torch.equal(model.generate(ids, **kwargs), expected)


def test_tiny_falcon_mamba_same_logits():
    from transformers import FalconMambaConfig, FalconMambaForCausalLM

    torch.manual_seed(0)
    model = FalconMambaForCausalLM(FalconMambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                                     state_size=4)).eval()
    ids = torch.randint(0, 64, (1, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits
        with installed(model, SCAN_ONLY):
            assert "forward" in model.backbone.layers[0].mixer.__dict__
            assert_close(model(ids).logits, expected, what="falcon logits")


def test_bench_functions_report_times_and_ratios():
    from ssm_profile.bench.bench_scan import bench_layer_backward, bench_layer_forward, format_table

    fwd = bench_layer_forward(seq_len=8, repeats=1)
    bwd = bench_layer_backward(seq_len=4, repeats=1)
    assert fwd["threads"] == bwd["threads"] == 1 and torch.get_num_threads() == 1
    for key in ("reference_s", "fast_s", "floor_s", "speedup", "fast_over_floor"):
        assert fwd[key] > 0
    assert bwd["speedup"] == pytest.approx(bwd["reference_s"] / bwd["fast_s"])
    assert "forward" in format_table([("forward", fwd), ("backward", bwd)])
