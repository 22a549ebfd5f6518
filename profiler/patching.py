"""Swap what one module instance runs, never a function other models or threads share.

``nn.Module.__call__`` runs ``self.forward`` (with every hook around it), and an instance attribute
named ``forward`` beats the class's method. So a forward set on one module changes that module
only: another model, or another thread working on another model, still runs the class's code.
:func:`forwards_overridden` is the one mechanism for such swaps (the fast kernels of
:mod:`ssm_profile.kernels`, the reused stages of :mod:`ssm_profile.incremental`); it restores each
instance attribute exactly, so swaps nest.

:func:`with_globals` builds the forwards the kernels install: a copy of a transformers ``forward``
whose module-level names (``mamba_selective_scan``, ``causal_conv1d_fn`` ...) resolve in a
namespace of our choosing, while transformers' own module stays untouched.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

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


def with_globals(func: types.FunctionType, namespace: dict[str, Any]) -> types.FunctionType:
    """A copy of ``func`` whose innermost function (below any ``functools.wraps`` decorators)
    looks its globals up in ``namespace``; each decorator's wrapper is copied to call the copy
    below it. Raises TypeError when a wrapper does not hold the function it wraps in a closure
    cell (then it cannot be re-pointed)."""
    inner = getattr(func, "__wrapped__", None)
    if inner is None:
        return _copy(func, namespace, func.__closure__)
    new_inner = with_globals(inner, namespace)
    cells, replaced = [], False
    for cell in func.__closure__ or ():
        if _holds(cell, inner):
            cells.append(types.CellType(new_inner))
            replaced = True
        else:
            cells.append(cell)
    if not replaced:
        raise TypeError(f"{func.__qualname__} does not call the function it wraps through a closure")
    copy = _copy(func, func.__globals__, tuple(cells))
    copy.__wrapped__ = new_inner
    return copy


def _holds(cell: types.CellType, value: object) -> bool:
    try:
        return cell.cell_contents is value
    except ValueError:  # an empty cell
        return False


def _copy(func: types.FunctionType, namespace: dict[str, Any], closure: tuple | None) -> types.FunctionType:
    copy = types.FunctionType(func.__code__, namespace, func.__name__, func.__defaults__, closure)
    copy.__kwdefaults__ = None if func.__kwdefaults__ is None else dict(func.__kwdefaults__)
    copy.__dict__.update(func.__dict__)
    copy.__qualname__, copy.__doc__, copy.__module__ = func.__qualname__, func.__doc__, func.__module__
    copy.__annotations__ = dict(func.__annotations__)
    return copy
