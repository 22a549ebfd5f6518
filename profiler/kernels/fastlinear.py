"""Fast float32 ``nn.Linear`` on CPU for inference: oneDNN's matmul instead of MKL's.

PyTorch's CPU wheels run ``F.linear`` on float32 through MKL, which takes its AVX-512 kernels
only on Intel CPUs; on AMD Zen 4/5 it runs AVX2 kernels at about half the machine's float32 peak.
oneDNN (bundled in the same wheels, used by torch's own inductor CPU backend as
``torch.ops.mkldnn._linear_pointwise``) picks kernels by CPU features. Measured on one core of an
AMD EPYC (Zen 5), for every projection shape of the embedded models and of mamba-130m: 2.0-2.5x
faster; the 4,096-wide LM head 1.5x (it is bound by writing its output). Results agree with MKL
to float32 rounding (a different summation order), not bit for bit.

Only inference is routed (no input needs gradients), only float32 CPU tensors, and only after a
self-check: the first call compares oneDNN with ``F.linear`` on a random problem and turns the
route off for the process if the op is missing or disagrees (``REASON`` says why). The route is
one of :class:`ssm_profile.mixers.choice.Kernels` and follows the same switch (``SSM_PROFILE_FAST_SCAN=0``
/ ``--no-fast-scan``), which decides whether it is installed; like every kernel module, this one
imports nothing of the rest of the project.

:func:`linear_forward` is ``nn.Linear.forward`` through :func:`linear`; ``kernels.installed`` sets it
on each ``nn.Linear`` instance of one model (``torch.nn.functional`` itself is never replaced).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


_SELF_CHECK_TOLERANCE = 1e-4  # relative to the output's scale; float32 rounding is ~1e-6 here

_state: dict[str, object] = {"checked": False, "ok": False}
REASON: str | None = None  # why the oneDNN route is off, once checked


def _op() -> Callable | None:
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


def _self_check() -> bool:
    """Whether oneDNN's linear exists here and agrees with ``F.linear`` (run once per process)."""
    global REASON
    if _state["checked"]:
        return bool(_state["ok"])
    _state["checked"] = True
    op = _op()
    if op is None:
        REASON = "this torch build has no oneDNN linear (torch.ops.mkldnn._linear_pointwise)"
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, 33, 96, generator=gen)
        w, b = torch.randn(70, 96, generator=gen), torch.randn(70, generator=gen)
        with torch.no_grad():
            want = F.linear(x, w, b)
            got = op(x, w, b, "none", [], "")
        scale = float(want.abs().max())
        if got.shape != want.shape or got.dtype != want.dtype or \
                float((got - want).abs().max()) > _SELF_CHECK_TOLERANCE * scale:
            REASON = "oneDNN's linear disagrees with F.linear beyond float32 rounding"
            return False
    except Exception as err:  # noqa: BLE001 - any failure means: keep torch's path
        REASON = f"oneDNN's linear failed its self-check ({type(err).__name__}: {err})"
        return False
    _state["ok"] = True
    return True


def applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """The oneDNN route handles this call: CPU float32 inference on a plain weight."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if x.dim() < 2 or weight.dim() != 2 or not weight.is_contiguous() or x.numel() == 0:
        return False
    if bias is not None and (bias.dtype != torch.float32 or bias.dim() != 1):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return False  # oneDNN's op has no backward
    if torch.compiler.is_compiling() or type(x) is not torch.Tensor:
        return False
    return _self_check()


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:  # noqa: A002
    """``F.linear`` through oneDNN where :func:`applies`, else torch's own."""
    if applies(input, weight, bias):
        return _op()(input, weight, bias, "none", [], "")
    return F.linear(input, weight, bias)


def linear_forward(self: nn.Linear, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Linear's name
    """``nn.Linear.forward`` through :func:`linear`; :mod:`ssm_profile.mixers.choice` binds it to one
    module instance at a time."""
    return linear(input, self.weight, self.bias)


def backend() -> str:
    """What the fast path's float32 inference linear is here: ``"oneDNN"`` or why torch's own."""
    return "oneDNN" if _self_check() else f"torch's own ({REASON})"
