"""Owned forwards on one model's mixers, proven equal to transformers' before they run.

:func:`mixer_forwards` gives every SSM mixer of a model an instance ``forward`` (installed by
:func:`ssm_profile.mixers.choice.installed`, restored on exit):

* with ``owned=True``, the family's own forward (:meth:`MixerFamily.run`) for full-sequence calls
  without a cache or padding; anything else (a decode step with a cache, a padding mask, packed
  sequences) goes to transformers' forward;
* with ``owned=False``, transformers' forward.

Both count every call in the ledger (:mod:`ssm_profile.mixers._ledger`).

Before a mixer class first runs the owned forward with a kernel, :func:`check` compares the two
forwards on that class's first mixer in the model: a seeded random input (2 sequences of
``CHECK_LENGTH`` tokens) through the mixer's real weights, with its hooks and every instance forward
set aside. They must agree within ``tolerance(dtype)`` · (1 + max |transformers|). If they do not,
or the owned forward fails, the class runs transformers' forward for the rest of the process, one
warning line says so (and that it is slower), and the ledger records the verdict.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..base.patching import forwards_overridden
from ..model.arch import kind_of
from ._base import MixerFamily
from ._ledger import LEDGER, OWNED, TRANSFORMERS, Verdict
from .registry import family_of

CHECK_LENGTH = 37  # tokens per check sequence: several scan chunks of the tiny models, not a multiple of 8
CACHE_ARGUMENTS = ("cache", "cache_params", "past_key_values", "seq_idx", "cu_seqlens", "cu_seq_lens_q",
                   "cu_seq_lens_k", "initial_states")


class MixerFallbackWarning(RuntimeWarning):
    """An owned mixer forward disagreed with transformers' and was switched off for its class."""


def tolerance(dtype: torch.dtype) -> float:
    """Allowed max |owned − transformers| per unit of output scale (1 + max |transformers|): float32
    rounding of two summation orders over a scan (measured ≤ 2e-6 on the tiny checkpoints), with room."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2


def mixer_forwards(model: nn.Module, owned: bool) -> dict[nn.Module, Callable]:
    """mixer module -> the instance forward that runs it (see the module docstring)."""
    out: dict[nn.Module, Callable] = {}
    for module in model.modules():
        family = family_of(module)
        if family is not None:
            out[module] = _forward(module, family, owned)
        elif (kind := kind_of(module)) is not None:
            out[module] = _counted(module, kind)
    return out


def _counted(module: nn.Module, kind: str) -> Callable:
    """transformers' forward, counted, for a mixer the analysis knows but no family here computes
    (so records say what ran instead of "no SSM mixer ran")."""
    cls = type(module)
    why = f"the project has no own forward for {kind} mixers"

    def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        LEDGER.count(cls.__name__, kind, TRANSFORMERS, why)
        return cls.forward(module, *args, **kwargs)

    return forward


def _forward(module: nn.Module, family: MixerFamily, owned: bool) -> Callable:
    cls = type(module)
    name = cls.__name__
    why_not = None if owned else "asked for transformers' kernels"
    why_not = why_not or family.unsupported(module)
    signature = _signature(cls)

    def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        named = _named_arguments(signature, module, args, kwargs)
        hidden_states = named.pop("__first__", None)
        why = why_not or _needs_transformers(named)
        kernel = None
        if why is None:
            kernel = family.kernels(hidden_states.device, _grad(module, hidden_states))
            why = "no owned kernel on this device" if kernel is None else _refused(module, family, kernel,
                                                                                    hidden_states.dtype)
        if why is not None:
            LEDGER.count(name, family.name, TRANSFORMERS, why)
            return cls.forward(module, *args, **kwargs)
        return run_owned(module, family, kernel, hidden_states)

    forward.__ssm_profile_mixer__ = family  # type: ignore[attr-defined]  # tells ours from others'
    forward.__ssm_profile_owned__ = why_not is None  # type: ignore[attr-defined]
    return forward


def run_owned(module: nn.Module, family: MixerFamily, kernel: str, hidden_states: torch.Tensor | None, **how: Any
              ) -> torch.Tensor:
    """:meth:`MixerFamily.run` (``how``: its ``start``, ``state``, ``keep``), counted in the ledger."""
    LEDGER.count(type(module).__name__, family.name, f"{OWNED}/{kernel}")
    return family.run(module, hidden_states, kernel, **how)


def owned_family(module: nn.Module) -> MixerFamily | None:
    """The family whose forward is installed on ``module`` by :func:`mixer_forwards` (owned or
    transformers' behind the counter); None when none of ours is."""
    forward = module.__dict__.get("forward")
    return getattr(forward, "__ssm_profile_mixer__", None)


def owned_kernel(module: nn.Module) -> str | None:
    """The kernel ``module``'s installed owned forward runs for inference, proven equal to transformers'
    (checking it now if needed); None when ``module`` runs transformers' forward."""
    forward = module.__dict__.get("forward")
    family = owned_family(module)
    if family is None or not getattr(forward, "__ssm_profile_owned__", False):
        return None
    weight = module.out_proj.weight
    kernel = family.kernels(weight.device, False)
    if kernel is None or _refused(module, family, kernel, weight.dtype) is not None:
        return None
    return kernel


def _signature(cls: type) -> inspect.Signature | None:
    """The class forward's signature when it names its arguments (None for ``*args``-style forwards)."""
    try:
        signature = inspect.signature(cls.forward)
    except (TypeError, ValueError):
        return None
    kinds = [p.kind for p in signature.parameters.values()]
    return None if inspect.Parameter.VAR_POSITIONAL in kinds or len(kinds) < 2 else signature


def _named_arguments(signature: inspect.Signature | None, module: nn.Module, args: tuple,
                     kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments by name (positional ones too, as the class's forward names them); the
    hidden states under ``"__first__"``."""
    try:
        bound = signature.bind_partial(module, *args, **kwargs) if signature is not None else None
    except TypeError:
        bound = None
    if bound is None:  # a forward wrapped as (*args, **kwargs): read positional extras by what they are
        named = dict(kwargs)
        first = args[0] if args else named.pop("hidden_states", None)
        for value in args[1:]:
            if value is None:  # an absent cache or mask
                continue
            if (isinstance(value, torch.Tensor) and isinstance(first, torch.Tensor) and value.dim() == 2
                    and tuple(value.shape) == tuple(first.shape[:2])):
                named.setdefault("attention_mask", value)  # (batch, length): a padding mask
                continue
            named["__positional__"] = True  # anything else (a cache ...): transformers' forward
        named["__first__"] = first
        return named
    items = dict(bound.arguments)
    items.pop(next(iter(signature.parameters)), None)  # self
    first = next(iter(items)) if items else None
    named = {k: v for k, v in items.items() if signature.parameters[k].kind is not inspect.Parameter.VAR_KEYWORD}
    named.update(next((v for k, v in items.items()
                       if signature.parameters[k].kind is inspect.Parameter.VAR_KEYWORD), {}))
    named["__first__"] = named.pop(first, None) if first is not None else None
    return named


def _needs_transformers(named: dict[str, Any]) -> str | None:
    """Why this call must run transformers' forward: a cache, packed sequences or padding."""
    if named.get("__positional__") or any(named.get(name) is not None for name in CACHE_ARGUMENTS):
        return "a cache or packed sequences were passed"
    mask = named.get("attention_mask")
    if mask is not None and not bool(mask.all()):
        return "a padding mask was passed"
    return None


def _grad(module: nn.Module, hidden_states: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (hidden_states.requires_grad or any(p.requires_grad for p in module.parameters()))


def _refused(module: nn.Module, family: MixerFamily, kernel: str, dtype: torch.dtype) -> str | None:
    """None when the owned forward with ``kernel`` is proven for this class (checking it now if needed)."""
    device = module.out_proj.weight.device
    key = (type(module).__qualname__, kernel, str(dtype), device.type)
    verdict = LEDGER.verdict(key)
    if verdict is None:
        verdict = check(module, family, kernel, dtype)
        LEDGER.record(key, verdict)
        if not verdict.ok:
            warnings.warn(f"{verdict.mixer}: the project's own forward ({family.title}, {kernel} kernel) does not "
                          f"reproduce this transformers release's ({verdict.reason}); using transformers' forward "
                          "for it, which is slower", MixerFallbackWarning, stacklevel=4)
    return None if verdict.ok else f"its owned forward failed the check ({verdict.reason})"


@torch.no_grad()
def check(module: nn.Module, family: MixerFamily, kernel: str, dtype: torch.dtype | None = None) -> Verdict:
    """Compare the owned forward (``kernel``) with transformers' on ``module`` (see the module docstring)."""
    weight = module.out_proj.weight
    dtype = dtype or weight.dtype
    hidden = family.hidden_size(module)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, CHECK_LENGTH, hidden, generator=generator).to(device=weight.device, dtype=dtype)
    base = dict(mixer=type(module).__name__, family=family.name, kernel=kernel, dtype=str(dtype).replace("torch.", ""),
                device=weight.device.type)
    with _bare(module):
        try:
            want = type(module).forward(module, x)
        except Exception as err:  # noqa: BLE001 - transformers' own forward failing is not ours to judge
            return Verdict(**base, ok=False, max_abs_diff=None, bound=None,
                           reason=f"transformers' forward raised {type(err).__name__}")
        try:
            got = family.run(module, x, kernel)
        except Exception as err:  # noqa: BLE001 - any failure means: do not use it
            return Verdict(**base, ok=False, max_abs_diff=None, bound=None,
                           reason=f"the owned forward raised {type(err).__name__}: {err}")
    want = want[0] if isinstance(want, tuple) else want
    if got.shape != want.shape:
        return Verdict(**base, ok=False, max_abs_diff=None, bound=None,
                       reason=f"output shape {tuple(got.shape)} vs {tuple(want.shape)}")
    got, want = got.double(), want.double()
    both_nan = torch.isnan(got) & torch.isnan(want)
    diff = (got - want).abs().masked_fill(both_nan, 0.0)
    scale = want.abs().masked_fill(~torch.isfinite(want), 0.0).max() if want.numel() else torch.tensor(0.0)
    max_diff = float(diff.max()) if diff.numel() else 0.0
    bound = tolerance(dtype) * (1.0 + float(scale))
    ok = max_diff <= bound  # a NaN difference fails
    return Verdict(**base, ok=ok, max_abs_diff=max_diff, bound=bound,
                   reason="" if ok else f"max difference {max_diff:.3g} > bound {bound:.3g}")


@contextlib.contextmanager
def _bare(module: nn.Module) -> Iterator[None]:
    """``module`` and its submodules without hooks (calibration hooks must not see the check's input)
    and without instance forwards (each runs its class's code)."""
    saved = []
    for sub in module.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs"):
            value = sub.__dict__.get(attr)
            if value:
                saved.append((sub, attr, value))
                sub.__dict__[attr] = type(value)()
    try:
        with forwards_overridden({sub: None for sub in module.modules() if "forward" in sub.__dict__}):
            yield
    finally:
        for sub, attr, value in saved:
            sub.__dict__[attr] = value
