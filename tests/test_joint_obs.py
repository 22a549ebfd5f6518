"""Two OBS cuts of one tensor are one SparseGPT solve on the union of their masks (issue 24, item 2):
in the Scorer's combination (what the planner measures) and in apply alike, checked against a
textbook SparseGPT written here (column by column, fixed mask, its own Hessian)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_mamba
from ssm_profile.calibration.stats import collect_stats
from ssm_profile.criteria import ScoringContext
from ssm_profile.criteria.masks import Pruning
from ssm_profile.model.arch import find_mixers
from ssm_profile.profiling.sensitivity import Scorer, TrialSpec

torch.set_num_threads(1)


def reference_sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor,
                        damp: float = 0.01) -> torch.Tensor:
    """SparseGPT (Frantar & Alistarh 2023, Alg. 1) for a fixed mask, one column at a time: remove the
    pruned entries of column j and spread their error over the later columns through row j of the
    upper Cholesky factor of H⁻¹."""
    w, h = weight.double().clone(), hessian.double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    h += damp * h.diagonal().mean() * torch.eye(len(h), dtype=torch.float64)
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    for j in range(w.shape[1]):
        err = torch.where(keep[:, j], torch.zeros_like(w[:, j]), w[:, j]) / u[j, j]
        w[:, j:] -= err[:, None] * u[j, j:][None, :]
        w[:, j] = torch.where(keep[:, j], w[:, j], torch.zeros_like(w[:, j]))
    return w


def layer_hessian(model, module: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """XᵀX of ``module``'s input over ``windows`` (float64), from a hook of its own."""
    acc = []

    def hook(_mod, args):
        x = args[0].detach().double().reshape(-1, args[0].shape[-1])
        acc.append(x.T @ x)

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(windows)
    finally:
        handle.remove()
    return sum(acc)


@pytest.fixture(scope="module")
def setup():
    model = tiny_mamba(layers=2)
    calibration = torch.randint(0, 64, (6, 16), generator=torch.Generator().manual_seed(3))
    stats = collect_stats(model, calibration, {"inputs", "hessians"}, batch_size=3)
    scorer = Scorer(model, ScoringContext(model=model, stats=stats), ["obs", "wanda"])
    return model, calibration, scorer


@pytest.mark.parametrize("param", ["out_proj", "x_proj"])
def test_element_and_unit_obs_cuts_of_one_tensor_are_one_sparsegpt_solve_on_their_union(setup, param):
    model, calibration, scorer = setup
    mixers = find_mixers(model)
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    parts = [scorer.prune(TrialSpec(param, "obs", 0.3), mixers),
             scorer.prune(TrialSpec("unit:channel", "obs", 0.25), mixers)]
    joint = scorer.solve_jointly(parts, mixers)
    for m in mixers:
        name = m.full_name(f"{param}.weight")
        union = parts[0].mask[name] & parts[1].mask[name]
        assert (~union).sum() > (~parts[0].mask[name]).sum() and (~union).sum() > (~parts[1].mask[name]).sum()
        hessian = layer_hessian(model, m.module.get_submodule(param), calibration)
        oracle = reference_sparsegpt(dense[name], hessian, union).float()
        torch.testing.assert_close(joint.values[name], oracle, rtol=1e-4, atol=1e-5)
        assert torch.equal(joint.mask[name], union)
        # what the plan measured and apply wrote before: the unit cut's values over the element cut's
        later = Pruning.combine(parts)
        assert (later.values[name] * union - oracle).abs().max() > 1e-3


def test_one_obs_cut_per_tensor_is_left_as_solved(setup):
    """Nothing is solved again where only one cut rewrites a tensor (its values are already that solve)."""
    model, _, scorer = setup
    mixers = find_mixers(model)
    parts = [scorer.prune(TrialSpec("in_proj", "obs", 0.3), mixers),
             scorer.prune(TrialSpec("out_proj", "wanda", 0.3), mixers)]
    joint = scorer.solve_jointly(parts, mixers)
    together = Pruning.combine(parts)
    assert joint.values.keys() == together.values.keys()
    assert all(torch.equal(joint.values[n], together.values[n]) for n in joint.values)


def test_a_fixed_mask_solve_equals_the_cut_that_chose_it(setup):
    """The joint solve with one part's own mask gives that part's values: SparseGPT's chosen mask,
    fixed, replays the same updates."""
    model, _, scorer = setup
    mixers = find_mixers(model)
    cut = scorer.prune(TrialSpec("out_proj", "obs", 0.4), mixers)
    for m in mixers:
        name = m.full_name("out_proj.weight")
        again = scorer.reconstruction("obs", m, {"out_proj.weight": cut.mask[name]})
        torch.testing.assert_close(again.values[name], cut.values[name], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_apply_writes_the_joint_solve(tmp_path):
    """apply: an element OBS action and a unit OBS action on out_proj give the union's one SparseGPT solve."""
    from ssm_profile.calibration.data import load_dataset
    from ssm_profile.documents import as_plan
    from ssm_profile.model.resolve import load_model
    from ssm_profile.profiling.recipe import RunRecipe
    from ssm_profile.pruning.apply import apply_plan
    from test_apply_validate import make_plan, unit_action
    from transformers import AutoModelForCausalLM

    loaded = load_model("tiny-mamba")
    layers = [m.layer for m in find_mixers(loaded.model)]
    plan = make_plan(loaded, [{"target": "out_proj", "structure": "unstructured", "criterion": "obs", "sparsity": 0.3},
                              {**unit_action("channel", {layers[0]: [0, 3, 5]}, execution="zero"), "criterion": "obs"}])
    fresh = load_model("tiny-mamba")
    recipe = RunRecipe.of_plan(as_plan(plan))
    with recipe.installed(fresh.model):
        data = load_dataset(fresh.tokenizer, recipe.data)
        scorer = Scorer(fresh.model, ScoringContext(model=fresh.model, stats=recipe.statistics(
            fresh.model, data.calibration, {"inputs", "hessians"})), ["obs"])
        element = scorer.prune(TrialSpec("out_proj", "obs", 0.3), find_mixers(fresh.model))
    mixer = find_mixers(fresh.model)[0]
    name = mixer.full_name("out_proj.weight")
    union = element.mask[name].clone()
    union[:, [0, 3, 5]] = False
    oracle = reference_sparsegpt(mixer.param("out_proj.weight").detach(), scorer.criteria["obs"].hessian(
        scorer.ctx, mixer, "out_proj.weight"), union).float()
    apply_plan(loaded, plan, tmp_path / "out")
    written = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "out").named_parameters())[name].detach()
    torch.testing.assert_close(written, oracle, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_the_planner_measures_the_joint_solve(tmp_path):
    """Measurer.cut (the plan's measurement and verification): the same union solve."""
    from ssm_profile.calibration.data import DataSpec
    from ssm_profile.model.resolve import load_model
    from ssm_profile.plan.measure import Measurer
    from ssm_profile.plan.options import build_options
    from ssm_profile.plan.shapes import shapes_for
    from ssm_profile.profiling.profile import profile_model
    from ssm_profile.profiling.record import ProfileSettings
    from ssm_profile.profiling.results import ProfileResult

    loaded = load_model("tiny-mamba")
    profile_model(loaded, DataSpec(nsamples=4, eval_samples=2, seqlen=32),
                  ProfileSettings(sparsities=[0.25], criteria=["obs"], targets=["out_proj", "unit:channel"],
                                  per_layer=False, sweep="grid", batch_size=2, incremental=False),
                  run_dir=tmp_path / "run")
    result = ProfileResult.load(tmp_path / "run")
    options = build_options(result, "params", shapes=shapes_for(result))[0]
    actions = [levels[1] for levels in options]
    assert sorted(a.target for a in actions) == ["out_proj", "unit:channel"]
    measurer = Measurer(result, loaded, lambda *a: None)
    cut = measurer.cut(actions)
    scorer = measurer._scorer_for({"obs"})
    for m in find_mixers(loaded.model):
        name = m.full_name("out_proj.weight")
        union = measurer.action_mask(actions[0])[name] & measurer.action_mask(actions[1])[name]
        oracle = reference_sparsegpt(m.param("out_proj.weight").detach(), scorer.criteria["obs"].hessian(
            scorer.ctx, m, "out_proj.weight"), union).float()
        torch.testing.assert_close(cut.values[name], oracle, rtol=1e-4, atol=1e-5)
