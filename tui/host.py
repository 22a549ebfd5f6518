"""What the views use of the app that hosts them.

The app imports the views; the views name this interface instead of importing the app back, so the
TUI has no import cycle, not even one only a type checker follows.
"""

from __future__ import annotations

from typing import Any, Protocol


class AppHost(Protocol):
    active_tab: str
    result: Any  # ProfileResult | None
    analysis: Any  # AnalysisResult | None
    loaded: Any  # LoadedModel | None
    profiling: bool
    run_dir: Any
    focused: Any

    def notify(self, message: str, **kwargs: Any) -> None: ...
    def call_from_thread(self, callback: Any, *args: Any, **kwargs: Any) -> Any: ...
    def refresh_bindings(self) -> None: ...
    def ensure_loaded(self) -> Any: ...
    def fresh_model(self) -> Any: ...
    def model_name(self) -> str | None: ...
    def set_result(self, result: Any, *args: Any, **kwargs: Any) -> None: ...
    def show_error(self, title: str, message: str, hint: str | None = None, can_open: bool = False) -> None: ...
