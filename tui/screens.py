"""Modal screens: key-binding help and error messages."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static

HELP_SECTIONS: list[tuple[str, list[tuple[str, str]]]] = [
    ("Everywhere", [
        ("1 … 5", "Anatomy · Sensitivity · Profile · Plan · Apply tabs"),
        ("tab / shift+tab", "move focus between panes and fields"),
        ("? or F1", "this help"),
        ("ctrl+p", "command palette"),
        ("q / ctrl+q", "quit (a running profile stops after its current trial)"),
    ]),
    ("Anatomy", [
        ("↑ ↓", "move in the tree"),
        ("→ / ←", "expand / collapse (← on a leaf: go to the parent)"),
        ("enter / space", "expand or collapse the node"),
        ("shift+↑ ↓", "previous / next sibling"),
    ]),
    ("Sensitivity", [
        ("c / C", "next / previous criterion"),
        ("m", "metric: ΔL ↔ relative perplexity increase"),
        ("t / T", "next / previous target (group or unit kind)"),
        ("v", "next view: curves · scores · heatmap · ranking · findings"),
    ]),
    ("Profile", [
        ("r", "start profiling the opened model with the form's settings"),
        ("x", "cancel (finished trials stay in the run directory; tick resume to continue)"),
    ]),
    ("Plan", [
        ("(typing)", ("re-solved as you change target, ratio (empty: as much as the tolerance allows) "
                      "or tolerance")),
        ("e", "export the plan as JSON to the path in the form"),
        ("a", "go to Apply with this plan"),
    ]),
    ("Apply", [
        ("r", "apply the plan to the model, save it and validate it"),
    ]),
]


class HelpScreen(ModalScreen[None]):
    """Key bindings, grouped by tab."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark,f1", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for i, (section, rows) in enumerate(HELP_SECTIONS):
            if i:
                table.add_row("", "")
            table.add_row(f"[reverse] {section} [/reverse]", "")
            for key, what in rows:
                table.add_row(key, what)
        with Vertical(id="help-box", classes="dialog"):
            yield Static("ssm-profile · keys", classes="dialog-title")
            with VerticalScroll(id="help-scroll"):
                yield Static(table, id="help-table")
            yield Static("escape closes", classes="dialog-hint")

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)


class ErrorScreen(ModalScreen[None]):
    """An error the user can act on, in words, instead of a traceback."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter", "dismiss", "Close"),
                                             Binding("q", "app.quit", "Quit")]

    def __init__(self, title: str, message: str, hint: str | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.message = message
        self.hint = hint

    def compose(self) -> ComposeResult:
        with Vertical(id="error-box", classes="dialog"):
            yield Static(self.title_text, id="error-title", classes="dialog-title")
            with VerticalScroll(id="error-scroll"):
                yield Static(self.message, id="error-message", markup=False)
                if self.hint:
                    yield Static(self.hint, id="error-hint", classes="dialog-hint", markup=False)
            yield Button("Close", id="error-close", variant="error", compact=True)
            yield Static("escape closes · q quits", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one("#error-close", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(None)

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)
