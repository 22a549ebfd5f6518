"""Kimi Linear's delta attention (KDA; transformers' ``KimiLinearDeltaAttention``) as mixer kind ``kda``.

Found by what it holds, never by class name: ``q_proj``, ``k_proj``, ``v_proj`` (hidden -> heads x d each),
one depthwise ``conv1d`` over [q, k, v], a ``forget_gate`` holding the per-channel decay (``f_a_proj``
hidden -> r_f, ``f_b_proj`` r_f -> heads x d, ``dt_bias`` per head and key channel, ``A_log`` one per head,
shaped (1, 1, heads, 1)), ``b_proj`` (β, one row per head), the output gate's low-rank pair ``g_a_proj``
/ ``g_b_proj``, ``o_norm`` (a gated RMSNorm over d, one weight per channel shared by every head) and
``o_proj``. Kimi Linear's full-attention layers (``KimiLinearAttention``, MLA) have a ``q_proj`` and an
``o_proj`` too, but no forget gate: they are not mixers.

Per token and head h: q, k, v = silu(conv([q; k; v])); g[c] = -exp(A_log[h])·softplus(f[h, c] + dt_bias[h, c])
with f = f_b(f_a(x)); β = sigmoid(b_proj x); q and k L2-normalised, q scaled by 1/sqrt(d); the state S
(d x d, key rows) decays row by row, S <- diag(exp(g)) S, takes the delta-rule update with β and is read
by q; the output goes through o_norm gated by sigmoid(g_b(g_a(x))), then o_proj. One size d
(``linear_head_dim``) serves keys, values, the norm and, in the stock config, both low-rank widths.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .units import Slot, UnitFamily, and_biases

KDA = "kda"
LINEARS = ("q_proj", "k_proj", "v_proj", "b_proj", "g_a_proj", "g_b_proj", "o_proj")
GATE = "forget_gate"
GROUPS = ("q_proj", "k_proj", "v_proj", "conv1d", "f_a_proj", "f_b_proj", "dt_bias", "A_log", "b_proj", "g_a_proj",
          "g_b_proj", "o_norm", "o_proj")


def sizes(module: nn.Module) -> tuple[int, int, int, int]:
    """(heads, d, r_f, r_g) read from the tensors: β rows, o_norm width, the two low-rank widths."""
    return (module.b_proj.weight.shape[0], module.o_norm.weight.shape[0],
            module.forget_gate.f_a_proj.weight.shape[0], module.g_a_proj.weight.shape[0])


def key_width(module: nn.Module) -> int:
    """Key channels per head, from q_proj's rows: d in every model the forward runs; fewer only on the
    planner's meta copies, which slice key channels to count what a cut removes."""
    return module.q_proj.weight.shape[0] // module.b_proj.weight.shape[0]


def is_kda(module: nn.Module) -> bool:
    """Whether ``module`` is a KDA mixer (parameters and shapes, see the module docstring)."""
    gate = getattr(module, GATE, None)
    if not isinstance(gate, nn.Module):
        return False
    a_log, dt_bias = gate._parameters.get("A_log"), gate._parameters.get("dt_bias")
    if a_log is None or dt_bias is None or a_log.ndim != 4:
        return False
    if not (all(isinstance(getattr(module, n, None), nn.Linear) for n in LINEARS)
            and all(isinstance(getattr(gate, n, None), nn.Linear) for n in ("f_a_proj", "f_b_proj"))
            and isinstance(getattr(module, "conv1d", None), nn.Conv1d)
            and isinstance(getattr(getattr(module, "o_norm", None), "weight", None), nn.Parameter)):
        return False
    heads, d, rf, rg = sizes(module)
    width = heads * d
    return (a_log.shape[2] == a_log.numel() == heads and dt_bias.numel() == width
            and all(getattr(module, n).weight.shape[0] == width for n in ("q_proj", "k_proj", "v_proj", "g_b_proj"))
            and gate.f_b_proj.weight.shape == (width, rf) and module.g_b_proj.weight.shape[1] == rg
            and module.o_proj.weight.shape[1] == width and module.conv1d.weight.shape[0] == 3 * width)


def group_of(param: str) -> str:
    """Parameter group of a KDA parameter: the forget gate's tensors are groups of their own."""
    parts = param.split(".")
    return parts[1] if parts[0] == GATE and len(parts) > 1 else parts[0]


def dims(m: Any) -> dict[str, int]:
    heads, d, rf, rg = sizes(m.module)
    return {"hidden_size": m.hidden_size, "num_heads": heads, "head_dim": d, "decay_rank": rf, "gate_rank": rg,
            "conv_kernel": m.conv_kernel}


def blocks(m: Any) -> dict[str, list[tuple[str, int, int]]]:
    width = m.intermediate_size
    return {"conv1d": [("q", 0, width), ("k", width, 2 * width), ("v", 2 * width, 3 * width)]}


# Why KDA channel cuts stay zeros: the stock config has one head_dim for all of it.
_ONE_HEAD_DIM = ("Kimi Linear has one head_dim (linear_head_dim) for q, k, v, the gated norm and both low-rank "
                 "widths, so no config or forward holds a {what} cut alone; and slicing would {change}")
# Why low-rank cuts stay zeros: slicing them is exact, but the stock config cannot say so.
RANK_NOTE = ("applied as zeros: exact when sliced (a zeroed direction adds nothing), but KimiLinearConfig has no "
             "field for the decay or gate low-rank width (both are linear_head_dim)")


def units(m: Any) -> dict[str, UnitFamily]:
    """Heads are independent (per-head L2 norms, 1/sqrt(d), β, A_log; o_norm is per head over d): a
    zeroed head outputs exact zeros, so slicing it is exact up to float rounding. A key channel c owns
    its q and k rows in every head, their conv channels and its own decay (f_b rows, dt_bias); a value
    channel its v rows, conv channels, output-gate rows, o_norm weight and o_proj columns; a decay or
    gate rank direction one row of the a-projection and one column of the b-projection."""
    heads, d, rf, rg = sizes(m.module)
    dk = key_width(m.module)  # == d wherever the forward runs (see key_width)
    q, k, v, fb, gb = ("q_proj.weight", "k_proj.weight", "v_proj.weight", f"{GATE}.f_b_proj.weight",
                       "g_b_proj.weight")
    conv, out, bias = "conv1d.weight", "o_proj.weight", f"{GATE}.dt_bias"

    def every_head(param: str, width: int, offset: int = 0, dim: int = 0) -> Slot:
        return Slot(param, dim, offset, 1, repeats=heads, every=width)

    slots = {
        "head": [Slot(q, 0, 0, dk), Slot(k, 0, 0, dk), Slot(v, 0, 0, d), Slot(conv, 0, 0, dk),
                 Slot(conv, 0, heads * dk, dk), Slot(conv, 0, 2 * heads * dk, d), Slot(fb, 0, 0, dk),
                 Slot(bias, 0, 0, dk), Slot(f"{GATE}.A_log", 2, 0), Slot("b_proj.weight", 0, 0), Slot(gb, 0, 0, d),
                 Slot(out, 1, 0, d)],
        "key_channel": [every_head(q, dk), every_head(k, dk), every_head(conv, dk), every_head(conv, dk, heads * dk),
                        every_head(fb, dk), every_head(bias, dk)],
        "value_channel": [every_head(v, d), every_head(conv, d, 2 * heads * dk), every_head(gb, d),
                          Slot("o_norm.weight", 0, 0), every_head(out, d, dim=1)],
        "decay_rank": [Slot(f"{GATE}.f_a_proj.weight", 0, 0), Slot(fb, 1, 0)],
        "gate_rank": [Slot("g_a_proj.weight", 0, 0), Slot(gb, 1, 0)],
    }
    # only the biases and norms this checkpoint carries
    slots = {kind: tuple(x for x in and_biases(s) if m.has(x.param)) for kind, s in slots.items()}
    return {
        "head": UnitFamily("head", heads, slots["head"], "head h: its q, k, v rows and conv channels, decay rows "
                           "(f_b_proj, dt_bias), A_log, β row, output-gate rows and o_proj columns"),
        "key_channel": UnitFamily("key_channel", dk, slots["key_channel"], "key channel c of every head: q and k "
                                  "rows, their conv channels, and its decay (f_b_proj rows, dt_bias)",
                                  normalised=_ONE_HEAD_DIM.format(what="key-channel",
                                                                  change="raise q's 1/sqrt(head_dim) scale")),
        "value_channel": UnitFamily("value_channel", d, slots["value_channel"], "value channel c of every head: "
                                    "v rows, conv channels, output-gate rows, o_norm weight, o_proj columns",
                                    normalised=_ONE_HEAD_DIM.format(what="value-channel",
                                                                    change="narrow the gated norm's mean")),
        "decay_rank": UnitFamily("decay_rank", rf, slots["decay_rank"], "decay low-rank direction r: f_a_proj "
                                 "row, f_b_proj column"),
        "gate_rank": UnitFamily("gate_rank", rg, slots["gate_rank"], "output-gate low-rank direction r: g_a_proj "
                                "row, g_b_proj column"),
    }
