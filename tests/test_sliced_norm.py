"""A head cut of a Mamba-2 mixer with a gated norm is measured in the form apply writes (issue 24,
item 7): apply slices it and rescales the norm weights, which equals the zeroed model only up to the
norm's eps term; trials give the zeroed model's norms eps·n'/n (ssm_profile.model.norms), so a
trial's logits are the sliced model's, and its weights and eps come back bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_hybrid, tiny_mamba2
from ssm_profile.calibration.data import batch_losses
from ssm_profile.criteria import CalibrationStats, ScoringContext
from ssm_profile.criteria.masks import MaskApplier, select_units
from ssm_profile.model.arch import find_mixers
from ssm_profile.profiling.sensitivity import Scorer, TrialSpec, run_trial
from ssm_profile.pruning.surgery import slice_cuts, zero_units

torch.set_num_threads(1)
IDS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))  # 12 > chunk_size 8


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS, use_cache=False).logits


def build(name: str):
    return (tiny_mamba2() if name == "mamba2" else tiny_hybrid(name)).eval()


CASES = [("nemotron_h", "head", 0.5), ("nemotron_h", "head_channel", 0.25), ("zamba2", "head", 0.5),
         ("mamba2", "head", 0.5)]


@pytest.mark.parametrize("name,kind,sparsity", CASES, ids=[f"{n}-{k}" for n, k, _ in CASES])
def test_a_head_trial_computes_the_sliced_model(name, kind, sparsity):
    model = build(name)
    scorer = Scorer(model, ScoringContext(model=model, stats=CalibrationStats()), ["magnitude"])
    mixers = find_mixers(model)
    eps_before = {m.path: m.module.norm.variance_epsilon for m in mixers}
    seen = {}

    def evaluate(m, windows):
        seen["logits"] = logits(m)
        return batch_losses(m, windows, 2)

    spec = TrialSpec(f"unit:{kind}", "magnitude", sparsity)
    run_trial(model, spec, scorer, mixers, IDS, 0.0, batch_size=2, evaluate=evaluate)
    assert {m.path: m.module.norm.variance_epsilon for m in mixers} == eps_before  # restored
    with MaskApplier(model) as applier:
        applier.apply(scorer.prune(spec, mixers).mask)
        zeroed = logits(model)

    ids = {m.layer: select_units(scorer.units("magnitude", m, kind), m.unit_family(kind), sparsity).tolist()
           for m in mixers}
    sliced_model = copy.deepcopy(model)
    for m in find_mixers(sliced_model):
        zero_units(m, kind, ids[m.layer])
    assert slice_cuts(sliced_model, {kind: ids})[kind].sliced
    sliced = logits(sliced_model)
    scale = float(sliced.abs().max())
    assert float((zeroed - sliced).abs().max()) > 1e-4 * scale  # the eps term the trial used to miss
    assert float((seen["logits"] - sliced).abs().max()) <= 1e-5 * scale


def test_a_cut_apply_keeps_as_zeros_is_measured_as_zeros():
    """Zamba2 head channels: 8 x 7 is no multiple of hidden_size, so apply keeps zeros; the trial too."""
    model = build("zamba2")
    scorer = Scorer(model, ScoringContext(model=model, stats=CalibrationStats()), ["magnitude"])
    assert scorer.prune(TrialSpec("unit:head_channel", "magnitude", 0.125), find_mixers(model)).norm_eps == {}
    # a one-layer cut is never sliced (the layers would differ in width)
    layer = find_mixers(model)[0].layer
    assert scorer.prune(TrialSpec("unit:head", "magnitude", 0.5, layer=layer), find_mixers(model)).norm_eps == {}


def test_incremental_evaluator_measures_the_sliced_form():
    from ssm_profile.profiling.incremental import IncrementalEvaluator

    model = build("mamba2")
    scorer = Scorer(model, ScoringContext(model=model, stats=CalibrationStats()), ["magnitude"])
    mixers = find_mixers(model)
    windows = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(2))
    dense = batch_losses(model, windows, 2)
    ev = IncrementalEvaluator(model, windows, 2).prepare(dense)
    spec = TrialSpec("unit:head", "magnitude", 0.5)
    fast = run_trial(model, spec, scorer, mixers, windows, float(dense.mean()), batch_size=2, evaluate=ev)
    full = run_trial(model, spec, scorer, mixers, windows, float(dense.mean()), batch_size=2)
    assert fast.window_losses == full.window_losses
    pruning = scorer.prune(spec, mixers)
    assert pruning.norm_eps
    with MaskApplier(model) as applier:  # the same zeros with the dense eps: another model, not a repeat
        applier.apply(pruning.mask)
        zeros_only = ev(model, windows, mask=pruning.mask)
    assert not torch.equal(zeros_only, torch.tensor(full.window_losses, dtype=zeros_only.dtype))


@pytest.mark.slow
def test_the_plans_verification_is_what_validate_measures_on_the_sliced_checkpoint(tmp_path):
    """tiny-mamba2, half its heads (sliced: 4 x 32 = 1 x hidden_size): the planner's verification equals
    validate's on the applied checkpoint (without the sliced form: 2.21668 vs 2.21676, the norm's eps)."""
    from ssm_profile.calibration.data import DataSpec
    from ssm_profile.model.resolve import load_model
    from ssm_profile.plan import PlanRequest, make_plan
    from ssm_profile.profiling.profile import profile_model
    from ssm_profile.profiling.record import ProfileSettings
    from ssm_profile.profiling.results import ProfileResult
    from ssm_profile.pruning.apply import apply_plan
    from ssm_profile.validation.check import ValidationOptions

    loaded = load_model("tiny-mamba2")
    profile_model(loaded, DataSpec(nsamples=4, eval_samples=4, seqlen=32, verify_samples=8),
                  ProfileSettings(sparsities=[0.5], criteria=["magnitude"], targets=["unit:head"], per_layer=False,
                                  sweep="grid", batch_size=2, incremental=False), run_dir=tmp_path / "run")
    result = ProfileResult.load(tmp_path / "run")
    plan = make_plan(result, PlanRequest(metric="state", ratio=0.4, max_ppl_increase=50.0), loaded=loaded,
                     run_path=tmp_path / "run")
    assert [(a.target, a.execution) for a in plan.actions] == [("unit:head", "slice")]
    record = apply_plan(load_model("tiny-mamba2"), plan, tmp_path / "out", validate=True,
                        validate_options=ValidationOptions(tasks=(), speed_repeats=1, speed_batch=(1, 8)))
    assert record.validation.verification.rel_ppl_increase == pytest.approx(plan.verification.rel_ppl_increase,
                                                                             rel=1e-6)
