"""The HTML building blocks every report section uses: table cells and sortable tables, chips, badges,
legends, cards and the section frame. Every string they are given is escaped here."""

from __future__ import annotations

from typing import Any, Iterable

from .svg import criterion_color, esc, fmt
from .values import sort_value


def chip(name: str, color: str) -> str:
    return f'<span class="chip" style="--c:{esc(color)}">{esc(name)}</span>'


def crit_chip(name: str, order: Iterable[str] = ()) -> str:
    return chip(name, criterion_color(name, list(order)))


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


def section(sid: str, title: str, intro: str, body: str) -> str:
    lead = f'<p class="lead">{intro}</p>' if intro else ""
    return (f'<section id="{sid}" aria-labelledby="{sid}-title"><h2 id="{sid}-title">{esc(title)}</h2>'
            f"{lead}{body}</section>")
