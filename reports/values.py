"""Generic, defensive rendering of arbitrary JSON values (plans, validations): HTML and Markdown.

Plans and validations come from other commands and may grow keys; anything this module does not
recognise is still shown, as key/value tables, and every string is escaped.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .svg import esc, fmt

MAX_LIST = 24  # scalars shown inline before "… N more"
MAX_ROWS = 200  # rows of a list-of-objects table
MAX_DEPTH = 4


def is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def scalar_text(v: Any) -> str:
    if isinstance(v, float):
        return fmt(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    return fmt(v) if v is None or isinstance(v, bool) else str(v)


def sort_value(v: Any) -> str | None:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, (int, float)):
        return repr(float(v)) if math.isfinite(v) else ("1e308" if v > 0 else "-1e308")
    return None


def json_safe(value: Any) -> Any:
    """A copy that ``json.dumps`` writes as strict JSON (non-finite floats become strings)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def script_json(value: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``</``, ``<!--`` or ``]]>``."""
    text = json.dumps(json_safe(value), ensure_ascii=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def compact_layers(layers: Any) -> str:
    if layers is None or layers == "all":
        return "all"
    if isinstance(layers, int):
        return str(layers)
    if not isinstance(layers, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
        return str(layers)
    xs = sorted(set(layers))
    if not xs:
        return "none"
    runs, start, prev = [], xs[0], xs[0]
    for x in xs[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        runs.append(str(start) if start == prev else f"{start}–{prev}")
        if x is not None:
            start = prev = x
    return ", ".join(runs)


# ---------------------------------------------------------------------- HTML
def scalar_html(v: Any) -> str:
    if isinstance(v, bool):
        return f'<span class="badge {"ok" if v else "bad"}">{"yes" if v else "no"}</span>'
    if v is None:
        return '<span class="muted">–</span>'
    if isinstance(v, str) and len(v) > 300:
        return f'<span class="long">{esc(v)}</span>'
    return esc(scalar_text(v))


def value_html(v: Any, depth: int = 0) -> str:
    if is_scalar(v):
        return scalar_html(v)
    if depth >= MAX_DEPTH:
        return f"<code>{esc(json.dumps(json_safe(v))[:2000])}</code>"
    if isinstance(v, (list, tuple)):
        if not v:
            return '<span class="muted">none</span>'
        if all(is_scalar(x) for x in v):
            shown = ", ".join(esc(scalar_text(x)) for x in v[:MAX_LIST])
            more = f' <span class="muted">… {len(v) - MAX_LIST} more</span>' if len(v) > MAX_LIST else ""
            return shown + more
        if all(isinstance(x, dict) for x in v):
            return records_html(list(v), depth + 1)
        return "<ol>" + "".join(f"<li>{value_html(x, depth + 1)}</li>" for x in v[:MAX_ROWS]) + "</ol>"
    if isinstance(v, dict):
        if not v:
            return '<span class="muted">empty</span>'
        if len(v) > 1 and all(isinstance(x, dict) and x and all(is_scalar(y) for y in x.values()) for x in v.values()):
            return matrix_html(v)
        return kv_html(v, depth + 1)
    return esc(str(v))


# Words for the keys plan and validation files use; any other key shows with spaces for underscores.
KEY_LABELS = {
    "schema_version": "file format version", "kind": "file kind", "tool_version": "written by ssm-profile",
    "created": "created", "target": "reduce", "ratio": "fraction to remove", "absolute": "amount to remove",
    "max_ppl_increase": "perplexity tolerance", "scope": "share of", "delta_loss": "loss increase ΔL",
    "rel_ppl_increase": "perplexity increase", "params_removed": "parameters removed",
    "flops_removed": "FLOPs per token removed", "state_bytes_removed": "state bytes removed",
    "scope_total": "total the share is of", "reduction_ratio": "share removed",
    "reduction_ratio_model": "share of the whole model removed", "bytes_on_disk": "weights on disk",
    "within_tolerance": "within tolerance", "backoff_steps": "back-off steps", "fingerprint": "weights fingerprint",
    "tokens_per_second": "tokens per second", "latency_ms": "latency (ms)", "lm_eval": "lm-eval scores",
    "lm_eval_paired": "lm-eval paired comparison",
}


def human_key(key: Any) -> str:
    key = str(key)
    return KEY_LABELS.get(key, key.replace("_", " "))


def key_html(key: Any) -> str:
    """A key in words, with the file's own key as its tooltip (to find it in the JSON)."""
    label = human_key(key)
    return esc(label) if label == str(key) else f'<span data-tip="{esc(key)}">{esc(label)}</span>'


def kv_html(d: dict[str, Any], depth: int = 0, cls: str = "kv") -> str:
    rows = "".join(f"<tr><th>{key_html(k)}</th><td>{value_html(v, depth)}</td></tr>" for k, v in d.items())
    return f'<table class="{cls}"><tbody>{rows}</tbody></table>'


def _columns(records: list[dict[str, Any]]) -> list[str]:
    cols: dict[str, None] = {}
    for r in records:
        for k in r:
            cols.setdefault(str(k), None)
    return list(cols)


def records_html(records: list[dict[str, Any]], depth: int = 0) -> str:
    cols = _columns(records)
    head = "".join(f'<th>{key_html(c)}</th>' for c in cols)
    body = []
    for r in records[:MAX_ROWS]:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append(_cell(v, value_html(v, depth)))
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = (f'<p class="note">{len(records) - MAX_ROWS} more rows not shown.</p>' if len(records) > MAX_ROWS else "")
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>{more}'


def _cell(value: Any, inner: str) -> str:
    """One ``<td>``; numeric values carry their sort key so the report's tables sort by number."""
    key = sort_value(value)
    attr = f' data-v="{esc(key)}" class="num"' if key is not None else ""
    return f"<td{attr}>{inner}</td>"


def matrix_html(d: dict[str, dict[str, Any]]) -> str:
    """{row: {col: scalar}} as one table (e.g. lm-eval {task: {metric: value}})."""
    cols = _columns(list(d.values()))
    head = '<th></th>' + "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = []
    for name, row in d.items():
        cells = []
        for c in cols:
            v = row.get(c)
            cells.append(_cell(v, scalar_html(v) if c in row else ""))
        body.append(f"<tr><th>{esc(name)}</th>{''.join(cells)}</tr>")
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


# ---------------------------------------------------------------------- before / after pairs
_PAIR = re.compile(r"^(?:(before|after|base|dense|pruned)_(.+)|(.+?)_(before|after|base|dense|pruned))$")
_BEFORE = {"before", "base", "dense", "baseline", "original", "reference"}
_AFTER = {"after", "pruned", "compressed"}


def _side(name: str) -> str | None:
    name = name.lower()
    return "before" if name in _BEFORE else "after" if name in _AFTER else None


def comparisons(d: dict[str, Any]) -> tuple[list[tuple[str, Any, Any]], set[str]]:
    """(metric, before, after) rows found in ``d`` in any common shape, and the keys they used.

    Shapes: ``{"before": {...}, "after": {...}}``; ``{"metric": {"before": x, "after": y}}``;
    ``{"metric_before": x, "metric_after": y}`` (also dense/pruned, before_/after_ prefixes).
    """
    rows: list[tuple[str, Any, Any]] = []
    used: set[str] = set()
    sides = {_side(k): k for k, v in d.items() if _side(k) and isinstance(v, dict)}
    if "before" in sides and "after" in sides:
        b, a = d[sides["before"]], d[sides["after"]]
        for k in dict.fromkeys([*b, *a]):
            if is_scalar(b.get(k)) and is_scalar(a.get(k)):
                rows.append((str(k), b.get(k), a.get(k)))
        used |= {sides["before"], sides["after"]}
    for k, v in d.items():
        if k in used or not isinstance(v, dict):
            continue
        inner = {_side(x): x for x in v if _side(x)}
        if "before" in inner and "after" in inner and is_scalar(v[inner["before"]]) and is_scalar(v[inner["after"]]):
            rows.append((str(k), v[inner["before"]], v[inner["after"]]))
            used.add(k)
    pairs: dict[str, dict[str, str]] = {}
    for k, v in d.items():
        if k in used or not is_scalar(v):
            continue
        m = _PAIR.match(str(k))
        if m:
            side, metric = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
            pairs.setdefault(metric, {})[_side(side) or side] = k
    for metric, keys in pairs.items():
        if "before" in keys and "after" in keys:
            rows.append((metric, d[keys["before"]], d[keys["after"]]))
            used |= {keys["before"], keys["after"]}
    return rows, used


def split_comparisons(d: dict[str, Any], depth: int = 3, prefix: tuple[str, ...] = ()
                      ) -> tuple[list[tuple[tuple[str, ...], Any, Any]], dict[str, Any]]:
    """Every numeric before/after pair in ``d`` (down to ``depth`` levels), labelled by its key path,
    and what is left of ``d`` once those pairs are taken out (empty containers dropped)."""
    rows, used = comparisons(d)
    if not numeric_pairs(rows):
        rows, used = [], set()
    found = [((*prefix, m), b, a) for m, b, a in rows]
    rest: dict[str, Any] = {}
    for k, v in d.items():
        if k in used:
            continue
        if isinstance(v, dict) and depth > 0:
            sub, left = split_comparisons(v, depth - 1, (*prefix, str(k)))
            found += sub
            if left or not sub:
                rest[k] = left if sub else v
        else:
            rest[k] = v
    return found, rest


def numeric_pairs(rows: list[tuple[str, Any, Any]]) -> bool:
    """Whether any (metric, before, after) row compares numbers (else a plain table reads better)."""
    return any(isinstance(b, (int, float)) and not isinstance(b, bool) and isinstance(a, (int, float))
               and not isinstance(a, bool) for _, b, a in rows)


def change_text(before: Any, after: Any) -> str:
    if isinstance(before, bool) or isinstance(after, bool):
        return ""
    if isinstance(before, (int, float)) and isinstance(after, (int, float)):
        if not (math.isfinite(before) and math.isfinite(after)):
            return ""
        diff = after - before
        rel = f" ({diff / before:+.1%})" if before else ""
        sign = "+" if diff > 0 else ""
        return f"{sign}{fmt(float(diff))}{rel}"
    return ""


def comparison_html(rows: list[tuple[str, Any, Any]], raw_labels: bool = False) -> str:
    body = "".join(
        f'<tr><th>{m if raw_labels else esc(m)}</th><td class="num">{scalar_html(b)}</td>'
        f'<td class="num">{scalar_html(a)}</td><td class="num">{esc(change_text(b, a))}</td></tr>' for m, b, a in rows)
    return ('<table class="compare"><thead><tr><th>metric</th><th class="num">before</th><th class="num">after</th>'
            f'<th class="num">change</th></tr></thead><tbody>{body}</tbody></table>')


# ---------------------------------------------------------------------- Markdown
def md_escape(v: Any) -> str:
    """Text safe in a Markdown table cell: HTML escaped, pipes escaped, one line."""
    text = scalar_text(v) if is_scalar(v) else json.dumps(json_safe(v))
    if len(text) > 400:
        text = text[:400] + "…"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    for ch in "*[]":  # emphasis and links; intraword underscores (in_proj) are literal in CommonMark
        text = text.replace(ch, "\\" + ch)
    return " ".join(text.split())


def md_table(headers: list[str], rows: list[list[Any]], align: list[str] | None = None) -> str:
    align = align or ["l"] * len(headers)
    out = ["| " + " | ".join(md_escape(h) for h in headers) + " |",
           "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    out += ["| " + " | ".join(md_escape(c) if not isinstance(c, _Raw) else c.text for c in r) + " |" for r in rows]
    return "\n".join(out)


class _Raw:
    """Markdown cell content that is already escaped."""

    def __init__(self, text: str):
        self.text = text


def md_value_lines(d: dict[str, Any], depth: int = 0) -> list[str]:
    """A dict as nested bullet points (generic fallback for Markdown)."""
    out = []
    pad = "  " * depth
    for k, v in d.items():
        if isinstance(v, (dict, list)) and not v:
            out.append(f"{pad}- **{md_escape(k)}**: none")
        elif is_scalar(v):
            out.append(f"{pad}- **{md_escape(k)}**: {md_escape(v)}")
        elif isinstance(v, dict) and depth < MAX_DEPTH:
            out.append(f"{pad}- **{md_escape(k)}**:")
            out += md_value_lines(v, depth + 1)
        elif isinstance(v, list) and all(is_scalar(x) for x in v):
            more = f" … {len(v) - MAX_LIST} more" if len(v) > MAX_LIST else ""
            shown = ", ".join(md_escape(x) for x in v[:MAX_LIST]) + more
            out.append(f"{pad}- **{md_escape(k)}**: {shown}")
        else:
            out.append(f"{pad}- **{md_escape(k)}**: {md_escape(v)}")
    return out
