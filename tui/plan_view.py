"""Plan tab (``ssm_profile.plan.make_plan``) and Apply tab (``ssm_profile.pruning.apply.apply_plan`` + validation)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Button, Checkbox, ContentSwitcher, DataTable, Input, Label, ProgressBar, Select, Static
from textual.worker import get_current_worker

from ssm_profile.documents import Plan, PruningRecord
from ssm_profile.validation.comparison import comparison_rows
from ssm_profile.base.errors import SSMProfileError
from ssm_profile.base.fmt import percent_of, scope_name
from ssm_profile.base.io import free_path
from ssm_profile.pruning.summary import changes_nothing, physical_change

from .format import duration, human_bytes, human_count, in_ui_terms, num, pct
from .host import AppHost
from .recover_view import RecoverPanel
from .widgets import Tick, WorkerView



DEBOUNCE_S = 0.35
PLAN_TARGETS = [("parameters", "params"), ("FLOPs/token", "flops"), ("state bytes", "state")]


def _optional_float(text: str, what: str, example: float, below_one: bool = False) -> float | None:
    """``0.3`` or ``30%`` -> 0.3 by the CLI's rule (a bare 10 is refused, not read as +1000%); empty -> None."""
    from ssm_profile.base.fmt import parse_proportion

    if not text.strip():
        return None
    try:
        return parse_proportion(text, example, below_one=below_one)
    except ValueError as err:
        raise SSMProfileError(f"{what}: {err}") from None


ACTION_COLUMNS = ("target", "layers", "cut", "criterion", "removes", "pred. ΔL", "execution")


class PlanView(Vertical):
    """Inputs for the objective; the plan is re-solved (``measure=False``) on every change."""

    app: AppHost

    class PlanChanged(Message):
        """The current plan changed (None: there is none); the App hands it to the Apply tab."""

        def __init__(self, plan: Plan | None) -> None:
            super().__init__()
            self.plan = plan

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.plan: Plan | None = None
        self.plan_inputs: tuple | None = None
        self._timer: Timer | None = None
        self._exporting = False
        self._stale = False

    def compose(self) -> ComposeResult:
        with ContentSwitcher(initial="plan-empty", id="plan-switcher"):
            yield Static("No profile yet: a plan is solved from a profile run.\n\nRun one in the Profile tab "
                         "(press 3), or open a run directory: ssm-profile RUN_DIR", id="plan-empty",
                         classes="placeholder")
            with Vertical(id="plan-main"):
                with Horizontal(id="plan-form", classes="form-row"):
                    yield Label("reduce", classes="field-label")
                    yield Select(PLAN_TARGETS, value="params", allow_blank=False, id="plan-target", compact=True)
                    yield Label("by", classes="field-label")
                    yield Input("", placeholder="max", id="plan-ratio", compact=True)
                    yield Label("ppl ≤ +", classes="field-label")
                    yield Input("0.10", id="plan-tolerance", compact=True)
                yield Static("", id="plan-summary", classes="summary")
                yield DataTable(id="plan-actions", cursor_type="row", zebra_stripes=True)
                with Horizontal(id="plan-export", classes="form-row"):
                    yield Label("export to", classes="field-label")
                    yield Input("plan.json", id="plan-path", compact=True)
                    yield Tick("measure", False, id="plan-measure", compact=True)
                    yield Tick("overwrite", False, id="plan-overwrite", compact=True)
                    yield Button("Export (e)", id="plan-export-button", variant="primary", compact=True)

    def on_mount(self) -> None:
        self._set_actions([])

    # ------------------------------------------------------------------ solving
    def clear(self) -> None:
        """Another model is being opened: no result, no plan."""
        self.query_one("#plan-switcher", ContentSwitcher).current = "plan-empty"
        self.plan, self.plan_inputs, self._stale = None, None, False
        self.post_message(self.PlanChanged(None))

    def set_result(self, result) -> None:
        """A new profile result: solve now if the Plan tab is showing, else when it is first shown."""
        self.query_one("#plan-switcher", ContentSwitcher).current = "plan-main"
        self.plan = None
        self.plan_inputs = None
        self.post_message(self.PlanChanged(None))
        self.query_one("#plan-actions", DataTable).clear()
        self._stale = True
        self._summary(Text("the plan is solved when this tab is shown", style="dim italic"))
        if self.app.active_tab == "plan":
            self.shown()

    def shown(self) -> None:
        """The Plan tab became visible."""
        if self._stale and self.app.result is not None:
            self._stale = False
            self.schedule_solve(0)

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id in ("plan-ratio", "plan-tolerance"):
            event.stop()
            self.schedule_solve()

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "plan-target":
            event.stop()
            self.schedule_solve()

    def schedule_solve(self, delay: float = DEBOUNCE_S) -> None:
        if self.app.result is None:
            return
        self._stale = False
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(max(delay, 0.01), self._start_solve)

    def read_inputs(self) -> tuple[str, float | None, float]:
        target = self.query_one("#plan-target", Select).value
        ratio = _optional_float(self.query_one("#plan-ratio", Input).value, "ratio", 0.3, below_one=True)
        tolerance = _optional_float(self.query_one("#plan-tolerance", Input).value, "max ppl increase", 0.1)
        if tolerance is None:
            raise SSMProfileError("give the largest allowed perplexity increase, e.g. 0.10 for +10%")
        return str(target), ratio, tolerance

    def _start_solve(self) -> None:
        self._timer = None
        try:
            inputs = self.read_inputs()
        except SSMProfileError as err:
            self._failed(str(err))
            return
        self._summary(Text("solving …", style="dim italic"))
        self._solve(self.app.result, *inputs)

    @work(thread=True, exclusive=True, group="plan", exit_on_error=False)
    def _solve(self, result, target: str, ratio: float | None, tolerance: float) -> None:
        from ssm_profile.plan import PlanRequest, make_plan

        worker = get_current_worker()
        try:
            request = PlanRequest(metric=target, ratio=ratio, max_ppl_increase=tolerance, measure=False)
            plan = make_plan(result, request, run_path=self.app.run_dir)
        except SSMProfileError as err:
            if not worker.is_cancelled:
                self._call(self._failed, str(err))
            return
        except Exception as err:  # noqa: BLE001 - show, don't crash
            if not worker.is_cancelled:
                self._call(self._failed, f"{type(err).__name__}: {err}")
            return
        if not worker.is_cancelled:
            self._call(self._solved, plan, (result, target, ratio, tolerance))

    def _call(self, fn, *args) -> None:
        try:
            self.app.call_from_thread(fn, *args)
        except RuntimeError:
            pass

    def _summary(self, text: Text | str) -> None:
        self.query_one("#plan-summary", Static).update(text)

    def _failed(self, message: str) -> None:
        self.plan = None
        self.plan_inputs = None
        self.post_message(self.PlanChanged(None))
        self.query_one("#plan-actions", DataTable).clear()
        self._summary(Text(in_ui_terms(message), style="bold red"))
        self.app.refresh_bindings()

    def _solved(self, plan: Plan, inputs: tuple) -> None:
        self.plan = plan
        self.plan_inputs = inputs
        self.show_plan(plan)
        self.app.refresh_bindings()
        self.post_message(self.PlanChanged(plan))

    def show_plan(self, plan: Plan) -> None:
        pred, dense, objective = plan.predicted, plan.dense, plan.objective
        text = Text()
        if changes_nothing(plan):
            text.append("no shapes change: every action is executed as zeros (structured units slice)\n",
                        style="bold yellow")
        physical = physical_change(plan)
        for metric, fmt in (("params", human_count), ("flops", human_count), ("state", human_bytes)):
            removed, total = pred.removed(metric), dense.total(metric) or 0
            style = "bold green" if metric == objective.metric else "bold"
            text.append(f"−{percent_of(removed / total if total else 0.0, scope_name('model', metric))}", style=style)
            zeroed = removed - physical[metric]  # a mixed plan says the rest is zeros (no size or speed win)
            text.append(f" ({fmt(physical[metric])} sliced" + (f", {fmt(zeroed)} zeros)  " if zeroed > 0 else ")  "),
                        style="dim")
        text.append("\npredicted ", style="dim")
        text.append(f"ΔL {num(pred.delta_loss)}  ppl +{pct(pred.rel_ppl_increase, 1)}", style="bold")
        text.append(f"  (limit +{pct(objective.max_ppl_increase, 0)})", style="dim")
        text.append(f"  {len(plan.actions)} action(s)", style="dim")
        if plan.measured:
            text.append(f"  measured ppl +{pct(plan.measured.rel_ppl_increase, 1)}", style="bold cyan")
        # the promise on held-out windows, as `ssm-profile plan` prints it: a broken one is the first thing to read
        for source, check in plan.held_out_checks():
            where = "" if source is None else f"also on {source}: "
            text.append(f"\n{where}{check.sentence()}", style="bold green" if check.kept else "bold red")
        for note in plan.notes[:2]:
            text.append(f"\n· {note}", style="dim italic")
        self._summary(text)
        analysis = self.app.analysis
        all_layers = set(analysis.layers()) if analysis is not None else set()
        rows = []
        for a in plan.actions:
            layers = a.layers or []
            if a.is_layer:
                cut = "whole layer removed"
            elif a.unit_kind:
                per = {len(v) for v in (a.unit_indices or {}).values()}
                cut = f"{'/'.join(map(str, sorted(per))) or '?'} {a.unit_kind}/layer ({pct(a.sparsity, 0)})"
            else:
                cut = f"{pct(a.sparsity, 0)} {a.structure}"
            rows.append((Text(a.target, style="bold"),
                         "all" if not layers or set(layers) == all_layers else ",".join(map(str, layers)), cut,
                         a.criterion or "", human_count(a.removed(objective.metric) or 0),
                         num(a.predicted_delta_loss), a.execution))
        self._set_actions(rows)

    def _set_actions(self, rows: list[tuple]) -> None:
        """Fill the actions table with columns sized to their cells now: DataTable would measure new
        rows only when idle, so a busy app could paint them at the headers' widths."""
        table = self.query_one("#plan-actions", DataTable)
        table.clear(columns=True)
        for i, col in enumerate(ACTION_COLUMNS):
            width = max([len(col), *(Text.from_markup(r[i]).cell_len if isinstance(r[i], str) else r[i].cell_len
                                     for r in rows)])
            table.add_column(col, key=col, width=width)
        table.add_rows(rows)

    # ------------------------------------------------------------------ export
    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "plan-export-button":
            event.stop()
            self.export()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in the export path exports; in the objective's fields it re-solves at once."""
        event.stop()
        if event.input.id == "plan-path":
            self.export()
        else:
            self.schedule_solve(0.0)

    def export(self) -> None:
        if self.plan is None or self.plan_inputs is None:
            self.app.notify("no plan to export (fix the objective first)", severity="warning")
            return
        if self._exporting:
            self.app.notify("an export is already running", severity="warning")
            return
        path = self.query_one("#plan-path", Input).value.strip()
        if not path:
            self.app.notify("give a file name to export to", severity="warning")
            return
        measure = self.query_one("#plan-measure", Checkbox).value
        overwrite = self.query_one("#plan-overwrite", Checkbox).value
        if measure and self.app.profiling:
            self.app.notify("wait for the running profile before measuring a plan", severity="warning")
            return
        self._exporting = True
        self._summary(Text("measuring the plan on the model …" if measure else "writing …", style="dim italic"))
        self._export(self.plan, self.plan_inputs, path, measure, overwrite)

    @work(thread=True, exclusive=True, group="plan-export", exit_on_error=False)
    def _export(self, plan: Plan, inputs: tuple, path: str, measure: bool, overwrite: bool) -> None:
        from ssm_profile.documents import write_plan
        from ssm_profile.plan import PlanRequest, make_plan

        try:
            self._check_export(inputs[0], path, measure, overwrite)
            if measure:
                result, metric, ratio, tolerance = inputs
                loaded = self.app.ensure_loaded()
                request = PlanRequest(metric=metric, ratio=ratio, max_ppl_increase=tolerance)
                plan = make_plan(result, request, loaded=loaded, run_path=self.app.run_dir)
            written = write_plan(plan, path, overwrite=overwrite)
        except SSMProfileError as err:
            self._call(self._exported, None, str(err), None)
            return
        except Exception as err:  # noqa: BLE001
            self._call(self._exported, None, f"{type(err).__name__}: {err}", None)
            return
        self._call(self._exported, str(written), "", plan)

    def _check_export(self, result, path: str, measure: bool, overwrite: bool) -> None:
        """The CLI's one output rule, with `ssm-profile plan`'s inputs: the run's files and, to measure,
        the run's model and texts."""
        from ssm_profile.base.outputs import Output, check_paths, data_inputs, folder_files
        from ssm_profile.model.resolve import model_input

        inputs = folder_files(self.app.run_dir, "the run's file") if self.app.run_dir else []
        if measure:
            inputs += [model_input(self.app.model_name(), "the run's model"),
                       *data_inputs(result.record.data_spec(), "the run's")]
        check_paths([Output(Path(path), "plan", overwrite=overwrite)], inputs)

    def _exported(self, path: str | None, error: str, plan: Plan | None) -> None:
        self._exporting = False
        if plan is not None:
            self.plan = plan
            self.show_plan(plan)
        elif self.plan is not None:
            self.show_plan(self.plan)
        if path is None:
            self.app.notify(in_ui_terms(error), title="export failed", severity="error", timeout=8)
        else:
            self.app.notify(f"plan written to {path}", title="exported")
            self.post_message(self.PlanChanged(self.plan))


def free_output_dir(model: str, base: Path | None = None) -> str:
    """A save path beside, never inside, existing folders: ``pruned-<model>``, else ``pruned-<model>-2`` …

    (A path inside the quick start's ``pruned/`` model folder made ``validate`` count both models.)
    """
    return free_path(f"pruned-{model.replace('/', '--')}", base)


class ApplyView(WorkerView, Vertical):
    """Apply the current (or a saved) plan to a fresh copy of the model, save it, validate it."""

    MESSAGE_ID, RUN_ID = "apply-msg", "apply-run"

    app: AppHost

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.running = False
        self._started = 0.0
        self.report: PruningRecord | None = None
        self.plan: Plan | None = None  # the Plan tab's, as last received (PlanView.PlanChanged)

    def compose(self) -> ComposeResult:
        yield Static("", id="apply-source", classes="status-line")
        with Horizontal(classes="form-row"):
            yield Label("plan file", classes="field-label")
            yield Input("", placeholder="empty: the Plan tab's plan", id="apply-plan-file", compact=True)
        with Horizontal(classes="form-row"):
            yield Label("save to", classes="field-label")
            yield Input(free_output_dir("tiny-mamba"), id="apply-output", compact=True)
        with Horizontal(classes="form-row checks"):
            yield Label("options", classes="field-label")
            yield Tick("overwrite", False, id="apply-overwrite", compact=True)
            yield Tick("lm-eval tasks", True, id="apply-lm-eval", compact=True)
        with Horizontal(classes="actions"):
            yield Button("Apply & validate (r)", id="apply-run", variant="primary", compact=True)
            yield Static("", id="apply-msg", classes="msg")
        yield ProgressBar(total=1, show_eta=False, id="apply-bar")
        yield Static("idle", id="apply-eta", classes="status-line")
        yield DataTable(id="apply-table", cursor_type="row", zebra_stripes=True)
        yield RecoverPanel(id="recover-panel")

    def on_mount(self) -> None:
        table = self.query_one("#apply-table", DataTable)
        for col in ("", "before", "after", "change"):
            table.add_column(col or "quantity", key=col or "quantity")
        self.plan_changed(self.plan)

    def set_model_name(self, name: str) -> None:
        self.query_one("#apply-output", Input).value = free_output_dir(name)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in a field moves to the Apply button (pruning is long: one more key to start it)."""
        event.stop()
        self.query_one("#apply-run", Button).focus()

    def plan_changed(self, plan: Plan | None) -> None:
        self.plan = plan
        if plan is None:
            text = Text("no plan yet: solve one in the Plan tab (4) or give a plan file", style="dim")
        else:
            o, p = plan.objective, plan.predicted
            text = Text.assemble(("plan: ", "dim"), (f"{len(plan.actions)} action(s)", "bold"),
                                 ((f" · reduce {percent_of(p.reduction_ratio, p.reduction_of or scope_name(o.scope, o.metric))}"
                                   " · predicted "
                                   f"ppl +{pct(p.rel_ppl_increase, 1)} (limit +{pct(o.max_ppl_increase, 0)})"),
                                  "dim"))
        self.query_one("#apply-source", Static).update(text)

    def start(self) -> None:
        if self.running:
            self.message("already running", "yellow")
            return
        plan_file = self.query_one("#apply-plan-file", Input).value.strip()
        plan = self.plan
        if not plan_file and plan is None:
            self.message("no plan: solve one in the Plan tab or give a plan file", "bold red")
            return
        output = self.query_one("#apply-output", Input).value.strip()
        if not output:
            self.message("give an output directory", "bold red")
            return
        self.running = True
        self._started = time.monotonic()
        self.query_one("#apply-run", Button).disabled = True
        self.query_one("#apply-bar", ProgressBar).update(total=None, progress=0)
        self.message("loading a fresh copy of the model …")
        self._run(plan_file or plan, output, self.query_one("#apply-overwrite", Checkbox).value,
                  self.query_one("#apply-lm-eval", Checkbox).value)

    @work(thread=True, exclusive=True, group="apply", exit_on_error=False)
    def _run(self, plan, output: str, overwrite: bool, lm_eval: bool) -> None:
        from ssm_profile.base.lock import output_lock
        from ssm_profile.documents import check_promise_kept, load_plan
        from ssm_profile.pruning.apply import apply_plan
        from ssm_profile.validation.check import ValidationOptions

        try:
            plan_file = plan if isinstance(plan, str) else None
            if plan_file is not None:
                plan = load_plan(plan_file)
            self._check_output(plan, plan_file, output, overwrite)
            # before a second copy of the model loads; the TUI applies kept promises only
            check_promise_kept(plan, "this plan", override="apply it anyway with `ssm-profile apply "
                               "--allow-broken-promise`")
            with output_lock(output):  # a second apply to this output (here or in a shell) is refused
                loaded = self.app.fresh_model()  # apply_plan prunes the model it is given in place
                options = ValidationOptions() if lm_eval else ValidationOptions(tasks=())
                report = apply_plan(loaded, plan, output, validate=True, overwrite=overwrite,
                                    progress=self._progress_from_thread, validate_options=options)
        except SSMProfileError as err:
            self._call(self._finished, None, str(err))
            return
        except Exception as err:  # noqa: BLE001
            self._call(self._finished, None, f"{type(err).__name__}: {err}")
            return
        self._call(self._finished, report, "")

    def _check_output(self, plan: Plan, plan_file: str | None, output: str, overwrite: bool) -> None:
        """The CLI's one output rule, with `ssm-profile apply`'s inputs: the plan file, the model and the
        plan's texts."""
        from ssm_profile.base.outputs import Output, check_paths, data_inputs, source_input, text_input
        from ssm_profile.model.resolve import model_input

        inputs = [source_input(plan_file, "the plan"), model_input(self.app.model_name()),
                  *(data_inputs(plan.data.spec(), "the plan's") if plan.data is not None else ()),
                  *(text_input(d.source, "the plan's --also-on text") for d in plan.domains or ())]
        check_paths([Output(Path(output), "output", folder=True, overwrite=True if overwrite else None)], inputs)

    def _progress(self, done: int, total: int, label: str) -> None:
        if total > 1:
            self.query_one("#apply-bar", ProgressBar).update(total=total, progress=done)
        self.query_one("#apply-eta", Static).update(f"{label} · {duration(time.monotonic() - self._started)} elapsed")

    def _finished(self, report: PruningRecord | None, error: str) -> None:
        self.running = False
        self.query_one("#apply-run", Button).disabled = False
        bar = self.query_one("#apply-bar", ProgressBar)
        if report is None:
            bar.update(total=1, progress=0)
            self.message("failed (see the message)", "bold red")
            self.app.show_error("Apply failed", error)
            return
        bar.update(total=1, progress=1)
        self.report = report
        self.query_one(RecoverPanel).set_pruned(str(report.output_dir))
        within = report.validation.within_tolerance if report.validation is not None else None
        verdict = {True: ("within tolerance", "bold green"), False: ("ABOVE tolerance", "bold red"),
                   None: ("no tolerance", "dim")}[within]
        self.message(f"saved; {verdict[0]}", verdict[1])
        self.query_one("#apply-eta", Static).update(
            f"saved to {report.output_dir} · {duration(time.monotonic() - self._started)}")
        self.show_report(report)

    def show_report(self, report: PruningRecord) -> None:
        table = self.query_one("#apply-table", DataTable)
        table.clear()
        validation = report.validation
        for row in comparison_rows(validation) if validation is not None else []:
            if row.before is None and row.after is None:
                continue
            better = row.better
            style = "" if better is None else ("green" if better else "red")
            table.add_row(Text(row.label, style="bold"), row.text(row.before, ""), row.text(row.after, ""),
                          Text(row.change_text(), style=style))
            measured = validation.measured
            if row.label == "loss, search windows" and measured.predicted_delta_loss is not None:
                table.add_row(Text("ΔL predicted → measured", style="bold"),
                              num(measured.predicted_delta_loss), num(measured.delta_loss), "")
        counts = report.summary
        table.add_row(Text("actions", style="bold"), f"{counts.actions}",
                      f"{counts.sliced} sliced · {counts.zeroed} zeroed", "")
        for note in report.notes[:3]:
            table.add_row(Text("note", style="dim"), Text(note, style="dim italic"), "", "")
