"""Swap what one module instance runs, never a function other models or threads share.

``nn.Module.__call__`` runs ``self.forward`` (with every hook around it), and an instance attribute
named ``forward`` beats the class's method. So a forward set on one module changes that module
only: another model, or another thread working on another model, still runs the class's code.
:func:`forwards_overridden` is the one mechanism for such swaps (the owned mixer forwards and fast
linears of :mod:`ssm_profile.mixers.choice`, the restarted stages of :mod:`ssm_profile.profiling.incremental`, the
owned gated norm of :mod:`ssm_profile.mixers.ssd`); it restores each instance attribute exactly, so
swaps nest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

from torch import nn

_MISSING = object()


@contextlib.contextmanager
def forwards_overridden(overrides: Mapping[nn.Module, Callable | None]) -> Iterator[None]:
    """Inside the block each module runs its override (None: its class's ``forward``); on exit each
    module's instance ``forward`` is exactly what it was before (put back, or removed)."""
    saved = [(module, module.__dict__.get("forward", _MISSING)) for module in overrides]
    try:
        for module, forward in overrides.items():
            _set_forward(module, forward)
        yield
    finally:
        for module, before in reversed(saved):
            _set_forward(module, None if before is _MISSING else before)


def _set_forward(module: nn.Module, forward: Callable | None) -> None:
    if forward is None:
        module.__dict__.pop("forward", None)
    else:
        module.__dict__["forward"] = forward
