"""Static analysis: what a model's SSM parameter groups are, cost and do, read from weights alone.

``analyze(model)`` returns an :class:`AnalysisResult`, the one object behind every output of the
``analyze`` command (tables, JSON) and the anatomy views of the report and the TUI.

Conventions
-----------
* FLOPs per token are for recurrent (token-by-token) inference; a multiply-add counts 2. With
  tied embeddings the output projection's FLOPs are charged to ``embeddings``. The
  selective scan (discretisation, state update, readout) is charged to ``A_log``, the skip
  connection to ``D``.
* Recurrent-state bytes are per sequence: the SSM state (charged to ``A_log``) and the
  ``K - 1`` inputs the causal convolution keeps (charged to ``conv1d``).
* Memory horizon of a channel/state: ``1 / (softplus(dt_bias) * |A|)`` tokens, the time constant
  of its decay ``exp(dt * A)`` at the bias time step (the data-free operating point).
* Gated DeltaNet (``gated_delta``): the gate of value head h is g = -exp(A_log)·softplus(a + dt_bias)
  with a the token's input projection; the data-free point is a = 0, where the per-token decay is
  exp(g) and the memory horizon 1 / (1 - exp(g)) tokens (the mean life of a decaying write). The
  recurrence (decay, Sᵀk, delta update, Sᵀq; q/k L2 norms and q's scale) is charged to ``A_log``,
  the gate and β to ``dt_bias``; its state, num_v_heads·head_k_dim·head_v_dim values in the model's
  dtype, to ``A_log``.
* Kimi delta attention (``kda``): the gate of head h and key channel c is
  g = -exp(A_log[h])·softplus(f[h, c] + dt_bias[h, c]) with f the token's low-rank projection
  f_b(f_a(x)); the data-free point is f = 0 (decay exp(g) and horizon 1/(1 - exp(g)) per head and key
  channel). The recurrence (per-row decay, Sᵀk, delta update, Sᵀq; L2 norms, q's scale) is charged to
  ``A_log``, the gate and β to ``dt_bias``; its state, heads·d·d values, to ``A_log`` in float32 (transformers
  keeps KDA's recurrent state in float32 whatever the model's dtype).
* Outliers: weights more than ``OUTLIER_SIGMA`` standard deviations from the tensor mean.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .arch import GATED_DELTA, KDA, MAMBA1, MixerInfo, find_mixers
from .stock import stock_arch

SCHEMA_VERSION = 1
OUTLIER_SIGMA = 4.0
_LAYER_RE = re.compile(r"^(.*?(?:layers|h|blocks))\.(\d+)\.(.+)$")


@dataclass
class WeightStats:
    l2_norm: float
    mean_abs: float
    std: float
    kurtosis: float  # excess kurtosis; 0 for a Gaussian
    outlier_fraction: float

    @classmethod
    def of(cls, tensors: list[torch.Tensor]) -> "WeightStats":
        w = torch.cat([t.detach().float().reshape(-1) for t in tensors])
        if w.numel() < 2:
            value = float(w.abs().sum())
            return cls(value, value, 0.0, 0.0, 0.0)
        mean, std = w.mean(), w.std()
        z = (w - mean) / std.clamp_min(1e-12)
        return cls(
            l2_norm=float(w.norm()), mean_abs=float(w.abs().mean()), std=float(std),
            kurtosis=float((z**4).mean() - 3.0), outlier_fraction=float((z.abs() > OUTLIER_SIGMA).float().mean()),
        )


@dataclass
class SubBlock:
    name: str  # e.g. "B" inside in_proj
    rows: tuple[int, int]
    numel: int
    stats: WeightStats


@dataclass
class GroupRow:
    """One parameter group: a mixer's ``in_proj``, or ``embeddings`` outside the layers."""

    layer: int | None  # decoder layer index; None outside the layers
    group: str
    scope: str  # "mixer" (an SSM parameter group), "block" (other parts of a layer) or "model"
    mixer_kind: str | None
    params: list[str]  # full parameter names
    shapes: list[list[int]]
    numel: int
    bytes: int
    share: float  # of all parameters
    flops_per_token: int
    state_bytes: int  # recurrent state per sequence charged to this group
    stats: WeightStats
    sub_blocks: list[SubBlock] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.group if self.layer is None else f"{self.layer}.{self.group}"


@dataclass
class UnitRow:
    """A family of coupled structural units in one layer (or whole layers, with layer None)."""

    layer: int | None
    kind: str
    count: int
    params_per_unit: int
    tensors: list[str]
    description: str
    prunable: bool
    stock_config: str  # how a uniform cut of this kind can be saved


@dataclass
class LayerDynamics:
    """SSM dynamics of one mixer read from A_log and the dt bias."""

    layer: int
    mixer_kind: str
    decay_rate: dict[str, float]  # quantiles of |A| = exp(A_log)
    dt: dict[str, float]  # softplus(dt bias): min / median / max
    dt_bias: dict[str, float]  # raw bias range
    horizon: dict[str, float]  # quantiles of the memory horizon in tokens
    horizon_per_state: list[float]  # Mamba-1: median over channels for each state n
    horizon_per_channel: list[float]  # Mamba-1: median over states per channel; Mamba-2, Gated DeltaNet: per
    # head; KDA: per head and key channel
    # Gated DeltaNet and KDA only (absent from the JSON of Mamba mixers): quantiles of the per-token decay
    # exp(g) at the stated operating point, and that assumption in words
    decay_per_token: dict[str, float] | None = None
    assumes: str | None = None


class _Record:
    """``to_dict``/``from_dict`` by field (``class_name`` is the JSON key "class"); keys this version
    does not know survive a round trip in ``extra``."""

    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        out = {_KEY.get(f.name, f.name): copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "extra"}
        return {**out, **copy.deepcopy(self.extra)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {_KEY.get(f.name, f.name): f.name for f in fields(cls) if f.name != "extra"}
        return cls(**{names[k]: copy.deepcopy(v) for k, v in data.items() if k in names},
                   extra={k: copy.deepcopy(v) for k, v in data.items() if k not in names})


_KEY = {"class_name": "class"}


@dataclass
class AnalysisModel(_Record):
    """The analysed model (``analysis.json``'s ``model``); a default stands in for a key a file lacks."""

    name: str = ""
    class_name: str = ""
    architecture: str = "unknown"
    mixer_kinds: list[str] = field(default_factory=list)
    num_layers: int = 0
    num_ssm_layers: int = 0
    dims: dict[str, int] = field(default_factory=dict)  # the first mixer's dimensions by name (MixerInfo.dims)
    vocab_size: int | None = None
    dtype: str = ""
    tied_embeddings: bool = False
    source: dict[str, Any] = field(default_factory=dict)  # the ModelSource it was loaded from, as written
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class AnalysisTotals(_Record):
    """Whole-model totals (``analysis.json``'s ``totals``): parameters (tied tensors once), bytes, FLOPs per
    token and recurrent-state bytes per sequence, with the SSM mixers' and the LM head's shares."""

    parameters: int = 0
    bytes: int = 0
    ssm_parameters: int = 0
    ssm_share: float = 0.0  # of all parameters
    flops_per_token: int = 0
    ssm_flops_per_token: int = 0
    lm_head_flops_per_token: int = 0
    state_bytes_per_sequence: int = 0
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class AnalysisResult:
    """Everything the static analysis found. ``to_dict``/``from_dict`` round-trip through JSON."""

    model: AnalysisModel
    totals: AnalysisTotals
    groups: list[GroupRow]
    units: list[UnitRow]
    dynamics: list[LayerDynamics]
    schema_version: int = SCHEMA_VERSION

    # --- serialisation
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model"], data["totals"] = self.model.to_dict(), self.totals.to_dict()
        for d in data["dynamics"]:  # Mamba mixers' dynamics keep their fields, no empty Gated DeltaNet ones
            for key in ("decay_per_token", "assumes"):
                if d.get(key) is None:
                    d.pop(key, None)
        return data

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            from ..base.io import write_text_atomic

            write_text_atomic(path, text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AnalysisResult":
        def group(g: dict[str, Any]) -> GroupRow:
            g = dict(g)
            g["stats"] = WeightStats(**g["stats"])
            g["sub_blocks"] = [SubBlock(b["name"], tuple(b["rows"]), b["numel"], WeightStats(**b["stats"]))
                               for b in g.get("sub_blocks", [])]
            return GroupRow(**g)

        return cls(
            model=AnalysisModel.from_dict(data["model"]), totals=AnalysisTotals.from_dict(data["totals"]), groups=[group(g) for g in data["groups"]],
            units=[UnitRow(**u) for u in data["units"]], dynamics=[LayerDynamics(**d) for d in data["dynamics"]],
            schema_version=data.get("schema_version", SCHEMA_VERSION),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> "AnalysisResult":
        from ..base.errors import RunDirError
        from ..base.safe_read import read_user_json

        return cls.from_dict(read_user_json(path, "analysis file", error=RunDirError))

    # --- views
    def mixer_groups(self) -> list[GroupRow]:
        return [g for g in self.groups if g.scope == "mixer"]

    def group_names(self) -> list[str]:
        """SSM parameter group names present, in display order."""
        seen: dict[str, None] = {}
        for g in self.mixer_groups():
            seen.setdefault(g.group, None)
        return list(seen)

    def layers(self) -> list[int]:
        return sorted({g.layer for g in self.mixer_groups() if g.layer is not None})

    def groups_frame(self):
        import pandas as pd

        rows = []
        for g in self.groups:
            rows.append({"layer": g.layer, "group": g.group, "scope": g.scope, "numel": g.numel, "bytes": g.bytes,
                         "share": g.share, "flops_per_token": g.flops_per_token, "state_bytes": g.state_bytes,
                         **{f"w_{k}": v for k, v in asdict(g.stats).items()}})
        return pd.DataFrame(rows)

    def summary_by_group(self) -> list[dict[str, Any]]:
        """Totals per group name across layers (mixer groups first, then the rest)."""
        out: dict[str, dict[str, Any]] = {}
        for g in self.groups:
            name = g.group if g.scope != "block" else f"{g.group} (block)"
            row = out.setdefault(name, {"group": name, "scope": g.scope, "layers": 0, "numel": 0, "bytes": 0,
                                        "share": 0.0, "flops_per_token": 0, "state_bytes": 0})
            row["layers"] += 1
            for k in ("numel", "bytes", "share", "flops_per_token", "state_bytes"):
                row[k] += getattr(g, k)
        return list(out.values())


def analyze(model: torch.nn.Module, *, name: str | None = None, source: dict[str, Any] | None = None) -> AnalysisResult:
    """Analyse ``model`` (a transformers model with Mamba mixers) without running any data."""
    mixers = find_mixers(model)
    unique = unique_parameters(model)
    total = sum(p.numel() for p in unique.values())
    mixer_of = {f"{m.path}.{p}": m for m in mixers for p in m.params}

    groups: list[GroupRow] = []
    for m in mixers:
        groups.extend(_mixer_groups(m, unique, total))
    groups.extend(_other_groups(model, unique, mixer_of, total))
    groups.sort(key=lambda g: (g.layer is None and g.group != "embeddings", -1 if g.layer is None else g.layer,
                               g.scope != "mixer"))

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    units = [_unit_row(m, fam, model_type) for m in mixers for fam in m.unit_families().values()]
    if mixers:
        per_layer = sum(p.numel() for p in mixers[0].params.values())
        units.append(UnitRow(None, "layer", len(mixers), per_layer, ["<whole mixer>"],
                             "a whole SSM mixer (the residual stream passes the layer unchanged)", True,
                             stock_arch(model_type).layer_note))
    config = getattr(model, "config", None)
    lm_head_flops = sum(g.flops_per_token for g in groups if g.group in ("lm_head", "embeddings"))
    info = AnalysisModel(
        name=name or getattr(config, "_name_or_path", "") or type(model).__name__,
        class_name=type(model).__name__,
        architecture=getattr(config, "model_type", "unknown"),
        mixer_kinds=sorted({m.kind for m in mixers}),
        num_layers=int(getattr(config, "num_hidden_layers", len(mixers)) or len(mixers)),
        num_ssm_layers=len(mixers),
        dims=mixers[0].dims() if mixers else {},
        vocab_size=getattr(config, "vocab_size", None),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        source=source or {},
    )
    ssm_params = sum(g.numel for g in groups if g.scope == "mixer")
    totals = AnalysisTotals(
        parameters=total,
        bytes=sum(p.numel() * p.element_size() for p in unique.values()),
        ssm_parameters=ssm_params,
        ssm_share=ssm_params / total if total else 0.0,
        flops_per_token=sum(g.flops_per_token for g in groups),
        ssm_flops_per_token=sum(g.flops_per_token for g in groups if g.scope == "mixer"),
        lm_head_flops_per_token=lm_head_flops,
        state_bytes_per_sequence=sum(g.state_bytes for g in groups),
    )
    dynamics = [_dynamics(m) for m in mixers]
    return AnalysisResult(model=info, totals=totals, groups=groups, units=units, dynamics=dynamics)


def unique_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Named parameters with tied tensors counted once (first name wins)."""
    seen: set[int] = set()
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        out[name] = p
    return out


def _mixer_groups(m: MixerInfo, unique: dict[str, torch.nn.Parameter], total: int) -> list[GroupRow]:
    rows = []
    blocks = m.sub_blocks()
    for group, names in m.groups().items():
        names = [n for n in names if m.full_name(n) in unique]
        if not names:
            continue
        tensors = [m.param(n) for n in names]
        numel = sum(t.numel() for t in tensors)
        subs = []
        for sub, start, stop in blocks.get(group, []):
            part = [m.param(n)[start:stop] for n in names if m.param(n).ndim >= 1 and m.param(n).shape[0] >= stop]
            subs.append(SubBlock(sub, (start, stop), sum(t.numel() for t in part), WeightStats.of(part)))
        rows.append(GroupRow(
            layer=m.layer, group=group, scope="mixer", mixer_kind=m.kind, params=[m.full_name(n) for n in names],
            shapes=[list(t.shape) for t in tensors], numel=numel, bytes=sum(t.numel() * t.element_size() for t in tensors),
            share=numel / total, flops_per_token=group_flops(m, group), state_bytes=group_state_bytes(m, group),
            stats=WeightStats.of(tensors), sub_blocks=subs,
        ))
    return rows


def group_flops(m: MixerInfo, group: str) -> int:
    """Dense FLOPs per token of one parameter group of mixer ``m`` (the conventions of the module docstring)."""
    if m.kind == GATED_DELTA:
        return _gated_delta_flops(m, group)
    if m.kind == KDA:
        return _kda_flops(m, group)
    E, N = m.intermediate_size, m.state_size
    mod = m.module
    if m.multi_head and group in ("x_proj", "dt_proj"):  # Zamba: one (rows x head_dim) matmul per head
        return 2 * m.param(f"{group}_weight").numel()
    if group in ("in_proj", "x_proj", "dt_proj", "out_proj"):
        w = getattr(mod, group).weight
        return 2 * w.shape[0] * w.shape[1]
    if group == "conv1d":
        return 2 * m.conv_channels * m.conv_kernel
    if group == "A_log":  # the scan: exp(dt*A), dt*B*x, h = a*h + b, y = C.h
        if m.kind == MAMBA1:
            return 8 * E * N
        return 2 * m.num_heads + 6 * E * N
    if group == "D":
        return 2 * E
    if group == "dt_bias":
        return m.num_heads
    if group == "norm":
        return 5 * E
    return 0


def _gated_delta_flops(m: MixerInfo, group: str) -> int:
    """Per token: the linears 2·rows·cols; the conv 2·channels·K; the recurrence per value head
    7·dk·dv (decay dk·dv, Sᵀk 2·dk·dv, update 2·dk·dv, Sᵀq 2·dk·dv) + 2·dv (v − Sᵀk, ·β), and per
    key head 7·dk (L2 norms of q and k, q's scale); the gate and β 4 per value head; the norm 5·value_dim."""
    H, Kh, dk, dv = m.num_v_heads, m.num_k_heads, m.head_k_dim, m.head_v_dim
    module = getattr(m.module, group, None)
    if isinstance(module, torch.nn.Linear):
        return 2 * module.weight.shape[0] * module.weight.shape[1]
    if group == "conv1d":
        return 2 * m.conv_channels * m.conv_kernel
    if group == "A_log":
        return H * (7 * dk * dv + 2 * dv) + 7 * Kh * dk
    if group == "dt_bias":
        return 4 * H
    if group == "norm":
        return 5 * H * dv
    return 0


def _kda_flops(m: MixerInfo, group: str) -> int:
    """Per token: the linears 2·rows·cols; the conv 2·channels·K; the recurrence per head 7·d·d (per-row
    decay d·d, Sᵀk, update and Sᵀq 2·d·d each) + 2·d (v − Sᵀk, ·β) + 7·d (L2 norms of q and k, q's scale);
    the gate 4 per head and key channel (+ dt_bias, softplus, × exp(A_log), exp) and β 1 per head; the
    norm 5·heads·d."""
    H, d = m.num_heads, m.head_dim
    owner = m.module.forget_gate if group in ("f_a_proj", "f_b_proj") else m.module
    linear = getattr(owner, group, None)
    if isinstance(linear, torch.nn.Linear):
        return 2 * linear.weight.shape[0] * linear.weight.shape[1]
    if group == "conv1d":
        return 2 * m.conv_channels * m.conv_kernel
    if group == "A_log":
        return H * (7 * d * d + 2 * d + 7 * d)
    if group == "dt_bias":
        return 4 * H * d + H
    if group == "o_norm":
        return 5 * H * d
    return 0


def group_state_bytes(m: MixerInfo, group: str) -> int:
    """Recurrent-state bytes per sequence that one parameter group of mixer ``m`` holds."""
    itemsize = m.out_linear.weight.element_size()
    if group == "A_log" and m.kind == KDA:
        return m.num_heads * m.head_dim * m.head_dim * 4  # float32 whatever the dtype (see the module docstring)
    if group == "A_log" and m.kind == GATED_DELTA:
        return m.num_v_heads * m.head_k_dim * m.head_v_dim * itemsize
    if group == "A_log":
        return m.intermediate_size * m.state_size * itemsize
    if group == "conv1d":
        return m.conv_channels * (m.conv_kernel - 1) * itemsize
    return 0


def _other_groups(model, unique, mixer_of, total) -> list[GroupRow]:
    buckets: dict[tuple[int | None, str, str], list[str]] = {}
    for name in unique:
        if name in mixer_of:
            continue
        match = _LAYER_RE.match(name)
        if match:
            layer, rest = int(match.group(2)), match.group(3)
            first = rest.split(".")[0]
            group = "layer_norm" if first == "norm" else first
            # Hybrids keep the Mamba mixer under e.g. layers.i.mamba; its non-SSM extras
            # (Jamba's dt/B/C norms) stay with the layer's other parameters.
            buckets.setdefault((layer, group, "block"), []).append(name)
        else:
            parts = name.split(".")
            group = parts[-2] if len(parts) >= 2 and parts[-1] in ("weight", "bias") else parts[0]
            if group in ("embed_tokens", "embedding", "wte"):
                group = "embeddings"
            if group in ("norm", "final_layernorm", "ln_f"):
                group = "norm_f"
            buckets.setdefault((None, group, "model"), []).append(name)
    hidden = getattr(model.config, "hidden_size", 0)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_flops = 2 * head.weight.numel() if head is not None and getattr(head, "weight", None) is not None else 0
    tied = not any(group == "lm_head" for (_, group, _) in buckets)
    rows = []
    for (layer, group, scope), names in buckets.items():
        tensors = [unique[n] for n in names]
        numel = sum(t.numel() for t in tensors)
        flops = 0
        if group == "lm_head" or (group == "embeddings" and tied):
            flops = head_flops  # tied models run the output projection with the embedding matrix
        elif "norm" in group:
            flops = 4 * hidden
        elif scope == "block" and group not in ("layer_norm",):
            flops = 2 * sum(t.numel() for t in tensors if t.ndim == 2)  # attention/MLP matmuls, lower bound
        rows.append(GroupRow(
            layer=layer, group=group, scope=scope, mixer_kind=None, params=names,
            shapes=[list(t.shape) for t in tensors], numel=numel,
            bytes=sum(t.numel() * t.element_size() for t in tensors), share=numel / total,
            flops_per_token=flops, state_bytes=0, stats=WeightStats.of(tensors),
        ))
    return rows


def _unit_row(m: MixerInfo, fam, model_type: str | None) -> UnitRow:
    """The unit's row; ``stock_config`` says "expressible" only where apply slices
    (:func:`ssm_profile.pruning.surgery.slice_cuts`), else that the cut is applied as zeros and why."""
    if not fam.prunable:
        stock = "not pruned"
    elif fam.normalised:
        stock = f"applied as zeros: {fam.normalised}"
    else:
        stock = stock_arch(model_type).unit_note(fam.kind, model_type)
    return UnitRow(layer=m.layer, kind=fam.kind, count=fam.count, params_per_unit=fam.elements_per_unit(m),
                   tensors=fam.tensors, description=fam.description, prunable=fam.prunable, stock_config=stock)


def _quantiles(x: torch.Tensor) -> dict[str, float]:
    x = x.detach().double().reshape(-1)
    q = torch.quantile(x, torch.tensor([0.0, 0.05, 0.5, 0.95, 1.0], dtype=torch.float64))
    return {"min": float(q[0]), "p05": float(q[1]), "median": float(q[2]), "p95": float(q[3]), "max": float(q[4])}


def _dt_bias(m: MixerInfo) -> torch.Tensor:
    mod = m.module
    if m.multi_head:  # Zamba: (heads, head_dim), channel-major like in_proj's channels
        bias = mod.dt_proj_bias
        return bias.reshape(-1) if bias is not None else torch.zeros(m.intermediate_size)
    if m.kind == MAMBA1:
        bias = mod.dt_proj.bias
        return bias if bias is not None else torch.zeros(m.intermediate_size)
    return mod.dt_bias


GATED_DELTA_POINT = ("a = 0 (the input projection's gate term), so g = -exp(A_log)·softplus(dt_bias); decay per "
                     "token exp(g); horizon 1/(1 - exp(g)) tokens")


def _clean(xs: list[float]) -> list[float]:
    return [round(float(v), 6) if math.isfinite(v) else 1e30 for v in xs]


@torch.no_grad()
def _gated_delta_dynamics(m: MixerInfo) -> LayerDynamics:
    """Per value head, at the data-free point a = 0 (see GATED_DELTA_POINT)."""
    rate = torch.exp(m.module.A_log.detach().double())
    bias = m.module.dt_bias.detach().double()
    decay = torch.exp(-rate * F.softplus(bias))
    horizon = 1.0 / (-torch.expm1(-rate * F.softplus(bias))).clamp_min(1e-30)
    return LayerDynamics(
        layer=m.layer, mixer_kind=m.kind, decay_rate=_quantiles(rate), dt=_quantiles(F.softplus(bias)),
        dt_bias={"min": float(bias.min()), "max": float(bias.max())}, horizon=_quantiles(horizon),
        horizon_per_state=[], horizon_per_channel=_clean(horizon.tolist()), decay_per_token=_quantiles(decay),
        assumes=GATED_DELTA_POINT,
    )


KDA_POINT = ("f = 0 (the token's low-rank decay projection f_b(f_a(x))), so g = -exp(A_log)·softplus(dt_bias) per "
             "head and key channel; decay per token exp(g); horizon 1/(1 - exp(g)) tokens")


@torch.no_grad()
def _kda_dynamics(m: MixerInfo) -> LayerDynamics:
    """Per head and key channel (head-major), at the data-free point f = 0 (see KDA_POINT)."""
    gate = m.module.forget_gate
    rate = torch.exp(gate.A_log.detach().double().reshape(-1))  # (heads,)
    bias = gate.dt_bias.detach().double().view(m.num_heads, m.head_dim)
    g = -rate[:, None] * F.softplus(bias)
    horizon = 1.0 / (-torch.expm1(g)).clamp_min(1e-30)
    return LayerDynamics(
        layer=m.layer, mixer_kind=m.kind, decay_rate=_quantiles(rate), dt=_quantiles(F.softplus(bias)),
        dt_bias={"min": float(bias.min()), "max": float(bias.max())}, horizon=_quantiles(horizon),
        horizon_per_state=[], horizon_per_channel=_clean(horizon.reshape(-1).tolist()),
        decay_per_token=_quantiles(torch.exp(g)), assumes=KDA_POINT,
    )


@torch.no_grad()
def _dynamics(m: MixerInfo) -> LayerDynamics:
    if m.kind == GATED_DELTA:
        return _gated_delta_dynamics(m)
    if m.kind == KDA:
        return _kda_dynamics(m)
    rate = torch.exp(m.module.A_log.detach().double())  # |A|
    if m.multi_head:
        rate = rate.reshape(m.intermediate_size, m.state_size)  # Zamba: (heads, head_dim, N) -> (E, N)
    bias = _dt_bias(m).detach().double()
    dt = F.softplus(bias)
    if m.kind == MAMBA1:
        horizon = 1.0 / (dt[:, None] * rate).clamp_min(1e-30)  # (E, N)
        per_state = horizon.median(dim=0).values.tolist()
        per_channel = horizon.median(dim=1).values.tolist()
    else:
        horizon = 1.0 / (dt * rate).clamp_min(1e-30)  # (H,)
        per_state, per_channel = [], horizon.tolist()
    return LayerDynamics(
        layer=m.layer, mixer_kind=m.kind, decay_rate=_quantiles(rate), dt={k: v for k, v in _quantiles(dt).items()},
        dt_bias={"min": float(bias.min()), "max": float(bias.max())}, horizon=_quantiles(horizon),
        horizon_per_state=_clean(per_state), horizon_per_channel=_clean(per_channel),
    )
