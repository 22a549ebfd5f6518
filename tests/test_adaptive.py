"""The adaptive sweep: early stopping, schedule purity, budget, partial trials downstream, agreement with the grid."""

from __future__ import annotations

import argparse
import json
import math
import zlib

import numpy as np
import pytest
import torch

from ssm_profile.criteria import Criterion
from ssm_profile.profiling.adaptive import AdaptiveSchedule, Budget
from ssm_profile.cli.main import main
from ssm_profile.cli.options import duration
from ssm_profile.calibration.data import DataSpec
from ssm_profile.profiling.earlystop import StopRule
from ssm_profile.profiling.journal import parse_record
from ssm_profile.profiling.record import ProfileSettings
from ssm_profile.profiling.profile import profile_model
from ssm_profile.model.resolve import load_model
from ssm_profile.profiling.schedule import run_schedule
from ssm_profile.profiling.sensitivity import SequentialRunner, Trial, TrialSpec

TOL = 0.10


# ---------------------------------------------------------------------- early stopping
def test_stops_a_trial_far_outside_tolerance():
    rule = StopRule(TOL, windows=16, chunk=4)
    paired = np.random.default_rng(0).normal(1.0, 0.2, size=16)  # ΔL 1 nat: perplexity x2.7
    assert rule.should_stop(paired[:4])
    assert not rule.should_stop(paired[:2])  # too few windows for a spread
    assert not rule.should_stop(paired)  # nothing left to save after the last chunk


def test_never_stops_a_trial_within_tolerance():
    rule = StopRule(TOL, windows=16, chunk=4)
    rng = np.random.default_rng(1)
    at_tolerance = math.log1p(TOL)
    stops = 0
    for _ in range(2000):  # windows whose true mean is exactly at the tolerance, spread as wide as the mean
        paired = rng.normal(at_tolerance, at_tolerance, size=16)
        stops += any(rule.should_stop(paired[:n]) for n in range(4, 16, 4))
    assert stops == 0


def test_stop_error_rate_at_the_line_is_below_alpha():
    """At the stopping line itself (k x tolerance) the rule errs at most alpha of the time."""
    rule = StopRule(TOL, windows=16, chunk=4)
    rng = np.random.default_rng(2)
    stops = sum(any(rule.should_stop(p[:n]) for n in range(4, 16, 4))
                for p in rng.normal(rule.threshold, 0.3, size=(4000, 16)))
    assert stops / 4000 <= rule.alpha


# ---------------------------------------------------------------------- a synthetic sweep
def _curve(target: str, criterion: str, sparsity: float, layer: int | None, span: int) -> float:
    """A made-up ΔL: convex in sparsity, target and criterion scale it; layer 0 is the sensitive one."""
    scale = {"a": 0.05, "b": 0.4, "c": 2.0}[target] * {"good": 1.0, "bad": 3.0}[criterion]
    if layer is not None:
        return scale * sparsity ** 2 * sum(4.0 if l == 0 else 0.2 for l in range(layer, layer + span)) / 8
    return scale * sparsity ** 2 * (1 + 4 * sparsity ** 4)


class FakeRunner(SequentialRunner):
    """Trials from ``_curve`` with per-window noise; stopped when far outside tolerance."""

    def __init__(self, seconds: float = 1.0, noise: float = 0.002, layer_scale: float = 1.0):
        self.seconds, self.noise, self.layer_scale = seconds, noise, layer_scale
        self.rule = StopRule(TOL, windows=8, chunk=4)

    def run_one(self, spec: TrialSpec) -> Trial:
        delta = _curve(spec.target, spec.criterion, spec.sparsity, spec.layer, spec.span)
        delta *= self.layer_scale if spec.layer is not None else 1.0
        seed = zlib.crc32(spec.key.encode())  # the same noise in every process (str hash is salted)
        paired = delta + np.random.default_rng(seed).normal(0, self.noise, size=8)
        stopped = self.rule.should_stop(paired[:4])
        losses = paired[:4] if stopped else paired
        mean = float(losses.mean())
        return Trial(spec.target, spec.criterion, spec.sparsity, spec.layer, 3.0 + mean, mean, math.exp(3 + mean),
                     math.expm1(mean), 1, mean * 0.5, self.seconds, [3.0 + x for x in losses], spec.span, stopped)



def _schedule(**kw) -> AdaptiveSchedule:
    pairs = [(t, c) for t in "abc" for c in ("good", "bad")]
    levels = [round(0.1 * i, 1) for i in range(1, 10)]
    return AdaptiveSchedule(pairs, levels, probe=0.5, tolerance=TOL, layer_targets=list("abc"), layers=range(12),
                            layer_criterion="good", predict=lambda s: 0.5 * _curve(s.target, s.criterion, s.sparsity,
                                                                                   None, 1), **kw)


def _run(schedule, finished=None, cancel=None) -> dict[str, Trial]:
    finished = {} if finished is None else finished
    run_schedule(schedule, FakeRunner(), finished, None, lambda *a: None, cancel)
    return finished


def test_schedule_finds_the_boundary_with_fewer_trials_than_the_grid():
    finished = _run(_schedule())
    grid = 3 * 2 * 9 + 3 * 12
    assert len(finished) < grid / 2
    for target in "abc":  # the largest safe level, verified by measurement on both sides
        curve = {t.sparsity: t for t in finished.values() if t.target == target and t.layer is None
                 and t.criterion == "good"}
        truth = max([0.0] + [s for s in curve if all(math.expm1(_curve(target, "good", x, None, 1)) <= TOL
                                                     for x in [0.1 * i for i in range(1, 10)] if x <= s + 1e-9)])
        safe = [s for s, t in sorted(curve.items()) if not t.stopped and t.rel_ppl_increase <= TOL]
        assert safe and max(safe) == pytest.approx(truth) or truth == 0.0
        above = [s for s in curve if s > truth + 1e-9]
        assert truth == 0.9 or round(min(above) - truth, 6) == 0.1  # the next grid level was measured lost
    # layer blocks: layer 0 is the sensitive one, so it is resolved to a single layer; others stay in blocks
    layers = [t for t in finished.values() if t.layer is not None and t.target == "c"]
    assert any(t.layer == 0 and t.span == 1 for t in layers)
    assert len(layers) < 12


def test_layer_blocks_are_split_only_where_their_loss_is_surely_material():
    """Blocks whose ΔL the windows cannot tell from the floor (noise) are not split; the same layout
    with a clearly sensitive layer 0 is resolved down to it."""
    def layer_trials(runner):
        finished: dict[str, Trial] = {}
        run_schedule(_schedule(dense_losses=[3.0] * 8), runner, finished, None, lambda *a: None)
        return [t for t in finished.values() if t.layer is not None and t.target == "c"]

    quiet = layer_trials(FakeRunner(noise=0.05, layer_scale=0.02))  # block ΔL ≈ 0.01-0.05, noise 0.05 a window
    assert all(t.span == 3 for t in quiet) and len(quiet) == 4  # the first four blocks only
    loud = layer_trials(FakeRunner())
    assert any(t.layer == 0 and t.span == 1 for t in loud)


def test_resume_after_cancel_replays_the_same_trials():
    full = _run(_schedule())
    calls = {"n": 0}

    def cancel_after(n):
        def cancel():
            calls["n"] += 1
            return calls["n"] > n
        return cancel

    for cut in (3, 9, 20):
        calls["n"] = 0
        part: dict[str, Trial] = {}
        with pytest.raises(KeyboardInterrupt):
            _run(_schedule(), part, cancel_after(cut))
        assert len(part) == cut
        resumed = _run(_schedule(), dict(part))
        assert list(resumed) == list(full)


def test_budget_bounds_the_trial_time_and_replays():
    budget = Budget(seconds=20.0, setup_s=5.0, trial_s=1.0)
    finished = _run(_schedule(budget=budget))
    assert sum(t.seconds for t in finished.values()) <= budget.seconds - budget.setup_s
    assert len(finished) == 15 and _schedule(budget=budget).exhausted(finished)
    # the probe (highest priority) went first
    assert all(TrialSpec(t, c, 0.5).key in finished for t in "abc" for c in ("good", "bad"))
    more = _run(_schedule(budget=Budget(seconds=500.0, setup_s=5.0, trial_s=1.0)))
    unbounded = _run(_schedule())
    assert set(unbounded) <= set(more)  # time left after the stages goes to more levels and splits
    assert len(more) > len(unbounded)


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("10m", 600), ("1h", 3600), ("1.5h", 5400), ("45", 45),
                                          (" 2M ", 120)])
def test_duration_parses(text, seconds):
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["10x", "m", "", "-5m", "0s", "nanm", "infh"])
def test_duration_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


def test_cli_refuses_a_bad_budget_in_one_line(tmp_path, capsys):
    assert main(["profile", "tiny-mamba2", "-o", str(tmp_path / "r"), "--quiet", "--budget", "ten"]) == 2
    err = capsys.readouterr().err
    assert "duration" in err and "Traceback" not in err
    assert main(["profile", "tiny-mamba2", "-o", str(tmp_path / "r"), "--quiet", "--budget", "1m",
                 "--sweep", "grid"]) == 2
    assert "--budget needs --sweep adaptive" in capsys.readouterr().err


# ---------------------------------------------------------------------- journal and partial trials
def test_old_journal_records_still_load():
    old = {"target": "in_proj", "criterion": "fisher", "sparsity": 0.5, "layer": None, "loss": 3.1,
           "delta_loss": 0.1, "perplexity": 22.2, "rel_ppl_increase": 0.105, "pruned_params": 10,
           "predicted_delta": None, "seconds": 0.5, "window_losses": [3.0, 3.2]}
    trial = parse_record(json.dumps(old).encode())
    assert trial.span == 1 and not trial.stopped and trial.windows_evaluated == 2
    assert trial.key == "in_proj|fisher|0.5000|all"
    assert TrialSpec("D", "fisher", 0.5, 4, 3).key == "D|fisher|0.5000|4-6"


SMALL = DataSpec(nsamples=4, eval_samples=8, seqlen=32)


@pytest.fixture(scope="module")
def loaded():
    return load_model("tiny-mamba")


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def runs(loaded, runs_dir):
    """Grid and adaptive profiles of tiny-mamba on the same small data."""
    base = dict(criteria=["magnitude", "fisher"], per_layer=False, batch_size=4,
                targets=["in_proj", "conv1d", "D", "out_proj", "unit:state"])
    out = runs_dir
    grid = profile_model(loaded, SMALL, ProfileSettings(sweep="grid", **base), run_dir=out / "grid")
    adaptive = profile_model(loaded, SMALL, ProfileSettings(**base), run_dir=out / "adaptive")
    return grid, adaptive


def test_adaptive_agrees_with_the_grid_on_tiny_mamba(runs):
    from scipy.stats import kendalltau

    grid, adaptive = runs
    window_tokens = [sum(t.windows_evaluated for t in r.trials) for r in (grid, adaptive)]
    assert window_tokens[0] >= 3 * window_tokens[1]
    g, a = ({row.target: row for row in r.ranking()} for r in (grid, adaptive))
    assert set(g) == set(a)
    close = [abs(g[t].max_safe_sparsity - a[t].max_safe_sparsity) <= 0.1 + 1e-9 for t in g]
    assert sum(close) >= 0.9 * len(close)
    order = list(g)
    tau = kendalltau([g[t].rank for t in order], [a[t].rank for t in order]).statistic
    assert tau >= 0.8
    # a trial the adaptive run measured to the end equals the grid's (same windows, same batches)
    both = [(t, grid.trial(t.target, t.criterion, t.sparsity)) for t in adaptive.trials if not t.partial]
    assert both and all(abs(t.loss - u.loss) < 1e-5 for t, u in both if u is not None)
    # and a screen (the first windows only) holds the grid trial's losses on those windows
    screens = [(t, grid.trial(t.target, t.criterion, t.sparsity)) for t in adaptive.trials if t.screen]
    assert screens and all(t.windows_evaluated == t.screen for t, _ in screens)
    assert all(t.window_losses == pytest.approx(u.window_losses[: t.screen], abs=1e-5) for t, u in screens)


def test_screens_complete_only_the_leader(runs, runs_dir):
    """Per target every criterion is screened on the first windows; the leader alone is completed,
    its completion supersedes its screen, and the ranking's best criterion is that leader."""
    from ssm_profile.profiling.journal import read_journal

    _, adaptive = runs
    journal = read_journal(runs_dir / "adaptive" / "trials.jsonl")
    best = {row.target: row.best_criterion for row in adaptive.ranking()}
    screened = 0
    for target in best:
        screens = [t for t in journal if t.target == target and t.screen]
        if len(screens) < 2:
            continue
        screened += 1
        assert {t.criterion for t in screens} == {"magnitude", "fisher"} and all(t.sparsity == 0.5 for t in screens)
        leader = AdaptiveSchedule.screen_leader(screens)
        assert leader == best[target]
        completed = [t for t in adaptive.trials if t.target == target and t.layer is None and not t.partial
                     and abs(t.sparsity - 0.5) < 1e-9]
        assert [t.criterion for t in completed] == [leader]
        assert not any(t.screen and t.criterion == leader for t in adaptive.trials if t.target == target)
    assert screened >= 3


def test_stopped_trials_are_lost_and_paired_on_their_windows(runs):
    _, adaptive = runs
    stopped = [t for t in adaptive.trials if t.stopped]
    assert stopped, "the tiny model has trials far outside tolerance at the top level"
    n = len(adaptive.dense_window_losses)
    for t in stopped:
        assert 0 < t.windows_evaluated < n and t.rel_ppl_increase > adaptive.tolerance
        means = adaptive.resampled_means([t])
        assert means is not None  # paired over the windows it has
        dense = np.asarray(adaptive.dense_window_losses[:t.windows_evaluated])
        assert t.delta_loss == pytest.approx(float(np.mean(np.asarray(t.window_losses) - dense)))
    for row in adaptive.ranking():
        curve = adaptive.curve(row.target, row.best_criterion)
        assert all(s.sparsity > row.max_safe_sparsity for s in curve if s.stopped)


def test_plans_never_use_a_stopped_trial(runs):
    from ssm_profile.plan.options import build_options

    _, adaptive = runs
    stopped = {(t.target, round(t.sparsity, 6), t.criterion) for t in adaptive.trials if t.stopped}
    options, _ = build_options(adaptive, "params")
    chosen = {(o.target, round(o.sparsity, 6), o.criterion) for levels in options for o in levels[1:]}
    assert chosen and not (chosen & stopped)


def test_chunked_evaluation_is_bit_identical(loaded):
    from ssm_profile.calibration.data import load_dataset
    from ssm_profile.profiling.incremental import IncrementalEvaluator
    from ssm_profile.calibration.data import batch_losses
    from ssm_profile.criteria.masks import MaskApplier

    windows = load_dataset(loaded.tokenizer, SMALL).evaluation
    model = loaded.model
    dense = batch_losses(model, windows, 4)
    evaluator = IncrementalEvaluator(model, windows, 4, dedupe=False).prepare(dense)
    name, param = next((n, p) for n, p in model.named_parameters() if "layers.1.mixer.out_proj" in n)
    keep = torch.rand(param.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    with MaskApplier(model) as applier:
        applier.apply({name: keep})
        pieces = list(evaluator.chunks(model, windows, mask={name: keep}))
        full = batch_losses(model, windows, 4)
    assert len(pieces) == 2 and torch.equal(torch.cat(pieces), full)


# ---------------------------------------------------------------------- front-ends on an adaptive run
@pytest.fixture(scope="module")
def deep_run(tmp_path_factory):
    """An adaptive profile of an 8-layer model: the layer stage measures blocks of two layers first."""
    from transformers import MambaConfig, MambaForCausalLM

    from conftest import perturb
    from ssm_profile.model.resolve import use_tokenizer

    folder = tmp_path_factory.mktemp("deep")
    torch.manual_seed(0)
    model = perturb(MambaForCausalLM(MambaConfig(vocab_size=4096, hidden_size=16, num_hidden_layers=8, state_size=4)))
    model.save_pretrained(folder / "model")
    loaded = use_tokenizer(load_model(str(folder / "model")), "embedded")
    # a tight tolerance: on random weights the floor (a tenth of it) must be below the pruning losses
    settings = ProfileSettings(criteria=["magnitude", "fisher"], targets=["in_proj", "D", "unit:state"], tolerance=0.002)
    # mean-normalised unit scores for every criterion: under the measured default (fisher combines raw
    # sums) this random model's fisher state cut costs too little (ΔL 0.0011 against 0.0061) for any
    # layer block to be worth localising, and the blocks are what these tests read
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Criterion, "unit_aggregation", "mean")
        profile_model(loaded, DataSpec(nsamples=4, eval_samples=8, seqlen=16), settings, run_dir=folder / "run")
    return folder / "run"


def test_report_renders_an_adaptive_run(deep_run, tmp_path):
    from ssm_profile.profiling.results import ProfileResult

    result = ProfileResult.load(deep_run)
    assert any(t.span > 1 for t in result.layer_trials)  # blocks were measured
    layers, targets, matrix = result.heatmap()
    assert layers == list(range(8)) and all(v is not None for row in matrix for v in row)
    assert main(["report", str(deep_run), "-o", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "Per-layer sensitivity" in html and "ΔL shared" in html
    assert main(["report", str(deep_run), "-o", str(tmp_path / "r.md"), "--format", "md"]) == 0


def test_tui_shows_an_adaptive_run(deep_run):
    import asyncio

    pytest.importorskip("textual")
    from textual.widgets import DataTable
    from ssm_profile.profiling.results import ProfileResult
    from ssm_profile.tui.app import SSMProfileApp

    expected = ProfileResult.load(deep_run)

    async def body():
        app = SSMProfileApp(str(deep_run))
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause(0.1)
            await app.workers.wait_for_complete()
            await pilot.press("2")
            await pilot.pause()
            view = app.query_one("SensitivityView")
            curve = app.query_one("#curve-table", DataTable)
            measured = expected.curve(view.target, view.criterion)
            assert curve.row_count == len(measured)  # the levels this run measured, not 9
            await pilot.press("v", "v")
            await pilot.pause()
            assert app.query_one("#heat-table", DataTable).row_count == 8
            await pilot.press("m")
            await pilot.pause()
            assert app.query_one("#heat-table", DataTable).row_count == 8

    asyncio.run(body())


def test_report_says_why_no_layer_was_resolved(deep_run):
    """An adaptive run whose targets' probes cost less than the floor has no layer blocks; the report
    says so (and why) instead of implying the per-layer sweep was off."""
    from dataclasses import replace

    from ssm_profile import reports
    from ssm_profile.profiling.results import ProfileResult

    result = ProfileResult.load(deep_run)
    flat = replace(result, trials=[t for t in result.trials if t.layer is None])
    note = flat.layer_stage_note()
    assert note and "no target" in note and "floor" in note
    assert "nothing to localize" in reports.render_html(flat)
    assert replace(flat, record=replace(flat.record, settings=replace(flat.record.settings, per_layer=False))
                   ).layer_stage_note().startswith("no per-layer sweep")
