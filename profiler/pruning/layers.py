"""Whole-layer removal as a plan action: which SSM layers may go, what removing them frees, the model
with layers skipped (what the planner measures) and the removal apply executes.

:func:`ssm_profile.pruning.surgery.remove_layers` rewrites the config for the remaining layers (or refuses
what the stock config cannot describe); it does not ask whether transformers can *run* the result
(NemotronH, Bamba or Granite 4.0-H without their only attention layer build, then fail their default
forward: the hybrid cache needs an attention layer). :func:`removal_problem` asks: it removes the
layers from a shape-only (meta-device) copy and runs the default forward on a few tokens, on the meta
device where the architecture runs there (checked on the unreduced copy), else on a real copy of a
small model.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..documents import one_line
from ..model.analysis import unique_parameters
from ..model.arch import find_mixers
from .surgery import _layer_list, remove_layers

# Above this many parameters a real copy is too dear for a runnability check (meta-only then).
REAL_CHECK_LIMIT = 200_000_000
_PROBE_TOKENS = 4


def ssm_layers(model: nn.Module) -> list[int]:
    """Indices of the decoder layers that hold an SSM mixer."""
    return sorted({m.layer for m in find_mixers(model)})


def layer_parameters(model: nn.Module, layer: int) -> list[str]:
    """Full names of the parameters of decoder layer ``layer`` (tied/shared ones under their first name)."""
    prefix = f"{layers_path(model)}.{layer}."
    return [n for n in unique_parameters(model) if n.startswith(prefix)]


def layers_path(model: nn.Module) -> str:
    """Where the decoder layers live (``backbone.layers``, ``model.layers``)."""
    return _layer_list(model)[1]


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in unique_parameters(model).values())


def meta_copy(model: nn.Module) -> nn.Module:
    """A shape-only copy of ``model`` (itself copied when it already lives on the meta device)."""
    if next(model.parameters()).is_meta:
        return copy.deepcopy(model)
    with torch.device("meta"):
        return type(model)(copy.deepcopy(model.config))


def removed_parameters(meta: nn.Module, layers: Sequence[int]) -> int:
    """Parameters removing ``layers`` frees, counted on a copy of the meta model (shared blocks once,
    Zamba2's per-layer adapters included); ValueError where the config cannot describe the rest."""
    reduced = copy.deepcopy(meta)
    remove_layers(reduced, list(layers))
    return _count(meta) - _count(reduced)


def _default_forward(model: nn.Module) -> str:
    """'' when ``model``'s default forward (its cache included) runs on a few tokens, else why not."""
    device = next(model.parameters()).device
    ids = torch.zeros((1, _PROBE_TOKENS), dtype=torch.long, device=device)
    try:
        with torch.no_grad():
            model(input_ids=ids)
    except Exception as err:  # noqa: BLE001 - any failure is the answer
        return one_line(f"{type(err).__name__}: {err}", 160)
    return ""


_META_RUNS: dict[str, bool] = {}


def removal_problem(model: nn.Module, layers: Iterable[int], meta: nn.Module | None = None) -> str:
    """Why removing decoder ``layers`` from ``model`` (real or meta; ``meta``: its shape-only copy, if
    built already) would leave a model transformers cannot describe or run, or a model without any SSM
    layer; '' when they can go."""
    drop = sorted({int(i) for i in layers})
    meta = meta if meta is not None else meta_copy(model)
    if not set(ssm_layers(meta)) - set(drop):
        return "it would remove every SSM layer"
    reduced = copy.deepcopy(meta)
    try:
        remove_layers(reduced, drop)
    except ValueError as err:
        return one_line(str(err), 200)
    key = type(model).__name__
    if key not in _META_RUNS:
        _META_RUNS[key] = not _default_forward(meta)
    if _META_RUNS[key]:
        why = _default_forward(reduced)
    elif _count(meta) <= REAL_CHECK_LIMIT and not next(model.parameters()).is_meta:
        real = copy.deepcopy(model)
        remove_layers(real, drop)
        why = _default_forward(real)
    else:
        return ""  # nothing to run it on: the stock config's own refusal above is the check
    return f"transformers cannot run the model without it ({why})" if why else ""


@contextmanager
def skipped(model: nn.Module, layers: Iterable[int]) -> Iterator[None]:
    """The model with decoder ``layers`` returning their input (the residual stream passes them
    unchanged): the logits of the model with those layers removed."""
    container, _ = _layer_list(model)

    def identity(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    hooks = [container[i].register_forward_hook(identity, with_kwargs=True) for i in sorted(set(layers))]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def renamed(names: Iterable[str], mapping: dict[int, int], path: str) -> list[str]:
    """Parameter ``names`` of the model before a layer removal, as the reduced model names them
    (``mapping``: old layer index -> new, from :func:`remove_layers`); names in removed layers drop out."""
    prefix = f"{path}."
    out = []
    for name in names:
        if not name.startswith(prefix):
            out.append(name)
            continue
        index, _, rest = name[len(prefix):].partition(".")
        if index.isdigit() and int(index) in mapping:
            out.append(f"{prefix}{mapping[int(index)]}.{rest}")
        elif not index.isdigit():
            out.append(name)
    return sorted(out)


def remove_checked(model: nn.Module, layers: Sequence[int]) -> dict[int, int]:
    """Remove decoder ``layers`` from ``model`` in place and check that its default forward runs;
    returns {old index: new index}. ValueError (one line) when it cannot be done."""
    why = removal_problem(model, layers)
    if why:
        raise ValueError(f"removing layer(s) {sorted(layers)}: {why}")
    return remove_layers(model, list(layers))
