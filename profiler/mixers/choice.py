"""Which forwards and kernels a model runs, as a value, and installing that choice on one model.

A :class:`Kernels` says which of the profiler's fast paths an evaluation takes:

* ``fast_scan``: every SSM mixer runs the project's own forward (:mod:`ssm_profile.mixers`: one
  family per mixer kind, its computation written here, never borrowed from transformers' modeling
  files) with the fast kernel of its device (numba on the CPU; mamba-ssm, or fla for Gated DeltaNet,
  on CUDA when installed);
  off, the mixers run transformers' own forward;
* ``fast_linear``: oneDNN's float32 linear (:mod:`ssm_profile.kernels.fastlinear`) for every ``nn.Linear``;
* ``blocked_head``: the loss from row blocks of the LM head (:func:`ssm_profile.calibration.data.head_window_losses`)
  instead of whole-batch logits (a speed choice; equal to float32 rounding).

:func:`installed` puts a choice on ONE model for the duration of a block: each mixer gets an
instance ``forward`` (the owned one, or transformers' own behind a call counter), each ``nn.Linear``
one that calls oneDNN. On exit those instance attributes go again. Nothing shared is replaced
(neither ``torch.nn.functional`` nor transformers' modeling modules), so other models, and other
threads working on them, run whatever their own choice is. Hooks keep working: ``Module.__call__``
calls them around the instance forward. One model is not meant for two threads at once (trials mask
it in place anyway).

Every owned forward is checked against transformers' before its first use in a process
(:func:`ssm_profile.mixers._install.check`); a class that disagrees falls back to transformers' forward with
one warning. What ran is counted per call: :func:`ssm_profile.mixers.usage`.

``SSM_PROFILE_FAST_SCAN=0`` switches every fast path off: :meth:`Kernels.for_run` then chooses
transformers' forwards, and the fast linear also reads it at call time.
"""

from __future__ import annotations

import contextlib
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..base.patching import forwards_overridden
from ..base.runtime import FAST_KERNELS_ENV as ENV_VAR, fast_kernels_enabled as env_enabled  # noqa: F401


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
        """transformers' mixer forwards and torch's linear, the loss from row blocks of the head."""
        return cls(fast_scan=False, fast_linear=False, blocked_head=True)

    @classmethod
    def reference(cls) -> Kernels:
        """transformers' mixer forwards, torch's linear and the loss from whole-batch logits: the
        profiler before any of its fast paths (``ssm-profile bench --reference-profile``)."""
        return cls(fast_scan=False, fast_linear=False, blocked_head=False)

    @classmethod
    def for_run(cls, fast: bool = True, device: str | torch.device = "cpu") -> Kernels:
        """The profiler's choice for a model on ``device``: every fast path unless ``fast`` is false
        (``--no-fast-scan``, a run's ``fast_scan`` setting, a plan's ``fast_kernels``), the device is
        not the CPU, or ``SSM_PROFILE_FAST_SCAN=0``."""
        return (cls.fast() if fast and env_enabled() else cls.transformers()).on_device(device)

    def on_device(self, device: str | torch.device) -> Kernels:
        """This choice for a model on ``device``: unchanged on the CPU; elsewhere without the oneDNN
        linear (a CPU kernel). The owned mixer forwards stay: each family picks its device's kernel,
        or runs transformers' forward where it has none (mamba-ssm not installed on CUDA)."""
        if torch.device(device).type == "cpu":
            return self
        return replace(self, fast_linear=False)


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
    from ..kernels import fastlinear
    from ._install import mixer_forwards

    mixers = mixer_forwards(model, owned=choice.fast_scan)
    out: dict[nn.Module, Callable | None] = {}
    for module in model.modules():
        current = module.__dict__.get("forward")
        if current is not None and not _is_ours(current, fastlinear.linear_forward):
            continue
        forward = mixers.get(module)
        if forward is None and choice.fast_linear and type(module).forward is nn.Linear.forward:
            forward = types.MethodType(fastlinear.linear_forward, module)
        if forward is not None or current is not None:
            out[module] = forward
    return out


def _is_ours(forward: Callable, linear_forward: Callable) -> bool:
    return getattr(forward, "__func__", None) is linear_forward or hasattr(forward, "__ssm_profile_mixer__")
