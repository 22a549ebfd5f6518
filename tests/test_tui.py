"""Terminal UI: Pilot tests of every tab and SVG snapshots of the main screens at 80x24 and 120x40.

Snapshots (tests/__snapshots__/test_tui/) show a tiny profile of the embedded tiny-mamba2 made
by the module fixture and opened through a relative path, so no temporary path, time or clock
appears in them. They depend on the embedded weights: after retraining the embedded models,
regenerate them with ``pytest tests/test_tui.py --snapshot-update`` and look at the report.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("textual")
pytest.importorskip("textual_plotext")

from textual.widgets import Checkbox, DataTable, Input, SelectionList, Tree

from ssm_profile.base.errors import SSMProfileError
from ssm_profile.tui.app import SSMProfileApp, is_run_dir
from ssm_profile.tui.screens import ErrorScreen, HelpScreen

SIZE = (120, 40)
RUN_NAME = "tiny-run"  # the saved run, opened through this relative path in snapshot tests


def _has_planner() -> bool:
    try:
        from ssm_profile.plan import make_plan  # noqa: F401
    except ImportError:
        return False
    return True


needs_planner = pytest.mark.skipif(not _has_planner(), reason="ssm_profile.plan (the planner) is not installed")


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> Path:
    """A finished tiny profile of the embedded tiny-mamba2 (magnitude + fisher, two sparsities)."""
    from ssm_profile.calibration.data import DataSpec
    from ssm_profile.profiling.record import ProfileSettings
    from ssm_profile.profiling.profile import profile_model
    from ssm_profile.model.resolve import load_model

    run_dir = tmp_path_factory.mktemp("tui") / RUN_NAME
    loaded = load_model("tiny-mamba2")
    profile_model(loaded, DataSpec(nsamples=4, eval_samples=4, seqlen=32),
                  ProfileSettings(sparsities=[0.25, 0.5], criteria=["magnitude", "fisher"], sweep="grid"),
                  run_dir=run_dir)
    return run_dir


@pytest.fixture
def run_here(saved_run, tmp_path, monkeypatch) -> str:
    """A copy of the saved run in the working directory, named by a fixed relative path."""
    shutil.copytree(saved_run, tmp_path / RUN_NAME)
    monkeypatch.chdir(tmp_path)
    return RUN_NAME


async def settle(pilot, seconds: float = 0.1) -> None:
    """Let timers fire and every worker finish, then let the screen refresh."""
    await pilot.pause(seconds)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def on_tab(pilot, *keys: str, wait: float = 0.1) -> None:
    """Settle the start-up, then press each key (a tab, a row move) and settle ``wait`` seconds after it."""
    await settle(pilot)
    for key in keys:
        await pilot.press(key)
        await settle(pilot, wait)


def run_async(fn):
    """Run an async test body in a fresh event loop (no pytest-asyncio needed)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


def _columns_fit_cells(table: DataTable) -> bool:
    """Every column has measured its cells (its width is at least its widest cell's)."""
    from rich.text import Text

    widths = [c.content_width for c in table.ordered_columns]
    return all(Text(v).cell_len <= w if isinstance(v, str) else v.cell_len <= w
               for i in range(table.row_count) for v, w in zip(table.get_row_at(i), widths))


def cell_texts(table: DataTable) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


# ---------------------------------------------------------------------------------- pilot tests


@run_async
async def test_open_embedded_model_and_browse_tree():
    app = SSMProfileApp()  # default: the embedded tiny-mamba, loaded in a worker
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.loaded is not None and app.loaded.source.name == "tiny-mamba"
        assert app.analysis.model.architecture == "mamba"
        tree = app.query_one("#anatomy-tree", Tree)
        assert app.focused is tree
        top = [str(n.label).split()[0] for n in tree.root.children]
        assert top[0] == "model" and top[-1] == "units" and "layer" in top
        detail = app.query_one("#detail-table", DataTable)
        rows = {r[0]: r[1] for r in cell_texts(detail)}
        assert f"{app.analysis.totals.parameters:,}" in rows["parameters"]
        assert rows["% whole-model params"].endswith("%")  # every share's key names its total

        await pilot.press("down", "down")  # model, layer 0
        assert tree.cursor_node.data.kind == "layer" and tree.cursor_node.data.layer == 0
        assert "horizon (tokens)" in [row[0] for row in cell_texts(detail)]  # dynamics of the layer
        await pilot.press("right", "down")  # expand layer 0, first group
        node = tree.cursor_node.data
        assert node.kind == "group" and node.group.group == "in_proj"
        rows = {r[0]: r[1] for r in cell_texts(detail)}
        assert rows["numel"].startswith(f"{node.group.numel:,}")
        assert rows["% whole-model params"].endswith("%") and "% weights >4σ" in rows
        assert all(v.endswith("% of weights") for k, v in rows.items() if k.startswith("sub-block"))
        assert any(k.startswith("sub-block") for k in rows)  # x / z blocks of in_proj
        await pilot.press("right", "down")  # expand in_proj, its tensor
        assert tree.cursor_node.data.kind == "tensor"
        assert "shape" in {r[0]: r[1] for r in cell_texts(detail)}
        await pilot.press("left")  # leaf: back to the group
        assert tree.cursor_node.data.kind == "group"
        await pilot.press("left")  # expanded group: collapse
        assert not tree.cursor_node.is_expanded


@run_async
async def test_open_run_dir_shows_saved_profile_without_loading_the_model(saved_run):
    from ssm_profile.profiling.results import ProfileResult

    assert is_run_dir(str(saved_run))
    app = SSMProfileApp(str(saved_run))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.loaded is None  # nothing recomputed, no model loaded
        expected = ProfileResult.load(saved_run)
        assert len(app.result.trials) == len(expected.trials)
        assert app.analysis.model.architecture == "mamba2"
        assert app.query_one("#anatomy-tree", Tree).root.children  # anatomy from analysis.json

        await pilot.press("2")
        view = app.query_one("SensitivityView")
        assert view.criterion == "fisher"  # the run's layer criterion first
        assert view.target == expected.ranking()[0].target  # most sensitive target first
        curve = app.query_one("#curve-table", DataTable)
        assert curve.row_count == 2  # two sparsities
        await pilot.press("c")
        assert view.criterion == "magnitude"
        first = cell_texts(curve)
        await pilot.press("c")
        assert view.criterion == "fisher" and cell_texts(curve) != first
        await pilot.press("m")
        assert view.metric == "rel"
        before = view.target
        await pilot.press("t")
        assert view.target != before
        await pilot.press("v")
        assert app.query_one("#sens-tabs").active == "scores"
        await pilot.press("v")
        heat = app.query_one("#heat-table", DataTable)
        assert heat.row_count == len(expected.analysis.layers())  # one row per layer
        await pilot.press("v")
        rank = app.query_one("#rank-table", DataTable)
        assert rank.row_count == len(expected.ranking())
        assert str(rank.get_row_at(0)[1]) == expected.ranking()[0].target
        find = app.query_one("#find-table", DataTable)
        findings = expected.findings()
        assert [str(find.get_row_at(i)[1]) for i in range(find.row_count)] == [f.windows_text for f in findings]


@run_async
async def test_unknown_model_shows_error_screen():
    app = SSMProfileApp("no-such-model-xyz")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, ErrorScreen)
        assert "unknown model 'no-such-model-xyz'" in app.screen.message
        assert isinstance(app.load_error, SSMProfileError)
        await pilot.press("escape")
        assert not isinstance(app.screen, ErrorScreen)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


@run_async
async def test_damaged_run_shows_its_one_line_error_not_a_bug(saved_run, tmp_path):
    """A tolerance string in run.json showed the "this looks like a bug" dialog (a TypeError deep in the ranking)."""
    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    meta = json.loads((run / "run.json").read_text())
    meta["settings"]["tolerance"] = "x"
    (run / "run.json").write_text(json.dumps(meta))
    app = SSMProfileApp(str(run))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, ErrorScreen)
        assert "settings.tolerance" in app.screen.message and "bug" not in str(app.screen.hint)
        assert isinstance(app.load_error, SSMProfileError)


@run_async
async def test_unreachable_hub_shows_error_screen():
    app = SSMProfileApp("mamba-130m")  # the conftest makes the hub offline with an empty cache
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, ErrorScreen)
        assert "mamba-130m" in app.screen.message and "cache" in app.screen.message


@run_async
async def test_profile_from_the_ui_cancel_then_resume(tmp_path):
    app = SSMProfileApp("tiny-mamba2")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("3")
        criteria = app.query_one("#profile-criteria", SelectionList)
        criteria.deselect_all()
        criteria.select("magnitude")
        values = {"sparsities": "0.5", "nsamples": "2", "eval-samples": "2", "seqlen": "16",
                  "output": str(tmp_path / "ui-run")}
        for key, value in values.items():
            app.query_one(f"#profile-{key}", Input).value = value
        app.query_one("#profile-per-layer").value = False
        view = app.query_one("ProfileView")
        report = view._progress_from_thread

        def slow_progress(done, total, label):  # ~0.1 s per trial, so that x lands mid-run
            report(done, total, label)
            if total > 1:
                time.sleep(0.1)

        view._progress_from_thread = slow_progress
        app.query_one("#profile-start").focus()
        await pilot.press("r")
        while not str(app.query_one("#profile-eta").content).startswith("2/"):
            await pilot.pause(0.05)
        await pilot.press("x")
        await settle(pilot)
        assert not view.running
        message = str(app.query_one("#profile-msg").content)
        assert "cancelled:" in message
        kept = int(message.split("cancelled: ")[1].split()[0])  # the count kept is the bar's count
        assert kept == len(app.result.trials) == app.query_one("#profile-bar").progress
        assert str(app.query_one("#profile-eta").content).startswith(f"{kept}/")
        assert 0 < len(app.result.trials) < 10  # partial results from the journal are shown
        assert app.result.record.status == "running"
        assert app.query_one("#profile-resume").value  # resume ticked for the next start
        view._progress_from_thread = report
        await pilot.press("r")
        await settle(pilot)
        assert app.result is not None and app.result.record.status == "complete"
        assert {t.target for t in app.result.trials} >= {"in_proj", "unit:head"}
        assert app.query_one("#profile-bar").percentage == 1.0
        assert (tmp_path / "ui-run" / "run.json").is_file()
        await pilot.press("2")
        assert app.query_one("SensitivityView").criterion == "magnitude"


@needs_planner
@run_async
async def test_replan_export_and_apply(run_here, tmp_path):
    app = SSMProfileApp(run_here)
    async with app.run_test(size=SIZE) as pilot:
        await on_tab(pilot, "4", wait=0.2)
        plan_view = app.query_one("PlanView")
        assert plan_view.plan is not None and plan_view.plan.objective.ratio is None
        first = plan_view.plan
        app.query_one("#plan-ratio", Input).value = "0.05"
        app.query_one("#plan-ratio", Input).value = "0.1"  # debounced: one solve for both changes
        await settle(pilot, 0.5)
        plan = plan_view.plan
        assert plan is not first and plan.objective.ratio == 0.1
        assert plan.predicted.reduction_ratio >= 0.1
        assert app.query_one("#plan-actions", DataTable).row_count == len(plan.actions)
        app.query_one("#plan-ratio", Input).value = "0.99"  # infeasible: a message, not a crash
        await settle(pilot, 0.5)
        assert plan_view.plan is None and "cannot remove" in str(app.query_one("#plan-summary").content)
        app.query_one("#plan-ratio", Input).value = "0.1"
        app.query_one("#plan-tolerance", Input).value = "10"  # the CLI's rule: refused, never read as +1000%
        await settle(pilot, 0.5)
        assert plan_view.plan is None and "would mean 1000%" in str(app.query_one("#plan-summary").content)
        app.query_one("#plan-tolerance", Input).value = "10%"
        await settle(pilot, 0.5)
        assert plan_view.plan is not None and plan_view.plan.objective.max_ppl_increase == 0.1

        app.query_one("#plan-path", Input).value = str(tmp_path / "plan.json")
        app.query_one("#plan-actions").focus()
        await pilot.press("e")
        await settle(pilot)
        saved = json.loads((tmp_path / "plan.json").read_text())
        assert saved["kind"] == "ssm-profile-plan" and saved["objective"]["ratio"] == 0.1
        await pilot.click("#plan-export-button")  # exists now: refused, reported, nothing overwritten
        await settle(pilot)
        assert json.loads((tmp_path / "plan.json").read_text()) == saved

        await pilot.press("a")
        assert app.active_tab == "apply"
        app.query_one("#apply-output", Input).value = str(tmp_path / "pruned")
        app.query_one("#apply-lm-eval").value = False
        app.query_one("#apply-run").focus()
        await pilot.press("r")
        await settle(pilot)
        assert not isinstance(app.screen, ErrorScreen)
        report = app.query_one("ApplyView").report
        assert report is not None and (tmp_path / "pruned" / "pruning.json").is_file()
        assert report.validation.within_tolerance is not None
        rows = {r[0]: r for r in cell_texts(app.query_one("#apply-table", DataTable))}
        assert "nonzero parameters" in rows and "perplexity, search windows" in rows  # the shared before/after labels
        assert any(label.endswith("verification windows (held out)") for label in rows)

        # the same summaries from the documents read back from their files alone
        from ssm_profile.documents import load_plan, load_pruning_record, load_validation

        stored = load_pruning_record(tmp_path / "pruned" / "pruning.json")
        stored.validation = load_validation(tmp_path / "pruned" / "validation.json")
        app.query_one("ApplyView").show_report(stored)
        assert {r[0]: r for r in cell_texts(app.query_one("#apply-table", DataTable))} == rows
        shown = str(app.query_one("#plan-summary").content)
        plan_view.show_plan(load_plan(tmp_path / "plan.json"))
        assert str(app.query_one("#plan-summary").content) == shown and "predicted ΔL" in shown


@run_async
async def test_keys_show_on_tabs_footer_and_palette(run_here):
    """Every tab names its key; every tab's footer shows open, tabs and help; the palette lists the app's actions."""
    from textual.widgets import TabbedContent

    app = SSMProfileApp(run_here)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        tabs = app.query_one("#main", TabbedContent)
        labels = [str(tabs.get_tab(t).label) for t in ("anatomy", "sensitivity", "profile", "plan", "apply")]
        assert labels == ["1 Anatomy", "2 Sensitivity", "3 Profile", "4 Plan", "5 Apply"]
        for key in "12345":
            await pilot.press(key)
            await settle(pilot, 0.2)
            shown = {b.binding.description for b in app.active_bindings.values() if b.binding.show}
            assert {"Open", "Tabs", "Help", "Quit"} <= shown, (key, shown)
        await pilot.press("4")
        await settle(pilot, 0.8)  # the plan is solved
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Open model or run (o)" in titles and "Go to Plan (4)" in titles
        assert "Export plan (e)" in titles  # on the Plan tab …
        assert "Next criterion (c)" not in titles  # … but not the Sensitivity tab's keys
        await pilot.press("2")
        assert "Next criterion (c)" in [c.title for c in app.get_system_commands(app.screen)]


@run_async
async def test_open_another_model_after_a_load_error():
    from ssm_profile.tui.screens import OpenScreen

    app = SSMProfileApp("no-such-model-xyz")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, ErrorScreen) and app.screen.query("#error-open")
        await pilot.press("o")
        assert isinstance(app.screen, OpenScreen)
        app.screen.query_one("#open-target", Input).value = "tiny-mamba"
        await pilot.press("enter")
        await settle(pilot, 0.3)
        assert not isinstance(app.screen, ErrorScreen)
        assert app.loaded is not None and app.loaded.source.name == "tiny-mamba" and app.analysis is not None


@needs_planner
@run_async
async def test_enter_in_the_export_path_exports(run_here, tmp_path):
    app = SSMProfileApp(run_here)
    async with app.run_test(size=SIZE) as pilot:
        await on_tab(pilot, "4", wait=0.8)
        path = app.query_one("#plan-path", Input)
        path.value = str(tmp_path / "entered.json")
        path.focus()
        await pilot.press("enter")
        await settle(pilot)
        assert json.loads((tmp_path / "entered.json").read_text())["kind"] == "ssm-profile-plan"


@run_async
async def test_help_fits_an_80x24_terminal(run_here):
    app = SSMProfileApp(run_here)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.2)
        scroll = app.screen.query_one("#help-scroll")
        assert scroll.max_scroll_y == 0 and scroll.max_scroll_x == 0  # nothing hidden


@run_async
async def test_ticked_and_unticked_boxes_differ_by_a_glyph(run_here):
    app = SSMProfileApp(run_here)
    async with app.run_test(size=SIZE) as pilot:
        await on_tab(pilot, "3")
        box = app.query_one("#profile-per-layer")
        box.value = True
        assert str(box.render()).startswith("[x]")
        box.value = False
        assert str(box.render()).startswith("[ ]")
        criteria = app.query_one("#profile-criteria", SelectionList)
        lines = ["".join(seg.text for seg in criteria.render_line(y)) for y in range(criteria.option_count)]
        chosen = set(criteria.selected)
        for line, option in zip(lines, (criteria.get_option_at_index(i) for i in range(criteria.option_count))):
            assert line.startswith("[x]" if option.value in chosen else "[ ]"), line


@run_async
async def test_keys_typed_in_a_field_go_into_the_field_only(run_here):
    """r (run), 1 (a tab) and e (export) typed in a text field are text, not the app's keys."""
    app = SSMProfileApp(run_here)
    async with app.run_test(size=SIZE) as pilot:
        await on_tab(pilot, "3")
        field = app.query_one("#profile-output", Input)
        field.value = "runs/tui-run"
        field.focus()
        await settle(pilot)
        await pilot.press("end", "r", "1", "e")
        await settle(pilot)
        assert field.value == "runs/tui-runr1e"
        assert not app.query_one("ProfileView").running
        assert app.query_one("TabbedContent").active == "profile"


@needs_planner
@run_async
async def test_space_ticks_the_measure_box(run_here):
    app = SSMProfileApp(run_here)
    async with app.run_test(size=SIZE) as pilot:
        await on_tab(pilot, "4", wait=0.2)
        box = app.query_one("#plan-measure")
        box.focus()
        await settle(pilot)
        before = box.value
        await pilot.press("space")
        await settle(pilot)
        assert box.value is not before


@run_async
async def test_the_palettes_screenshot_is_saved_and_says_where(run_here, tmp_path, monkeypatch):
    """Textual saves into ~/Downloads by default, which need not exist: it failed there."""
    monkeypatch.setenv("HOME", str(tmp_path / "no-downloads-here"))
    app = SSMProfileApp(run_here)
    async with app.run_test(size=SIZE) as pilot:
        await on_tab(pilot)
        app.deliver_screenshot()
        await settle(pilot, 0.5)
        said = " ".join(n.message for n in app._notifications)
    saved = list(Path.cwd().glob("*.svg"))
    assert len(saved) == 1 and "Saved screenshot" in said and saved[0].name in said


async def _plan_summary(run_dir: Path, plan_of) -> str:
    """The Plan tab's summary, words joined, after showing ``plan_of(result)``."""
    app = SSMProfileApp(run_dir)
    async with app.run_test(size=SIZE) as pilot:
        await on_tab(pilot, "4", wait=0.2)
        app.query_one("PlanView").show_plan(plan_of(app.result))
        await settle(pilot)
        return " ".join(str(app.query_one("#plan-summary").content).split())


@needs_planner
@run_async
async def test_a_mixed_plan_says_the_rest_is_zeros(run_here):
    """"−1.1% of whole-model params (1.23k sliced)" read as a size win; 9.00k of it are zeros."""
    from test_report import make_plan  # a plan with one sliced and one zeroed action

    said = await _plan_summary(run_here, make_plan)
    assert "(1.23k sliced, 9.00k zeros)" in said


@needs_planner
@run_async
async def test_a_measured_plan_shows_its_promise_on_held_out_windows(run_here):
    """A measured plan whose verification broke was shown with its search-window figure only."""
    from dataclasses import replace

    from ssm_profile.documents import Certification, DomainCheck, Verification
    from test_report import make_plan

    def check(rel: float) -> Verification:
        return Verification(dense_loss=4.0, loss=4.0, delta_loss=rel, rel_ppl_increase=rel,
                            interval=[rel - 0.01, rel + 0.01], windows=17, max_ppl_increase=0.10, kept=rel <= 0.10)

    certified = Certification(rule="prediction-bound", level=0.95, windows=16, unseen_windows=17, increase=0.05,
                              bound=0.08, max_ppl_increase=0.10, certified=True, why="")
    prose = DomainCheck(source="prose.txt", certification=certified, verification=check(0.23))
    said = await _plan_summary(run_here, lambda result: replace(make_plan(result), verification=check(0.04),
                                                                 domains=[prose]))
    assert "verification (17 held-out windows): perplexity +4.0%" in said and said.count(": kept") == 1
    assert "also on prose.txt: verification (17 held-out windows): perplexity +23.0%" in said
    assert "the promise is NOT kept on verification" in said


def test_core_messages_read_in_the_uis_words():
    from ssm_profile.tui.format import in_ui_terms

    said = in_ui_terms("runs/x holds a run; pass --overwrite to replace it or --resume to continue; lower "
                       "--seqlen or pass --force")
    assert "--" not in said
    assert "tick overwrite to replace it or tick resume" in said and "the seqlen field" in said
    assert in_ui_terms("a well-known name") == "a well-known name"


@needs_planner
@run_async
async def test_an_export_refused_says_so_in_the_uis_words(run_here):
    app = SSMProfileApp(run_here)
    async with app.run_test(size=SIZE) as pilot:
        await on_tab(pilot, "4", wait=0.2)
        Path("exists.json").write_text("{}")
        app.query_one("#plan-path", Input).value = "exists.json"
        await pilot.press("e")
        await settle(pilot, 0.3)
        said = " ".join(str(n.message) for n in app._notifications)
    assert "tick overwrite" in said and "--overwrite" not in said


@needs_planner
@run_async
async def test_an_export_onto_an_input_is_refused_in_one_line_as_the_cli_does(run_here, tmp_path):
    """The TUI goes through the CLI's one output rule (base.outputs.check_paths): a plan exported with
    overwrite ticked onto the model's config.json (measuring reads the model) or the run's run.json is
    refused in one line, before any measuring; nothing is written."""
    from ssm_profile.model.resolve import locate

    model = tmp_path / "model-copy"
    shutil.copytree(locate("tiny-mamba2").location, model)
    app = SSMProfileApp(run_here)
    async with app.run_test(size=SIZE) as pilot:
        await on_tab(pilot, "4", wait=0.2)
        app.model_name = lambda: str(model)  # the run's model as a local folder (refused before it would load)
        app.query_one("#plan-overwrite", Checkbox).value = True
        app.query_one("#plan-measure", Checkbox).value = True
        targets = [model / "config.json", Path(run_here) / "run.json"]
        before = {path: path.read_bytes() for path in targets}
        for target in targets:
            app.query_one("#plan-path", Input).value = str(target)
            await pilot.press("e")
            await settle(pilot, 0.3)
        said = [str(n.message) for n in app._notifications]
        assert not isinstance(app.screen, ErrorScreen)
    assert {path: path.read_bytes() for path in targets} == before
    assert any(f"'{targets[0]}' lies inside the run's "
               f"model folder '{model}'" in m for m in said), said
    assert any(f"plan '{targets[1]}' is the run's file" in m for m in said), said
    assert all("\n" not in m for m in said)


def test_default_save_path_is_beside_never_inside(tmp_path):
    from ssm_profile.tui.plan_view import free_output_dir

    assert free_output_dir("tiny-mamba", tmp_path) == "pruned-tiny-mamba"
    (tmp_path / "pruned-tiny-mamba").mkdir()  # the quick start's output: never nested into, never reused
    assert free_output_dir("tiny-mamba", tmp_path) == "pruned-tiny-mamba-2"
    assert "/" not in free_output_dir("state-spaces/mamba-130m-hf", tmp_path)


@run_async
async def test_curves_label_every_criterion_and_use_percent(run_here):
    app = SSMProfileApp(run_here)
    async with app.run_test(size=SIZE) as pilot:
        await on_tab(pilot, "2", wait=0.3)
        view = app.query_one("SensitivityView")
        drawn = app.query_one("#curve-plot").plt.build()
        for criterion in view.criteria:
            assert criterion in drawn, criterion  # in the legend, not only the selected one
        assert "50%" in drawn and "tolerance" in drawn
        assert view.tolerance_line() > 0


def test_cli_routes_model_and_run_dir_to_tui(monkeypatch, saved_run):
    from ssm_profile.cli import main as cli

    seen = {}

    class FakeApp:
        return_code = 0

        def __init__(self, model, load_options, threads):
            seen.update(model=model, options=load_options)

        def run(self):
            seen["ran"] = True

    monkeypatch.setattr("ssm_profile.tui.app.SSMProfileApp", FakeApp)
    monkeypatch.setattr("ssm_profile.cli.tui_cmd._has_terminal", lambda: True)
    assert cli.main([str(saved_run)]) == 0
    assert seen["ran"] and seen["model"] == str(saved_run)
    assert cli.main(["tiny-mamba2", "--dtype", "float32"]) == 0
    assert seen["model"] == "tiny-mamba2" and seen["options"]["dtype"] == "float32"


@pytest.mark.parametrize("argv,message", [
    (["plann", "runs/x"], "unknown command 'plann'; did you mean 'plan'?"),
    (["valdate"], "unknown command 'valdate'; did you mean 'validate'?"),
    (["zzz"], "'zzz' is neither a command, a model nor a run directory"),
])
def test_a_mistyped_command_is_one_line_with_the_nearest_command(argv, message, capsys):
    from ssm_profile.cli import main as cli

    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_the_ui_never_starts_without_a_terminal(capsys):
    from ssm_profile.cli import main as cli

    assert cli.main(["tiny-mamba"]) == 2  # pytest's output is no terminal
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs a terminal" in err


# ---------------------------------------------------------------------------------- snapshots

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


def _after(*keys: str, wait: float = 0.05):
    async def run_before(pilot) -> None:
        await on_tab(pilot, *keys, wait=wait)
        await pilot.pause(0.2)  # tables size their columns when idle

    return run_before


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_anatomy(snap_compare, run_here, size):
    assert snap_compare(SSMProfileApp(run_here), terminal_size=size,
                        run_before=_after("down", "down", "right", "down"))


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_sensitivity_curves(snap_compare, run_here, size):
    assert snap_compare(SSMProfileApp(run_here), terminal_size=size, run_before=_after("2"))


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_profile_form(snap_compare, run_here, size):
    assert snap_compare(SSMProfileApp(run_here), terminal_size=size, run_before=_after("3"))


@needs_planner
@pytest.mark.parametrize("size", SIZES)
def test_snapshot_plan(snap_compare, run_here, size):
    async def run_before(pilot) -> None:
        await _after("4", wait=0.8)(pilot)  # past the re-plan debounce
        from ssm_profile.tui.plan_view import PlanView

        # A loaded machine may still be solving, handing the plan over or sizing the table's columns
        # (DataTable measures new rows when idle): wait until no re-plan is pending or running, the
        # table holds the plan's actions and every column is as wide as its widest cell.
        view, table = pilot.app.query_one(PlanView), pilot.app.query_one("#plan-actions", DataTable)
        deadline = time.monotonic() + 120
        while not (view._timer is None and not any(w.is_running for w in pilot.app.workers)
                   and view.plan is not None and table.row_count == len(view.plan.actions)
                   and _columns_fit_cells(table) and not table._require_update_dimensions):
            assert time.monotonic() < deadline, "the Plan tab did not settle within 120 s"
            await settle(pilot, 0.1)
        await pilot.pause()  # one more idle pass: the table repaints at its new column widths

    assert snap_compare(SSMProfileApp(run_here), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_help(snap_compare, run_here, size):
    assert snap_compare(SSMProfileApp(run_here), terminal_size=size, run_before=_after("question_mark"))


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_error(snap_compare, size):
    assert snap_compare(SSMProfileApp("no-such-model-xyz"), terminal_size=size, run_before=_after())


@pytest.mark.skipif(os.environ.get("SSM_PROFILE_GALLERY") != "1" or shutil.which("rsvg-convert") is None,
                    reason="writes the README gallery picture: set SSM_PROFILE_GALLERY=1 (needs rsvg-convert)")
@run_async
async def test_gallery_picture_of_the_curves(run_here):
    import subprocess

    out = Path(__file__).resolve().parents[1] / "docs" / "gallery" / "tui-sensitivity.png"
    app = SSMProfileApp(run_here)
    async with app.run_test(size=SIZE) as pilot:
        await _after("2")(pilot)
        svg = Path(app.save_screenshot(filename="tui.svg", path=str(Path.cwd())))
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["rsvg-convert", "--width", "1000", str(svg), "-o", str(out)], check=True)
    assert 10_000 < out.stat().st_size < 300_000


@run_async
async def test_apply_tab_recovers_a_pruned_checkpoint(run_here, tmp_path):
    """The Recover button distils the pruned folder in a worker and reports before → after."""
    from ssm_profile.pruning.apply import apply_plan
    from ssm_profile.model.resolve import load_model

    from test_recover import DATA, SPARSE_ACTIONS
    from test_apply_validate import make_plan

    loaded = load_model("tiny-mamba")
    pruned = tmp_path / "pruned"
    apply_plan(loaded, make_plan(loaded, SPARSE_ACTIONS, data=DATA), pruned)
    app = SSMProfileApp(run_here)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("5")
        app.query_one("#recover-pruned", Input).value = str(pruned)
        app.query_one("#recover-steps", Input).value = "2"
        app.query_one("#recover-run").press()
        await settle(pilot)
        assert not isinstance(app.screen, ErrorScreen)
        record = app.query_one("RecoverPanel").record
        assert record is not None and record.progress.steps_done == 2
        assert (tmp_path / "pruned-recovered" / "recovery.json").is_file()
        assert "→" in str(app.query_one("#recover-msg").content)
