"""Anatomy tab: the static analysis (``ssm_profile.model.analysis.AnalysisResult``) as a tree + detail pane."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static, Tree
from textual.widgets.tree import TreeNode

from ssm_profile.base.fmt import scope_name

from .format import human_bytes, human_count, pct, shape

WHOLE = scope_name("model")  # "whole-model params": what every share in this view is of


SHARE_KEY = f"% {WHOLE}"  # the detail pane's key of a share: the key names the total, the value stays short


def _share(fraction: float, digits: int = 3) -> str:
    """``"7.766% of whole-model params"``: a share names its total (small tensors keep their digits)."""
    return f"{pct(fraction, digits)} of {WHOLE}"

if TYPE_CHECKING:  # ssm_profile.model.analysis imports torch: the UI shows before it is loaded
    from ssm_profile.model.analysis import AnalysisResult, GroupRow, LayerDynamics, UnitRow, WeightStats


@dataclass
class Node:
    """What a tree node stands for."""

    kind: str  # root | model | layer | group | tensor | units | unit
    layer: int | None = None
    group: GroupRow | None = None
    tensor: tuple[str, list[int]] | None = None
    units: list[UnitRow] | None = None


class AnatomyTree(Tree[Node]):
    """A Tree with file-browser keys: → expands, ← collapses or goes to the parent."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("right", "expand_node", "Expand", show=False),
        Binding("left", "collapse_node", "Collapse", show=False),
    ]

    def action_expand_node(self) -> None:
        node = self.cursor_node
        if node is None:
            return
        if node.allow_expand and not node.is_expanded:
            node.expand()
        elif node.children:
            self.action_cursor_down()

    def action_collapse_node(self) -> None:
        node = self.cursor_node
        if node is None:
            return
        if node.allow_expand and node.is_expanded:
            node.collapse()
        elif node.parent is not None:
            self.move_cursor(node.parent)


def _label(name: str, numel: int | None = None, share: float | None = None, note: str = "",
           width: int = 14) -> Text:
    text = Text(name.ljust(width) if numel is not None else name, style="bold")
    if numel is not None:
        text.append(f" {human_count(numel):>7}", style="cyan")
    if share is not None:
        text.append(f" {pct(share):>7}", style="green")
    if note:
        text.append(f" {note}", style="dim")
    return text


class AnatomyView(Vertical):
    """Tree of layers → groups → tensors (+ model groups, unit families) and a detail pane."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.analysis: AnalysisResult | None = None

    def compose(self) -> ComposeResult:
        yield Static("loading the model …", id="anatomy-status", classes="status-line")
        with Horizontal(id="anatomy-body"):
            tree: AnatomyTree = AnatomyTree("model", id="anatomy-tree")
            tree.show_root = True
            tree.guide_depth = 2
            yield tree
            with Vertical(id="anatomy-detail"):
                yield Static("", id="detail-title", classes="pane-title")
                table: DataTable = DataTable(id="detail-table", show_header=False, cursor_type="row",
                                             zebra_stripes=True)
                yield table

    def on_mount(self) -> None:
        table = self.query_one("#detail-table", DataTable)
        table.add_column("property", key="property")
        table.add_column("value", key="value")

    # ------------------------------------------------------------------ building
    def set_status(self, status: str) -> None:
        """The line above the tree: what is being opened, or what is shown."""
        self.query_one("#anatomy-status", Static).update(status)

    def show(self, analysis: AnalysisResult, status: str) -> None:
        self.analysis = analysis
        self.set_status(status)
        tree = self.query_one("#anatomy-tree", AnatomyTree)
        tree.clear()
        m, t = analysis.model, analysis.totals
        tree.root.set_label(_label(m.name, t.parameters, None, f"{m.class_name}; % = share of {WHOLE}",
                                   width=0))
        tree.root.data = Node("root")
        model_groups = [g for g in analysis.groups if g.layer is None]
        if model_groups:
            branch = tree.root.add(_label("model", sum(g.numel for g in model_groups),
                                          sum(g.share for g in model_groups)),
                                   data=Node("model"))
            for g in model_groups:
                self._add_group(branch, g)
        for layer in sorted({g.layer for g in analysis.groups if g.layer is not None}):
            groups = [g for g in analysis.groups if g.layer == layer]
            kinds = {g.mixer_kind for g in groups if g.mixer_kind}
            # the mixer kind only when the model mixes kinds (hybrids: some layers have none)
            mixed = len(analysis.model.mixer_kinds) > 1 or not kinds
            note = (",".join(sorted(kinds)) or "no SSM") if mixed else ""
            branch = tree.root.add(_label(f"layer {layer}", sum(g.numel for g in groups),
                                          sum(g.share for g in groups), note),
                                   data=Node("layer", layer=layer))
            for g in groups:
                self._add_group(branch, g)
        if analysis.units:
            units = tree.root.add(_label("units", None, None, " coupled structural units"), data=Node("units"))
            kinds: dict[str, list[UnitRow]] = {}
            for u in analysis.units:
                kinds.setdefault(u.kind, []).append(u)
            for kind, rows in kinds.items():
                first = rows[0]
                note = "" if first.prunable else "not pruned"
                units.add_leaf(_label(kind, None, None, f"×{first.count}"
                                      + (" per layer" if first.layer is not None else "")
                                      + f" · {human_count(first.params_per_unit)}/unit {note}".rstrip()),
                               data=Node("unit", units=rows))
        tree.root.expand()
        tree.move_cursor(tree.root)
        self._show_node(tree.root.data)

    def _add_group(self, parent: TreeNode[Node], g: GroupRow) -> None:
        name = g.group if g.scope != "block" else f"{g.group} ·"
        node = parent.add(_label(name, g.numel, g.share), data=Node("group", layer=g.layer, group=g))
        for pname, dims in zip(g.params, g.shapes):
            short = pname.split(f".{g.layer}.", 1)[-1] if g.layer is not None else pname
            node.add_leaf(Text.assemble((short, ""), (f"  {shape(dims)}", "dim")),
                          data=Node("tensor", layer=g.layer, group=g, tensor=(pname, dims)))

    # ------------------------------------------------------------------ detail
    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted[Node]) -> None:
        event.stop()
        if event.node.data is not None:
            self._show_node(event.node.data)

    def _show_node(self, node: Node) -> None:
        if self.analysis is None:
            return
        rows: list[tuple[str, Any]] = []
        title = ""
        a = self.analysis
        if node.kind == "root":
            m, t = a.model, a.totals
            title = f"{m.name} · {m.class_name}"
            rows = [("architecture", m.architecture), ("mixer kinds", ", ".join(m.mixer_kinds)),
                    ("layers", f"{m.num_ssm_layers} SSM of {m.num_layers}"),
                    ("dtype", m.dtype), ("vocabulary", human_count(m.vocab_size or 0)),
                    ("tied embeddings", "yes" if m.tied_embeddings else "no"),
                    ("parameters", f"{human_count(t.parameters)} ({t.parameters:,})"),
                    ("bytes", human_bytes(t.bytes)),
                    ("SSM parameters", human_count(t.ssm_parameters)), (SHARE_KEY, pct(t.ssm_share, 1)),
                    ("FLOPs/token", human_count(t.flops_per_token)),
                    ("  SSM mixers", human_count(t.ssm_flops_per_token)),
                    ("  lm_head", human_count(t.lm_head_flops_per_token)),
                    ("state bytes/sequence", human_bytes(t.state_bytes_per_sequence))]
            rows += [(f"dims.{k}", str(v)) for k, v in m.dims.items()]
        elif node.kind == "model":
            groups = [g for g in a.groups if g.layer is None]
            title = "model-level groups"
            rows = self._sum_rows(groups) + [(g.group, f"{human_count(g.numel)} · {_share(g.share, 2)}")
                                             for g in groups]
        elif node.kind == "layer":
            groups = [g for g in a.groups if g.layer == node.layer]
            title = f"layer {node.layer}"
            rows = self._sum_rows(groups)
            rows += [(f"units: {u.kind}", f"{u.count} × {human_count(u.params_per_unit)}")
                     for u in a.units if u.layer == node.layer]
            dyn = next((d for d in a.dynamics if d.layer == node.layer), None)
            if dyn is not None:
                rows += self._dynamics_rows(dyn)
        elif node.kind in ("group", "tensor") and node.group is not None:
            g = node.group
            where = "model" if g.layer is None else f"layer {g.layer}"
            if node.kind == "tensor" and node.tensor is not None:
                pname, dims = node.tensor
                title = pname
                n = prod(dims) if dims else 1
                rows = [("group", f"{g.group} ({where})"), ("shape", shape(dims)), ("numel", f"{n:,}"),
                        (SHARE_KEY, pct(n / a.totals.parameters, 3)), ("dtype", a.model.dtype)]
            else:
                title = f"{where} · {g.group}"
                rows = [("scope", g.scope + (f" ({g.mixer_kind})" if g.mixer_kind else "")),
                        ("tensors", "\n".join(f"{'.'.join(p.split('.')[-2:])} {shape(s)}"
                                              for p, s in zip(g.params, g.shapes))),
                        ("numel", f"{g.numel:,} ({human_count(g.numel)})"), (SHARE_KEY, pct(g.share, 3)),
                        ("bytes", human_bytes(g.bytes)), ("FLOPs/token", human_count(g.flops_per_token)),
                        ("state bytes/seq", human_bytes(g.state_bytes))]
                rows += self._stats_rows(g.stats)
                for b in g.sub_blocks:
                    rows.append((f"sub-block {b.name}",
                                 (f"rows {b.rows[0]}..{b.rows[1]} · {human_count(b.numel)} · ‖W‖ "
                                  f"{b.stats.l2_norm:.3g} · kurt {b.stats.kurtosis:.3g} · out "
                                  f"{pct(b.stats.outlier_fraction)} of weights")))
        elif node.kind == "units":
            title = "coupled structural units"
            rows = [("", "prune together: one unit spans several tensors"), *[
                (u.kind, (f"{u.count}{' per layer' if u.layer is not None else ''} × "
                          f"{human_count(u.params_per_unit)}{'' if u.prunable else ' · not pruned'}"))
                for u in self._unit_kinds()]]
        elif node.kind == "unit" and node.units:
            u = node.units[0]
            title = f"unit: {u.kind}"
            layers = [r.layer for r in node.units if r.layer is not None]
            rows = [("description", u.description), ("count", f"{u.count}" + (" per layer" if layers else "")),
                    ("layers", ", ".join(map(str, layers)) if layers else "model"),
                    ("params/unit", f"{u.params_per_unit:,}"),
                    ("params in all", human_count(sum(r.count * r.params_per_unit for r in node.units))),
                    ("tensors", ", ".join(u.tensors)), ("prunable", "yes" if u.prunable else "no"),
                    ("stock config", u.stock_config)]
        self.query_one("#detail-title", Static).update(title)
        table = self.query_one("#detail-table", DataTable)
        table.clear()
        for key, value in rows:
            text = value if isinstance(value, Text) else Text(str(value))
            table.add_row(Text(key, style="bold"), text, height=None if "\n" in text.plain else 1)

    def _unit_kinds(self) -> list[UnitRow]:
        seen: dict[str, UnitRow] = {}
        for u in self.analysis.units if self.analysis else []:
            seen.setdefault(u.kind, u)
        return list(seen.values())

    @staticmethod
    def _sum_rows(groups: list[GroupRow]) -> list[tuple[str, Any]]:
        return [("numel", f"{sum(g.numel for g in groups):,} ({human_count(sum(g.numel for g in groups))})"),
                (SHARE_KEY, pct(sum(g.share for g in groups))), ("bytes", human_bytes(sum(g.bytes for g in groups))),
                ("FLOPs/token", human_count(sum(g.flops_per_token for g in groups))),
                ("state bytes/seq", human_bytes(sum(g.state_bytes for g in groups))), ("groups", len(groups))]

    @staticmethod
    def _stats_rows(s: WeightStats) -> list[tuple[str, Any]]:
        return [("‖W‖₂", f"{s.l2_norm:.4g}"), ("mean |w|", f"{s.mean_abs:.4g}"), ("std", f"{s.std:.4g}"),
                ("excess kurtosis", f"{s.kurtosis:.3g}"), ("% weights >4σ", pct(s.outlier_fraction, 3))]

    @staticmethod
    def _dynamics_rows(d: LayerDynamics) -> list[tuple[str, Any]]:
        q = ("min", "p05", "median", "p95", "max")
        fmt = lambda values: " · ".join(f"{k} {values[k]:.3g}" for k in q if k in values)
        rows = [("|A| quantiles", fmt(d.decay_rate)),
                ("dt = softplus(bias)", f"min {d.dt['min']:.3g} · median {d.dt['median']:.3g} · max {d.dt['max']:.3g}"),
                ("dt bias range", f"{d.dt_bias['min']:.3g} .. {d.dt_bias['max']:.3g}"),
                ("horizon (tokens)", fmt(d.horizon))]
        if d.horizon_per_state:
            rows.append(("horizon per state", " ".join(f"{v:.3g}" for v in d.horizon_per_state[:16])
                         + (" …" if len(d.horizon_per_state) > 16 else "")))
        if d.horizon_per_channel and len(d.horizon_per_channel) <= 64:
            label = {"mamba1": "horizon per channel", "gated_delta": "horizon per value head",
                     "kda": "horizon per head, key channel"}.get(d.mixer_kind, "horizon per head")
            rows.append((label, " ".join(f"{v:.3g}" for v in d.horizon_per_channel)))
        if d.decay_per_token:  # Gated DeltaNet, KDA: the horizon is read at an assumed gate input
            rows += [("decay per token", fmt(d.decay_per_token)), ("assumes", d.assumes or "")]
        return rows
