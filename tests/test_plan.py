"""The planner: exact MILP choice, budgets, safety measurement and the plan file format.

* the MILP finds the brute-force optimum (random instances with overlaps, cuts and ceilings, and
  a synthetic ProfileResult through the whole option-building path);
* an impossible budget is a one-line PlanError naming the best reachable point;
* plans validate against the shipped schema and round-trip through ``load_plan``; malformed,
  schema-invalid, wrong-version and wrong-weights plans are one-line PlanErrors;
* end to end on a tiny profile of the embedded tiny-mamba2: the measured perplexity increase is
  within tolerance and unit indices are exactly what the run's unit scores select.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_mamba2

from ssm_profile.base.errors import PlanError
from ssm_profile.documents import load_plan, write_plan
from ssm_profile.documents.plan import plan_schema
from ssm_profile.plan import PlanRequest, make_plan
from ssm_profile.plan.options import build_options, overlaps
from ssm_profile.plan.shapes import removed_per_block, shapes_for
from ssm_profile.plan.solver import net_gain, solve_mckp
from ssm_profile.profiling.results import ProfileResult
from ssm_profile.profiling.sensitivity import Trial
from ssm_profile.profiling.record import RunRecord

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# the solver against brute force


def _brute(gains, costs, cap, budget=None, overlaps=None, ceiling=None, cuts=()):
    best = None
    for choice in itertools.product(*[range(len(row)) for row in gains]):
        cost = sum(costs[t][l] for t, l in enumerate(choice))
        gain = net_gain(choice, gains, overlaps)
        if cost > cap + 1e-12 or (ceiling is not None and gain > ceiling + 1e-9):
            continue
        if any(all(choice[t] >= l for t, l in cut.items()) for cut in cuts):
            continue
        if budget is None:
            key = -gain
        elif gain >= budget - 1e-9:
            key = cost
        else:
            continue
        if best is None or key < best:
            best = key
    return best


def _random_instance(rng: random.Random, targets: int = 4):
    gains, costs = [], []
    for _ in range(targets):
        levels = rng.randint(2, 4)
        g, c = [0.0], [0.0]
        for _ in range(levels - 1):
            g.append(g[-1] + rng.randint(1, 50) * 1000)
            c.append(c[-1] + rng.choice([0.0, rng.uniform(0, 0.05)]))
        gains.append(g)
        costs.append(c)
    overlaps = {}
    for _ in range(rng.randint(0, 4)):
        t1, t2 = sorted(rng.sample(range(targets), 2))
        l1, l2 = rng.randint(1, len(gains[t1]) - 1), rng.randint(1, len(gains[t2]) - 1)
        overlaps[((t1, l1), (t2, l2))] = rng.uniform(0, 0.5) * min(gains[t1][l1], gains[t2][l2])
    return gains, costs, overlaps


@pytest.mark.parametrize("seed", range(12))
def test_milp_matches_brute_force(seed):
    rng = random.Random(seed)
    gains, costs, overlaps = _random_instance(rng)
    cap = math.log1p(0.1)
    top = sum(row[-1] for row in gains)
    cuts = [] if seed % 3 else [{t: len(row) - 1 for t, row in enumerate(gains) if len(row) > 1 and rng.random() < .6}]
    cuts = [c for c in cuts if c]
    ceiling = None if seed % 4 else 0.5 * top
    for budget in (None, 0.2 * top, 0.5 * top, 0.9 * top):
        choice = solve_mckp(gains, costs, cap=cap, budget=budget, overlaps=overlaps, gain_ceiling=ceiling, cuts=cuts)
        want = _brute(gains, costs, cap, budget, overlaps, ceiling, cuts)
        if want is None:
            assert choice is None, (budget, choice)
            continue
        assert choice is not None
        gain = net_gain(choice, gains, overlaps)
        cost = sum(costs[t][l] for t, l in enumerate(choice))
        assert cost <= cap + 1e-9
        if budget is None:
            assert gain == pytest.approx(-want, rel=1e-9, abs=1e-6)
        else:
            assert gain >= budget - 1e-6
            assert cost == pytest.approx(want, abs=1e-7)


def test_risk_breaks_ties_only():
    # Two free ways to meet the budget; the less risky one wins, never a costlier one.
    gains = [[0, 10], [0, 10], [0, 10]]
    costs = [[0, 0.0], [0, 0.0], [0, 0.01]]
    risks = [[0, 0.05], [0, 0.01], [0, 0.0]]
    assert solve_mckp(gains, costs, cap=0.1, budget=10, risks=risks) == [0, 1, 0]
    assert solve_mckp(gains, costs, cap=0.1, budget=10) in ([1, 0, 0], [0, 1, 0])


# --------------------------------------------------------------------------------------------
# a synthetic ProfileResult (hand-made trials on the shapes of a tiny Mamba-2)


@pytest.fixture(scope="module")
def synthetic() -> ProfileResult:
    from ssm_profile.model.analysis import analyze
    from ssm_profile.model.arch import find_mixers

    model = tiny_mamba2(layers=2, n_groups=2)
    analysis = analyze(model, name="synthetic")
    rng = random.Random(7)
    dense = [4.0, 4.1, 3.9, 4.0]
    groups = {g.group: g for g in analysis.mixer_groups()}
    trials = []
    for target in ("in_proj", "conv1d", "out_proj", "unit:state", "unit:head_channel"):
        for criterion in ("magnitude", "fisher"):
            for s in (0.25, 0.5, 0.75):
                delta = rng.choice([-0.002, 0.0, 0.004, 0.01, 0.03]) * (1 + 2 * s)
                if target.startswith("unit:"):
                    pruned = 0  # not used: unit gains come from the unit families
                else:
                    numel = sum(sum(math.prod(sh) for p, sh in zip(g.params, g.shapes) if not p.endswith(".bias"))
                                for g in analysis.mixer_groups() if g.group == target)
                    pruned = round(s * numel)
                trials.append(Trial(target, criterion, s, None, dense[0] + delta, delta, math.exp(4 + delta),
                                    math.expm1(delta), pruned, None, 0.0, [x + delta for x in dense]))
    unit_scores = {}
    for criterion in ("magnitude", "fisher"):
        for m in find_mixers(model):
            for kind in ("state", "head_channel", "head"):
                count = m.unit_family(kind).count
                unit_scores.setdefault(criterion, {}).setdefault(str(m.layer), {})[kind] = \
                    [rng.random() for _ in range(count)]
    assert groups
    meta = {
        "schema_version": 1, "created": "2026-01-01T00:00:00+00:00",
        "model": {"name": "synthetic", "source": {"name": "synthetic", "kind": "local", "location": "/nowhere",
                                                  "alias": None},
                  "fingerprint": "sha256:" + "ab" * 32, "class": type(model).__name__,
                  "config": json.loads(json.dumps(model.config.to_dict(), default=str))},
        "data": {"calibration": "embedded:calibration.txt", "evaluation": "embedded:evaluation.txt", "nsamples": 4,
                 "eval_samples": 4, "seqlen": 32, "seed": 0},
        "settings": {"structure": "unstructured", "seed": 0, "batch_size": 8, "tolerance": 0.1},
    }
    return ProfileResult(record=RunRecord.from_dict(meta), analysis=analysis, dense_window_losses=dense, trials=trials,
                         unit_scores=unit_scores)


def _brute_plan(result, metric, ratio, tol):
    options, _ = build_options(result, metric, shapes=shapes_for(result))
    pairs = overlaps(options, shapes_for(result))[metric]
    gains = [[o.gain(metric) for o in levels] for levels in options]
    costs = [[o.cost for o in levels] for levels in options]
    total = {"params": "parameters", "flops": "flops_per_token", "state": "state_bytes_per_sequence"}[metric]
    budget = None if ratio is None else ratio * getattr(result.analysis.totals, total)
    return _brute(gains, costs, math.log1p(tol), budget, pairs), len(options)


@pytest.mark.parametrize("metric,ratio", [("params", None), ("params", 0.2), ("params", 0.3), ("flops", None),
                                          ("flops", 0.3), ("state", 0.25)])
def test_synthetic_plan_is_the_brute_force_optimum(synthetic, metric, ratio):
    want, n_targets = _brute_plan(synthetic, metric, ratio, 0.1)
    assert n_targets >= 2
    if want is None:
        with pytest.raises(PlanError, match="best reachable point"):
            make_plan(synthetic, PlanRequest(metric=metric, ratio=ratio, measure=False))
        return
    plan = make_plan(synthetic, PlanRequest(metric=metric, ratio=ratio, max_ppl_increase=0.1, measure=False))
    key = {"params": "params_removed", "flops": "flops_removed", "state": "state_bytes_removed"}[metric]
    if ratio is None:
        assert getattr(plan.predicted, key) == pytest.approx(-want, abs=1)
    else:
        assert plan.predicted.delta_loss == pytest.approx(want, abs=1e-7)
        assert plan.predicted.reduction_ratio >= ratio - 1e-9
    assert plan.predicted.delta_loss <= math.log1p(0.1) + 1e-9
    # flops and state fall only with structured cuts
    if metric != "params":
        assert all(a.structure == "units" for a in plan.actions)


def test_options_follow_the_measurements(synthetic):
    options, _ = build_options(synthetic, "params", shapes=shapes_for(synthetic))
    by_target = {levels[0].target: levels for levels in options}
    assert set(by_target) == {"in_proj", "conv1d", "out_proj", "unit:state", "unit:head_channel"}
    for target, levels in by_target.items():
        assert levels[0].sparsity == 0 and levels[0].cost == 0
        for o in levels[1:]:
            best = min(t.delta_loss for t in synthetic.model_trials if t.target == target
                       and t.sparsity == o.sparsity)
            assert o.delta_loss == best and o.cost == max(best, 0.0)
    # units: params_per_unit x units removed x layers
    state = by_target["unit:state"][2]
    rows = [u for u in synthetic.analysis.units if u.kind == "state"]
    assert state.params == sum(u.params_per_unit * removed_per_block(SimpleNamespace(count=u.count, blocks=2), 0.5)
                               * 2 for u in rows)
    # unstructured zeros never reduce dense FLOPs or state
    flops_targets = {levels[0].target for levels in build_options(synthetic, "flops", shapes=shapes_for(synthetic))[0]}
    assert flops_targets == {"unit:state", "unit:head_channel"}
    with pytest.raises(PlanError, match="not measured"):
        build_options(synthetic, "params", criterion="wanda")
    units_only, _ = build_options(synthetic, "params", structures=["units"], shapes=shapes_for(synthetic))
    assert all(levels[0].target.startswith("unit:") for levels in units_only)


def test_nm_runs_give_one_level_per_group(synthetic):
    nm = replace(synthetic, record=replace(synthetic.record, settings=replace(synthetic.record.settings, structure="2:4")))
    options, _ = build_options(nm, "params", shapes=shapes_for(nm))
    groups = [levels for levels in options if not levels[0].target.startswith("unit:")]
    assert groups and all(len(levels) == 2 and levels[1].structure == "2:4" and levels[1].sparsity == 0.5
                          for levels in groups)
    _, notes = build_options(nm, "params", structures=["unstructured", "units"], shapes=shapes_for(nm))
    assert any("2:4" in n and "--structures excludes" in n for n in notes)
    plan = make_plan(nm, PlanRequest(metric="params", ratio=0.1, measure=False))
    assert all(a.structure in ("2:4", "units") for a in plan.actions)


def test_impossible_budget_names_the_best_reachable_point(synthetic):
    with pytest.raises(PlanError) as info:
        make_plan(synthetic, PlanRequest(metric="params", ratio=0.9, max_ppl_increase=0.1, measure=False,
                                         scope="model"))
    message = str(info.value)
    assert "\n" not in message and "best reachable point is" in message and "params" in message
    best = make_plan(synthetic, PlanRequest(metric="params", max_ppl_increase=0.1, measure=False, scope="model"))
    assert f"{best.predicted.reduction_ratio:.1%}" in message
    assert f"{best.predicted.params_removed:,}" in message


def test_bad_arguments_are_plan_errors(synthetic):
    """A request is checked when it is made, before any run is read; only the run's total can refuse it later."""
    for kwargs, text in [({"ratio": 1.5}, "--ratio"), ({"ratio": 0.1, "absolute": 5}, "either"),
                         ({"max_ppl_increase": 0}, "max-ppl-increase"), ({"metric": "speed"}, "--metric"),
                         ({"scope": "layer"}, "--scope"), ({"absolute": 0}, "--absolute"),
                         ({"structures": "3-4"}, "structure"), ({"structures": " , "}, "empty")]:
        with pytest.raises(PlanError, match=text):
            PlanRequest(measure=False, **kwargs)
    request = PlanRequest(absolute=10**12, measure=False)
    with pytest.raises(PlanError, match="exceeds"):
        make_plan(synthetic, request)


def test_a_plan_request_is_a_checked_frozen_value():
    from dataclasses import FrozenInstanceError

    request = PlanRequest(ratio=0.3, structures="units, 2:4")
    assert request.structures == ("units", "2:4") and request == PlanRequest(ratio=0.3, structures=["units", "2:4"])
    with pytest.raises(FrozenInstanceError):
        request.ratio = 1.5  # type: ignore[misc]  - a checked request cannot become unchecked
    assert PlanRequest().metric == "params" and PlanRequest().scope == "ssm" and PlanRequest().measure
    assert PlanRequest(also_on=["a.txt", "./a.txt", "a.txt"]).also_on == ("a.txt",) and PlanRequest().also_on == ()
    with pytest.raises(PlanError, match="--also-on certifies the plan by measuring"):
        PlanRequest(measure=False, also_on=("a.txt",))


# --------------------------------------------------------------------------------------------
# the plan file


def test_plan_validates_and_round_trips(synthetic, tmp_path):
    from jsonschema import Draft202012Validator

    plan = make_plan(synthetic, PlanRequest(metric="params", ratio=0.2, measure=False), run_path=tmp_path)
    Draft202012Validator.check_schema(plan_schema())
    Draft202012Validator(plan_schema()).validate(json.loads(json.dumps(plan.to_dict())))
    path = write_plan(plan, tmp_path / "plan.json")
    text = path.read_text()
    assert text.startswith("{\n  \"schema_version\": 1,")  # human-readable, indent 2
    assert load_plan(path) == plan
    assert load_plan(path).to_dict() == json.loads(text)  # the file round-trips exactly
    assert plan.data.to_dict() == {"calibration": None, "evaluation": None, "nsamples": 4, "eval_samples": 4,
                            "seqlen": 32, "seed": 0, "verify_samples": 32}
    for a in plan.actions:
        assert (a.unit_indices is not None) == (a.structure == "units")
    with pytest.raises(Exception, match="already exists"):
        write_plan(plan, path)


def _one_line_error(path) -> str:
    with pytest.raises(PlanError) as info:
        load_plan(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400
    return message


def test_bad_plan_files_are_one_line_errors(synthetic, tmp_path):
    plan = make_plan(synthetic, PlanRequest(metric="params", ratio=0.2, measure=False))
    path = tmp_path / "plan.json"

    assert "does not exist" in _one_line_error(tmp_path / "missing.json")
    assert "directory" in _one_line_error(tmp_path)

    path.write_text('{"schema_version": 1,\n  "kind": }\n')
    assert "not valid JSON" in (m := _one_line_error(path)) and "line 2 column" in m

    bad = plan.to_dict()
    bad["actions"][0]["structure"] = "3-4"
    path.write_text(json.dumps(bad))
    assert "$.actions[0].structure" in _one_line_error(path)

    bad = plan.to_dict()
    del bad["predicted"]["delta_loss"]
    path.write_text(json.dumps(bad))
    assert "$.predicted" in (m := _one_line_error(path)) and "delta_loss" in m

    bad = plan.to_dict()
    bad["model"]["fingerprint"] = "md5:123"
    path.write_text(json.dumps(bad))
    assert "$.model.fingerprint" in _one_line_error(path)

    bad = plan.to_dict()
    bad["schema_version"] = 2
    path.write_text(json.dumps(bad))
    assert "unsupported schema_version 2" in _one_line_error(path)

    path.write_text("[1, 2]")
    assert "JSON object" in _one_line_error(path)


def test_plan_for_other_weights_is_refused(synthetic):
    plan = make_plan(synthetic, PlanRequest(metric="params", ratio=0.2, measure=False))
    same = SimpleNamespace(fingerprint=plan.model.fingerprint, source=SimpleNamespace(name="x"))
    plan.check_model(same)
    other = SimpleNamespace(fingerprint="sha256:" + "cd" * 32, source=SimpleNamespace(name="other-model"))
    with pytest.raises(PlanError) as info:
        plan.check_model(other)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("plan was made for synthetic (sha256:abababababab…), this model is other-model "
                              "(sha256:cdcdcdcdcdcd…)")


# --------------------------------------------------------------------------------------------
# end to end on a tiny profile


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from ssm_profile.calibration.data import DataSpec
    from ssm_profile.profiling.record import ProfileSettings
    from ssm_profile.profiling.profile import profile_model
    from ssm_profile.model.resolve import load_model

    loaded = load_model("tiny-mamba2")
    run_dir = tmp_path_factory.mktemp("plan") / "run"
    profile_model(loaded, DataSpec(nsamples=4, eval_samples=4, seqlen=32),
                  ProfileSettings(sparsities=[0.25, 0.5], criteria=["magnitude", "fisher"], per_layer=False),
                  run_dir=run_dir)
    return run_dir, ProfileResult.load(run_dir), loaded


def _check_unit_indices(plan, result, loaded):
    from ssm_profile.model.arch import find_mixers
    from ssm_profile.criteria.masks import select_units

    mixers = {m.layer: m for m in find_mixers(loaded.model)}
    units = [a for a in plan.actions if a.structure == "units"]
    for a in units:
        assert set(a.unit_indices) == {str(l) for l in a.layers} == {str(l) for l in mixers}
        for layer, ids in a.unit_indices.items():
            family = mixers[int(layer)].unit_family(a.unit_kind)
            assert ids == sorted(set(ids)) and all(0 <= u < family.count for u in ids)
            assert len(ids) == removed_per_block(family, a.sparsity) * family.blocks > 0
            scores = torch.tensor(result.unit_scores[a.criterion][layer][a.unit_kind], dtype=torch.float64)
            assert ids == select_units(scores, family, a.sparsity).tolist()
    return units


def test_end_to_end_plan_is_measured_within_tolerance(tiny_run):
    run_dir, result, loaded = tiny_run
    steps = []
    plan = make_plan(result, PlanRequest(metric="params", max_ppl_increase=0.10), loaded=loaded, run_path=run_dir,
                     progress=lambda done, total, label: steps.append(label))
    measured = plan.measured
    assert measured is not None and measured.within_tolerance
    # measured with the profile's (fast) kernels: the re-measured dense loss is the run's, bit for bit
    assert plan.run.fast_kernels is True and measured.delta_loss == measured.loss - result.dense_loss
    assert measured.rel_ppl_increase <= 0.10
    assert measured.delta_loss == pytest.approx(measured.loss - result.dense_loss, abs=1e-4)
    assert any("measuring" in s for s in steps)
    assert plan.actions and plan.predicted.reduction_ratio > 0
    # pairwise overlaps are exact after measuring: the prediction is a lower bound of the union
    assert measured.params_removed >= plan.predicted.params_removed
    _check_unit_indices(plan, result, loaded)

    state = make_plan(result, PlanRequest(metric="state", ratio=0.3, max_ppl_increase=0.10), loaded=loaded,
                      run_path=run_dir)
    assert state.measured.within_tolerance and state.measured.rel_ppl_increase <= 0.10
    assert state.predicted.reduction_ratio >= 0.3
    units = _check_unit_indices(state, result, loaded)
    assert units and all(a.state_bytes_removed > 0 for a in units)
    assert all(a.execution in ("slice", "zero") and a.note for a in units)


def test_optimistic_predictions_are_backed_off(tiny_run):
    # Claim every cut is free: the first solution prunes everything, the measurement refuses it,
    # and the planner learns marginal losses and backs off until the measured plan is within tolerance.
    _, result, loaded = tiny_run
    dense = result.dense_window_losses
    trials = [replace(t, delta_loss=0.0, rel_ppl_increase=0.0, window_losses=list(dense)) for t in result.trials]
    optimistic = replace(result, trials=trials)
    labels = []
    plan = make_plan(optimistic, PlanRequest(metric="params", max_ppl_increase=0.10), loaded=loaded,
                     progress=lambda done, total, label: labels.append(label))
    assert 1 <= plan.measured.backoff_steps <= 8
    assert plan.measured.within_tolerance and plan.measured.rel_ppl_increase <= 0.10
    assert plan.predicted.delta_loss == 0  # the (wrong) prediction is recorded as it was
    assert any("back-off" in n for n in plan.notes) and any("back-off" in label for label in labels)
    # a budget that only the optimistic prediction allowed cannot be met: one line, best measured point
    with pytest.raises(PlanError) as info:
        make_plan(optimistic, PlanRequest(metric="params", ratio=0.3, max_ppl_increase=0.10), loaded=loaded)
    assert "best measured point" in str(info.value) and "\n" not in str(info.value)


def test_measuring_needs_the_runs_weights(tiny_run):
    _, result, loaded = tiny_run
    other = replace(result, record=replace(result.record, model=replace(result.record.model,
                                                                         fingerprint="sha256:" + "0" * 64)))
    with pytest.raises(PlanError, match="other weights"):
        make_plan(other, PlanRequest(metric="params"), loaded=loaded)


def test_cli_writes_a_plan_and_never_overwrites(tiny_run, tmp_path, capsys):
    from ssm_profile.cli.main import main

    run_dir, _, _ = tiny_run
    out = tmp_path / "plan.json"
    assert main(["plan", str(run_dir), "-o", str(out), "--target", "state", "--ratio", "0.3", "--no-measure",
                 "--quiet"]) == 0
    assert load_plan(out).objective.metric == "state"
    assert "unit:state" in capsys.readouterr().out

    before = out.read_bytes()
    assert main(["plan", str(run_dir), "-o", str(out), "--no-measure", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and err.count("\n") == 1
    assert out.read_bytes() == before

    assert main(["plan", str(run_dir), "-o", str(tmp_path / "x.json"), "--ratio", "0.95", "--no-measure",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "best reachable point" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x.json").exists()

    assert main(["plan", str(run_dir), "-o", str(out), "--overwrite", "--no-measure", "--quiet"]) == 0
    assert load_plan(out).objective.ratio is None


def test_ratio_scope_is_ssm_mixers_by_default(synthetic):
    ssm = make_plan(synthetic, PlanRequest(metric="params", max_ppl_increase=0.1, measure=False))
    whole = make_plan(synthetic, PlanRequest(metric="params", max_ppl_increase=0.1, measure=False, scope="model"))
    assert ssm.objective.scope == "ssm" and whole.objective.scope == "model"
    removed = ssm.predicted.params_removed
    assert ssm.predicted.scope_total == synthetic.analysis.totals.ssm_parameters
    assert ssm.predicted.reduction_ratio == pytest.approx(removed / synthetic.analysis.totals.ssm_parameters)
    assert whole.predicted.reduction_ratio == pytest.approx(removed / synthetic.analysis.totals.parameters)


def test_plan_file_written_by_the_cli_round_trips(tiny_run, tmp_path):
    from ssm_profile.cli.main import main
    from ssm_profile.documents import Plan

    run_dir, _, _ = tiny_run
    out = tmp_path / "plan.json"
    assert main(["plan", str(run_dir), "-o", str(out), "--target", "state", "--ratio", "0.3", "--no-measure",
                 "--quiet"]) == 0  # --target: the older name of --metric
    data = json.loads(out.read_text())
    assert Plan.from_dict(data).to_dict() == data and data["objective"]["target"] == "state"
    assert data["run"]["batch_size"] == 8  # the run's statistics batch size, for apply


def test_load_plan_rejects_other_documents_in_one_line(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"kind": "ssm-profile-pruning", "schema_version": 1}))
    assert "not an ssm-profile plan" in _one_line_error(path)
    path.write_text(json.dumps({"kind": "ssm-profile-plan", "schema_version": 1, "actions": "none"}))
    assert "does not match the plan schema" in _one_line_error(path)


def test_plan_and_apply_rebuild_the_same_masks_with_the_runs_batch_size(tmp_path):
    """A run profiled with --batch-size 2: the planner's measurer and apply collect wanda's statistics
    in batches of 2 (not a fixed 8) and get the same keep-masks."""
    from ssm_profile.pruning.apply import _dense_cuts
    from ssm_profile.calibration.data import DataSpec
    from ssm_profile.plan.measure import Measurer
    from ssm_profile.profiling.record import ProfileSettings
    from ssm_profile.profiling.profile import profile_model
    from ssm_profile.profiling.recipe import RunRecipe
    from ssm_profile.model.resolve import load_model

    loaded = load_model("tiny-mamba2")
    run_dir = tmp_path / "run"
    profile_model(loaded, DataSpec(nsamples=4, eval_samples=2, seqlen=32),
                  ProfileSettings(sparsities=[0.5], criteria=["wanda"], targets=["in_proj"], per_layer=False,
                                  batch_size=2, incremental=False), run_dir=run_dir)
    result = ProfileResult.load(run_dir)
    plan = make_plan(result, PlanRequest(metric="params", max_ppl_increase=10.0, measure=False), run_path=run_dir)
    assert plan.actions and plan.actions[0].criterion == "wanda"
    assert RunRecipe.of_plan(plan) == RunRecipe.of_run(result.record) and RunRecipe.of_plan(plan).batch_size == 2
    measurer = Measurer(result, loaded, lambda *a: None)
    options = build_options(result, "params", shapes=shapes_for(result))[0]
    option = next(o for levels in options for o in levels[1:] if o.sparsity == plan.actions[0].sparsity)
    planned = measurer.action_mask(option)
    cuts, _, _ = _dense_cuts(load_model("tiny-mamba2"), plan, [(0, plan.actions[0])], [], lambda *a: None)
    applied = {0: cuts[0].mask}
    assert planned.keys() == applied[0].keys()
    assert all(torch.equal(planned[name], applied[0][name]) for name in planned)


# --------------------------------------------------------------------------------------------
# what the plan summary says (issue #15): physical change first, every percentage names its total


def test_zeros_only_plan_warns_that_nothing_physical_changes(synthetic, capsys):
    from ssm_profile.cli.plan_cmd import print_plan
    from ssm_profile.pruning.summary import changes_nothing, physical_change

    plan = make_plan(synthetic, PlanRequest(metric="params", max_ppl_increase=0.1, measure=False,
                                            structures="unstructured"))
    assert plan.actions and all(a.execution == "zero" for a in plan.actions)
    assert changes_nothing(plan) and physical_change(plan) == {"params": 0, "flops": 0, "state": 0}
    print_plan(plan)
    out = " ".join(capsys.readouterr().out.split())
    lead = out.index("changes no shapes")
    assert lead < out.index("Plan actions") and "--structures units" in out
    assert f"{plan.predicted.reduction_ratio:.1%} of SSM-mixer params" in out
    assert f"{plan.predicted.reduction_ratio_model:.1%} of whole-model params" in out


def test_sliced_plan_leads_with_the_physical_change(synthetic, capsys):
    from ssm_profile.cli.plan_cmd import print_plan
    from ssm_profile.pruning.summary import changes_nothing, physical_change

    plan = make_plan(synthetic, PlanRequest(metric="state", max_ppl_increase=0.1, measure=False, structures="units"))
    sliced = [a for a in plan.actions if a.execution == "slice"]
    assert sliced and not changes_nothing(plan)
    # every action is sliced: the physical change is the predicted total (overlapping cuts counted once)
    assert len(sliced) == len(plan.actions)
    assert physical_change(plan)["state"] == plan.predicted.state_bytes_removed > 0
    assert plan.predicted.state_bytes_removed <= sum(a.state_bytes_removed for a in sliced)
    print_plan(plan)
    out = " ".join(capsys.readouterr().out.split())
    assert out.index("physically removed (sliced)") < out.index("Plan actions")
    assert "changes no shapes" not in out and "of whole-model state bytes/sequence" in out


def test_plan_json_names_what_each_ratio_is_a_share_of(synthetic):
    ssm = make_plan(synthetic, PlanRequest(metric="params", max_ppl_increase=0.1, measure=False))
    whole = make_plan(synthetic, PlanRequest(metric="flops", max_ppl_increase=0.1, measure=False, scope="model"))
    assert ssm.predicted.reduction_of == "SSM-mixer params"
    assert ssm.predicted.reduction_model_of == "whole-model params"
    assert whole.predicted.reduction_of == whole.predicted.reduction_model_of == "whole-model FLOPs/token"
    data = ssm.to_dict()
    assert data["predicted"]["reduction_of"] == "SSM-mixer params" and "reduction_ratio" in data["predicted"]


@pytest.mark.parametrize("argv, message", [
    (["--ratio", "30"], "30 would mean 3000%"),
    (["--max-ppl-increase", "10"], "10 would mean 1000%"),
    (["--ratio", "100%"], "all of the total"),
    (["--max-ppl-increase=-5%"], "more than 0"),
])
def test_cli_refuses_ratios_that_cannot_be_meant(tmp_path, capsys, argv, message):
    from ssm_profile.cli.main import main

    assert main(["plan", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_reads_ratios_as_fractions_or_percentages():
    from ssm_profile.cli.main import build_parser

    parser = build_parser(["plan", "validate", "profile"])
    for text in ("0.1", "10%"):
        args = parser.parse_args(["plan", "RUN", "--ratio", text.replace("1", "3"), "--max-ppl-increase", text])
        assert args.ratio == pytest.approx(0.3) and args.max_ppl_increase == pytest.approx(0.1)
        args = parser.parse_args(["validate", "M", "D", "--max-ppl-increase", text])
        assert args.max_ppl_increase == pytest.approx(0.1)
        assert parser.parse_args(["profile", "M", "--tolerance", text]).tolerance == pytest.approx(0.1)
    with pytest.raises(SystemExit):
        parser.parse_args(["validate", "M", "D", "--max-ppl-increase", "10"])
    with pytest.raises(SystemExit):
        parser.parse_args(["profile", "M", "--tolerance", "10"])


MODERN_PROSE = str(Path(__file__).parent / "data" / "modern_prose.txt")


def test_also_on_another_text_on_the_embedded_run(tiny_run):
    """``--also-on``: the text's certifying and held-out windows do not overlap, each text is recorded,
    and a plan made with the text removes no more than one made without it."""
    from ssm_profile.plan.measure import Measurer

    run_dir, result, loaded = tiny_run
    measurer = Measurer(result, loaded, lambda *a: None, domains=(MODERN_PROSE,))
    windows = measurer.domains[MODERN_PROSE]
    spec = measurer.recipe.data
    assert windows.search.shape[0] == spec.eval_samples and len(windows.dense) == spec.eval_samples
    first_held_out = windows.verification[0]
    assert not any(bool((first_held_out == w).all()) for w in windows.search)  # certifying and held-out differ
    plain = make_plan(result, PlanRequest(max_ppl_increase=0.05), loaded=loaded, run_path=run_dir)
    plan = make_plan(result, PlanRequest(max_ppl_increase=0.05, also_on=(MODERN_PROSE,)), loaded=loaded,
                     run_path=run_dir, measurer=measurer)
    (check,) = plan.domains
    assert check.source == MODERN_PROSE and check.certification.certified and check.verification is not None
    assert check.verification.windows == windows.verification.shape[0]
    assert plan.predicted.reduction_ratio <= plain.predicted.reduction_ratio + 1e-12
    with pytest.raises(ValueError, match="the request on"):  # a measurer of other texts certifies nothing asked
        make_plan(result, PlanRequest(), loaded=loaded, run_path=run_dir, measurer=measurer)


# --------------------------------------------------------------------------------------------
# --also-on after apply: validate measures each text's held-out windows again; apply refuses a broken promise

VALIDATE_FAST = ["--no-lm-eval", "--speed-repeats", "1", "--speed-batch", "1", "8", "--quiet"]


@pytest.fixture(scope="module")
def also_on_applied(tiny_run, tmp_path_factory):
    """A state plan that must hold on a repeated sentence too (a state cut costs its in-context copying
    far more than the verification windows: +23% there, +3% on verification), written and applied
    (the state units are sliced exactly)."""
    from ssm_profile.model.resolve import load_model
    from ssm_profile.pruning.apply import apply_plan

    run_dir, result, loaded = tiny_run
    folder = tmp_path_factory.mktemp("also-on")
    text = folder / "fox.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 300)
    plan = make_plan(result, PlanRequest(metric="state", max_ppl_increase=0.5, also_on=(str(text),)),
                     loaded=loaded, run_path=run_dir)
    write_plan(plan, folder / "plan.json")
    apply_plan(load_model("tiny-mamba2"), plan, folder / "pruned")
    return plan, folder, text


def test_validate_measures_the_also_on_texts_held_out_windows(also_on_applied):
    from ssm_profile.documents import ValidationReport
    from ssm_profile.model.resolve import load_model
    from ssm_profile.validation.check import ValidationOptions, validate

    plan, folder, text = also_on_applied
    (check,) = plan.domains
    assert any(a.execution == "slice" for a in plan.actions) and check.held_out_digest.startswith("sha256:")
    report = validate(load_model("tiny-mamba2"), load_model(str(folder / "pruned")), plan,
                      ValidationOptions(tasks=(), speed_batch=(1, 8), speed_repeats=1))
    (measured,) = report.domains
    planned = check.verification
    # the same windows as the plan's, measured on the applied checkpoint: what the plan measured, to 1e-6
    assert measured.source == str(text) and measured.windows == planned.windows
    assert measured.held_out_digest == check.held_out_digest
    assert measured.rel_ppl_increase == pytest.approx(planned.rel_ppl_increase, abs=1e-6)
    assert measured.interval == pytest.approx(planned.interval, abs=1e-6)  # the same bootstrap draws
    assert measured.plan_rel_ppl_increase == planned.rel_ppl_increase
    low, high = measured.interval
    assert low <= measured.rel_ppl_increase <= high and measured.within_tolerance is True
    assert report.within_tolerance is True and report.tolerance.decided_by == "verification+also-on"
    # typed, round-tripping; a validation.json from before the field loads without it
    data = report.to_dict()
    assert ValidationReport.from_dict(data).to_dict() == data
    old = {k: v for k, v in data.items() if k != "domains"}
    assert ValidationReport.from_dict(old).domains is None and "domains" not in ValidationReport.from_dict(old).to_dict()


def test_validate_exits_3_when_only_an_also_on_text_breaks_the_promise(also_on_applied, tmp_path, capsys):
    from ssm_profile.cli.main import main

    plan, folder, text = also_on_applied
    (check,) = plan.domains
    # a tolerance the verification windows keep and the text's held-out windows do not
    tight = (plan.verification.rel_ppl_increase + check.verification.rel_ppl_increase) / 2
    assert plan.verification.rel_ppl_increase < tight < check.verification.rel_ppl_increase
    report_path = tmp_path / "v.json"
    code = main(["validate", "tiny-mamba2", str(folder / "pruned"), "--max-ppl-increase", str(tight),
                 "-o", str(report_path), *VALIDATE_FAST])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 3 and len(err) == 1 and str(text) in err[0] and "verification" not in err[0]
    out = " ".join(captured.out.split())
    assert f"also on {text}: perplexity" in out and "tolerance breached" in out
    v = json.loads(report_path.read_text())
    assert v["verification"]["within_tolerance"] is True and v["domains"][0]["within_tolerance"] is False
    assert v["within_tolerance"] is False
    # the reports word it as the CLI does: the answer's outcome, the Markdown and HTML validation sections
    from ssm_profile.documents import load_validation
    from ssm_profile.reports.answer import _outcome
    from ssm_profile.reports.html import validation_section
    from ssm_profile.reports.markdown import validation_md

    report = load_validation(report_path)
    outcome = [s.text for s in _outcome(report, None)]
    assert "within the tolerance" in outcome[0]
    assert outcome[1].startswith(f"Validated also on {text}: perplexity +") and "ABOVE the tolerance" in outcome[1]
    sentence = report.domains[0].sentence(tight)
    assert "held-out windows vs allowed" in sentence and sentence.endswith("tolerance breached")
    assert f"held-out windows of {text}" in "\n".join(validation_md(report))
    assert sentence in validation_section(report)


def test_validate_refuses_an_also_on_text_that_changed_or_is_gone(also_on_applied, tmp_path, capsys, monkeypatch):
    import shutil

    from ssm_profile.cli.main import main

    plan, folder, _ = also_on_applied
    pruned = tmp_path / "pruned"
    shutil.copytree(folder / "pruned", pruned)
    moved = dict(plan.to_dict(), domains=[dict(plan.domains[0].to_dict(), source=str(tmp_path / "gone.txt"))])
    edited = tmp_path / "edited.txt"
    edited.write_text("The quick brown fox jumps over the lazy cat. " * 300)  # as long, other tokens
    changed = dict(plan.to_dict(), domains=[dict(plan.domains[0].to_dict(), source=str(edited))])
    import ssm_profile.model.resolve as resolve

    real_load = resolve.load_model
    for bad, says in ((moved, "is not there"), (changed, "is not the text the plan measured")):
        (pruned / "pruning.json").write_text(json.dumps(dict(json.loads((folder / "pruned" / "pruning.json")
                                                                         .read_text()), plan=bad)))
        gone = bad is moved  # a gone text is said before any model loads
        monkeypatch.setattr(resolve, "load_model", _no_load if gone else real_load)
        code = main(["validate", "tiny-mamba2", str(pruned), "--overwrite", *VALIDATE_FAST])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and says in err[0] and "Traceback" not in err[0]
        assert not (pruned / "validation.json").exists()


def test_apply_refuses_a_plan_whose_also_on_promise_broke(also_on_applied, tmp_path, capsys):
    from ssm_profile.cli.main import main
    from ssm_profile.model.resolve import load_model
    from ssm_profile.pruning.apply import apply_plan

    plan, _, text = also_on_applied
    held = plan.domains[0].verification
    broken = copy.deepcopy(plan)
    broken.domains[0].verification = replace(held, rel_ppl_increase=0.9, kept=False)  # as plan writes a broken one
    assert broken.promise_kept is False and plan.promise_kept is True
    path = tmp_path / "broken.json"
    write_plan(broken, path)
    out = tmp_path / "out"
    assert main(["apply", "tiny-mamba2", str(path), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broke its promise" in err[0] and str(text) in err[0] and "--allow-broken-promise" in err[0]
    assert not out.exists()
    with pytest.raises(PlanError, match="broke its promise"):  # the library refuses too, before writing anything
        apply_plan(load_model("tiny-mamba2"), broken, out)
    assert not out.exists()
    assert main(["apply", "tiny-mamba2", str(path), "-o", str(out), "--quiet", "--allow-broken-promise"]) == 0
    assert "applying it anyway" in " ".join(capsys.readouterr().out.split()) and (out / "config.json").is_file()


def _no_load(*args, **kwargs):
    raise AssertionError("a model was loaded before the refusal")
