"""Profile tab: run ``ssm_profile.profiling.profile.profile_model`` on the opened model in a thread worker."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, Vertical
from textual.widgets import Button, Checkbox, Input, Label, ProgressBar, SelectionList, Static
from textual.worker import get_current_worker

from ssm_profile.base.defaults import DEFAULT_CRITERIA, DEFAULT_SPARSITIES
from ssm_profile.base.errors import RunDirError, SSMProfileError

from .format import duration
from .host import AppHost
from .widgets import Tick, TickList

if TYPE_CHECKING:  # the TUI shows before torch loads
    from ssm_profile.profiling.record import RunRecord


# ssm_profile.criteria imports torch; its registry replaces this list once a model or run is open
CRITERIA_BEFORE_TORCH = (*DEFAULT_CRITERIA, "horizon", "ssm_gramian")


def _listed(sparsities) -> str:
    """Sparsities as the form shows them: ``0.1,0.5``."""
    return ",".join(f"{s:g}" for s in sparsities)


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SSMProfileError(f"sparsities: expected comma-separated numbers, got '{text}'") from None


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SSMProfileError(f"{what}: expected a whole number, got '{text}'") from None


class ProfileView(Vertical):
    """A form with the settings of `ssm-profile profile`, a start/cancel pair and progress."""

    app: AppHost

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._cancel = threading.Event()
        self._started = 0.0
        self._first: tuple[float, int] | None = None
        self.running = False

    def compose(self) -> ComposeResult:
        names = sorted(CRITERIA_BEFORE_TORCH)
        with Horizontal(id="profile-form"):
            with Vertical(id="profile-criteria-box"):
                yield Label("criteria", classes="field-label")
                yield TickList[str](*[(n, n, n in DEFAULT_CRITERIA) for n in names], id="profile-criteria",
                                         compact=True)
            with Grid(id="profile-fields"):
                for label, key, value, placeholder in (
                    ("sparsities", "sparsities", _listed(DEFAULT_SPARSITIES), "0.1,0.5,0.9"),
                    ("calibration windows", "nsamples", "32", "32"),
                    ("evaluation windows", "eval-samples", "16", "16"),
                    ("tokens per window", "seqlen", "256", "256"),
                    ("calibration text", "calibration", "", "embedded (or .txt/.jsonl/hf:NAME)"),
                    ("evaluation text", "evaluation", "", "embedded"),
                    ("run directory", "output", "", "runs/MODEL"),
                ):
                    yield Label(label, classes="field-label")
                    yield Input(value, placeholder=placeholder, id=f"profile-{key}", compact=True)
                yield Label("options", classes="field-label")
                with Horizontal(classes="checks"):
                    yield Tick("per-layer sweep", True, id="profile-per-layer", compact=True)
                    yield Tick("resume", False, id="profile-resume", compact=True)
        with Horizontal(id="profile-actions", classes="actions"):
            yield Button("Start (r)", id="profile-start", variant="primary", compact=True)
            yield Button("Cancel (x)", id="profile-cancel", variant="error", compact=True, disabled=True)
            yield Static("", id="profile-msg", classes="msg")
        yield ProgressBar(total=1, show_eta=False, id="profile-bar")
        yield Static("idle", id="profile-eta", classes="status-line")

    # ------------------------------------------------------------------ form
    def prefill(self, record: RunRecord | None, output: str) -> None:
        """Defaults for the opened model, or the settings of an opened run directory."""
        self.query_one("#profile-output", Input).value = output
        chosen = set(record.settings.criteria if record is not None else DEFAULT_CRITERIA)
        sel = self.query_one("#profile-criteria", SelectionList)
        with contextlib.suppress(Exception):  # keep the built-in list if the registry cannot be read
            from ssm_profile.criteria import available

            names = available()
            sel.clear_options()
            sel.add_options([(n, n, n in chosen) for n in names])
        if record is None:
            return
        settings, data = record.settings, record.data_spec()
        sel.deselect_all()
        for name in chosen:
            with contextlib.suppress(Exception):  # a criterion this version lacks
                sel.select(name)
        if settings.sparsities:
            self.query_one("#profile-sparsities", Input).value = _listed(settings.sparsities)
        for key, value in (("nsamples", data.nsamples), ("eval-samples", data.eval_samples), ("seqlen", data.seqlen)):
            self.query_one(f"#profile-{key}", Input).value = str(value)
        for key, source in (("calibration", data.calibration), ("evaluation", data.evaluation)):
            self.query_one(f"#profile-{key}", Input).value = source or ""
        self.query_one("#profile-per-layer", Checkbox).value = bool(settings.per_layer)
        self.query_one("#profile-resume", Checkbox).value = not record.complete

    def read_form(self):
        from ssm_profile.calibration.data import DataSpec
        from ssm_profile.profiling.record import ProfileSettings

        criteria = list(self.query_one("#profile-criteria", SelectionList).selected)
        if not criteria:
            raise SSMProfileError("choose at least one criterion")
        value = lambda key: self.query_one(f"#profile-{key}", Input).value.strip()
        settings = ProfileSettings(criteria=criteria, sparsities=_floats(value("sparsities")),
                                   per_layer=self.query_one("#profile-per-layer", Checkbox).value)
        settings.validate()
        spec = DataSpec(calibration=value("calibration") or None, evaluation=value("evaluation") or None,
                        nsamples=_int(value("nsamples"), "calibration windows"),
                        eval_samples=_int(value("eval-samples"), "evaluation windows"),
                        seqlen=_int(value("seqlen"), "tokens per window"))
        output = value("output")
        if not output:
            raise SSMProfileError("give a run directory")
        return settings, spec, output, self.query_one("#profile-resume", Checkbox).value

    def message(self, text: str, style: str = "") -> None:
        self.query_one("#profile-msg", Static).update(Text(text, style=style))

    # ------------------------------------------------------------------ actions
    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "profile-start":
            self.start()
        elif event.button.id == "profile-cancel":
            self.cancel()

    def start(self) -> None:
        if self.running:
            self.message("a profile is already running", "yellow")
            return
        try:
            settings, spec, output, resume = self.read_form()
            self._check_output(spec, output)
        except SSMProfileError as err:
            self.message(str(err), "bold red")
            return
        self._cancel.clear()
        self._started = time.monotonic()
        self._first = None
        self.running = True
        focused = self.app.focused is self.query_one("#profile-start", Button)
        self.query_one("#profile-cancel", Button).disabled = False
        if focused:  # keep the keyboard on the form's buttons (not in a text field)
            self.query_one("#profile-cancel", Button).focus()
        self.query_one("#profile-start", Button).disabled = True
        bar = self.query_one("#profile-bar", ProgressBar)
        bar.update(total=None, progress=0)
        self.message("starting …", "")
        self.query_one("#profile-eta", Static).update("loading the model …" if self.app.loaded is None else "")
        self._run(settings, spec, output, resume)

    def _check_output(self, spec, output: str) -> None:
        """The CLI's one output rule (base.outputs.check_paths): the run directory apart from the model and
        the texts it reads, and writable, before a model loads."""
        from ssm_profile.base.outputs import Output, check_paths, data_inputs
        from ssm_profile.model.resolve import model_input

        check_paths([Output(Path(output), "run directory", folder=True, overwrite=None)],
                    [model_input(self.app.model_name()), *data_inputs(spec)])

    def cancel(self) -> None:
        if not self.running:
            return
        self._cancel.set()
        self.message("cancelling after the current step …", "yellow")

    def stop_now(self) -> None:
        """Used on quit: ask a running profile to stop at the next trial."""
        self._cancel.set()

    @work(thread=True, exclusive=True, group="profile", exit_on_error=False)
    def _run(self, settings, spec, output: str, resume: bool) -> None:
        from ssm_profile.profiling.profile import profile_model
        from ssm_profile.profiling.results import ProfileResult

        worker = get_current_worker()
        cancelled = lambda: self._cancel.is_set() or worker.is_cancelled
        try:
            loaded = self.app.ensure_loaded()
            if cancelled():
                raise KeyboardInterrupt
            result = profile_model(loaded, spec, settings, run_dir=output, resume=resume,
                                   progress=self._progress_from_thread, cancel=cancelled)
        except KeyboardInterrupt:
            from ssm_profile.base.lock import run_dir_lock

            try:
                with run_dir_lock(output, shared=True):
                    partial = ProfileResult.load(output)
            except (RunDirError, SSMProfileError, OSError) as err:
                partial, why = None, str(err)
            else:
                why = ""
            self._call(self._finished, partial, output, "cancelled", why)
            return
        except SSMProfileError as err:
            self._call(self._finished, None, output, "error", str(err))
            return
        except Exception as err:  # noqa: BLE001 - show, don't crash the UI
            self._call(self._finished, None, output, "error", f"{type(err).__name__}: {err}")
            return
        self._call(self._finished, result, output, "complete", "")

    def _call(self, fn, *args) -> None:
        try:
            self.app.call_from_thread(fn, *args)
        except RuntimeError:  # the app has exited meanwhile
            pass

    def _progress_from_thread(self, done: int, total: int, label: str) -> None:
        self._call(self._progress, done, total, label)

    def _progress(self, done: int, total: int, label: str) -> None:
        bar = self.query_one("#profile-bar", ProgressBar)
        now = time.monotonic()
        eta = None
        if total > 1 or done > 0:
            bar.update(total=max(total, 1), progress=done)
            if self._first is None:
                self.message("running", "bold")
                self._first = (now, done)
            t0, d0 = self._first
            if done > d0:
                eta = (now - t0) / (done - d0) * (total - done)
            text = f"{done}/{total} trials · {duration(now - self._started)} elapsed · ETA {duration(eta)} · {label}"
        else:
            self.message("preparing", "")
            text = f"{label} · {duration(now - self._started)} elapsed"
        self.query_one("#profile-eta", Static).update(text)

    def _finished(self, result, output: str, how: str, why: str) -> None:
        self.running = False
        cancel = self.query_one("#profile-cancel", Button)
        self.query_one("#profile-start", Button).disabled = False
        if self.app.focused is cancel:
            self.query_one("#profile-start", Button).focus()
        cancel.disabled = True
        bar = self.query_one("#profile-bar", ProgressBar)
        if bar.total is None:
            bar.update(total=1, progress=0)
        elapsed = duration(time.monotonic() - self._started)
        if how == "complete":
            bar.update(progress=bar.total)
            self.message(f"done: {len(result.trials)} trials in {elapsed}", "bold green")
            self.query_one("#profile-eta", Static).update(f"saved to {output}")
            self.app.set_result(result, Path(output), note="")
        elif how == "cancelled":
            if result is not None:
                kept = len(result.trials)
                if bar.total and bar.total > 1:  # the bar agrees with the count kept: a trial may finish
                    bar.update(progress=min(kept, bar.total))  # after its last progress report
                    self.query_one("#profile-eta", Static).update(f"{min(kept, int(bar.total))}/{int(bar.total)} "
                                                                  "trials finished · cancelled")
                self.message(f"cancelled: {kept} finished trials kept (tick resume to continue)", "yellow")
                self.query_one("#profile-resume", Checkbox).value = True
                self.app.set_result(result, Path(output), note="partial (cancelled)")
            else:
                self.message("cancelled before any trial was saved", "yellow")
                if why:
                    self.query_one("#profile-eta", Static).update(why)
        else:
            self.message("profile failed (see the message)", "bold red")
            self.app.show_error("Profile failed", why)
