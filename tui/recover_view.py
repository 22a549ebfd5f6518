"""The Apply tab's recovery row: distil the pruned checkpoint from its dense teacher in a worker
(``ssm_profile.recovery.train.recover``) and show the verification perplexity before and after."""

from __future__ import annotations

import time
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Label, Static

from ssm_profile.base.defaults import RECOVER_STEPS
from ssm_profile.documents import RecoveryRecord
from ssm_profile.base.errors import SSMProfileError
from ssm_profile.base.io import free_path

from .format import duration
from .widgets import WorkerView


def recovered_dir(pruned: str) -> str:
    """``<pruned>-recovered`` (or ``-recovered-2`` …): never an existing folder."""
    return free_path(f"{pruned.rstrip('/')}-recovered")


class RecoverPanel(WorkerView, Vertical):
    """Pruned folder, step budget and output; the Recover button runs distillation in a thread."""

    MESSAGE_ID, RUN_ID = "recover-msg", "recover-run"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.running = False
        self.record: RecoveryRecord | None = None
        self._started = 0.0

    def compose(self) -> ComposeResult:
        with Horizontal(classes="form-row"):
            yield Label("recover", classes="field-label")
            yield Input("", placeholder="pruned folder (set by Apply)", id="recover-pruned", compact=True)
            yield Label(" steps ", classes="field-label-short")
            yield Input(str(RECOVER_STEPS), id="recover-steps", type="integer", compact=True)
        with Horizontal(classes="actions"):
            yield Button("Recover (distil)", id="recover-run", compact=True)
            yield Static("", id="recover-msg", classes="msg")

    def set_pruned(self, directory: str) -> None:
        """The checkpoint Apply just saved becomes what Recover trains."""
        self.query_one("#recover-pruned", Input).value = directory

    def start(self) -> None:
        if self.running:
            self.message("already running", "yellow")
            return
        pruned = self.query_one("#recover-pruned", Input).value.strip()
        steps_text = self.query_one("#recover-steps", Input).value.strip()
        if not pruned:
            self.message("apply a plan first, or give a pruned folder", "bold red")
            return
        if not steps_text.isdigit() or int(steps_text) < 1:
            self.message("steps: a positive whole number", "bold red")
            return
        self.running = True
        self._started = time.monotonic()
        self.query_one("#recover-run", Button).disabled = True
        self.message("loading the pruned model and its teacher …")
        self._run(pruned, recovered_dir(pruned), int(steps_text))

    @work(thread=True, exclusive=True, group="recover", exit_on_error=False)
    def _run(self, pruned: str, output: str, steps: int) -> None:
        from ssm_profile.recovery.train import RecoverSettings, recover

        try:
            record = recover(pruned, output, settings=RecoverSettings(steps=steps, lm_eval=False),
                             progress=self._progress_from_thread)
        except SSMProfileError as err:
            self._call(self._finished, None, output, str(err))
            return
        except Exception as err:  # noqa: BLE001
            self._call(self._finished, None, output, f"{type(err).__name__}: {err}")
            return
        self._call(self._finished, record, output, "")

    def _progress(self, done: int, total: int, label: str) -> None:
        elapsed = time.monotonic() - self._started
        eta = f" · ETA {duration(elapsed / done * (total - done))}" if total > 1 and 0 < done <= total else ""
        self.message(f"step {done}/{total} · {label}{eta}")

    def _finished(self, record: RecoveryRecord | None, output: str, error: str) -> None:
        self.running = False
        self.query_one("#recover-run", Button).disabled = False
        if record is None:
            self.message("recovery failed (see the message)", "bold red")
            self.app.show_error("Recover failed", error)
            return
        self.record = record
        before, after = record.before.verification, record.after.verification
        fraction = record.recovered_fraction()
        removed = "" if fraction is None else f" ({fraction:.0%} of the increase removed)"
        self.message(f"perplexity {before.rel_ppl_increase:+.1%} → {after.rel_ppl_increase:+.1%}{removed} · "
                     f"saved to {output} · {duration(time.monotonic() - self._started)}", "bold green")
