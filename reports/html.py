"""The self-contained HTML report: one file, inline CSS/SVG/JS, no network, prints cleanly.

Security: every string from the run, plan or validation is escaped (``html.escape``); the
embedded run metadata is JSON with ``<``, ``>`` and ``&`` written as ``\\u003c`` etc.; a
Content-Security-Policy forbids every network load and allows only this page's own two scripts
(by hash), so even an unescaped ``<script>`` could not run.
"""

from __future__ import annotations

import base64
import hashlib
import math
from datetime import datetime, timezone
from importlib import resources
from typing import Any, Iterable

from .facts import Facts, plan_mismatch
from .svg import (
    Dot, Point, Segment, Series, Strip, color_scale_legend, criterion_color, esc, finite, fmt, fmt_pct, group_color,
    heatmap, histogram, human_bytes, human_count, line_panel, scatter, stacked_rows, strips, thin,
)
from .values import (
    change_text, compact_layers, comparison_html, is_scalar, kv_html, records_html, scalar_html, script_json,
    sort_value, split_comparisons, value_html,
)

SECTIONS = [("header", "Overview"), ("anatomy", "Anatomy"), ("saliency", "Saliency"), ("sensitivity", "Sensitivity"),
            ("ranking", "Ranking"), ("findings", "Findings"), ("plan", "Plan"), ("validation", "Validation")]


def render_html(result, plan: dict[str, Any] | None = None, validation: dict[str, Any] | None = None) -> str:
    """The report page for ``result`` (a ProfileResult), with plan/validation sections when given."""
    return render_facts(Facts.of(result), plan, validation)


# ---------------------------------------------------------------------- small HTML helpers
def _asset(name: str) -> str:
    return resources.files("ssm_profile.reports").joinpath("assets", name).read_text(encoding="utf-8")


def chip(name: str, color: str) -> str:
    return f'<span class="chip" style="--c:{esc(color)}">{esc(name)}</span>'


def crit_chip(name: str, order: Iterable[str] = ()) -> str:
    return chip(name, criterion_color(name, list(order)))


def badge(holds: bool | None) -> str:
    if holds is None:
        return '<span class="badge na">not measured</span>'
    return '<span class="badge ok">holds</span>' if holds else '<span class="badge bad">does not hold</span>'


class Cell:
    def __init__(self, html: str, v: Any = None, num: bool = False, cls: str = ""):
        self.html, self.v, self.num, self.cls = html, v, num, cls

    def render(self) -> str:
        classes = " ".join(c for c in ("num" if self.num else "", self.cls) if c)
        attrs = f' class="{classes}"' if classes else ""
        if self.v is not None:
            attrs += f' data-v="{esc(self.v)}"'
        return f"<td{attrs}>{self.html}</td>"


def num(v: Any, text: str | None = None) -> Cell:
    sv = sort_value(v) if v is not None else ""
    return Cell(esc(text if text is not None else fmt(v)), sv if sv is not None else "", num=True)


def txt(v: Any) -> Cell:
    return Cell(esc("" if v is None else v))


def table(headers: list[tuple[str, str, bool]], rows: list[list[Cell]], *, sortable: bool = True, cls: str = "",
          tid: str | None = None) -> str:
    """headers: (label, tooltip, numeric)."""
    ths = []
    for label, tip, numeric in headers:
        attrs = ' class="num"' if numeric else ""
        if tip:
            attrs += f' data-tip="{esc(tip)}"'
        if sortable:
            attrs += ' tabindex="0"'
        ths.append(f"<th{attrs}>{esc(label)}</th>")
    body = "".join("<tr>" + "".join(c.render() for c in r) + "</tr>" for r in rows)
    classes = " ".join(c for c in ("sortable" if sortable else "", cls) if c)
    ident = f' id="{esc(tid)}"' if tid else ""
    return (f'<div class="table-wrap"><table{ident} class="{classes}"><thead><tr>{"".join(ths)}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def legend(items: list[tuple[str, str, str, bool]], toggle: bool = True) -> str:
    """items: (series id, label, colour, dashed). Buttons toggle the series within the figure."""
    out = ['<div class="legend">']
    for sid, label, color, dashed in items:
        style = f"--c:{esc(color)}"
        cls = "key dashed" if dashed else "key"
        if toggle:
            out.append(f'<button type="button" class="{cls}" style="{style}" data-toggle="{esc(sid)}" '
                       f'aria-pressed="true">{esc(label)}</button>')
        else:
            out.append(f'<span class="{cls}" style="{style}">{esc(label)}</span>')
    out.append("</div>")
    return "".join(out)


def cards(items: list[tuple[str, str, str]]) -> str:
    """(label, value, sub-text)."""
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div>'
        + (f'<div class="s">{esc(s)}</div>' if s else "") + "</div>" for k, v, s in items) + "</div>"


# ---------------------------------------------------------------------- page
def render_facts(facts: Facts, plan: dict[str, Any] | None = None, validation: dict[str, Any] | None = None) -> str:
    from ssm_profile import __version__

    name = facts.model_name()
    sections = [header_section(facts), anatomy_section(facts), saliency_section(facts), sensitivity_section(facts),
                ranking_section(facts), findings_section(facts)]
    present = {"header", "anatomy", "saliency", "sensitivity", "ranking", "findings"}
    if plan is not None:
        sections.append(plan_section(facts, plan))
        present.add("plan")
    if validation is not None:
        sections.append(validation_section(validation))
        present.add("validation")
    nav = "".join(f'<a href="#{sid}">{esc(label)}</a>' for sid, label in SECTIONS if sid in present)
    guard = _asset("guard.js").strip()
    script = _asset("report.js").strip()
    css = _asset("report.css")
    csp = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src 'none'; connect-src 'none'; "
           f"base-uri 'none'; form-action 'none'; script-src {_hash(guard)} {_hash(script)}")
    assert not set('"<>&') & set(csp)  # written unescaped below: only our own constants and base64 hashes
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta = {"report": {"generator": f"ssm-profile {__version__}", "generated": now}, "run": facts.meta}
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="ssm-profile {esc(__version__)}">
<meta name="referrer" content="no-referrer">
<title>{esc(name)} · ssm-profile report</title>
<link rel="icon" href="data:,">
<style>{css}</style>
<script>{guard}</script>
</head>
<body>
<nav class="topbar" aria-label="sections"><div class="inner"><span class="brand">ssm-profile</span>
<span class="model-name">{esc(name)}</span><span class="links">{nav}</span></div></nav>
<main>
{"".join(sections)}
</main>
<footer><div class="inner">Generated by ssm-profile {esc(__version__)} on {esc(now)} from the run's stored results.
Self-contained: this page loads nothing from the network. Hover points and cells for values; click legend entries to
hide or show series and table headers to sort.</div></footer>
<pre id="js-errors" hidden></pre>
<script type="application/json" id="run-meta">{script_json(meta)}</script>
<script>{script}</script>
</body>
</html>
"""


def _hash(script: str) -> str:
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def section(sid: str, title: str, intro: str, body: str) -> str:
    lead = f'<p class="lead">{intro}</p>' if intro else ""
    return (f'<section id="{sid}" aria-labelledby="{sid}-title"><h2 id="{sid}-title">{esc(title)}</h2>'
            f"{lead}{body}</section>")


# ---------------------------------------------------------------------- 1 header
def header_section(facts: Facts) -> str:
    r = facts.result
    name = facts.model_name()
    items = facts.header_items()
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items if k != "Model")
    glance = []
    if facts.ranking:
        top, low = facts.ranking[0], facts.ranking[-1]
        glance.append(("Most sensitive", top.target, f"AUC ΔL {fmt(top.auc, 3)} ({top.best_criterion})"))
        glance.append(("Least sensitive", low.target, f"AUC ΔL {fmt(low.auc, 3)} ({low.best_criterion})"))
    measured = [f for f in facts.findings if f.holds is not None]
    unmeasured = len(facts.findings) - len(measured)
    glance.append(("Literature findings", f"{sum(1 for f in measured if f.holds)} of {len(measured)} hold",
                   f"{unmeasured} not measured" if unmeasured else ""))
    totals = r.analysis.totals or {}
    if totals.get("parameters"):
        glance.append(("Parameters", human_count(totals["parameters"]),
                       f"SSM mixers {totals.get('ssm_share', 0):.0%}"))
    glance.append(("Dense perplexity", fmt(r.dense_perplexity, 4), f"loss {r.dense_loss:.4f}"))
    skipped = facts.meta.get("skipped") or []
    skipped_html = ""
    if skipped:
        rows = [[txt(s.get("criterion")), txt(s.get("target")), txt(s.get("reason"))] for s in skipped
                if isinstance(s, dict)]
        headers = [("criterion", "", False), ("target", "", False), ("reason", "", False)]
        skipped_html = (f"<details><summary>{len(rows)} criterion/target pairs were not applicable and skipped"
                        f"</summary>{table(headers, rows)}</details>")
    body = (f'<p class="eyebrow">Profile report</p><h1 class="title">{esc(name)}</h1>'
            f"{cards(glance)}<dl class=\"facts\">{dl}</dl>{skipped_html}")
    return f'<section id="header" aria-label="overview">{body}</section>'


# ---------------------------------------------------------------------- 2 anatomy
def anatomy_section(facts: Facts) -> str:
    a = facts.result.analysis
    totals = a.totals or {}
    parts = [cards([
        ("SSM parameters", human_count(totals.get("ssm_parameters", 0)), f"{totals.get('ssm_share', 0):.1%} of all"),
        ("FLOPs per token", human_count(totals.get("flops_per_token", 0)),
         f"SSM mixers {human_count(totals.get('ssm_flops_per_token', 0))}"),
        ("Recurrent state", human_bytes(totals.get("state_bytes_per_sequence", 0)), "per sequence"),
        ("Layers", str(a.model.get("num_ssm_layers", len(a.layers()))), f"of {a.model.get('num_layers', '?')}"),
    ])]
    # Stacked composition bars per layer.
    order = list(dict.fromkeys(g.group for g in a.groups if g.layer is not None))
    outside = [g for g in a.groups if g.layer is None]
    sid = {g: f"g{i}" for i, g in enumerate(dict.fromkeys([*order, *(g.group for g in outside)]))}
    rows = []
    for layer in sorted({g.layer for g in a.groups if g.layer is not None}):
        groups = [g for g in a.groups if g.layer == layer]
        total = sum(g.numel for g in groups) or 1
        segs = [Segment(g.numel, group_color(g.group, order),
                        f"layer {layer} · {g.group}{' (block)' if g.scope == 'block' else ''}\n{g.numel:,} parameters\n"
                        f"{g.numel / total:.1%} of the layer, {g.share:.2%} of the model", sid[g.group])
                for g in groups]
        rows.append((f"layer {layer}", segs, f"{sum(g.share for g in groups):.1%} of model"))
    if outside:
        total = sum(g.numel for g in outside) or 1
        rows.append(("outside", [Segment(g.numel, group_color(g.group, order),
                                         f"{g.group}\n{g.numel:,} parameters\n{g.share:.2%} of the model", sid[g.group])
                                 for g in outside], f"{sum(g.share for g in outside):.1%} of model"))
    keys = [(sid[g], g, group_color(g, order), False) for g in sid]
    parts.append('<h3>Parameter share per layer</h3><p class="note">Each bar is one layer\'s parameters split by '
                 "group (100% = the layer); the right column gives the layer's share of the whole model.</p>")
    bars = stacked_rows(rows, label="parameter share per group and layer", row_h=20 if len(rows) < 40 else 14)
    parts.append(f'<figure class="fig">{legend(keys)}{bars}</figure>')
    # Group summary.
    summary = a.summary_by_group()
    parts.append("<h3>Parameter groups</h3>")
    parts.append(table(
        [("group", "", False), ("scope", "mixer: SSM parameter group; block: other parts of a layer; model: outside "
                                 "the layers", False), ("layers", "", True), ("parameters", "", True),
         ("share", "of all parameters", True), ("FLOPs / token", "recurrent inference; multiply-add = 2", True),
         ("state / sequence", "recurrent-state bytes charged to the group", True)],
        [[Cell(chip(s["group"], group_color(s["group"].replace(" (block)", ""), order)), s["group"]), txt(s["scope"]),
          num(s["layers"]), num(s["numel"], f"{s['numel']:,}"), num(s["share"], fmt_pct(s["share"], 1)),
          num(s["flops_per_token"], human_count(s["flops_per_token"])),
          num(s["state_bytes"], human_bytes(s["state_bytes"]) if s["state_bytes"] else "–")] for s in summary]))
    per_layer = [[num(g.layer if g.layer is not None else -1, "–" if g.layer is None else str(g.layer)),
                  txt(g.group), txt(g.scope), txt(" + ".join("×".join(map(str, s)) for s in g.shapes)),
                  num(g.numel, f"{g.numel:,}"), num(g.share, fmt_pct(g.share, 2)),
                  num(g.flops_per_token, human_count(g.flops_per_token)), num(g.stats.l2_norm), num(g.stats.std),
                  num(g.stats.kurtosis), num(g.stats.outlier_fraction, fmt_pct(g.stats.outlier_fraction, 2))]
                 for g in a.groups]
    parts.append("<details><summary>Every group in every layer, with weight statistics</summary>" + table(
        [("layer", "", True), ("group", "", False), ("scope", "", False), ("shapes", "", False),
         ("parameters", "", True), ("share", "", True), ("FLOPs / token", "", True), ("L2 norm", "", True),
         ("std", "", True),
         ("excess kurtosis", "0 for a Gaussian", True), ("outliers", "weights beyond 4 standard deviations", True)],
        per_layer) + "</details>")
    parts.append(units_block(facts))
    parts.append(dynamics_block(facts))
    return section("anatomy", "Anatomy",
                   "What the model's SSM parameter groups are and cost, read from the weights alone.", "".join(parts))


def units_block(facts: Facts) -> str:
    a = facts.result.analysis
    merged: dict[tuple, dict[str, Any]] = {}
    for u in a.units:
        key = (u.kind, u.count, u.params_per_unit, tuple(u.tensors), u.prunable)
        row = merged.setdefault(key, {"unit": u, "layers": []})
        if u.layer is not None:
            row["layers"].append(u.layer)
    rows = []
    for row in merged.values():
        u = row["unit"]
        rows.append([Cell(chip(u.kind, group_color(f"unit:{u.kind}")), u.kind),
                     txt(compact_layers(row["layers"]) if u.layer is not None else "model"),
                     num(u.count), num(u.params_per_unit, f"{u.params_per_unit:,}"),
                     Cell(scalar_html(bool(u.prunable)), "1" if u.prunable else "0"),
                     txt(u.description), Cell(f'<span class="mono small">{esc(", ".join(u.tensors))}</span>'),
                     txt(u.stock_config)])
    return ("<h3>Coupled units</h3><p class=\"note\">Structural units whose rows and columns must be removed together "
            "across tensors; pruning them shrinks the model rather than zeroing weights.</p>" + table(
                [("unit", "", False), ("layers", "", False), ("count", "units per layer", True),
                 ("params / unit", "", True), ("prunable", "", False), ("what it is", "", False),
                 ("tensors", "", False), ("saved as", "how a uniform cut can be saved in the stock config", False)],
                rows))


def dynamics_block(facts: Facts) -> str:
    dyn = facts.result.analysis.dynamics
    if not dyn:
        return "<h3>SSM dynamics</h3><p class=\"note\">No SSM mixer dynamics in this run.</p>"
    strip_rows = []
    for d in dyn:
        per = d.horizon_per_channel or d.horizon_per_state
        what = "heads" if d.mixer_kind == "mamba2" else "channels"
        q = d.horizon
        tip = (f"layer {d.layer} ({d.mixer_kind}) memory horizon, tokens\nmin {fmt(q.get('min'))}, "
               f"p05 {fmt(q.get('p05'))}, median {fmt(q.get('median'))}, p95 {fmt(q.get('p95'))}, "
               f"max {fmt(q.get('max'))}"
               f"\ndots: {len(per)} {what}" + (" (thinned to 96 order statistics)" if len(per) > 96 else ""))
        strip_rows.append(Strip(f"layer {d.layer}", q, thin(per), tip))
    unit = "head" if all(d.mixer_kind == "mamba2" for d in dyn) else "channel (median over states)"
    parts = ["<h3>SSM dynamics</h3>",
             '<p class="note">Memory horizon = 1 / (softplus(dt bias) · |A|) tokens: the time constant of each decay '
             f"exp(dt·A) at the bias time step. Box: 5–95% of all states; whiskers: min–max; bar: median; dots: per "
             f"{esc(unit)}.</p>",
             '<figure class="fig">' + strips(strip_rows, label="memory horizon per layer",
                                             x_label="memory horizon (tokens, log scale)",
                                             row_h=30 if len(strip_rows) < 30 else 16) + "</figure>"]
    per_state = [d for d in dyn if d.horizon_per_state]
    if per_state:
        n = len(per_state)
        series = []
        for k, d in enumerate(per_state):
            color = _ramp(k / max(n - 1, 1))
            pts = [Point(i, h, tip=f"layer {d.layer} · state {i}: median horizon {fmt(h)} tokens")
                   for i, h in enumerate(d.horizon_per_state) if finite(h) and 0 < h < 1e12]
            series.append(Series(f"l{d.layer}", f"layer {d.layer}", color, pts))
        xmax = max(len(d.horizon_per_state) for d in per_state) - 1
        parts.append('<h3 class="sub">Horizon per state index</h3><p class="note">Mamba-1: median over channels of '
                     "each state n's horizon (S4D-real initialisation orders states from long to short memory).</p>")
        parts.append(f'<figure class="fig">{legend([(s.sid, s.label, s.color, False) for s in series])}'
                     + line_panel(series, label="horizon per state", x_label="state index n",
                                  y_label="median horizon (tokens)", x_max=max(xmax, 1), width=560, height=260,
                                  x_pct=False, y_log=True) + "</figure>")
    def spread(q: dict[str, float], lo: str, hi: str) -> Cell:
        return num(q.get("median"), f"{fmt(q.get('median'), 3)} [{fmt(q.get(lo), 3)}, {fmt(q.get(hi), 3)}]")

    rows = [[num(d.layer), txt(d.mixer_kind), spread(d.decay_rate, "p05", "p95"), spread(d.dt, "min", "max"),
             spread(d.horizon, "p05", "p95"), num(d.horizon.get("max"), fmt(d.horizon.get("max"), 3))] for d in dyn]
    parts.append(table([("layer", "", True), ("mixer", "", False),
                        ("decay rate |A|", "median [5%, 95%] of exp(A_log)", True),
                        ("time step dt", "median [min, max] of softplus(dt bias)", True),
                        ("horizon (tokens)", "median [5%, 95%]", True), ("longest horizon", "", True)], rows))
    return "".join(parts)


def _rho(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}".replace("-0.00", "0.00").replace("-", "−")


def _minus(v: float) -> str:
    return f"{v:.1f}".replace("-0.0", "0.0").replace("-", "−")


def _ramp(t: float) -> str:
    """Light-to-dark blue-violet ramp for ordered series (layers)."""
    stops = [(125, 190, 230), (59, 111, 182), (64, 40, 120)]
    seg = 0 if t <= 0.5 else 1
    u = t * 2 if t <= 0.5 else (t - 0.5) * 2
    c = [round(a + (b - a) * u) for a, b in zip(stops[seg], stops[seg + 1])]
    return "#%02x%02x%02x" % tuple(c)


# ---------------------------------------------------------------------- 3 saliency
def saliency_section(facts: Facts) -> str:
    sal = facts.result.saliency or {}
    dists = sal.get("distributions") or {}
    agree = sal.get("agreement") or {}
    order = facts.criteria()
    if not dists and not agree:
        return section("saliency", "Saliency", "", '<p class="note">This run stored no saliency summaries.</p>')
    crits = list(dict.fromkeys([*(c for c in order if any(c in d for d in dists.values())),
                                *(c for d in dists.values() for c in d)]))
    head = "".join(f'<th>{crit_chip(c, order)}</th>' for c in crits)
    body = []
    for target, per in dists.items():
        cells = []
        for c in crits:
            d = per.get(c) if isinstance(per, dict) else None
            if not isinstance(d, dict):
                cells.append('<td class="na">–</td>')
                continue
            h = d.get("log10_hist") or {}
            counts, edges = list(h.get("counts") or []), list(h.get("edges") or [])
            q = d.get("quantiles") or {}
            ok = len(edges) >= 2 and finite(edges[0]) and finite(edges[-1])
            rng = f"10^{edges[0]:.1f} … 10^{edges[-1]:.1f}" if ok else ""
            rng_html = (f"10<sup>{esc(_minus(edges[0]))}</sup> – 10<sup>{esc(_minus(edges[-1]))}</sup>" if ok else "")
            tip = (f"{target} · {c}: |score| distribution, log10 bins ({d.get('n', '?')} scores)\n"
                   f"min {fmt(q.get('min'))}, p05 {fmt(q.get('p05'))}, median {fmt(q.get('median'))}, "
                   f"p95 {fmt(q.get('p95'))}, max {fmt(q.get('max'))}" + (f"\nx axis: {rng}" if rng else ""))
            spark = histogram(counts, edges, criterion_color(c, order), label=f"{target} {c} score histogram", tip=tip)
            cells.append(f'<td class="spark-cell">{spark}<div class="range">{rng_html}</div></td>')
        body.append(f'<tr><th scope="row">{chip(target, group_color(target))}</th>{"".join(cells)}</tr>')
    parts = ['<h3>Score distributions</h3><p class="note">Histogram of log10 |score| of every weight or unit a '
             "criterion scores, per target (each cell has its own x range, shown below it). Wide, multi-modal "
             "distributions separate weights clearly; random scores are the uniform baseline.</p>",
             f'<div class="table-wrap"><table class="grid-table"><thead><tr><th></th>{head}</tr></thead>'
             f'<tbody>{"".join(body)}</tbody></table></div>']
    if agree:
        parts.append('<h3>Criteria agreement</h3><p class="note">Spearman rank correlation between criteria\'s '
                     "scores of the same weights/units (1: same order; 0: unrelated).</p>")
        tiles = []
        for target, d in agree.items():
            names = [str(c) for c in (d.get("criteria") or [])] if isinstance(d, dict) else []
            matrix = d.get("spearman") if isinstance(d, dict) else None
            if not names or not isinstance(matrix, list):
                continue
            mat = [[v if finite(v) else None for v in (row if isinstance(row, list) else [])][:len(names)]
                   for row in matrix[:len(names)]]
            mat = [row + [None] * (len(names) - len(row)) for row in mat]
            svg = heatmap(names, names, mat, label=f"criteria agreement on {target}", limit=1.0, cell_w=30, cell_h=22,
                          row_w=84, col_h=76, value_fmt=_rho,
                          tip=lambda i, j, v, n=names, t=target: f"{t}: ρ({n[i]}, {n[j]}) = "
                                                                 + ("n/a" if v is None else f"{v:.3f}"))
            tiles.append(f'<div class="tile"><h4>{chip(target, group_color(target))}</h4>{svg}</div>')
        parts.append(f'<div class="tiles">{"".join(tiles)}</div>{color_scale_legend(1.0, "Spearman ρ")}')
    return section("saliency", "Saliency", "How each criterion scores the weights and units of every group, before "
                   "anything is pruned.", "".join(parts))


# ---------------------------------------------------------------------- 4 sensitivity
def sensitivity_section(facts: Facts) -> str:
    r = facts.result
    crits = [c for c in facts.criteria() if any(t.criterion == c for t in r.model_trials)]
    targets = list(dict.fromkeys(t.target for t in r.model_trials))
    parts = []
    if r.model_trials:
        top = max(t.sparsity for t in r.model_trials)
        x_max = min(1.0, math.ceil(top * 4 - 1e-9) / 4) if top > 0.3 else math.ceil(top * 20 - 1e-9) / 20
        tsid = {t: f"t{i}" for i, t in enumerate(targets)}
        csid = {c: f"c{i}" for i, c in enumerate(crits)}

        def pts(curve):
            out = [Point(0.0, 0.0, 0.0, 0.0, "")]
            for t in curve:
                lo, hi = facts.ci.get(t.key, (t.delta_loss, t.delta_loss))
                pred = "" if t.predicted_delta is None else f"\npredicted ΔL {fmt(t.predicted_delta)}"
                out.append(Point(t.sparsity, t.delta_loss, lo, hi,
                                 f"{t.target} · {t.criterion} · {t.sparsity:.0%}\nΔL {fmt(t.delta_loss)} "
                                 f"(95% CI {fmt(lo)} … {fmt(hi)})\nperplexity {t.rel_ppl_increase:+.2%} "
                                 f"({fmt(t.perplexity)})\npruned {t.pruned_params:,} parameters{pred}"))
            return out

        by_crit = []
        for c in crits:
            series = [Series(tsid[t], t, group_color(t, targets), pts(r.curve(t, c)), dashed=t.startswith("unit:"))
                      for t in targets if r.curve(t, c)]
            if series:
                by_crit.append(f'<div class="panel"><h4>{crit_chip(c, crits)}</h4>' + line_panel(
                    series, label=f"loss increase vs sparsity, {c}", x_label="sparsity", y_label="ΔL (nats/token)",
                    x_max=x_max) + "</div>")
        by_target = []
        for t in targets:
            series = [Series(csid[c], c, criterion_color(c, crits), pts(r.curve(t, c)), dashed=c == "random")
                      for c in crits if r.curve(t, c)]
            if series:
                by_target.append(f'<div class="panel"><h4>{chip(t, group_color(t, targets))}</h4>' + line_panel(
                    series, label=f"loss increase vs sparsity, {t}", x_label="sparsity", y_label="ΔL (nats/token)",
                    x_max=x_max) + "</div>")
        tkeys = [(tsid[t], t, group_color(t, targets), t.startswith("unit:")) for t in targets]
        ckeys = [(csid[c], c, criterion_color(c, crits), c == "random") for c in crits]
        parts.append(
            '<h3>Loss vs sparsity</h3><p class="note">Held-out loss increase ΔL when one target is pruned in every '
            "layer at rising sparsity; shaded: paired bootstrap 95% interval over evaluation windows. Dashed: "
            "structured units (or the random baseline).</p>"
            '<div class="views"><div class="viewswitch" role="tablist">'
            '<button type="button" class="active" data-view="by-criterion" aria-selected="true">one panel per criterion'
            '</button><button type="button" data-view="by-target" aria-selected="false">one panel per target</button>'
            f'</div><div class="view fig" data-name="by-criterion">{legend(tkeys)}<div class="panels">'
            f'{"".join(by_crit)}</div></div><div class="view fig" data-name="by-target" hidden>{legend(ckeys)}'
            f'<div class="panels">{"".join(by_target)}</div></div></div>')
    else:
        parts.append('<p class="note">No model-wide trials in this run.</p>')
    parts.append(layer_heatmap_block(facts))
    parts.append(prediction_block(facts))
    return section("sensitivity", "Sensitivity", "Measured loss increase when pruning each target, with uncertainty.",
                   "".join(parts))


def layer_heatmap_block(facts: Facts) -> str:
    layers, targets, matrix = facts.heatmap
    if not layers:
        return '<h3>Per-layer sensitivity</h3><p class="note">No per-layer sweep in this run.</p>'
    settings = facts.meta.get("settings") or {}
    info = {(row["layer"], row["target"]): row for row in facts.layer_ranking}
    crit = settings.get("layer_criterion") or (facts.layer_ranking[0]["criterion"] if facts.layer_ranking else "?")
    probe = settings.get("probe_sparsity")
    if probe is None and facts.layer_ranking:
        probe = facts.layer_ranking[0]["sparsity"]

    def tip(i, j, v):
        row = info.get((layers[i], targets[j]))
        if row is None or v is None:
            return f"layer {layers[i]} · {targets[j]}: not measured"
        return (f"layer {layers[i]} · {targets[j]} · {row['criterion']} {row['sparsity']:.0%}\nΔL {fmt(v)} (95% CI "
                f"{fmt(row['ci_low'])} … {fmt(row['ci_high'])})\nperplexity {row['rel_ppl_increase']:+.2%}\n"
                f"rank {row['rank']} of {len(facts.layer_ranking)}")

    many = len(layers) > 24
    vals = [abs(v) for row in matrix for v in row if finite(v)]
    limit = max(vals) if vals else 1.0
    cell_w = max(56, min(84, 760 // max(len(targets), 1)))
    svg = heatmap([f"layer {layer}" for layer in layers], list(targets), [list(row) for row in matrix],
                  label="per-layer sensitivity heatmap", limit=limit, cell_w=cell_w,
                  cell_h=14 if many else 26, value_fmt=lambda v: fmt(v, 2), tip=tip, show_values=not many)
    rows = [[num(row["rank"]), num(row["layer"]), Cell(chip(row["target"], group_color(row["target"], targets)),
                                                       row["target"]),
             num(row["delta_loss"]), num(row["ci_low"], f"{fmt(row['ci_low'])} … {fmt(row['ci_high'])}"),
             num(row["rel_ppl_increase"], f"{row['rel_ppl_increase']:+.2%}"), num(row["params"], f"{row['params']:,}")]
            for row in facts.layer_ranking]
    probe_text = f"{probe:.0%}" if isinstance(probe, (int, float)) else "?"
    return (f'<h3>Per-layer sensitivity</h3><p class="note">ΔL when one target is pruned in one layer only, with '
            f"{esc(crit)} at {esc(probe_text)} sparsity. Red: loss rises; blue: loss falls.</p>"
            f'<figure class="fig">{svg}{color_scale_legend(limit, "ΔL")}</figure>'
            f"<details><summary>All {len(rows)} layer trials, most sensitive first</summary>" + table(
                [("#", "", True), ("layer", "", True), ("target", "", False), ("ΔL", "", True),
                 ("95% CI", "paired bootstrap over evaluation windows", True),
                 ("perplexity", "relative increase", True),
                 ("parameters", "held by the target in this layer", True)], rows) + "</details>")


def prediction_block(facts: Facts) -> str:
    r = facts.result
    crits = facts.criteria()
    trials = [t for t in r.model_trials if t.predicted_delta is not None]
    if not trials:
        return ('<h3>Predicted vs measured ΔL</h3><p class="note">No criterion in this run predicts the loss '
                "increase.</p>")
    pcrits = list(dict.fromkeys(t.criterion for t in trials))
    sid = {c: f"p{i}" for i, c in enumerate(pcrits)}
    dots = [Dot(t.predicted_delta, t.delta_loss, criterion_color(t.criterion, crits), sid[t.criterion],
                f"{t.target} · {t.criterion} · {t.sparsity:.0%}\npredicted ΔL {fmt(t.predicted_delta)}\n"
                f"measured ΔL {fmt(t.delta_loss)}") for t in trials]
    keys = []
    for c in pcrits:
        a = facts.agreement.get(c)
        label = f"{c}: ρ = {a['spearman']:.2f} (n={a['n']})" if a and finite(a.get("spearman")) else f"{c}: ρ n/a"
        keys.append((sid[c], label, criterion_color(c, crits), False))
    rows = [[Cell(crit_chip(c, crits), c), num(facts.agreement.get(c, {}).get("spearman")),
             num(facts.agreement.get(c, {}).get("n"))] for c in pcrits]
    return ('<h3>Predicted vs measured ΔL</h3><p class="note">Each dot is one model-wide trial: the loss increase the '
            "criterion's second-order model predicts against the measured one. Spearman ρ: does the prediction at "
            "least order the trials correctly? (computed over at least 3 trials per criterion)</p>"
            f'<figure class="fig">{legend(keys)}<div class="side-by-side">'
            + scatter(dots, label="predicted vs measured loss increase", x_label="predicted ΔL",
                      y_label="measured ΔL") + table([("criterion", "", False), ("Spearman ρ", "", True),
                                                      ("trials", "", True)], rows, sortable=False)
            + "</div></figure>")


# ---------------------------------------------------------------------- 5 ranking + findings
def ranking_section(facts: Facts) -> str:
    r = facts.result
    order = facts.criteria()
    rows = []
    for row in facts.ranking:
        rows.append([num(row.rank), Cell(chip(row.target, group_color(row.target)), row.target),
                     Cell(crit_chip(row.best_criterion, order), row.best_criterion), num(row.auc),
                     num(row.auc_ci[0], f"{fmt(row.auc_ci[0])} … {fmt(row.auc_ci[1])}"),
                     num(row.max_safe_sparsity, fmt_pct(row.max_safe_sparsity)),
                     num(row.delta_at_50 if row.delta_at_50 is not None else None),
                     num(row.params, f"{row.params:,}")])
    body = table(
        [("#", "", True), ("target", "parameter group or structural unit", False),
         ("best criterion", "the criterion with the smallest area under the ΔL curve", False),
         ("AUC ΔL", "area under ΔL(sparsity) from 0 to the largest measured sparsity", True),
         ("95% CI", "bootstrap over evaluation windows", True),
         (f"safe sparsity (≤{r.tolerance:.0%} ppl)", "largest measured sparsity whose perplexity increase, and every "
                                                     "lower one's, stays within the tolerance", True),
         ("ΔL @ 50%", "", True), ("parameters", "all layers", True)], rows, tid="ranking-table")
    if not rows:
        body = '<p class="note">No model-wide trials to rank.</p>'
    return section("ranking", "Sensitivity ranking",
                   "Targets from most to least sensitive (model-wide sweep, best criterion per target) — the same "
                   "ranking as <code>ssm-profile profile</code> prints. Click a header to sort.", body)


def findings_section(facts: Facts) -> str:
    rows = []
    for f in facts.findings:
        numbers = ", ".join(f"{k} {fmt(v)}" for k, v in (f.numbers or {}).items())
        rows.append([Cell(f"<strong>{esc(f.claim)}</strong><div class=\"small muted\">{esc(f.source)}</div>", f.claim),
                     Cell(badge(f.holds), {True: "2", False: "1", None: "0"}[f.holds]), txt(f.detail),
                     Cell(f'<span class="mono small">{esc(numbers)}</span>')])
    body = table([("finding", "claim and source", False), ("on this model", "", False), ("measured", "", False),
                  ("numbers", "", False)], rows, tid="findings-table")
    return section("findings", "Literature findings",
                   "Claims from the pruning literature, each checked on this model by a rule fixed in advance.", body)


# ---------------------------------------------------------------------- 6 plan
_ACTION_COLUMNS = ["target", "layers", "structure", "criterion", "sparsity", "unit_kind", "unit_indices",
                   "params_removed", "flops_removed", "state_bytes_removed", "predicted_delta_loss", "execution",
                   "note"]


def plan_section(facts: Facts, plan: dict[str, Any]) -> str:
    parts = []
    warning = plan_mismatch(plan, facts.result)
    if warning:
        parts.append(f'<p class="warning">{esc(warning)}</p>')
    predicted = plan.get("predicted") if isinstance(plan.get("predicted"), dict) else {}
    measured = plan.get("measured") if isinstance(plan.get("measured"), dict) else None
    objective = plan.get("objective") if isinstance(plan.get("objective"), dict) else None
    summary = []
    if "reduction_ratio" in predicted and finite(predicted["reduction_ratio"]):
        summary.append(("Parameter reduction", fmt_pct(predicted["reduction_ratio"], 1), "predicted"))
    if "params_removed" in predicted and finite(predicted["params_removed"]):
        summary.append(("Parameters removed", human_count(predicted["params_removed"]), "predicted"))
    if "delta_loss" in predicted and finite(predicted["delta_loss"]):
        summary.append(("ΔL", fmt(predicted["delta_loss"]), "predicted"))
    if "rel_ppl_increase" in predicted and finite(predicted["rel_ppl_increase"]):
        summary.append(("Perplexity", f"{predicted['rel_ppl_increase']:+.1%}", "predicted"))
    if measured:
        for key, label in (("rel_ppl_increase", "Perplexity"), ("delta_loss", "ΔL")):
            if finite(measured.get(key)):
                v = measured[key]
                summary.append((label, f"{v:+.1%}" if key == "rel_ppl_increase" else fmt(v), "measured"))
    if summary:
        parts.append(cards(summary))
    if objective:
        parts.append("<h3>Objective</h3>" + kv_html(objective))
    actions = plan.get("actions")
    if isinstance(actions, list):
        parts.append(f"<h3>Actions ({len(actions)})</h3>")
        parts.append(actions_table([a for a in actions if isinstance(a, dict)], facts.criteria()))
        bad = [a for a in actions if not isinstance(a, dict)]
        if bad:
            parts.append(f'<p class="note">{len(bad)} malformed action entries (not objects) were skipped.</p>')
    if predicted or measured:
        keys = list(dict.fromkeys([*predicted, *(measured or {})]))
        rows = [(k, predicted.get(k), (measured or {}).get(k)) for k in keys
                if is_scalar(predicted.get(k)) and is_scalar((measured or {}).get(k))]
        if rows:
            body = "".join(f'<tr><th>{esc(k)}</th><td class="num">{scalar_html(p)}</td><td class="num">'
                           f'{scalar_html(m) if measured is not None else "<span class=muted>not measured</span>"}</td>'
                           f'<td class="num">{esc(change_text(p, m)) if measured is not None else ""}</td></tr>'
                           for k, p, m in rows)
            parts.append('<h3>Predicted vs measured</h3><table class="compare"><thead><tr><th></th>'
                         '<th class="num">predicted</th><th class="num">measured</th><th class="num">difference</th>'
                         f"</tr></thead><tbody>{body}</tbody></table>")
        nested = {k: v for k, v in {**predicted, **(measured or {})}.items() if not is_scalar(v)}
        if nested:
            parts.append("<details><summary>More predicted/measured details</summary>" + kv_html(nested) + "</details>")
    notes = plan.get("notes")
    if isinstance(notes, list) and notes:
        items = "".join(f"<li>{value_html(n)}</li>" for n in notes)
        parts.append(f'<h3>Notes</h3><ul class="notes">{items}</ul>')
    elif isinstance(notes, str) and notes:
        parts.append(f"<h3>Notes</h3><p>{esc(notes)}</p>")
    rest = {k: v for k, v in plan.items() if k not in ("objective", "actions", "predicted", "measured", "notes")}
    if rest:
        parts.append(f'<details class="more"><summary>Plan details ({esc(", ".join(rest))})</summary>'
                     f"{kv_html(rest)}</details>")
    return section("plan", "Pruning plan", "What the plan removes, and what it predicts (and, once applied, measured).",
                   "".join(parts) or '<p class="note">The plan file is empty.</p>')


def actions_table(actions: list[dict[str, Any]], crits: list[str]) -> str:
    if not actions:
        return '<p class="note">The plan has no actions.</p>'
    extra = [k for k in dict.fromkeys(k for a in actions for k in a) if k not in _ACTION_COLUMNS]
    cols = [c for c in _ACTION_COLUMNS if any(c in a for a in actions)] + extra
    labels = {"unit_indices": "units", "params_removed": "params removed", "flops_removed": "FLOPs removed",
              "state_bytes_removed": "state bytes removed", "predicted_delta_loss": "predicted ΔL",
              "unit_kind": "unit kind"}
    numeric = {"sparsity", "params_removed", "flops_removed", "state_bytes_removed", "predicted_delta_loss"}
    rows = []
    for i, a in enumerate(actions, 1):
        cells = [num(i)]
        for c in cols:
            v = a.get(c)
            if c == "criterion" and isinstance(v, str):
                cells.append(Cell(crit_chip(v, crits), v))
            elif c == "target" and isinstance(v, str):
                cells.append(Cell(chip(v, group_color(v)), v))
            elif c == "layers":
                cells.append(Cell(esc(compact_layers(v)), None))
            elif c == "sparsity" and finite(v):
                cells.append(num(v, fmt_pct(v, 1)))
            elif c == "unit_indices":
                cells.append(_indices_cell(v))
            elif c == "state_bytes_removed" and finite(v):
                cells.append(num(v, human_bytes(v) if v else "0"))
            elif c in ("params_removed", "flops_removed") and finite(v):
                cells.append(num(v, human_count(v) if abs(v) >= 1e4 else f"{v:,}"))
            elif c in numeric and finite(v):
                cells.append(num(v, f"{v:,}" if isinstance(v, int) else fmt(v)))
            else:
                sv = sort_value(v) if is_scalar(v) else None
                cells.append(Cell(value_html(v, 2), sv, num=sv is not None))
        rows.append(cells)
    headers = [("#", "", True)] + [(labels.get(c, c), "", c in numeric) for c in cols]
    return table(headers, rows, tid="plan-actions")


def _indices_cell(v: Any) -> Cell:
    if v is None:
        return Cell('<span class="muted">–</span>', "")
    if isinstance(v, dict):  # e.g. {layer: [indices]}
        count = sum(len(x) for x in v.values() if isinstance(x, list))
        tip = "\n".join(f"layer {k}: {_short_list(x)}" for k, x in list(v.items())[:32])
        return Cell(f'<span data-tip="{esc(tip)}">{count:,} units</span>', str(count), num=True)
    if isinstance(v, list):
        flat = [x for x in v if not isinstance(x, list)] + [y for x in v if isinstance(x, list) for y in x]
        return Cell(f'<span data-tip="{esc(_short_list(v))}">{len(flat):,} units</span>', str(len(flat)), num=True)
    return Cell(esc(v))


def _short_list(v: Any, limit: int = 40) -> str:
    if not isinstance(v, list):
        return str(v)
    shown = ", ".join(str(x) for x in v[:limit])
    return shown + (f", … ({len(v) - limit} more)" if len(v) > limit else "")


# ---------------------------------------------------------------------- 7 validation
def validation_section(validation: dict[str, Any]) -> str:
    parts = []
    verdict_key = next((k for k in ("within_tolerance", "passed", "ok") if isinstance(validation.get(k), bool)), None)
    if verdict_key:
        ok = validation[verdict_key]
        parts.append(f'<p class="verdict {"ok" if ok else "bad"}"><span class="badge {"ok" if ok else "bad"}">'
                     f'{"within tolerance" if ok else "outside tolerance"}</span> {esc(verdict_key)} = '
                     f'{"true" if ok else "false"}</p>')
    rows, rest = split_comparisons({k: v for k, v in validation.items() if k != verdict_key})
    if rows:
        parts.append("<h3>Before and after</h3>" + comparison_html(
            [(_path_html(path), b, a) for path, b, a in rows], raw_labels=True))
    scalars = {k: v for k, v in rest.items() if is_scalar(v)}
    if scalars:
        parts.append("<h3>Summary</h3>" + kv_html(scalars))
    nested = {k: v for k, v in rest.items() if not is_scalar(v)}
    if nested:
        body = "".join(f"<h4>{esc(k.replace('_', ' '))}</h4>" + (records_html(v) if isinstance(v, list) and v and all(
            isinstance(x, dict) for x in v) else value_html(v, 0)) for k, v in nested.items())
        parts.append(f'<details class="more"><summary>All other fields ({len(nested)})</summary>{body}</details>')
    return section("validation", "Validation", "Measurements of the pruned model against the dense one.",
                   "".join(parts) or '<p class="note">The validation file is empty.</p>')


def _path_html(path: tuple[str, ...]) -> str:
    *group, name = path
    prefix = "".join(f'<span class="muted">{esc(g)} · </span>' for g in group)
    return prefix + esc(name)
