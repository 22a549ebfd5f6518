"""Which CPU kernels a model runs, as a value, and installing that choice on one model.

A :class:`Kernels` says which of the profiler's fast CPU paths an evaluation takes:

* ``fast_scan``: the numba scans and causal conv of :mod:`ssm_profile.fastscan` (Mamba-1: Mamba,
  FalconMamba, Jamba, Zamba) and :mod:`ssm_profile.fastscan2` (Mamba-2) instead of transformers' own
  CPU functions;
* ``fast_linear``: oneDNN's float32 linear (:mod:`ssm_profile.fastlinear`) for every ``nn.Linear``;
* ``blocked_head``: the loss from row blocks of the LM head (:func:`ssm_profile.data.head_window_losses`)
  instead of whole-batch logits (a speed choice; equal to float32 rounding).

:func:`installed` puts a choice on ONE model for the duration of a block: each Mamba mixer gets an
instance ``forward``, a copy of its class's forward whose kernel names (``mamba_selective_scan``,
``causal_conv1d_fn``, ``mamba2_chunk_scan``) resolve to the drop-ins, and each ``nn.Linear`` one that
calls oneDNN. On exit those instance attributes go again. Nothing shared is replaced (neither
``torch.nn.functional`` nor transformers' modeling modules), so other models, and other threads
working on them, run whatever their own choice is. Hooks keep working: ``Module.__call__`` calls
them around the instance forward. One model is not meant for two threads at once (trials mask it
in place anyway).

``SSM_PROFILE_FAST_SCAN=0`` switches every fast kernel off: :meth:`Kernels.for_run` then chooses
transformers' kernels, and the drop-ins also read it at call time.

The fast paths are CPU kernels: on any other device (CUDA, where transformers calls mamba-ssm's
kernels by itself when it is installed) a model runs transformers' kernels. :meth:`Kernels.for_run`
chooses so given the device, and :func:`installed` applies :meth:`Kernels.on_device` to the model's
own device, so a choice made without one (a run's recipe) never puts CPU kernels on a GPU model.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import types
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from .patching import forwards_overridden, with_globals
from .runtime import FAST_KERNELS_ENV as ENV_VAR, fast_kernels_enabled as env_enabled  # noqa: F401

_MARK = "_ssm_profile_kernel"  # attribute of the forwards installed here (to tell them from others')


@dataclass(frozen=True)
class Kernels:
    """A choice of CPU kernels (see the module docstring). The default is transformers' own
    kernels with the blocked head: what a model runs with nothing installed."""

    fast_scan: bool = False
    fast_linear: bool = False
    blocked_head: bool = True

    @classmethod
    def fast(cls) -> Kernels:
        """Every fast path."""
        return cls(fast_scan=True, fast_linear=True, blocked_head=True)

    @classmethod
    def transformers(cls) -> Kernels:
        """transformers' kernels and torch's linear, the loss from row blocks of the head."""
        return cls(fast_scan=False, fast_linear=False, blocked_head=True)

    @classmethod
    def reference(cls) -> Kernels:
        """transformers' kernels, torch's linear and the loss from whole-batch logits: the
        profiler before any of its fast paths (``ssm-profile bench --reference-profile``)."""
        return cls(fast_scan=False, fast_linear=False, blocked_head=False)

    @classmethod
    def for_run(cls, fast: bool = True, device: str | torch.device = "cpu") -> Kernels:
        """The profiler's choice for a model on ``device``: every fast path unless ``fast`` is false
        (``--no-fast-scan``, a run's ``fast_scan`` setting, a plan's ``fast_kernels``), the device is
        not the CPU, or ``SSM_PROFILE_FAST_SCAN=0``."""
        return (cls.fast() if fast and env_enabled() else cls.transformers()).on_device(device)

    def on_device(self, device: str | torch.device) -> Kernels:
        """This choice for a model on ``device``: unchanged on the CPU, without the fast CPU
        kernels elsewhere (the blocked head stays: it is device-neutral and saves memory)."""
        if torch.device(device).type == "cpu":
            return self
        return replace(self, fast_scan=False, fast_linear=False)


_ACTIVE: weakref.WeakKeyDictionary[nn.Module, Kernels] = weakref.WeakKeyDictionary()
_ACTIVE_LOCK = threading.Lock()


def active(model: nn.Module) -> Kernels:
    """The kernels installed on ``model`` (:meth:`Kernels.transformers` when none are)."""
    with _ACTIVE_LOCK:
        return _ACTIVE.get(model, Kernels.transformers())


@contextlib.contextmanager
def installed(model: nn.Module, choice: Kernels) -> Iterator[nn.Module]:
    """``model`` runs ``choice`` (for its device: :meth:`Kernels.on_device`) inside the block;
    afterwards exactly what it ran before. Blocks nest (an inner block with another choice wins
    until it leaves; one with the same choice changes nothing). Yields the model."""
    choice = choice.on_device(model_device(model))
    with _ACTIVE_LOCK:
        before = _ACTIVE.get(model)
    if before == choice:
        yield model
        return
    with forwards_overridden(_forwards(model, choice)):
        _set_active(model, choice)
        try:
            yield model
        finally:
            _set_active(model, before)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _set_active(model: nn.Module, choice: Kernels | None) -> None:
    with _ACTIVE_LOCK:
        if choice is None:
            _ACTIVE.pop(model, None)
        else:
            _ACTIVE[model] = choice


def _forwards(model: nn.Module, choice: Kernels) -> dict[nn.Module, Callable | None]:
    """module -> the instance forward ``choice`` wants (None: the class's), for every module whose
    forward this changes. Modules carrying someone else's instance forward are left alone."""
    from .fastlinear import linear_forward

    namespaces: dict[str, dict[str, Any]] = {}
    rebuilt: dict[type, types.FunctionType | None] = {}
    out: dict[nn.Module, Callable | None] = {}
    for module in model.modules():
        current = module.__dict__.get("forward")
        if current is not None and not _is_ours(current, linear_forward):
            continue
        cls = type(module)
        forward = None
        if choice.fast_linear and cls.forward is nn.Linear.forward:
            forward = types.MethodType(linear_forward, module)
        elif choice.fast_scan:
            if cls not in rebuilt:
                rebuilt[cls] = _scan_forward(cls, namespaces)
            if rebuilt[cls] is not None:
                forward = types.MethodType(rebuilt[cls], module)
        if forward is not None or current is not None:
            out[module] = forward
    return out


def _is_ours(forward: Callable, linear_forward: Callable) -> bool:
    return getattr(forward, "__func__", None) is linear_forward or getattr(forward, _MARK, False)


def _drop_ins() -> dict[str, dict[str, Callable[[Callable], Callable]]]:
    """transformers modeling module -> {module-level name: make(original) -> drop-in}."""
    from . import fastscan, fastscan2

    table = {name: fastscan.DROP_INS for name in fastscan.MODELING_MODULES}
    table.update({name: fastscan2.DROP_INS for name in fastscan2.MODELING_MODULES})
    return table


def _scan_forward(cls: type, namespaces: dict[str, dict[str, Any]]) -> types.FunctionType | None:
    """A copy of ``cls.forward`` that calls the fast drop-ins, or None when ``cls`` is no mixer of
    a supported modeling module. ``namespaces`` caches each module's namespace with its drop-ins."""
    forward = getattr(cls, "forward", None)
    if not isinstance(forward, types.FunctionType):
        return None
    inner = inspect.unwrap(forward)
    module_name = inner.__globals__.get("__name__")
    drop_ins = _drop_ins().get(module_name)
    if not drop_ins or not set(drop_ins) & set(inner.__code__.co_names):
        return None
    if module_name not in namespaces:
        originals = inner.__globals__
        namespaces[module_name] = {**originals, **{name: make(originals[name]) for name, make in drop_ins.items()
                                                   if name in originals}}
    try:
        fast = with_globals(forward, namespaces[module_name])
    except TypeError as err:
        warnings.warn(f"{cls.__name__} keeps transformers' kernels: {err}", RuntimeWarning, stacklevel=3)
        return None
    setattr(fast, _MARK, True)
    return fast
