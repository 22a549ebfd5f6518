"""Small value renderers shared by the report's sections: scalars, layer ranges, label/value tables,
Markdown cells, and the page's embedded JSON. Every string is escaped."""

from __future__ import annotations

import json
import math
from typing import Any

from .svg import esc, fmt



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


def kv_html(d: dict[str, Any], cls: str = "kv") -> str:
    """Labels (already in words) and scalar values, as a two-column table."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{scalar_html(v)}</td></tr>" for k, v in d.items())
    return f'<table class="{cls}"><tbody>{rows}</tbody></table>'


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
