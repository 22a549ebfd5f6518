"""The ssm-profile terminal UI: ``ssm-profile [MODEL | RUN_DIR]``.

The UI renders the library's results objects (``AnalysisResult``, ``ProfileResult``, plan and
pruning reports) and calls the same functions as the CLI (``load_model``, ``analyze``,
``profile_model``, ``make_plan``, ``apply_plan``); long work runs in thread workers.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Header, TabbedContent, TabPane

from ssm_profile.base.errors import SSMProfileError

from .anatomy import AnatomyView
from .plan_view import ApplyView, PlanView
from .profile_view import ProfileView
from .screens import ErrorScreen, HelpScreen, OpenScreen
from .sensitivity import SensitivityView

if TYPE_CHECKING:  # the TUI shows before torch loads
    from ssm_profile.profiling.record import RunRecord

TABS = ["anatomy", "sensitivity", "profile", "plan", "apply"]
CONTEXT_ACTIONS = {
    "cycle_criterion": {"sensitivity"}, "cycle_metric": {"sensitivity"}, "cycle_target": {"sensitivity"},
    "cycle_view": {"sensitivity"}, "run": {"profile", "apply"}, "cancel": {"profile"},
    "export_plan": {"plan"}, "goto_apply": {"plan"},
}


# (action, palette title, help) for the context actions; listed on the tabs where they apply.
PALETTE_ACTIONS = [
    ("cycle_criterion", "Next criterion (c)", "Sensitivity: show the next criterion's curve"),
    ("cycle_metric", "Switch metric (m)", "Sensitivity: ΔL or relative perplexity increase"),
    ("cycle_target", "Next target (t)", "Sensitivity: the next parameter group or unit kind"),
    ("cycle_view", "Next view (v)", "Sensitivity: curves, scores, heatmap, ranking, findings"),
    ("run", "Run (r)", "Profile: start profiling · Apply: prune, save and validate"),
    ("cancel", "Cancel profiling (x)", "Stop after the current trial"),
    ("export_plan", "Export plan (e)", "Write the plan as JSON to the path in the form"),
    ("goto_apply", "Apply this plan (a)", "Go to the Apply tab with this plan"),
]


def is_run_dir(path: str | None) -> bool:
    """A directory written by `ssm-profile profile` (complete or not), as opposed to a model."""
    if not path:
        return False
    p = Path(path).expanduser()
    if not p.is_dir():
        return False
    if (p / "run.json").is_file():
        return True
    return not (p / "config.json").exists() and any((p / f).exists() for f in ("trials.jsonl", "analysis.json"))


class SSMProfileApp(App[int]):
    """Tabs: Anatomy, Sensitivity, Profile, Plan, Apply."""

    CSS_PATH = "app.tcss"
    TITLE = "ssm-profile"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark,f1", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
        Binding("o", "open", "Open"),
        # The tab keys show once in the footer, as "1-5 Tabs" (each tab's label also starts with its key).
        *[Binding(str(i + 1), f"show_tab('{tab}')", "Tabs" if i == 0 else tab.title(), show=i == 0,
                  key_display="1-5" if i == 0 else None) for i, tab in enumerate(TABS)],
        Binding("c", "cycle_criterion(1)", "Criterion"),
        Binding("C", "cycle_criterion(-1)", "Criterion", show=False),
        Binding("m", "cycle_metric", "Metric"),
        Binding("t", "cycle_target(1)", "Target"),
        Binding("T", "cycle_target(-1)", "Target", show=False),
        Binding("v", "cycle_view", "View"),
        Binding("r", "run", "Run"),
        Binding("x", "cancel", "Cancel"),
        Binding("e", "export_plan", "Export"),
        Binding("a", "goto_apply", "Apply"),
    ]

    def __init__(self, model: str | None = None, load_options: dict[str, Any] | None = None,
                 threads: int | None = None) -> None:
        super().__init__()
        self.target = model
        self.load_options = {k: v for k, v in (load_options or {}).items() if v is not None}
        self.threads = threads
        self.loaded = None  # ssm_profile.model.resolve.LoadedModel, once loaded
        self.analysis = None  # ssm_profile.model.analysis.AnalysisResult
        self.result = None  # ssm_profile.profiling.results.ProfileResult
        self.run_dir: Path | None = None
        self.run_record: RunRecord | None = None
        self.load_error: SSMProfileError | None = None
        self.opened_run = is_run_dir(model)
        self._model_lock = threading.Lock()

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Header(icon="≋")
        with TabbedContent(id="main", initial="anatomy"):
            with TabPane("1 Anatomy", id="anatomy"):
                yield AnatomyView(id="anatomy-view")
            with TabPane("2 Sensitivity", id="sensitivity"):
                yield SensitivityView(id="sensitivity-view")
            with TabPane("3 Profile", id="profile"):
                yield ProfileView(id="profile-view")
            with TabPane("4 Plan", id="plan"):
                yield PlanView(id="plan-view")
            with TabPane("5 Apply", id="apply"):
                yield ApplyView(id="apply-view")
        yield Footer()

    def on_mount(self) -> None:
        self._start_opening()

    def _start_opening(self) -> None:
        if self.opened_run:
            self.sub_title = "saved run"
            self.query_one(AnatomyView).set_status("reading the run directory …")
        else:
            self.sub_title = self.target or "tiny-mamba"
            self.query_one(AnatomyView).set_status(f"loading {self.target or 'tiny-mamba'} …")
        # Start loading once the first frame is painted: the imports hold the GIL for seconds.
        self.call_after_refresh(self._open)

    # ------------------------------------------------------------------ opening
    def _load_blocking(self):
        """Load the model (worker threads only); one load at a time."""
        from ssm_profile.base.runtime import configure_threads, quiet_libraries
        from ssm_profile.model.resolve import load_model

        quiet_libraries()
        loaded = load_model(self.model_name(), with_tokenizer=True, **self.load_options)
        configure_threads(self.threads, loaded.model)  # as the CLI: 1 thread for tiny models
        return loaded

    def model_name(self) -> str | None:
        """The name the model loads under: the run's model for an opened run."""
        return self.run_record.model.load_name() if self.opened_run and self.run_record else self.target

    def ensure_loaded(self):
        """The opened model, loading it first if needed (call from a worker thread)."""
        with self._model_lock:
            if self.loaded is None:
                self.loaded = self._load_blocking()
            return self.loaded

    def fresh_model(self):
        """Another copy of the opened model (apply prunes the model it is given in place)."""
        self.ensure_loaded()
        with self._model_lock:
            return self._load_blocking()

    @work(thread=True, exclusive=True, group="open", exit_on_error=False)
    def _open(self) -> None:
        try:
            if self.opened_run:
                from ssm_profile.base.lock import run_dir_lock
                from ssm_profile.profiling.results import ProfileResult

                run_dir = Path(self.target).expanduser()
                with run_dir_lock(run_dir, shared=True):  # refused while a profile writes it, as plan and report
                    result = ProfileResult.load(run_dir)
                self.call_from_thread(self._opened_run, result)
            else:
                from ssm_profile.model.analysis import analyze

                loaded = self.ensure_loaded()
                analysis = analyze(loaded.model, name=loaded.source.name, source=asdict(loaded.source))
                self.call_from_thread(self._opened_model, loaded, analysis)
        except SSMProfileError as err:
            self.call_from_thread(self._open_failed, err)
        except Exception as err:  # noqa: BLE001 - never a traceback in the terminal
            self.call_from_thread(self._open_failed, err)

    def _opened_model(self, loaded, analysis) -> None:
        self.analysis = analysis
        self.sub_title = loaded.source.name
        m, t = analysis.model, analysis.totals
        self.query_one(AnatomyView).show(analysis, f"{m.name} · {m.architecture} · "
                                                   f"{m.num_ssm_layers} SSM layers · {t.parameters:,} parameters "
                                                   f"· {loaded.source.kind}")
        name = loaded.source.name.replace("/", "--")
        self._focus_tab(self.active_tab)
        self.query_one(ProfileView).prefill(None, f"runs/{name}")
        self.query_one(ApplyView).set_model_name(name)

    def _opened_run(self, result) -> None:
        self.run_record = record = result.record
        self.sub_title = f"{record.model.name or '?'} · saved run"
        a = result.analysis
        m, t = a.model, a.totals
        status = "complete" if record.complete else "incomplete (resume in Profile)"
        self.query_one(AnatomyView).show(a, f"{m.name} · {m.architecture} · {m.num_ssm_layers} SSM "
                                            f"layers · {t.parameters:,} parameters · saved run ({status})")
        self.analysis = a
        self._focus_tab(self.active_tab)
        self.query_one(ProfileView).prefill(record, str(self.target))
        self.query_one(ApplyView).set_model_name(str(m.name).replace("/", "--"))
        self.set_result(result, Path(self.target), note="" if record.complete
                        else "partial (incomplete run)")

    def _open_failed(self, err: Exception) -> None:
        self.load_error = err if isinstance(err, SSMProfileError) else None
        what = self.target or "tiny-mamba"
        self.query_one(AnatomyView).set_status(f"could not open {what} · press o to open another model or run")
        if isinstance(err, SSMProfileError):
            self.show_error(f"Cannot open {what}", str(err),
                            "ssm-profile models lists the embedded models and aliases.", can_open=True)
        else:
            self.show_error(f"Cannot open {what}", f"{type(err).__name__}: {err}",
                            "This looks like a bug; `ssm-profile env` prints versions for a report.", can_open=True)

    def open_target(self, target: str) -> None:
        """Open another model or run directory in place of the current one (also after a failed load)."""
        target = target.strip()
        if not target:
            return
        if self.profiling:
            self.notify("wait for (or cancel) the running profile first", severity="warning")
            return
        with self._model_lock:
            self.target, self.opened_run, self.load_error = target, is_run_dir(target), None
            self.loaded = self.analysis = self.result = self.run_record = self.run_dir = None
        self.query_one(SensitivityView).clear()
        self.query_one(PlanView).clear()
        self.action_show_tab("anatomy")
        self._start_opening()

    # ------------------------------------------------------------------ shared state
    def set_result(self, result, run_dir: Path | None, note: str = "") -> None:
        """A profile result (opened, just computed, or partial) for the result-driven tabs."""
        self.result = result
        self.run_dir = run_dir
        self.run_record = result.record
        if self.analysis is None:
            self.analysis = result.analysis
        self.query_one(SensitivityView).show(result, note)
        self.query_one(PlanView).set_result(result)
        self.refresh_bindings()

    def on_plan_view_plan_changed(self, message: PlanView.PlanChanged) -> None:
        """The views do not query each other: the Apply tab gets the Plan tab's plan from here."""
        self.query_one(ApplyView).plan_changed(message.plan)

    @property
    def profiling(self) -> bool:
        """A profile is running (other tabs must not measure on the model meanwhile)."""
        return self.query_one(ProfileView).running

    def show_error(self, title: str, message: str, hint: str | None = None, can_open: bool = False) -> None:
        self.push_screen(ErrorScreen(title, message, hint, can_open=can_open),
                         lambda choice: self.action_open() if choice == "open" else None)

    # ------------------------------------------------------------------ actions
    @property
    def active_tab(self) -> str:
        return self.query_one("#main", TabbedContent).active

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        tabs = CONTEXT_ACTIONS.get(action)
        if tabs is None:
            return True
        try:
            active = self.active_tab
        except Exception:  # noqa: BLE001 - before compose / on another screen
            return False
        if active not in tabs:
            return False
        if action == "cancel" and not self.profiling:
            return None
        if action.startswith("cycle_") and self.result is None:
            return None
        if action in ("export_plan", "goto_apply") and not self.query_one(PlanView).plan:
            return None
        return True

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.tabbed_content.id != "main":
            return
        self.refresh_bindings()
        self._focus_tab(event.pane.id)
        if event.pane.id == "plan":
            self.query_one(PlanView).shown()

    def _focus_tab(self, tab: str | None) -> None:
        targets = {"anatomy": "#anatomy-tree", "sensitivity": "#sens-targets", "profile": "#profile-start",
                   "plan": "#plan-actions", "apply": "#apply-run"}
        selector = targets.get(tab or "")
        if selector:
            try:
                widget = self.query_one(selector)
            except Exception:  # noqa: BLE001
                return
            if widget.display and widget.focusable:
                widget.focus()

    def action_show_tab(self, tab: str) -> None:
        self.query_one("#main", TabbedContent).active = tab

    def action_open(self) -> None:
        if not isinstance(self.screen, OpenScreen):
            self.push_screen(OpenScreen(self.target or ""), self._open_chosen)

    def _open_chosen(self, target: str | None) -> None:
        if target:
            self.open_target(target)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The app's own actions in the command palette (ctrl+p), each with its key."""
        yield from super().get_system_commands(screen)
        yield SystemCommand("Open model or run (o)", "Open another model (name, hub id, folder) or run directory",
                            self.action_open)
        yield SystemCommand("Help: keys (?)", "Every key binding, by tab", self.action_help)
        for i, tab in enumerate(TABS, 1):
            yield SystemCommand(f"Go to {tab.title()} ({i})", f"Show the {tab.title()} tab",
                                lambda tab=tab: self.action_show_tab(tab))
        for action, title, helptext in PALETTE_ACTIONS:
            if self.check_action(action, ()) is not False:
                yield SystemCommand(title, helptext, getattr(self, f"action_{action}"))

    def deliver_screenshot(self, filename: str | None = None, path: str | None = None,
                           time_format: str | None = None) -> str | None:
        """The palette's Screenshot saves into the working directory: Textual's default, the user's
        Downloads folder, need not exist (it failed there with no word of where it tried)."""
        return super().deliver_screenshot(filename, path or str(Path.cwd()), time_format)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_cycle_criterion(self, step: int = 1) -> None:
        self.query_one(SensitivityView).cycle_criterion(step)

    def action_cycle_metric(self) -> None:
        self.query_one(SensitivityView).cycle_metric()

    def action_cycle_target(self, step: int = 1) -> None:
        self.query_one(SensitivityView).cycle_target(step)

    def action_cycle_view(self) -> None:
        self.query_one(SensitivityView).cycle_view()

    def action_run(self) -> None:
        if self.active_tab == "profile":
            self.query_one(ProfileView).start()
        elif self.active_tab == "apply":
            self.query_one(ApplyView).start()

    def action_cancel(self) -> None:
        self.query_one(ProfileView).cancel()

    def action_export_plan(self) -> None:
        self.query_one(PlanView).export()

    def action_goto_apply(self) -> None:
        self.action_show_tab("apply")

    async def action_quit(self) -> None:
        with contextlib.suppress(Exception):  # not mounted yet
            self.query_one(ProfileView).stop_now()
        self.exit(0)

