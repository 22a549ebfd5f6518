"""Small widget variants: tick boxes whose state reads without colour ([x] / [ ])."""

from __future__ import annotations

from rich.segment import Segment
from textual.content import Content
from textual.strip import Strip
from textual.widgets import Checkbox, SelectionList
from textual.widgets.selection_list import SelectionType
from textual.widgets.option_list import OptionDoesNotExist

TICKED, UNTICKED = "x", " "


class Tick(Checkbox):
    """A checkbox drawn ``[x] label`` / ``[ ] label``: ticked and unticked differ by a glyph, not only a colour."""

    @property
    def _button(self) -> Content:
        style = self.get_visual_style("toggle--button")
        return Content.assemble(("[", ""), (TICKED if self.value else UNTICKED, style), ("] ", ""))


class TickList(SelectionList[SelectionType]):
    """A selection list whose boxes show ``[x]`` / ``[ ]``."""

    def render_line(self, y: int) -> Strip:
        line = super().render_line(y)
        segments = list(line)
        try:
            selection = self.get_option_at_index(self.scroll_offset[1] + y)
        except OptionDoesNotExist:
            return line
        if len(segments) < 3:
            return line
        left, inner, right = segments[:3]
        glyph = TICKED if selection.value in self._selected else UNTICKED
        plain = segments[3].style if len(segments) > 3 else None
        return Strip([Segment("[", plain), Segment(glyph, inner.style), Segment("]", plain), *segments[3:]],
                     line.cell_length)


class WorkerView:
    """Mixin of a view whose long work runs in a thread worker: its button (id ``RUN_ID``) calls
    ``start``, a one-line message (the Static with id ``MESSAGE_ID``), and reports from the worker
    thread that are dropped once the app has closed."""

    MESSAGE_ID = ""
    RUN_ID = ""  # the button that starts the work (calls ``start``)

    def on_button_pressed(self, event) -> None:
        if event.button.id == self.RUN_ID:
            event.stop()
            self.start()  # type: ignore[attr-defined]

    def message(self, text: str, style: str = "") -> None:
        from rich.text import Text
        from textual.widgets import Static

        from .format import in_ui_terms

        self.query_one(f"#{self.MESSAGE_ID}", Static).update(Text(in_ui_terms(text), style=style))  # type: ignore[attr-defined]

    def _call(self, fn, *args) -> None:
        try:
            self.app.call_from_thread(fn, *args)  # type: ignore[attr-defined]
        except RuntimeError:  # the app closed while the worker ran
            pass

    def _progress_from_thread(self, done: int, total: int, label: str) -> None:
        self._call(self._progress, done, total, label)  # type: ignore[attr-defined]
