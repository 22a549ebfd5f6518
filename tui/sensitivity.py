"""Sensitivity tab: curves, score histograms, layer × group heatmap, ranking and findings of a
``ssm_profile.profiling.results.ProfileResult``."""

from __future__ import annotations

import math
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import ContentSwitcher, DataTable, OptionList, Static, TabbedContent, TabPane
from textual.widgets.option_list import Option
from textual_plotext import PlotextPlot

from .format import heat_cell, human_count, num, pct

if TYPE_CHECKING:  # ssm_profile.profiling.results imports torch: the UI shows before it is loaded
    from ssm_profile.profiling.results import ProfileResult

METRICS = {"delta": "ΔL (loss increase)", "rel": "relative perplexity increase"}
VIEWS = ["curves", "scores", "heatmap", "ranking", "findings"]
SELECTED_COLOR = (255, 170, 0)
TOLERANCE_COLOR = (230, 60, 60)
OTHER_COLORS = [(90, 150, 220), (120, 190, 120), (200, 120, 200), (110, 200, 200), (200, 200, 110),
                (220, 120, 120), (150, 150, 150), (170, 130, 90), (130, 130, 220), (230, 160, 190)]


class SensitivityView(Vertical):
    """Everything measured by a profile; keys c/C (criterion), m (metric), t/T (target), v (view)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.result: ProfileResult | None = None
        self.criterion: str | None = None
        self.target: str | None = None
        self.metric = "delta"
        self._status_note = ""
        self._findings: list = []
        self._stale: set[str] = set()

    def compose(self) -> ComposeResult:
        with ContentSwitcher(initial="sens-empty", id="sens-switcher"):
            yield Static("No profile yet.\n\nRun one in the Profile tab (press 3), or open a run directory:\n"
                         "  ssm-profile RUN_DIR", id="sens-empty", classes="placeholder")
            with Horizontal(id="sens-main"):
                yield OptionList(id="sens-targets")
                with Vertical(id="sens-right"):
                    yield Static("", id="sens-status", classes="status-line")
                    with TabbedContent(id="sens-tabs", initial="curves"):
                        with TabPane("Curves", id="curves"):
                            yield PlotextPlot(id="curve-plot")
                            yield DataTable(id="curve-table", cursor_type="row", zebra_stripes=True)
                        with TabPane("Scores", id="scores"):
                            yield Static("", id="hist-note", classes="note")
                            yield PlotextPlot(id="hist-plot")
                        with TabPane("Heatmap", id="heatmap"):
                            yield Static("", id="heat-note", classes="note")
                            yield DataTable(id="heat-table", cursor_type="cell")
                        with TabPane("Ranking", id="ranking"):
                            yield DataTable(id="rank-table", cursor_type="row", zebra_stripes=True)
                        with TabPane("Findings", id="findings"):
                            yield DataTable(id="find-table", cursor_type="row", zebra_stripes=True)
                            yield Static("", id="find-detail", classes="note")

    def on_mount(self) -> None:
        curve = self.query_one("#curve-table", DataTable)
        for col in ("sparsity", "ΔL", "95% CI", "rel. ppl", "pruned", "predicted ΔL"):
            curve.add_column(col, key=col)
        rank = self.query_one("#rank-table", DataTable)
        for col in ("#", "target", "best criterion", "AUC ΔL", "95% CI", "safe sparsity", "ΔL @50%", "params"):
            rank.add_column(col, key=col)
        find = self.query_one("#find-table", DataTable)
        for col in ("verdict", "windows", "finding", "numbers"):
            find.add_column(col, key=col)

    # ------------------------------------------------------------------ state
    @property
    def criteria(self) -> list[str]:
        return self.result.criteria() if self.result else []

    @property
    def targets(self) -> list[str]:
        return self.result.targets() if self.result else []

    def show(self, result: ProfileResult, status: str = "") -> None:
        self.result = result
        self._status_note = status
        crits, targets = self.criteria, self.targets
        if self.criterion not in crits:
            default = result.record.settings.layer_criterion
            self.criterion = default if default in crits else (crits[0] if crits else None)
        ranking = result.ranking()
        if self.target not in targets:
            self.target = ranking[0].target if ranking else (targets[0] if targets else None)
        self.query_one("#sens-switcher", ContentSwitcher).current = "sens-main"
        options = self.query_one("#sens-targets", OptionList)
        options.clear_options()
        ranks = {r.target: r.rank for r in ranking}
        for t in targets:
            prompt = Text.assemble((f"{t:<18}", "bold"), (f"#{ranks[t]}" if t in ranks else "", "dim"))
            options.add_option(Option(prompt, id=t))
        if self.target in targets:
            options.highlighted = targets.index(self.target)
        self._fill_ranking(ranking)
        self._fill_findings()
        self.refresh_views()

    def clear(self) -> None:
        """Another model is being opened: back to the placeholder."""
        self.result = None
        self.query_one("#sens-switcher", ContentSwitcher).current = "sens-empty"

    def cycle_criterion(self, step: int = 1) -> None:
        crits = self.criteria
        if not crits:
            return
        i = crits.index(self.criterion) if self.criterion in crits else -step
        self.criterion = crits[(i + step) % len(crits)]
        self.refresh_views()

    def cycle_metric(self) -> None:
        self.metric = "rel" if self.metric == "delta" else "delta"
        self.refresh_views()

    def cycle_target(self, step: int = 1) -> None:
        targets = self.targets
        if not targets:
            return
        i = targets.index(self.target) if self.target in targets else -step
        self.query_one("#sens-targets", OptionList).highlighted = (i + step) % len(targets)

    def cycle_view(self, step: int = 1) -> None:
        tabs = self.query_one("#sens-tabs", TabbedContent)
        i = VIEWS.index(tabs.active) if tabs.active in VIEWS else 0
        tabs.active = VIEWS[(i + step) % len(VIEWS)]

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        if event.option.id and event.option.id != self.target:
            self.target = event.option.id
            self.refresh_views()

    # ------------------------------------------------------------------ rendering
    def refresh_views(self) -> None:
        if self.result is None:
            return
        crits = self.criteria
        pos = f" ({crits.index(self.criterion) + 1}/{len(crits)})" if self.criterion in crits else ""
        status = Text.assemble(("target ", "dim"), (str(self.target), "bold"), ("  criterion ", "dim"),
                               (f"{self.criterion}{pos}", "bold #ffaa00"), ("  metric ", "dim"),
                               ("ΔL" if self.metric == "delta" else "rel. ppl", "bold"))
        if self._status_note:
            status.append(f"  {self._status_note}", style="italic dim")
        self.query_one("#sens-status", Static).update(status)
        self._stale = {"curves", "scores", "heatmap"}
        self._fill_active()

    def _fill_active(self) -> None:
        """Draw the visible view now; the others when they are shown (plots are slow to build)."""
        active = self.query_one("#sens-tabs", TabbedContent).active
        if active in self._stale:
            self._stale.discard(active)
            {"curves": self._fill_curves, "scores": self._fill_histogram, "heatmap": self._fill_heatmap}[active]()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.tabbed_content.id == "sens-tabs":
            event.stop()
            self._fill_active()

    def tolerance_line(self) -> float:
        """The run's perplexity tolerance in the plotted metric (ΔL = ln(1 + tolerance) nats, or %)."""
        tolerance = self.result.tolerance if self.result else 0.0
        return math.log1p(tolerance) if self.metric == "delta" else 100.0 * tolerance

    def _value(self, trial) -> float:
        return trial.delta_loss if self.metric == "delta" else 100.0 * trial.rel_ppl_increase

    def _skip_reason(self, target: str | None, criterion: str | None) -> str:
        for s in self.result.record.skipped if self.result else []:
            if s.target == target and s.criterion == criterion:
                return s.reason
        return ""

    def _fill_curves(self) -> None:
        r, target = self.result, self.target
        plot = self.query_one("#curve-plot", PlotextPlot)
        plt = plot.plt
        plt.clear_figure()
        table = self.query_one("#curve-table", DataTable)
        table.clear()
        if r is None or target is None:
            table.add_row(Text("no finished trials yet", style="italic"), "", "", "", "", "")
            plot.refresh()
            return
        ylabel = "ΔL" if self.metric == "delta" else "rel. ppl increase %"
        others = [c for c in self.criteria if c != self.criterion and r.curve(target, c)]
        for i, c in enumerate(others):
            curve = r.curve(target, c)
            plt.plot([0.0] + [100 * t.sparsity for t in curve], [0.0] + [self._value(t) for t in curve],
                     color=OTHER_COLORS[i % len(OTHER_COLORS)], marker="braille", label=c)
        selected = r.curve(target, self.criterion) if self.criterion else []
        if selected:
            xs = [0.0] + [100 * t.sparsity for t in selected]
            if self.metric == "delta":
                cis = [(0.0, 0.0)] + [r.delta_ci(t) for t in selected]
                plt.plot(xs, [lo for lo, _ in cis], color=(150, 110, 40), marker="dot")
                plt.plot(xs, [hi for _, hi in cis], color=(150, 110, 40), marker="dot", label="95% CI")
            plt.plot(xs, [0.0] + [self._value(t) for t in selected], color=SELECTED_COLOR, marker="hd",
                     label=f"{self.criterion} (c)")
        tolerance = self.tolerance_line()
        plt.hline(tolerance, color=TOLERANCE_COLOR)
        plt.title(f"{target}: {ylabel} vs sparsity · red: tolerance +{r.tolerance:.0%} ppl")
        top = max([t.sparsity for c in self.criteria for t in r.curve(target, c)] + [0.25])
        right = min(100, 25 * math.ceil(top * 4 - 1e-9))  # up to the largest measured sparsity, in 25% steps
        ticks = list(range(0, right + 1, 25 if right > 50 else 10))
        plt.xlim(0, right)
        plt.xticks(ticks, [f"{v}%" for v in ticks])
        plt.xlabel("sparsity")
        for t in selected:
            lo, hi = r.delta_ci(t)
            table.add_row(pct(t.sparsity, 0), num(t.delta_loss), f"{num(lo)}..{num(hi)}", pct(t.rel_ppl_increase),
                          human_count(t.pruned_params), num(t.predicted_delta))
        if not selected:
            reason = self._skip_reason(target, self.criterion) or "not measured in this run"
            table.add_row(Text(f"{self.criterion}: {reason}", style="italic"), "", "", "", "", "")
        plot.refresh()

    def _fill_histogram(self) -> None:
        r, target, crit = self.result, self.target, self.criterion
        plot = self.query_one("#hist-plot", PlotextPlot)
        note = self.query_one("#hist-note", Static)
        plt = plot.plt
        plt.clear_figure()
        if target is None or crit is None:
            note.update(Text("no finished trials yet", style="italic"))
            plot.refresh()
            return
        dist = (r.saliency.get("distributions", {}).get(target, {}).get(crit) if r is not None else None)
        if not dist:
            reason = self._skip_reason(target, crit) or "no score distribution saved for it"
            note.update(Text(f"{crit} on {target}: {reason}", style="italic"))
            plot.refresh()
            return
        hist = dist["log10_hist"]
        counts, edges = hist["counts"], hist["edges"]
        centers = [(a + b) / 2 for a, b in pairwise(edges)]
        q = dist.get("quantiles", {})
        note.update(Text.assemble((f"{crit}", "bold #ffaa00"), (" scores of ", "dim"), (f"{target}", "bold"),
                                  ((f"  n={dist.get('n', sum(counts)):,}  median {q.get('median', 0):.3g}"
                                    f"  p05 {q.get('p05', 0):.3g}  p95 {q.get('p95', 0):.3g}"), "dim")))
        if centers:
            plt.bar(centers, counts, color=SELECTED_COLOR, width=0.8)
            lo, hi = edges[0], edges[-1]
            ticks = [lo + (hi - lo) * i / 4 for i in range(5)]
            plt.xticks(ticks, [f"{v:.1f}" for v in ticks])
        plt.xlabel("log10 |score|")
        plt.title("score histogram")
        plot.refresh()

    def _fill_heatmap(self) -> None:
        r = self.result
        table = self.query_one("#heat-table", DataTable)
        note = self.query_one("#heat-note", Static)
        table.clear(columns=True)
        if r is None:
            return
        layers, targets, matrix = r.heatmap()
        settings = r.record.settings
        if not layers:
            note.update(Text(r.layer_stage_note() or "no per-layer sweep in this run", style="italic"))
            return
        crit = settings.layer_criterion
        probe = settings.probe_sparsity
        if self.metric == "rel":
            matrix = r.heatmap("rel")[2]
        what = "ΔL" if self.metric == "delta" else "rel. ppl increase"
        note.update(Text.assemble((f"{what}", "bold"), (" when one layer's target is pruned to ", "dim"),
                                  (pct(probe, 0) if probe is not None else "?", "bold"), (" by ", "dim"),
                                  (crit, "bold"), ("  (green harmless → red sensitive)", "dim")))
        values = [abs(v) for row in matrix for v in row if v is not None]
        scale = max(values) if values else 0.0
        table.add_column("layer", key="layer")
        for g in targets:
            table.add_column(g.replace("unit:", "u:"), key=g)
        for layer, row in zip(layers, matrix):
            cells = [heat_cell(v, scale, pct(v, 1) if self.metric == "rel" and v is not None else None) for v in row]
            table.add_row(Text(str(layer), style="bold"), *cells, key=str(layer))

    def _fill_ranking(self, ranking) -> None:
        table = self.query_one("#rank-table", DataTable)
        table.clear()
        for row in ranking:
            table.add_row(str(row.rank), Text(row.target, style="bold"), row.best_criterion, num(row.auc),
                          f"{num(row.auc_ci[0])}..{num(row.auc_ci[1])}", pct(row.max_safe_sparsity, 0),
                          num(row.delta_at_50), human_count(row.params), key=row.target)

    def _fill_findings(self) -> None:
        r = self.result
        table = self.query_one("#find-table", DataTable)
        table.clear()
        if r is None:
            return
        self._findings = []
        try:
            findings = r.findings()
        except Exception as err:  # noqa: BLE001 - findings of a partial run may be incomputable
            table.add_row("", "", Text(f"findings unavailable: {err}", style="italic"), "")
            return
        self._findings = findings
        styles = {"holds": "bold green", "contradicted": "bold red", "inconclusive": "yellow", "not measured": "dim"}
        for f in findings:
            table.add_row(Text(f.verdict, style=styles[f.verdict]), f.windows_text, f.claim, f.detail, key=f.id)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id != "find-table" or self.result is None or event.row_key is None:
            return
        event.stop()
        finding = next((f for f in self._findings if f.id == event.row_key.value), None)
        if finding is not None:
            self.query_one("#find-detail", Static).update(Text.assemble(
                (finding.claim, "bold"), (f" — {finding.verdict}", "italic"),
                (f" on {finding.windows} windows\n" if finding.windows is not None else "\n", "italic"), (finding.detail, ""),
                (f"\nsource: {finding.source}", "dim")))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a ranking row: show that target's curves."""
        if event.data_table.id == "rank-table" and event.row_key.value in self.targets:
            event.stop()
            self.query_one("#sens-targets", OptionList).highlighted = self.targets.index(event.row_key.value)
            self.query_one("#sens-tabs", TabbedContent).active = "curves"
