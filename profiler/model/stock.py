"""What each architecture's stock transformers config can express after structured surgery.

One adapter per ``model_type`` (Torch-Pruning's per-layer-type pruners, applied to configs):

* :meth:`StockArch.width_updates`: the config fields that describe uniform mixer sizes after a
  width cut (same kept counts in every mixer), or why no field can;
* :meth:`StockArch.unit_note`: what ``analyze`` says about a unit kind (``expressible`` only where
  :func:`ssm_profile.pruning.surgery.slice_cuts` will slice);
* :meth:`StockArch.layer_updates` / :meth:`StockArch.fix_layers`: the layer bookkeeping (layer type
  lists, attention/expert periods, shared-block maps) after whole layers are removed, or a one-line
  ``ValueError`` when the stock config cannot describe the remaining layers.

The tensors themselves are cut by :mod:`ssm_profile.pruning.surgery` through the mixers' unit families; this
module only knows config fields, and attention and MLP weights are never touched. Every mapping here
is checked by :mod:`ssm_profile.pruning.surgery` by rebuilding the model from the would-be saved config.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..base.registry import Registry
from .kda import RANK_NOTE

Dims = dict[str, int]
ZEROS = "applied as zeros"


def _multiple_of_hidden(config: Any, dims: Dims, field: str, what: str) -> tuple[dict, list[str]]:
    """``{field: E // hidden}`` when the mixer width E is an integer multiple of hidden_size."""
    E, hidden = dims["intermediate_size"], int(config.hidden_size)
    if E % hidden:
        return {}, [f"{what} {E} is not an integer multiple of hidden_size {hidden}; the stock "
                    f"{type(config).__name__} derives it as int {field} x hidden_size"]
    return {field: E // hidden}, []


def _settable(config: Any, name: str) -> bool:
    # Properties (Mamba's layer_types, Jamba's layers_block_type) are derived, not stored.
    target = getattr(config, "attribute_map", {}).get(name, name)
    return hasattr(config, target) and not isinstance(getattr(type(config), target, None), property)


class StockArch:
    """An architecture without a width mapping: width cuts stay zeros; layers are dropped generically
    (``num_hidden_layers`` and a stored ``layer_types`` list)."""

    model_types: tuple[str, ...] = ()
    notes: dict[str, str] = {}  # unit kind -> analysis text; kinds not listed are not expressible

    def width_updates(self, config: Any, dims: Dims) -> tuple[dict, list[str]]:
        return {}, [f"no stock-config mapping for model_type {config.model_type!r} after a width cut"]

    def unit_note(self, kind: str, model_type: str | None) -> str:
        if kind in self.notes:
            return self.notes[kind]
        return f"{ZEROS}: no stock config of {model_type or 'this model'} expresses a width cut"

    layer_note = "expressible: fewer layers in the config"

    def layer_updates(self, config: Any, kept: list[int]) -> dict[str, Any]:
        """Config fields after keeping only the layers ``kept`` (old indices, ascending)."""
        updates: dict[str, Any] = {"num_hidden_layers": len(kept)}
        types = getattr(config, "layer_types", None)
        if _settable(config, "layer_types") and isinstance(types, (list, tuple)):
            updates[getattr(config, "attribute_map", {}).get("layer_types", "layer_types")] = [types[i] for i in kept]
        return updates

    def fix_layers(self, model: nn.Module, layers: nn.ModuleList, kept: list[int], old_config: dict) -> None:
        """Module bookkeeping beyond ``layer_idx`` after the layers were deleted (default: none)."""


class MambaArch(StockArch):
    model_types = ("mamba", "falcon_mamba")
    notes = dict.fromkeys(("channel", "state", "dt_rank"),
                          "expressible: uniform count across layers (intermediate_size / state_size / time_step_rank)")

    def width_updates(self, config, dims):
        # MambaConfig/FalconMambaConfig keep an explicit intermediate_size over expand*hidden_size;
        # expand is an int field, so it is only set when exact.
        updates = {"intermediate_size": dims["intermediate_size"], "state_size": dims["state_size"],
                   "time_step_rank": dims["dt_rank"]}
        expand, _ = _multiple_of_hidden(config, dims, "expand", "")
        return {**updates, **expand}, []


_CONDITIONAL = ("expressible only when the kept width (heads x head dim) stays an integer multiple of "
                "hidden_size ({field} is an int); otherwise applied as zeros")


class Mamba2Arch(StockArch):
    model_types = ("mamba2",)
    notes = {"state": "expressible: uniform count across layers and groups (state_size)",
             **dict.fromkeys(("head", "head_channel"), "expressible only when the kept width stays expand x "
                             "hidden_size for an integer expand; otherwise applied as zeros")}

    def width_updates(self, config, dims):
        # Mamba2Config derives E = int(expand * hidden_size) and validates num_heads * head_dim == E.
        expand, problems = _multiple_of_hidden(config, dims, "expand", "Mamba-2 intermediate size")
        return {"num_heads": dims["num_heads"], "head_dim": dims["head_dim"], "state_size": dims["state_size"],
                "n_groups": dims["n_groups"], **expand}, problems


class NemotronHArch(StockArch):
    """NemotronH: the mixer width is mamba_num_heads x mamba_head_dim, free of hidden_size."""

    model_types = ("nemotron_h",)
    notes = {"state": "expressible: uniform count across layers and groups (ssm_state_size)",
             "head": "expressible: uniform count across layers and groups (mamba_num_heads)",
             "head_channel": "expressible: uniform count across layers and heads (mamba_head_dim)"}

    def width_updates(self, config, dims):
        return {"mamba_num_heads": dims["num_heads"], "mamba_head_dim": dims["head_dim"],
                "ssm_state_size": dims["state_size"], "n_groups": dims["n_groups"]}, []


class BambaArch(StockArch):
    """Bamba: E = mamba_expand x hidden_size (int), validated against mamba_n_heads x mamba_d_head;
    attention layers listed in attn_layer_indices (layers_block_type is derived)."""

    model_types = ("bamba",)
    notes = {"state": "expressible: uniform count across layers and groups (mamba_d_state)",
             **dict.fromkeys(("head", "head_channel"), _CONDITIONAL.format(field="mamba_expand"))}

    def width_updates(self, config, dims):
        expand, problems = _multiple_of_hidden(config, dims, "mamba_expand", "Bamba mixer width")
        return {"mamba_n_heads": dims["num_heads"], "mamba_d_head": dims["head_dim"],
                "mamba_d_state": dims["state_size"], "mamba_n_groups": dims["n_groups"], **expand}, problems

    def layer_updates(self, config, kept):
        new = {old: i for i, old in enumerate(kept)}
        attention = [new[i] for i in (config.attn_layer_indices or []) if i in new]
        return {"num_hidden_layers": len(kept), "attn_layer_indices": attention or None}


class GraniteMoeHybridArch(StockArch):
    """GraniteMoeHybrid (IBM Granite 4.0-H): E = mamba_expand x hidden_size (int), validated against
    mamba_n_heads x mamba_d_head; layer kinds in the stored layer_types list."""

    model_types = ("granitemoehybrid",)
    notes = BambaArch.notes

    def width_updates(self, config, dims):
        expand, problems = _multiple_of_hidden(config, dims, "mamba_expand", "Granite mixer width")
        return {"mamba_n_heads": dims["num_heads"], "mamba_d_head": dims["head_dim"],
                "mamba_d_state": dims["state_size"], "mamba_n_groups": dims["n_groups"], **expand}, problems


class FalconH1Arch(StockArch):
    """FalconH1: the mixer width is mamba_d_ssm, free of hidden_size; the µP multipliers
    (ssm_multipliers per in_proj block, ssm_in/out, mlp ...) are per block, so a cut keeps their
    meaning (the per-row mup_vector is rebuilt from the config at load, sliced in memory)."""

    model_types = ("falcon_h1",)
    notes = {"state": "expressible: uniform count across layers and groups (mamba_d_state)",
             "head": "expressible: uniform count across layers and groups (mamba_n_heads, mamba_d_ssm)",
             "head_channel": "expressible: uniform count across layers and heads (mamba_d_head, mamba_d_ssm)"}

    def width_updates(self, config, dims):
        return {"mamba_d_ssm": dims["intermediate_size"], "mamba_n_heads": dims["num_heads"],
                "mamba_d_head": dims["head_dim"], "mamba_d_state": dims["state_size"],
                "mamba_n_groups": dims["n_groups"]}, []


class JambaArch(StockArch):
    """Jamba: Mamba-1 mixers with E = mamba_expand x hidden_size (int); attention and expert layers
    follow period/offset rules, so only layer removals that leave periodic patterns are expressible."""

    model_types = ("jamba",)
    notes = {"channel": ("expressible only when the kept channels stay an integer multiple of hidden_size "
                         "(mamba_expand is an int); otherwise applied as zeros")}

    layer_note = ("expressible only when the remaining attention and expert layers stay periodic "
                  "(attn/expert_layer_period and offset); otherwise refused")

    def width_updates(self, config, dims):
        expand, problems = _multiple_of_hidden(config, dims, "mamba_expand", "Jamba mixer width")
        return {"mamba_d_state": dims["state_size"], "mamba_dt_rank": dims["dt_rank"], **expand}, problems

    def layer_updates(self, config, kept):
        attention = [config.layers_block_type[i] == "attention" for i in kept]
        experts = [config.layers_num_experts[i] > 1 for i in kept]
        attn_period, attn_offset = _period(attention, "attention", kept)
        expert_period, expert_offset = _period(experts, "expert", kept)
        return {"num_hidden_layers": len(kept), "attn_layer_period": attn_period, "attn_layer_offset": attn_offset,
                "expert_layer_period": expert_period, "expert_layer_offset": expert_offset}


def _period(marked: list[bool], what: str, kept: list[int]) -> tuple[int, int]:
    """The smallest (period, offset) with ``marked[i] == (i % period == offset)`` for every i."""
    n = len(marked)
    for period in range(1, n + 2):
        for offset in range(period):
            if all(m == (i % period == offset) for i, m in enumerate(marked)):
                return period, offset
    where = [i for i, m in enumerate(marked) if m]
    raise ValueError(f"Jamba places {what} layers by period and offset; keeping layers {kept} leaves them at "
                     f"{where}, which no period describes; remove a different set of layers")


class ZambaArch(StockArch):
    """Zamba (v1): Mamba-1 heads with E = mamba_expand x hidden_size (int) split into n_mamba_heads heads of
    E // n_mamba_heads channels; mamba_d_state and mamba_dt_rank are free. Shared attention reads the
    hidden states (attention_hidden_size = 2 x hidden_size by default), never the mixer's width."""

    model_types = ("zamba",)
    notes = {"state": "expressible: uniform count across layers (mamba_d_state)",
             "dt_rank": "expressible: uniform count across layers (mamba_dt_rank)",
             **dict.fromkeys(("channel", "head"), _CONDITIONAL.format(field="mamba_expand"))}

    def width_updates(self, config, dims):
        expand, problems = _multiple_of_hidden(config, dims, "mamba_expand", "Zamba mixer width")
        return {"n_mamba_heads": dims["num_heads"], "mamba_d_state": dims["state_size"],
                "mamba_dt_rank": dims["dt_rank"], **expand}, problems

    layer_note = ("expressible only when two or more hybrid layers, or none, remain (fewer layers in "
                  "layers_block_type; transformers cannot build a Zamba with exactly one); otherwise refused")

    def layer_updates(self, config, kept):
        updates = super().layer_updates(config, kept)
        hybrids = [i for i in kept if config.layers_block_type[i] == "hybrid"]
        if len(hybrids) == 1:
            raise ValueError(f"keeping layers {kept} leaves one hybrid layer ({hybrids[0]}); transformers ties "
                             "the shared attention block of every hybrid layer to another's and cannot build a "
                             "Zamba with exactly one: keep two hybrid layers or none")
        return updates


class Zamba2Arch(StockArch):
    """Zamba2: E = mamba_expand x hidden_size (int), mamba_headdim derived as E // n_mamba_heads;
    hybrid layers share ``num_mem_blocks`` transformer blocks in turn, with one adapter per hybrid layer."""

    model_types = ("zamba2",)
    notes = {"state": "expressible: uniform count across layers (mamba_d_state)",
             **dict.fromkeys(("head", "head_channel"), _CONDITIONAL.format(field="mamba_expand"))}

    layer_note = ("expressible: fewer layers in layers_block_type (with several shared blocks only when every "
                  "remaining hybrid layer keeps its block; otherwise refused)")

    def width_updates(self, config, dims):
        expand, problems = _multiple_of_hidden(config, dims, "mamba_expand", "Zamba2 mixer width")
        return {"n_mamba_heads": dims["num_heads"], "mamba_headdim": dims["head_dim"],
                "mamba_d_state": dims["state_size"], "mamba_ngroups": dims["n_groups"], **expand}, problems

    def layer_updates(self, config, kept):
        types = [config.layers_block_type[i] for i in kept]
        order = _hybrid_layers(config.layers_block_type)
        blocks = int(config.num_mem_blocks)
        moved = [i for new, i in enumerate(i for i in order if i in kept) if order.index(i) % blocks != new % blocks]
        if moved:
            raise ValueError(f"Zamba2 shares {blocks} transformer blocks in turn between hybrid layers; removing "
                             f"these layers would move hybrid layer(s) {moved} to a different block; remove the "
                             f"last hybrid layers or {blocks} consecutive ones")
        return {"num_hidden_layers": len(kept), "layers_block_type": types, "hybrid_layer_ids": _hybrid_layers(types)}

    def fix_layers(self, model, layers, kept, old_config):
        types = old_config["layers_block_type"]
        dropped = [k for k, i in enumerate(_hybrid_layers(types)) if i not in kept]  # ordinals whose adapters go
        new_ids = _hybrid_layers([types[i] for i in kept])
        seen: set[int] = set()
        for layer in layers:
            block = getattr(layer, "shared_transformer", None)
            if block is None or id(block) in seen:
                continue
            seen.add(id(block))
            for owner, lists in ((block.self_attn, ("linear_q_adapter_list", "linear_k_adapter_list",
                                                    "linear_v_adapter_list")),
                                 (block.feed_forward, ("gate_up_proj_adapter_list",))):
                for adapters in filter(None, (getattr(owner, name, None) for name in lists)):
                    for k in reversed(dropped):
                        del adapters[k]
                owner.num_fwd_mem_blocks = len(new_ids)
                owner.layer_dic = {layer_id: k for k, layer_id in enumerate(new_ids)}
            block.self_attn.layer_block_map = new_ids
        _retie_shared_blocks(model, layers, new_ids, int(old_config["num_mem_blocks"]))


def _hybrid_layers(types: list[str]) -> list[int]:
    return [i for i, t in enumerate(types) if t == "hybrid"]


def _retie_shared_blocks(model: nn.Module, layers: nn.ModuleList, hybrid_ids: list[int], blocks: int) -> None:
    """Renumber Zamba2's shared-block tying ({later hybrid layer: first layer of its block}) and the
    expanded tie maps that save_pretrained reads."""
    inner = next(m for m in model.modules() if getattr(m, "layers", None) is layers)
    sources = [f"layers.{i}.shared_transformer" for i in hybrid_ids[:blocks]]
    inner._tied_weights_keys = {f"layers.{i}.shared_transformer": sources[k % blocks]
                                for k, i in enumerate(hybrid_ids) if k >= blocks}
    for sub in [m for m in model.modules() if hasattr(m, "get_expanded_tied_weights_keys")]:
        sub.all_tied_weights_keys = sub.get_expanded_tied_weights_keys(all_submodels=True)


_GATED_DELTA_NOTES = {
    "value_head": ("expressible: uniform count across layers, the same number of value heads kept under every key "
                   "head (linear_num_value_heads); exact"),
    "key_head": "expressible: uniform count across layers (linear_num_key_heads, linear_num_value_heads); exact",
}  # value and key channels: applied as zeros, the reason is the unit family's (normalised)


class Qwen3_5Arch(StockArch):
    """Qwen3.5 (dense and MoE text models): Gated DeltaNet sizes in four free fields, the layer kinds in
    the stored ``layer_types`` list."""

    model_types = ("qwen3_5_text", "qwen3_5_moe_text")
    notes = _GATED_DELTA_NOTES

    def width_updates(self, config, dims):
        return {"linear_num_value_heads": dims["num_v_heads"], "linear_num_key_heads": dims["num_k_heads"],
                "linear_key_head_dim": dims["head_k_dim"], "linear_value_head_dim": dims["head_v_dim"]}, []


class Qwen3NextArch(Qwen3_5Arch):
    """Qwen3-Next: as Qwen3.5, and a layer is sparse (experts) unless listed in ``mlp_only_layers`` or
    off the ``decoder_sparse_step`` grid, so a layer removal lists the remaining dense layers explicitly."""

    model_types = ("qwen3_next",)

    def layer_updates(self, config, kept):
        updates = super().layer_updates(config, kept)
        if int(getattr(config, "num_experts", 0) or 0) > 0:
            step, dense = int(config.decoder_sparse_step), set(config.mlp_only_layers or [])
            updates["mlp_only_layers"] = [new for new, old in enumerate(kept) if old in dense or (old + 1) % step]
            updates["decoder_sparse_step"] = 1
        return updates


class KimiLinearArch(StockArch):
    """Kimi Linear: the KDA sizes are ``linear_num_heads`` and ``linear_head_dim`` (which also sizes both
    low-rank projections), mirrored in a checkpoint's ``linear_attn_config`` (``num_heads``, ``head_dim``),
    which KimiLinearConfig reads over the fields when it loads: both are written. Layer kinds live in
    ``layer_types`` (and 1-based ``kda_layers`` / ``full_attn_layers`` there), MLP kinds in ``mlp_layer_types``."""

    model_types = ("kimi_linear",)
    notes = {"head": "expressible: uniform count across layers (linear_num_heads); exact",
             **dict.fromkeys(("decay_rank", "gate_rank"), RANK_NOTE)}  # channels: the unit family's reason

    def width_updates(self, config, dims):
        d = dims["head_dim"]
        if dims["decay_rank"] != d or dims["gate_rank"] != d:
            return {}, [(f"KimiLinearConfig builds the decay and gate low-rank widths as linear_head_dim ({d}); "
                         f"these layers have {dims['decay_rank']} and {dims['gate_rank']}")]
        updates: dict[str, Any] = {"linear_num_heads": dims["num_heads"], "linear_head_dim": d}
        linear = getattr(config, "linear_attn_config", None)
        if isinstance(linear, dict):
            updates["linear_attn_config"] = {**linear, "num_heads": dims["num_heads"], "head_dim": d}
        return updates, []

    def layer_updates(self, config, kept):
        updates = super().layer_updates(config, kept)
        if isinstance(getattr(config, "mlp_layer_types", None), list):
            updates["mlp_layer_types"] = [config.mlp_layer_types[i] for i in kept]
        linear = getattr(config, "linear_attn_config", None)
        if isinstance(linear, dict) and "layer_types" in updates:
            types = updates["layer_types"]
            numbered = {"kda_layers": "linear_attention", "full_attn_layers": "full_attention"}
            updates["linear_attn_config"] = {**linear, **{key: [i + 1 for i, t in enumerate(types) if t == kind]
                                                          for key, kind in numbered.items() if key in linear}}
        return updates


# One adapter per model_type, in the project's one registry: a model_type claimed twice is an error, never a
# silent overwrite. Other packages add adapters (a StockArch subclass or instance) through the entry points
# of group ``ssm_profile.architectures``, named by model_type.
ARCHES: Registry[StockArch | type[StockArch]] = Registry("architecture", "ssm_profile.architectures")


def register_arch(arch: StockArch) -> StockArch:
    """Register ``arch`` under each of its ``model_types``; one already taken raises :class:`NameClashError`
    before any is registered."""
    from ..base.registry import NameClashError

    taken = [t for t in arch.model_types if t in ARCHES]
    if taken:
        raise NameClashError(f"{ARCHES.what} '{taken[0]}' is registered twice")
    for model_type in arch.model_types:
        ARCHES.add(model_type, arch)
    return arch


for _arch in (MambaArch(), Mamba2Arch(), NemotronHArch(), BambaArch(), JambaArch(), ZambaArch(), Zamba2Arch(),
              GraniteMoeHybridArch(), FalconH1Arch(), Qwen3_5Arch(), Qwen3NextArch(), KimiLinearArch()):
    register_arch(_arch)


def stock_arch(model_type: str | None) -> StockArch:
    """The adapter of ``model_type`` (a generic one for architectures without a mapping)."""
    if not model_type or model_type not in ARCHES:
        return StockArch()
    entry = ARCHES.get(model_type)
    return entry() if isinstance(entry, type) else entry  # an entry point may name the class
