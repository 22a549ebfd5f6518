"""Structured surgery on SSM mixers (Mamba, Mamba-2, Gated DeltaNet, Kimi delta attention): zero units, slice
them out, drop layers, fix the config.

Every cut goes through :meth:`ssm_profile.model.arch.UnitFamily.indices`, so all tensors coupled to a unit
(rows of ``in_proj``, conv channels, ``A_log`` entries, ``out_proj`` columns, ...) are cut with
one shared index set and the model stays runnable.

Two ways to cut the same units:

* :func:`zero_units` keeps every shape and writes zeros. The model reloads anywhere and gives
  the logits of the pruned model, but runs no faster.
* :func:`slice_units` rebuilds the tensors without the units and updates the size attributes
  the mixer's ``forward`` reads. Slicing units that were already zeroed gives the logits of the
  zeroed model (bit-exact except where a gated norm averages over the cut width, see
  :func:`_rescale_gated_norm`).

:func:`sync_config` then writes uniform sizes into ``model.config`` so that a plain
``save_pretrained`` / ``from_pretrained`` round trip rebuilds the sliced model; it checks this
by building the model from the would-be saved config on the meta device and comparing every
parameter shape, and reports what a stock config cannot express.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ssm_profile.model.arch import GATED_DELTA, KDA, MAMBA1, MAMBA2, MixerInfo, UnitFamily, find_mixers
from ssm_profile.model.stock import stock_arch

Units = Iterable[int] | torch.Tensor


# --------------------------------------------------------------------------------------------
# unit validation


def _family(mixer: MixerInfo, kind: str) -> UnitFamily:
    try:
        return mixer.unit_family(kind)
    except KeyError as err:  # a wrong kind is a bad argument like any other: one error type
        raise ValueError(str(err).strip("'\"")) from None


def unit_id_list(units: Units, family: UnitFamily, what: str) -> list[int]:
    """Sorted unit ids; rejects out-of-range and repeated ids (a repeat is almost always a bug)."""
    ids = [int(u) for u in torch.as_tensor(units, dtype=torch.long).reshape(-1).tolist()] \
        if isinstance(units, torch.Tensor) else [int(u) for u in units]
    bad = [u for u in ids if not 0 <= u < family.count]
    if bad:
        raise ValueError(f"{what}: {family.kind} units {bad[:5]} out of range [0, {family.count})")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{what}: repeated {family.kind} units")
    return sorted(ids)


def _check_keep(keep: list[int], family: UnitFamily) -> None:
    """Slicing constraints: keep something, and keep the same number in each of ``blocks`` blocks.

    Mamba-2 heads and states live in ``n_groups`` groups that the forward reshapes to equal
    sizes; head channels live in heads that all share one ``head_dim``.
    """
    if not family.prunable:
        raise ValueError(f"{family.kind} units cannot be sliced out ({family.description})")
    if not keep:
        raise ValueError(f"slicing would remove every {family.kind} unit; keep at least one")
    per_block = family.count // family.blocks
    counts = [0] * family.blocks
    for u in keep:
        counts[u // per_block] += 1
    if len(set(counts)) != 1:
        block = {"head": "group", "state": "group", "head_channel": "head", "value_head": "key head"}.get(
            family.kind, "block")
        raise ValueError(f"{family.kind} cut must keep the same number of units in every {block} "
                         f"({family.blocks} {block}s of {per_block}); kept per {block}: {counts}")
    if counts[0] == 0:
        raise ValueError(f"slicing would remove every {family.kind} unit of a block; keep at least one per block")


# --------------------------------------------------------------------------------------------
# zeroing


@torch.no_grad()
def zero_units(mixer: MixerInfo, kind: str, units: Units) -> None:
    """Write zeros into every tensor slice coupled to ``units`` of ``kind`` in place.

    Shapes do not change. Any family may be zeroed (also non-prunable ones such as ``group``).
    """
    family = _family(mixer, kind)
    ids = unit_id_list(units, family, "zero_units")
    if not ids:
        return
    params = mixer.params
    for name, dim, idx in family.indices(ids):
        p = params[name]
        p.index_fill_(dim, idx.to(p.device), 0)


# --------------------------------------------------------------------------------------------
# slicing


def _kept_indices(mixer: MixerInfo, family: UnitFamily, keep: list[int]) -> dict[tuple[str, int], torch.Tensor]:
    """(param, dim) -> indices to keep along dim; removed indices are the union over slots."""
    removed_units = sorted(set(range(family.count)) - set(keep))
    params = mixer.params
    removed: dict[tuple[str, int], set[int]] = {}
    for name, dim, idx in family.indices(removed_units):
        removed.setdefault((name, dim), set()).update(idx.tolist())
    kept = {}
    for (name, dim), gone in removed.items():
        size = params[name].shape[dim]
        kept[(name, dim)] = torch.tensor([i for i in range(size) if i not in gone], dtype=torch.long)
    return kept


def _sliced_tensors(mixer: MixerInfo, kept: dict[tuple[str, int], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter name -> new tensor (values copied from the old one)."""
    params = mixer.params
    out: dict[str, torch.Tensor] = {}
    for (name, dim), idx in kept.items():
        t = out.get(name, params[name].detach())
        out[name] = t.index_select(dim, idx.to(t.device)).contiguous()
    return out


def _param(t: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=like.requires_grad)


def _new_linear(old: nn.Linear, new: dict[str, torch.Tensor]) -> nn.Linear:
    w = new.get("weight", old.weight.detach())
    lin = nn.Linear(w.shape[1], w.shape[0], bias=old.bias is not None, device="meta")
    lin.weight = _param(w, old.weight)
    if old.bias is not None:
        lin.bias = _param(new.get("bias", old.bias.detach()), old.bias)
    return lin.train(old.training)


def _new_conv1d(old: nn.Conv1d, new: dict[str, torch.Tensor]) -> nn.Conv1d:
    # Mamba's conv is depthwise (groups == channels); slicing channels of any other conv would
    # cut through filter groups, so refuse it.
    if not (old.groups == old.in_channels == old.out_channels):
        raise ValueError(f"conv1d is not depthwise (groups={old.groups}, channels={old.in_channels}); cannot slice")
    w = new.get("weight", old.weight.detach())
    ch = w.shape[0]
    conv = nn.Conv1d(ch, ch, kernel_size=old.kernel_size, stride=old.stride, padding=old.padding,
                     dilation=old.dilation, groups=ch, bias=old.bias is not None,
                     padding_mode=old.padding_mode, device="meta")
    conv.weight = _param(w, old.weight)
    if old.bias is not None:
        conv.bias = _param(new.get("bias", old.bias.detach()), old.bias)
    return conv.train(old.training)


def _install(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Put new tensors into ``module``: Linear/Conv1d are rebuilt, other owners get new Parameters."""
    by_owner: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        owner, _, attr = name.rpartition(".")
        by_owner.setdefault(owner, {})[attr] = t
    for owner_path, new in by_owner.items():
        owner = module.get_submodule(owner_path) if owner_path else module
        if isinstance(owner, nn.Linear):
            replacement: nn.Module | None = _new_linear(owner, new)
        elif isinstance(owner, nn.Conv1d):
            replacement = _new_conv1d(owner, new)
        else:  # raw Parameters (A_log, D, dt_bias) and norms: swap the Parameter, keep the module
            replacement = None
            for attr, t in new.items():
                setattr(owner, attr, _param(t, getattr(owner, attr)))
        if replacement is not None:
            parent_path, _, child = owner_path.rpartition(".")
            parent = module.get_submodule(parent_path) if parent_path else module
            setattr(parent, child, replacement)


def _norm_group_counts(mixer: MixerInfo, kept: dict[tuple[str, int], torch.Tensor]) -> tuple[int, list[int]] | None:
    """For a Mamba-2 gated norm cut: (old group size, kept channels per norm group), else None."""
    idx = kept.get(("norm.weight", 0))
    if idx is None:
        return None
    full = mixer.intermediate_size // mixer.n_groups
    counts = torch.bincount(idx // full, minlength=mixer.n_groups).tolist()
    return full, counts


def _rescale_gated_norm(new: dict[str, torch.Tensor], group_full: int, counts: list[int]) -> None:
    """Keep the gated RMSNorm's output when zeroed channels are sliced out.

    ``MambaRMSNormGated`` divides each group of E/G channels by sqrt(mean of squares + eps).
    A zeroed channel adds 0 to the sum but still counts in the mean's denominator; a sliced
    one does not. Multiplying the kept weights of a group by sqrt(n_full / n_kept) makes
    ``w' * x / sqrt(sum/n_kept + eps) == w * x / sqrt(sum/n_full + eps * n_kept/n_full)``,
    i.e. the zeroed model's output with eps scaled by n_kept/n_full: exact up to the eps term
    (a sliced norm with eps * n_full/n_kept would match exactly, but eps is one config value
    shared by every norm, so it is left alone and the model stays reloadable).
    The rescaled weights are ordinary learned values, so they survive save/load. Groups with
    nothing cut are left untouched (bit-identical).
    """
    w = new["norm.weight"]
    pieces, start = [], 0
    for n_kept in counts:
        piece = w[start:start + n_kept]
        if n_kept != group_full:
            piece = piece * math.sqrt(group_full / n_kept)
        pieces.append(piece)
        start += n_kept
    new["norm.weight"] = torch.cat(pieces).contiguous()


def _set_if_has(obj: object, **attrs: int) -> None:
    # Hybrid mixers (Bamba, Zamba2, NemotronH, FalconH1, Jamba) carry subsets of these names.
    for name, value in attrs.items():
        if hasattr(obj, name):
            setattr(obj, name, value)


def _update_gated_delta_sizes(mixer: MixerInfo, num_k_heads: int) -> None:
    """Gated DeltaNet: the sizes its forward reads, from the tensor shapes and the key-head count."""
    m = mixer.module
    m.num_k_heads = num_k_heads  # first: head_k_dim below is key_dim // num_k_heads
    H, dv, dk = mixer.num_v_heads, mixer.head_v_dim, mixer.head_k_dim
    _set_if_has(m, num_v_heads=H, head_v_dim=dv, head_k_dim=dk, key_dim=num_k_heads * dk, value_dim=H * dv,
                conv_dim=mixer.conv_channels)


def _rescale_value_norm(new: dict[str, torch.Tensor], full: int) -> None:
    """Gated DeltaNet's norm is an RMSNorm over head_v_dim with one weight per channel shared by all
    heads: after a value-channel cut the same sqrt(full / kept) rescale as Mamba-2's gated norm
    (:func:`_rescale_gated_norm`) keeps the zeroed model's output, up to the eps term."""
    w = new["norm.weight"]
    new["norm.weight"] = (w * math.sqrt(full / w.shape[0])).contiguous()


def _update_kda_sizes(mixer: MixerInfo) -> None:
    """Kimi delta attention: the head count and width its forward and its forget gate read (after a head cut)."""
    heads, width = mixer.num_heads, mixer.intermediate_size
    _set_if_has(mixer.module, num_heads=heads, qkv_dim=width, conv_dim=3 * width)
    _set_if_has(mixer.module.forget_gate, num_heads=heads, qkv_dim=width)


def _update_sizes(mixer: MixerInfo) -> None:
    """Write the new sizes, read back from the tensor shapes, into the attributes forward uses."""
    m = mixer.module
    if mixer.kind == MAMBA1:
        _set_if_has(m, intermediate_size=mixer.intermediate_size, ssm_state_size=mixer.state_size,
                    time_step_rank=mixer.dt_rank)
        if mixer.multi_head:  # Zamba's forward reshapes by its head count and head width
            _set_if_has(m, n_mamba_heads=mixer.num_heads, mamba_head_dim=mixer.head_dim)
        return
    E, G, H = mixer.intermediate_size, mixer.n_groups, mixer.num_heads
    # The state count is not in any shape of its own: the conv holds E + 2*G*N channels.
    N = (mixer.conv_channels - E) // (2 * G)
    _set_if_has(m, intermediate_size=E, num_heads=H, head_dim=E // H, ssm_state_size=N,
                conv_dim=E + 2 * G * N, groups_time_state_size=G * N)
    norm = getattr(m, "norm", None)
    if norm is not None and hasattr(norm, "group_size"):
        norm.group_size = E // G


@torch.no_grad()
def slice_units(mixer: MixerInfo, kind: str, keep: Units, *, for_counting: bool = False) -> None:
    """Rebuild every tensor coupled to ``kind`` units so that only ``keep`` remain (in sorted order).

    Learned values (biases and norm weights too) are copied; ``nn.Linear``/``nn.Conv1d`` modules
    are replaced by smaller ones, raw Parameters by smaller Parameters, and the mixer's size
    attributes (``intermediate_size``, ``ssm_state_size``, ``time_step_rank``, ``num_heads``,
    ``head_dim``, ``conv_dim``, the gated norm's ``group_size``) are updated. Mamba-2 gated-norm
    weights of groups that lose channels are rescaled (see :func:`_rescale_gated_norm`).

    Raises ValueError for out-of-range or repeated units, a non-prunable kind, a cut that removes
    every unit, or one that keeps unequal numbers of units per group (Mamba-2 heads, states) or
    per head (Mamba-2 head channels), and for Kimi delta attention channel cuts (one head_dim serves
    q, k, v and the gated norm, so the forward cannot run them) unless ``for_counting``: the planner's
    meta copies slice those too, only to count the elements a cut takes.
    """
    family = _family(mixer, kind)
    ids = unit_id_list(keep, family, "slice_units")
    _check_keep(ids, family)
    if mixer.kind == KDA and kind in ("key_channel", "value_channel") and len(ids) < family.count and not for_counting:
        raise ValueError(f"{kind} units cannot be sliced out of a Kimi delta attention mixer: {family.normalised}")
    kept = _kept_indices(mixer, family, ids)
    tensors = _sliced_tensors(mixer, kept)
    if mixer.kind == MAMBA2:
        counts = _norm_group_counts(mixer, kept)
        if counts is not None:
            _rescale_gated_norm(tensors, *counts)
    if mixer.kind == GATED_DELTA:
        num_k_heads = len(ids) if kind == "key_head" else mixer.num_k_heads
        if "norm.weight" in tensors:
            _rescale_value_norm(tensors, mixer.head_v_dim)
        _install(mixer.module, tensors)
        _update_gated_delta_sizes(mixer, num_k_heads)
        return
    if mixer.kind == KDA:  # heads and low-rank directions; the forward reads the rest off the tensors
        _install(mixer.module, tensors)
        _update_kda_sizes(mixer)
        return
    _install(mixer.module, tensors)
    _slice_mup_vector(mixer.module, kept.get(("in_proj.weight", 0)))
    _update_sizes(mixer)


def _slice_mup_vector(module: nn.Module, rows: torch.Tensor | None) -> None:
    """FalconH1 multiplies each block of in_proj's output by its µP multiplier (the buffer
    ``mup_vector``, rebuilt from the config at load): keep the entries of the kept rows."""
    mup = getattr(module, "mup_vector", None)
    if rows is None or not isinstance(mup, torch.Tensor):
        return
    module.mup_vector = mup.index_select(-1, rows.to(mup.device)).contiguous()


# --------------------------------------------------------------------------------------------
# whole layers


_CONTAINER_RE = re.compile(r"^(.*?(?:^|\.)(?:layers|h|blocks))\.\d+(?:\.|$)")


def _layer_list(model: nn.Module) -> tuple[nn.ModuleList, str]:
    """The ModuleList of decoder layers (``backbone.layers`` for Mamba/Mamba-2)."""
    for path in ("backbone.layers", "model.layers", "layers"):
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(mod, nn.ModuleList):
            return mod, path
    for mixer in find_mixers(model):
        match = _CONTAINER_RE.match(mixer.path)
        if match:
            mod = model.get_submodule(match.group(1))
            if isinstance(mod, nn.ModuleList):
                return mod, match.group(1)
    raise ValueError(f"cannot find the decoder layer list of {type(model).__name__}")


def remove_layers(model: nn.Module, layers: list[int]) -> dict[int, int]:
    """Delete whole decoder layers; returns {old index: new index} for the layers that remain.

    Renumbers every ``layer_idx`` attribute inside the kept layers (caches are indexed by it) and
    rewrites the config's layer bookkeeping through the architecture's
    :class:`ssm_profile.model.stock.StockArch` (layer count, layer type lists, attention/expert periods,
    shared-block maps). Raises ValueError, leaving the model untouched, for bad indices or when the
    stock config cannot describe the remaining layers.
    """
    container, _ = _layer_list(model)
    n = len(container)
    layers = [int(i) for i in layers]
    drop = sorted(set(layers))
    if len(drop) != len(layers):
        raise ValueError("remove_layers: repeated layer indices")
    if any(not 0 <= i < n for i in drop):
        raise ValueError(f"remove_layers: layer indices must be in [0, {n}); got {drop}")
    if len(drop) == n:
        raise ValueError("remove_layers: cannot remove every layer")
    gone = set(drop)
    kept = [i for i in range(n) if i not in gone]
    config = getattr(model, "config", None)
    arch = stock_arch(getattr(config, "model_type", None))
    updates = arch.layer_updates(config, kept) if config is not None else {}
    old_config = config.to_dict() if config is not None else {}
    for i in reversed(drop):
        del container[i]  # ModuleList renumbers its keys, so state-dict names stay contiguous
    for new, old in enumerate(kept):
        for mod in container[new].modules():
            if getattr(mod, "layer_idx", None) == old:  # shared blocks carry other (placeholder) ids
                mod.layer_idx = new
    arch.fix_layers(model, container, kept, old_config)
    for key, value in updates.items():
        setattr(config, key, value)
    return {old: new for new, old in enumerate(kept)}


# --------------------------------------------------------------------------------------------
# config


def _uniform_dims(mixers: list[MixerInfo]) -> tuple[dict[str, int] | None, list[str]]:
    dims = [m.dims() for m in mixers]
    problems = []
    for key in dims[0]:
        values = {m.layer: d[key] for m, d in zip(mixers, dims)}
        if len(set(values.values())) > 1:
            problems.append(f"layers differ in {key}: {values}; no stock config expresses per-layer widths")
    return (dims[0] if not problems else None), problems


def _reloaded_config(config, updates: dict):
    """The config ``from_pretrained`` would read back after saving ``config`` with ``updates``."""
    candidate = type(config).from_dict({**config.to_dict(), **updates})
    with tempfile.TemporaryDirectory() as tmp:  # the real save path (diff against defaults) and load
        candidate.save_pretrained(tmp)
        return type(config).from_pretrained(tmp)


def _shape_problems(model: nn.Module, config) -> list[str]:
    """Build the model class from ``config`` on the meta device and compare every tensor shape."""
    with torch.device("meta"):
        rebuilt = type(model)(config)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    problems = [f"{k}: model {want.get(k)} vs config {got.get(k)}"
                for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
    if problems:
        head = problems[:5] + ([f"... {len(problems) - 5} more"] if len(problems) > 5 else [])
        return ["the saved config would rebuild different shapes: " + "; ".join(head)]
    return []


def _plan(model: nn.Module) -> tuple[dict, list[str]]:
    config = getattr(model, "config", None)
    if config is None:
        return {}, ["model has no config"]
    mixers = find_mixers(model)
    if not mixers:
        return {}, ["model has no SSM mixer"]
    kinds = {m.kind for m in mixers}
    if len(kinds) > 1:
        return {}, [f"mixers of several kinds: {sorted(kinds)}"]
    updates: dict = {}
    try:
        layers, _ = _layer_list(model)
        if getattr(config, "num_hidden_layers", len(layers)) != len(layers):
            updates["num_hidden_layers"] = len(layers)
    except ValueError:
        pass
    try:  # nothing cut in width (zeroing, layer removal): the config may already be right
        if not _shape_problems(model, _reloaded_config(config, updates)):
            return updates, []
    except Exception:  # noqa: BLE001 - an unbuildable config is just "not yet right"
        pass
    dims, problems = _uniform_dims(mixers)
    if problems:
        return {}, problems
    fields, problems = stock_arch(getattr(config, "model_type", None)).width_updates(config, dims)
    if problems:
        return {}, problems
    updates.update(fields)
    try:
        problems = _shape_problems(model, _reloaded_config(config, updates))
    except Exception as err:  # noqa: BLE001 - the config class rejected the values
        problems = [f"{type(config).__name__} rejects {updates}: {type(err).__name__}: {err}".splitlines()[0]]
    return (updates, []) if not problems else ({}, problems)


def is_expressible(model: nn.Module) -> tuple[bool, list[str]]:
    """Whether a stock config can describe the model's current shapes (nothing is changed)."""
    _, problems = _plan(model)
    return not problems, problems


def sync_config(model: nn.Module) -> list[str]:
    """Write the model's current (uniform) sizes into ``model.config``; returns the problems.

    An empty list means ``save_pretrained`` -> ``from_pretrained`` with plain transformers now
    rebuilds exactly these shapes (checked on the meta device). Otherwise the config is left
    untouched and the list says why: layers differ in width, or a stock config cannot express
    the size (e.g. Mamba-2 heads x head_dim not a multiple of hidden_size).
    """
    updates, problems = _plan(model)
    if problems:
        return problems
    for key, value in updates.items():
        setattr(model.config, key, value)
    return []


# --------------------------------------------------------------------------------------------
# the one slicing decision (the planner asks it on a meta copy, apply executes it)

# Head channels before heads (a head cut changes the head-channel numbering), value heads before key
# heads (a key-head cut renumbers the value heads); the other families number their units
# independently of each other.
SLICE_ORDER = ("head_channel", "channel", "state", "dt_rank", "head", "value_channel", "key_channel", "value_head",
               "key_head", "decay_rank", "gate_rank")


@dataclass
class SliceOutcome:
    """What :func:`slice_cuts` did with one kind: ``reason`` is empty when it was sliced, else why
    the units stay zeros; ``config``: the config fields the slice changed, {field: [before, after]}."""

    reason: str = ""
    config: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def sliced(self) -> bool:
        return not self.reason


class _Snapshot:
    """Shallow record of a module tree (submodules, Parameters, size attributes) to undo a slice.

    :func:`slice_units` installs new modules and Parameters instead of changing the old ones, so
    keeping references is enough: nothing is copied.
    """

    def __init__(self, module: nn.Module):
        self.entries = [(m, dict(m._modules), dict(m._parameters),
                         {k: v for k, v in vars(m).items() if isinstance(v, (int, float, bool)) and not k.startswith("_")})
                        for m in module.modules()]

    def restore(self) -> None:
        for m, modules, params, attrs in self.entries:
            m._modules.clear()
            m._modules.update(modules)
            m._parameters.clear()
            m._parameters.update(params)
            for k, v in attrs.items():
                setattr(m, k, v)


def _config_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    return {k: [before.get(k), after.get(k)] for k in sorted(set(before) | set(after))
            if before.get(k) != after.get(k) and k not in ("_name_or_path",)}


def _slice_kind(model: nn.Module, kind: str, cut: Mapping[int, set[int]]) -> SliceOutcome:
    mixers = {m.layer: m for m in find_mixers(model)}
    missing = sorted(layer for layer in cut if layer not in mixers)
    if missing:
        return SliceOutcome(f"layer(s) {missing} have no SSM mixer")
    changes = next((f.normalised for f in (mixers[l].unit_family(kind) for l in cut) if f.normalised), "")
    if changes:
        return SliceOutcome(f"{kind} units kept as zeros, not sliced: {changes}")
    counts = {layer: len(ids) for layer, ids in sorted(cut.items())}
    if len(set(counts.values())) > 1:
        return SliceOutcome(f"{kind} cut differs between layers ({counts}); kept as zeros "
                            "(no stock config expresses per-layer widths)")
    snaps = [_Snapshot(mixers[layer].module) for layer in cut]
    config_before = model.config.to_dict() if getattr(model, "config", None) is not None else {}
    try:
        for layer, ids in cut.items():
            slice_units(mixers[layer], kind, [u for u in range(mixers[layer].unit_family(kind).count) if u not in ids])
        problems = sync_config(model)
    except ValueError as err:
        problems = [str(err)]
    if problems:
        for snap in snaps:
            snap.restore()
        return SliceOutcome(f"{kind} units kept as zeros, not sliced: {problems[0]}")
    return SliceOutcome("", _config_diff(config_before, model.config.to_dict()))


def slice_cuts(model: nn.Module, cuts: Mapping[str, Mapping[int, Iterable[int]]]) -> dict[str, SliceOutcome]:
    """Slice removed units {kind: {layer: unit ids}} out of ``model`` in place, kind by kind in
    :data:`SLICE_ORDER`, and sync the config: the one decision of what is sliced and what stays zeros.

    A kind is left untouched (its outcome says why) when slicing would change the model (a norm
    over its dimension, :attr:`ssm_profile.model.arch.UnitFamily.normalised`), when layers cut different
    numbers of units, or when a stock config cannot express the result (that slice is undone).
    Layers without ids are skipped; a kind without any id is not reported.
    """
    out: dict[str, SliceOutcome] = {}
    for kind in sorted(cuts, key=lambda k: SLICE_ORDER.index(k) if k in SLICE_ORDER else len(SLICE_ORDER)):
        per_layer = {layer: {int(u) for u in ids} for layer, ids in cuts[kind].items()}
        per_layer = {layer: ids for layer, ids in per_layer.items() if ids}
        if per_layer:
            out[kind] = _slice_kind(model, kind, per_layer)
    return out
