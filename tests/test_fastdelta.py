"""ssm_profile.kernels.fastdelta: the gated delta rule, chunked (differentiable) and as the numba recurrence,
against a per-token recurrence written here in float64 (the independent oracle) and against
transformers' own torch functions (the reference the Qwen3-Next / Qwen3.5 mixers run)."""

from __future__ import annotations

import ast
import inspect

import pytest
import torch
import torch.nn.functional as F
from transformers.models.qwen3_next import modeling_qwen3_next

from ssm_profile.kernels import fastdelta

torch.set_num_threads(1)
NUMBA = pytest.mark.skipif(fastdelta.BACKEND != "numba", reason="numba is not installed")


def oracle(q, k, v, g, beta, initial_state=None):
    """The rule token by token in float64: S <- exp(g) S; S += k (beta (v - S^T k))^T; o = S^T q, with q, k
    L2-normalised (eps 1e-6 under the root) and q / sqrt(head_k_dim); key head i serves value heads
    i·r .. i·r + r - 1. Returns (o, final state)."""
    q, k, v, g, beta = (x.double() for x in (q, k, v, g, beta))
    batch, length, k_heads, dk = k.shape
    v_heads, dv = v.shape[2:]
    ratio = v_heads // k_heads
    states = [torch.zeros(batch, dk, dv, dtype=torch.float64) if initial_state is None
              else initial_state[:, h].double() for h in range(v_heads)]
    steps = []
    for t in range(length):
        row = []
        for h in range(v_heads):  # no in-place writes: autograd differentiates the oracle too
            qt, kt = q[:, t, h // ratio], k[:, t, h // ratio]
            qt = qt / torch.sqrt((qt * qt).sum(-1, keepdim=True) + 1e-6) / dk ** 0.5
            kt = kt / torch.sqrt((kt * kt).sum(-1, keepdim=True) + 1e-6)
            s = states[h] * g[:, t, h].exp()[:, None, None]
            delta = beta[:, t, h, None] * (v[:, t, h] - torch.einsum("bij,bi->bj", s, kt))
            states[h] = s + kt[:, :, None] * delta[:, None, :]
            row.append(torch.einsum("bij,bi->bj", states[h], qt))
        steps.append(torch.stack(row, dim=1))
    return torch.stack(steps, dim=1), torch.stack(states, dim=1)


def make(batch=2, length=37, k_heads=2, v_heads=4, dk=8, dv=16, *, decay=1.0, seed=0, dtype=torch.float32):
    """Random q, k, v, g (<= 0; ``decay`` scales it: small keeps the initial state visible), beta, S0."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    g = -decay * rand(v_heads).mul(0.5).exp() * F.softplus(rand(batch, length, v_heads))
    tensors = (rand(batch, length, k_heads, dk), rand(batch, length, k_heads, dk), rand(batch, length, v_heads, dv),
               g, torch.sigmoid(rand(batch, length, v_heads)), rand(batch, v_heads, dk, dv) * 0.5)
    return tuple(t.to(dtype) for t in tensors)


def relative(got, want):
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


def transformers_rule(fn, q, k, v, g, beta, initial_state=None, **kw):
    """transformers' function with q and k repeated to the value heads first (5.15 wants them so; later
    releases repeat them inside, and do nothing when the counts already match)."""
    ratio = v.shape[2] // k.shape[2]
    return fn(q.repeat_interleave(ratio, 2), k.repeat_interleave(ratio, 2), v, g, beta, initial_state=initial_state,
              output_final_state=True, use_qk_l2norm_in_kernel=True, **kw)


IMPLEMENTATIONS = {
    "chunked": lambda *a, **k: fastdelta.gated_delta_chunked(*a, **k),
    "chunked16": lambda *a, **k: fastdelta.gated_delta_chunked(*a, chunk_size=16, **k),
    "scan": lambda *a, **k: fastdelta.gated_delta_scan(*a, **k),
}
LAYOUTS = {"gqa": {"k_heads": 2, "v_heads": 4, "dk": 8, "dv": 16}, "equal": {"k_heads": 3, "v_heads": 3, "dk": 16, "dv": 8},
           "three_per_key": {"k_heads": 1, "v_heads": 3, "dk": 8, "dv": 8}}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("how", IMPLEMENTATIONS)
@pytest.mark.parametrize("initial", [False, True], ids=["zero_state", "initial_state"])
def test_both_forms_equal_the_per_token_oracle(how, layout, initial):
    q, k, v, g, beta, s0 = make(length=37, decay=0.05, **LAYOUTS[layout])  # several 16-chunks, a ragged last one
    s0 = s0 if initial else None
    want, want_state = oracle(q, k, v, g, beta, s0)
    got, state = IMPLEMENTATIONS[how](q, k, v, g, beta, initial_state=s0, output_final_state=True)
    assert got.dtype == torch.float32 and got.shape == want.shape and state.shape == want_state.shape
    assert relative(got, want) < 1e-5 and relative(state, want_state) < 1e-5
    if initial:  # the initial state matters at this decay: a rule that dropped it would fail
        assert relative(IMPLEMENTATIONS[how](q, k, v, g, beta)[0], want) > 1e-2


@pytest.mark.parametrize("length", [1, 64, 130])
def test_lengths_around_the_chunk_size(length):
    q, k, v, g, beta, _ = make(batch=1, length=length, decay=0.3)
    want, want_state = oracle(q, k, v, g, beta)
    for how in IMPLEMENTATIONS.values():
        got, state = how(q, k, v, g, beta, output_final_state=True)
        assert relative(got, want) < 1e-5 and relative(state, want_state) < 1e-5


@pytest.mark.parametrize("fn", ["torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule"])
@pytest.mark.parametrize("initial", [False, True], ids=["zero_state", "initial_state"])
def test_both_forms_equal_transformers_functions(fn, initial):
    q, k, v, g, beta, s0 = make(length=70, decay=0.05)
    s0 = s0 if initial else None
    want, want_state = transformers_rule(getattr(modeling_qwen3_next, fn), q, k, v, g, beta, s0)
    for how in IMPLEMENTATIONS.values():
        got, state = how(q, k, v, g, beta, initial_state=s0, output_final_state=True)
        assert relative(got, want) < 1e-5 and relative(state, want_state) < 1e-5


def test_no_final_state_unless_asked():
    q, k, v, g, beta, _ = make(length=5)
    assert all(how(q, k, v, g, beta)[1] is None for how in IMPLEMENTATIONS.values())


def test_chunked_gradients_equal_the_oracle_and_transformers():
    """Gradients of every input (the initial state too) through the chunked form: against autograd
    through the float64 oracle, and against transformers' chunked function in float32."""
    inputs = make(batch=1, length=21, decay=0.2)
    upstream = torch.randn(1, 21, 4, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def grads(fn, dtype):
        leaves = [x.detach().to(dtype).requires_grad_(True) for x in inputs]
        out, state = fn(*leaves[:5], initial_state=leaves[5])
        ((out.double() * upstream).sum() + state.double().sum()).backward()
        return [x.grad for x in leaves]

    want = grads(lambda *a, initial_state: oracle(*a, initial_state), torch.float64)
    got = grads(lambda *a, initial_state: fastdelta.gated_delta_chunked(
        *a, chunk_size=8, initial_state=initial_state, output_final_state=True), torch.float32)
    reference = grads(lambda *a, initial_state: transformers_rule(
        modeling_qwen3_next.torch_chunk_gated_delta_rule, *a, initial_state), torch.float32)
    names = ("q", "k", "v", "g", "beta", "initial_state")
    for name, a, b, c in zip(names, got, want, reference):
        assert relative(a, b) < 1e-5, name
        assert relative(a, c) < 1e-5, name


def test_float64_inputs_are_computed_in_float64():
    q, k, v, g, beta, s0 = make(length=19, decay=0.1, dtype=torch.float64)
    want, want_state = oracle(q, k, v, g, beta, s0)
    for how in IMPLEMENTATIONS.values():
        got, state = how(q, k, v, g, beta, initial_state=s0, output_final_state=True)
        assert got.dtype == torch.float64 and relative(got, want) < 1e-12 and relative(state, want_state) < 1e-12


def test_half_precision_inputs_come_back_in_their_dtype():
    q, k, v, g, beta, _ = make(length=9)
    want, _ = oracle(q, k, v, g, beta)
    for how in IMPLEMENTATIONS.values():
        got, _ = how(q.bfloat16(), k.bfloat16(), v.bfloat16(), g, beta.bfloat16())
        assert got.dtype == torch.bfloat16 and relative(got, want) < 3e-2


@NUMBA
def test_the_scan_runs_the_numba_kernel_without_autograd(monkeypatch):
    calls = []
    real = fastdelta._delta_fwd_kernel
    monkeypatch.setattr(fastdelta, "_delta_fwd_kernel", lambda *a: calls.append(1) or real(*a))
    q, k, v, g, beta, _ = make(length=5)
    q.requires_grad_(True)
    out, _ = fastdelta.gated_delta_scan(q, k, v, g, beta)
    assert calls == [1] and not out.requires_grad  # forward only: never part of a graph


def test_layouts_that_do_not_fit_are_refused():
    q, k, v, g, beta, _ = make(k_heads=3, v_heads=4)
    with pytest.raises(ValueError, match="multiple of num_k_heads"):
        fastdelta.gated_delta_chunked(q, k, v, g, beta)


def test_the_kernel_module_imports_only_torch_numpy_and_numba():
    tree = ast.parse(inspect.getsource(fastdelta))
    names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    names |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
              if node.level == 0 and node.module}
    relative_imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level > 0]
    assert names <= {"__future__", "torch", "numpy", "numba"} and not relative_imports
