"""Modal screens: key-binding help, error messages and "open a model or run"."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static

HELP_SECTIONS: list[tuple[str, list[tuple[str, str]]]] = [
    ("Everywhere", [
        ("1 … 5", "the tabs: Anatomy, Sensitivity … Apply"),
        ("o", "open another model or run directory"),
        ("tab / shift+tab", "move focus between panes and fields"),
        ("? / F1 · ctrl+p", "this help · command palette (every action)"),
        ("q / ctrl+q", "quit (a profile stops after its trial)"),
    ]),
    ("Anatomy", [
        ("↑ ↓ · shift+↑ ↓", "move in the tree · previous / next sibling"),
        ("→ ← · enter", "expand / collapse (← on a leaf: parent)"),
    ]),
    ("Sensitivity", [
        ("c / C", "next / previous criterion"),
        ("m", "metric: ΔL ↔ relative perplexity increase"),
        ("t / T", "next / previous target (group, unit kind)"),
        ("v", "next view (curves, scores, heatmap, …)"),
    ]),
    ("Profile", [
        ("r", "profile the opened model as set here"),
        ("x", "cancel (done trials stay; tick resume)"),
    ]),
    ("Plan", [
        ("(typing)", "re-solved as you edit (empty ratio: max)"),
        ("e / enter", "export the plan as JSON to the form's path"),
        ("a", "go to Apply with this plan"),
    ]),
    ("Apply", [
        ("r", "prune a copy, save it and validate it"),
    ]),
]


class HelpScreen(ModalScreen[None]):
    """Key bindings, grouped by tab."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark,f1", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        # One line per key, the tab in its own column: fits an 80x24 terminal without scrolling.
        table = Table.grid(padding=(0, 1))
        table.add_column(no_wrap=True)
        table.add_column(style="bold", no_wrap=True)
        table.add_column(no_wrap=True, overflow="ellipsis")
        for section, rows in HELP_SECTIONS:
            for i, (key, what) in enumerate(rows):
                table.add_row(Text(f" {section} ", style="reverse") if i == 0 else "", key, what)
        with Vertical(id="help-box", classes="dialog"):
            yield Static("ssm-profile · keys", classes="dialog-title")
            with VerticalScroll(id="help-scroll"):
                yield Static(table, id="help-table")
            yield Static("escape closes · ↑ ↓ scroll if cut", classes="dialog-hint")

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)


class ErrorScreen(ModalScreen[str | None]):
    """An error the user can act on, in words, instead of a traceback."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter", "dismiss", "Close"),
                                             Binding("q", "app.quit", "Quit"), Binding("o", "open", "Open")]

    def __init__(self, title: str, message: str, hint: str | None = None, can_open: bool = False) -> None:
        super().__init__()
        self.title_text = title
        self.message = message
        self.hint = hint
        self.can_open = can_open  # the app has nothing open: offer to open another model or run

    def compose(self) -> ComposeResult:
        with Vertical(id="error-box", classes="dialog"):
            yield Static(self.title_text, id="error-title", classes="dialog-title")
            with VerticalScroll(id="error-scroll"):
                yield Static(self.message, id="error-message", markup=False)
                if self.hint:
                    yield Static(self.hint, id="error-hint", classes="dialog-hint", markup=False)
            with Horizontal(id="error-buttons"):
                if self.can_open:
                    yield Button("Open another… (o)", id="error-open", variant="primary", compact=True)
                yield Button("Close", id="error-close", variant="error", compact=True)
            yield Static("o opens another model or run · escape closes · q quits" if self.can_open
                         else "escape closes · q quits", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one("#error-close", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "error-open":
            self.action_open()
        else:
            self.dismiss(None)

    def action_open(self) -> None:
        """Close with "open": the app then asks which model or run to open."""
        self.dismiss("open" if self.can_open else None)

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)


class OpenScreen(ModalScreen[str | None]):
    """Ask for a model (embedded name, alias, hub id, folder) or a run directory to open."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss", "Cancel")]

    def __init__(self, current: str = "") -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="open-box", classes="dialog"):
            yield Static("Open a model or a run directory", classes="dialog-title")
            yield Input(self.current, placeholder="tiny-mamba, state-spaces/mamba-130m-hf, ./my-model or runs/x",
                        id="open-target")
            yield Static("enter opens · escape cancels · `ssm-profile models` lists the embedded models",
                         classes="dialog-hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value.strip() or None)

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)
