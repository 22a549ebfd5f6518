"""The report's profile sections: overview, anatomy, saliency, sensitivity, ranking and findings."""

from __future__ import annotations

import math
from typing import Any

from ssm_profile.base.fmt import agreement_text, human_bytes, human_count

from .facts import Facts
from .html_elements import Cell, cards, chip, crit_chip, legend, num, section, table, txt
from .svg import (
    Dot, Point, Segment, Series, Strip, color_scale_legend, criterion_color, esc, finite, fmt, fmt_pct, group_color,
    heatmap, histogram, line_panel, scatter, stacked_rows, strips, thin,
)
from .values import compact_layers, scalar_html


# ---------------------------------------------------------------------- 1 header
def header_section(facts: Facts) -> str:
    r = facts.result
    items = facts.header_items()
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items if k != "Model")
    glance = []
    if facts.ranking:
        top, low = facts.ranking[0], facts.ranking[-1]
        glance.append(("Most sensitive", top.target, f"AUC ΔL {fmt(top.auc, 3)} ({top.best_criterion})"))
        glance.append(("Least sensitive", low.target, f"AUC ΔL {fmt(low.auc, 3)} ({low.best_criterion})"))
    measured = [f for f in facts.findings if f.verdict != "not measured"]
    unmeasured = len(facts.findings) - len(measured)
    inconclusive = sum(1 for f in measured if f.verdict == "inconclusive")
    glance.append(("Literature findings", f"{sum(1 for f in measured if f.verdict == 'holds')} of {len(measured)} hold",
                   ", ".join(part for part in (f"{inconclusive} inconclusive" if inconclusive else "",
                                               f"{unmeasured} not measured" if unmeasured else "") if part)))
    totals = r.analysis.totals
    if totals.parameters:
        glance.append(("Parameters", human_count(totals.parameters), f"SSM mixers {totals.ssm_share:.0%}"))
    glance.append(("Dense perplexity", fmt(r.dense_perplexity, 4), f"loss {r.dense_loss:.4f}"))
    skipped = facts.record.skipped
    skipped_html = ""
    if skipped:
        rows = [[txt(s.criterion), txt(s.target), txt(s.reason)] for s in skipped]
        headers = [("criterion", "", False), ("target", "", False), ("reason", "", False)]
        skipped_html = (f"<details><summary>{len(rows)} criterion/target pairs were not applicable and skipped"
                        f"</summary>{table(headers, rows)}</details>")
    body = f"<h2 id=\"header-title\">Overview</h2>{cards(glance)}<dl class=\"facts\">{dl}</dl>{skipped_html}"
    return f'<section id="header" aria-labelledby="header-title">{body}</section>'


# ---------------------------------------------------------------------- 2 anatomy
def anatomy_section(facts: Facts) -> str:
    a = facts.result.analysis
    totals = a.totals
    parts = [cards([
        ("SSM parameters", human_count(totals.ssm_parameters), f"{totals.ssm_share:.1%} of all"),
        ("FLOPs per token", human_count(totals.flops_per_token),
         f"SSM mixers {human_count(totals.ssm_flops_per_token)}"),
        ("Recurrent state", human_bytes(totals.state_bytes_per_sequence), "per sequence"),
        ("Layers", str(a.model.num_ssm_layers or len(a.layers())), f"of {a.model.num_layers or '?'}"),
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


_DELTA_LABEL = {"gated_delta": "Gated DeltaNet (per value head)",
                "kda": "Kimi delta attention (per head and key channel)"}


def dynamics_block(facts: Facts) -> str:
    dyn = facts.result.analysis.dynamics
    if not dyn:
        return "<h3>SSM dynamics</h3><p class=\"note\">No SSM mixer dynamics in this run.</p>"
    strip_rows = []
    for d in dyn:
        per = d.horizon_per_channel or d.horizon_per_state
        what = {"mamba2": "heads", "gated_delta": "value heads", "kda": "head key channels"}.get(d.mixer_kind,
                                                                                                  "channels")
        q = d.horizon
        tip = (f"layer {d.layer} ({d.mixer_kind}) memory horizon, tokens\nmin {fmt(q.get('min'))}, "
               f"p05 {fmt(q.get('p05'))}, median {fmt(q.get('median'))}, p95 {fmt(q.get('p95'))}, "
               f"max {fmt(q.get('max'))}"
               f"\ndots: {len(per)} {what}" + (" (thinned to 96 order statistics)" if len(per) > 96 else ""))
        strip_rows.append(Strip(f"layer {d.layer}", q, thin(per), tip))
    kinds = {d.mixer_kind for d in dyn}
    unit = {"mamba2": "head", "gated_delta": "value head", "kda": "key channel of a head"}.get(
        kinds.pop(), "channel (median over states)") \
        if len(kinds) == 1 else "channel (median over states)"
    gated_note = "".join(f" {label} layers: {esc(text)}." for label, text in
                         {_DELTA_LABEL.get(d.mixer_kind, d.mixer_kind): d.assumes for d in dyn if d.assumes}.items())
    parts = ["<h3>SSM dynamics</h3>",
             '<p class="note">Memory horizon = 1 / (softplus(dt bias) · |A|) tokens: the time constant of each decay '
             f"exp(dt·A) at the bias time step.{gated_note} Box: 5–95% of all states; whiskers: min–max; bar: median; "
             f"dots: per {esc(unit)}.</p>",
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

        limits, reference = decision_scale(facts)
        by_crit = []
        for c in crits:
            series = [Series(tsid[t], t, group_color(t, targets), pts(r.curve(t, c)), dashed=t.startswith("unit:"))
                      for t in targets if r.curve(t, c)]
            if series:
                by_crit.append(f'<div class="panel"><h4>{crit_chip(c, crits)}</h4>' + line_panel(
                    series, label=f"loss increase vs sparsity, {c}", x_label="sparsity", y_label="ΔL (nats/token)",
                    x_max=x_max, y_limits=limits, reference=reference) + "</div>")
        by_target = []
        for t in targets:
            series = [Series(csid[c], c, criterion_color(c, crits), pts(r.curve(t, c)), dashed=c == "random")
                      for c in crits if r.curve(t, c)]
            if series:
                by_target.append(f'<div class="panel"><h4>{chip(t, group_color(t, targets))}</h4>' + line_panel(
                    series, label=f"loss increase vs sparsity, {t}", x_label="sparsity", y_label="ΔL (nats/token)",
                    x_max=x_max, y_limits=limits, reference=reference) + "</div>")
        tkeys = [(tsid[t], t, group_color(t, targets), t.startswith("unit:")) for t in targets]
        ckeys = [(csid[c], c, criterion_color(c, crits), c == "random") for c in crits]
        parts.append(
            '<h3>Loss vs sparsity</h3><p class="note">Held-out loss increase ΔL when one target is pruned in every '
            "layer at rising sparsity; shaded: paired bootstrap 95% interval over evaluation windows. Dashed: "
            f"structured units (or the random baseline). Red dashed line: the tolerance (perplexity +"
            f"{r.tolerance:.0%} = ΔL {fmt(reference[0], 3)}). Every panel shares one y scale, zoomed on the region "
            f"that decides (up to {fmt(limits[1], 3)} nats); points above it sit on the top edge as ▲.</p>"
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


ZOOM = 4.0  # the curves show ΔL up to this many times the tolerance's ΔL


def decision_scale(facts: Facts) -> tuple[tuple[float, float], tuple[float, str]]:
    """The y range every loss-vs-sparsity panel shares, and the tolerance line in ΔL.

    A perplexity tolerance ``tol`` is ``ΔL = ln(1 + tol)`` nats; the range stops at ``ZOOM`` times
    that so the region below the tolerance is not flattened by one catastrophic point.
    """
    tol_dl = math.log1p(facts.result.tolerance)
    values = [v for t in facts.result.model_trials for v in (t.delta_loss, *facts.ci.get(t.key, ())) if finite(v)]
    top = min(max(values + [tol_dl * 1.25]), ZOOM * tol_dl)
    bottom = max(min(values + [0.0]), -top / 4)
    return (bottom, top), (tol_dl, f"tolerance +{facts.result.tolerance:.0%} ppl")


def _sentence(text: str) -> str:
    """``text`` with a capital first letter and a full stop (``str.capitalize`` would lower ΔL)."""
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def layer_heatmap_block(facts: Facts) -> str:
    layers, targets, matrix = facts.heatmap
    why = facts.result.layer_stage_note()
    if not layers:
        return f'<h3>Per-layer sensitivity</h3><p class="note">{esc(_sentence(why or "no per-layer sweep in this run"))}</p>'
    settings = facts.record.settings
    info = {(layer, row["target"]): row for row in facts.layer_ranking  # a row may cover a block of layers
            for layer in range(row["layer"], row["layer"] + row.get("span", 1))}
    crit = settings.layer_criterion
    probe = settings.probe_sparsity

    def tip(i, j, v):
        row = info.get((layers[i], targets[j]))
        if row is None or v is None:
            return f"layer {layers[i]} · {targets[j]}: not measured"
        block = f" (block {row['layers']}, ΔL shared)" if row.get("span", 1) > 1 else ""
        return (f"layer {layers[i]} · {targets[j]} · {row['criterion']} {row['sparsity']:.0%}{block}\nΔL {fmt(v)} (95% CI "
                f"{fmt(row['ci_low'])} … {fmt(row['ci_high'])})\nperplexity {row['rel_ppl_increase']:+.2%}\n"
                f"rank {row['rank']} of {len(facts.layer_ranking)}")

    many = len(layers) > 24
    vals = [abs(v) for row in matrix for v in row if finite(v)]
    limit = max(vals) if vals else 1.0
    cell_w = max(56, min(84, 760 // max(len(targets), 1)))
    svg = heatmap([f"layer {layer}" for layer in layers], list(targets), [list(row) for row in matrix],
                  label="per-layer sensitivity heatmap", limit=limit, cell_w=cell_w,
                  cell_h=14 if many else 26, value_fmt=lambda v: fmt(v, 2), tip=tip, show_values=not many)
    rows = [[num(row["rank"]), num(row["layer"], row.get("layers", str(row["layer"]))), Cell(chip(row["target"], group_color(row["target"], targets)),
                                                       row["target"]),
             num(row["delta_loss"]), num(row["ci_low"], f"{fmt(row['ci_low'])} … {fmt(row['ci_high'])}"),
             num(row["rel_ppl_increase"], f"{row['rel_ppl_increase']:+.2%}"), num(row["params"], f"{row['params']:,}")]
            for row in facts.layer_ranking]
    probe_text = f"{probe:.0%}" if isinstance(probe, (int, float)) else "?"
    return (f'<h3>Per-layer sensitivity</h3><p class="note">ΔL when one target is pruned in one layer only, with '
            f"{esc(crit)} at {esc(probe_text)} sparsity. Red: loss rises; blue: loss falls.</p>"
            + (f'<p class="note">{esc(_sentence(why))}</p>' if why else "")
            + f'<figure class="fig">{svg}{color_scale_legend(limit, "ΔL")}</figure>'
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
        label = agreement_text(c, a or {})
        keys.append((sid[c], label, criterion_color(c, crits), False))
    rows = [[Cell(crit_chip(c, crits), c), num(facts.agreement.get(c, {}).get("spearman")),
             _interval(facts.agreement.get(c, {})), num(facts.agreement.get(c, {}).get("n")),
             num(facts.agreement.get(c, {}).get("ratio")),
             _interval(facts.agreement.get(c, {}), "ratio_low", "ratio_high")] for c in pcrits]
    return ('<h3>Predicted vs measured ΔL</h3><p class="note">Each dot is one model-wide trial: the loss increase the '
            "criterion's second-order model predicts against the measured one. Spearman ρ: does the prediction at "
            "least order the trials correctly? (computed over at least 3 trials per criterion) Measured/predicted: "
            "the median ratio of the measured ΔL to the predicted one, with a distribution-free 95% interval; "
            "below 1 the criterion over-predicts the loss by that factor.</p>"
            f'<figure class="fig">{legend(keys)}<div class="side-by-side">'
            + scatter(dots, label="predicted vs measured loss increase", x_label="predicted ΔL",
                      y_label="measured ΔL") + table([("criterion", "", False), ("Spearman ρ", "", True),
                                                      ("95% CI", "Fisher z, se = sqrt(1.06/(n-3))", False),
                                                      ("trials", "", True),
                                                      ("measured / predicted", "median ratio of measured to predicted ΔL",
                                                       True),
                                                      ("95% CI", "order statistics of the ratios (binomial ½)", False)],
                                                     rows, sortable=False)
            + "</div></figure>")


def _interval(agreement: dict, low_key: str = "low", high_key: str = "high") -> Cell:
    low, high = agreement.get(low_key), agreement.get(high_key)
    return txt(f"{low:.2f} … {high:.2f}" if finite(low) and finite(high) else "n/a")


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


VERDICT_ORDER = {"holds": 3, "inconclusive": 2, "contradicted": 1, "not measured": 0}  # sort key of the column
VERDICT_CLASS = {"holds": "ok", "contradicted": "bad", "inconclusive": "na", "not measured": "na"}


def verdict_badge(verdict: str) -> str:
    return f'<span class="badge {VERDICT_CLASS[verdict]}">{esc(verdict)}</span>'


def findings_section(facts: Facts) -> str:
    rows = []
    for f in facts.findings:
        numbers = ", ".join(f"{k} {fmt(v)}" for k, v in (f.numbers or {}).items())
        rows.append([Cell(f"<strong>{esc(f.claim)}</strong><div class=\"small muted\">{esc(f.source)}</div>", f.claim),
                     Cell(verdict_badge(f.verdict), str(VERDICT_ORDER[f.verdict])),
                     Cell(esc(f.windows_text), str(f.windows or 0)), txt(f.detail),
                     Cell(f'<span class="mono small">{esc(numbers)}</span>')])
    body = table([("finding", "claim and source", False), ("on this model", "", False),
                  ("windows", "evaluation windows its intervals rest on", True), ("measured", "", False),
                  ("numbers", "", False)], rows, tid="findings-table")
    return section("findings", "Literature findings",
                   "Claims from the pruning literature, each checked on this model by a rule fixed in advance: a "
                   "claim holds when the paired 95% interval (Student's t over the evaluation windows its trials "
                   "share, n − 1 degrees of freedom) of the difference it predicts excludes 0 in the claimed "
                   "direction, is contradicted when it excludes 0 the other way, and is inconclusive otherwise. "
                   "A finding on few windows (an adaptive sweep's screens) has a wide interval, not a falsely "
                   "narrow one.", body)
