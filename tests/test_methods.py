"""Methods that match their names: SparseGPT-OBS reconstruction, FLAP bias compensation, the SSM
Gramian, predicted-vs-measured agreement."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_mamba, tiny_mamba2
from ssm_profile.model.arch import find_mixers
from ssm_profile.criteria import CalibrationStats, ScoringContext
from ssm_profile.criteria.sparsegpt import remove_columns, sparsegpt
from ssm_profile.calibration.data import batch_losses
from ssm_profile.criteria.masks import MaskApplier
from ssm_profile.profiling.sensitivity import Scorer, TrialSpec, run_trial
from ssm_profile.calibration.stats import collect_stats
from ssm_profile.profiling.record import RunRecord

torch.set_num_threads(1)


def layer_data(rows=6, cols=10, tokens=200, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, cols, generator=gen, dtype=torch.float64) @ torch.randn(cols, cols, generator=gen,
                                                                                      dtype=torch.float64)
    w = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    return w, x


def output_error(w, new, x):
    return float(((w - new) @ x.T).square().sum())


# ------------------------------------------------------------------ SparseGPT, against direct least squares


def test_remove_columns_is_the_least_squares_fit_of_the_other_columns():
    w, x = layer_data()
    cols = torch.tensor([1, 4, 7])
    rest = torch.tensor([c for c in range(w.shape[1]) if c not in cols.tolist()])
    new = remove_columns(w, x.T @ x, cols, damp=0.0)
    # oracle: min_W' ‖W X^T - W' X_rest^T‖ solved by lstsq
    oracle = torch.linalg.lstsq(x[:, rest], (w @ x.T).T).solution.T
    torch.testing.assert_close(new[:, rest], oracle, rtol=1e-8, atol=1e-8)
    assert torch.all(new[:, cols] == 0)


def test_sparsegpt_single_pruned_column_across_blocks_matches_least_squares():
    """Pruning column 0 of every row: SparseGPT's update of the later columns (through several
    blocks) is the optimal refit of the row without that input."""
    w, x = layer_data()
    keep = torch.ones_like(w, dtype=torch.bool)
    keep[:, 0] = False
    new, got_keep = sparsegpt(w, x.T @ x, keep=keep, block=3, damp=0.0)
    oracle = torch.linalg.lstsq(x[:, 1:], (w @ x.T).T).solution.T
    torch.testing.assert_close(new[:, 1:], oracle, rtol=1e-7, atol=1e-7)
    assert torch.equal(got_keep, keep) and torch.all(new[:, 0] == 0)


def test_sparsegpt_adaptive_mask_beats_masking_and_counts_per_block():
    w, x = layer_data(rows=8, cols=12)
    h = x.T @ x
    new, keep = sparsegpt(w, h, sparsity=0.5, block=4)
    assert int((~keep).sum()) == 48 and all(int((~keep[:, b:b + 4]).sum()) == 16 for b in range(0, 12, 4))
    assert torch.all(new[~keep] == 0) and not torch.equal(new[keep], w[keep])  # kept weights moved
    wanda = w.abs() * x.square().sum(0).sqrt()
    wanda_keep = wanda >= wanda.median(dim=1, keepdim=True).values
    assert output_error(w, new, x) < output_error(w, w * wanda_keep, x)


def test_sparsegpt_n_m():
    w, x = layer_data(rows=5, cols=16)
    new, keep = sparsegpt(w, x.T @ x, nm=(2, 4), block=6)  # the block is rounded to whole groups
    assert torch.all(keep.view(5, 4, 4).sum(-1) == 2)
    assert torch.all(new[~keep] == 0)


# ------------------------------------------------------------------ OBS trials and apply


def calib(n=8, length=16, seed=0):
    return torch.randint(0, 64, (n, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=["mamba1", "mamba2"])
def obs_setup(request):
    model = tiny_mamba() if request.param == "mamba1" else tiny_mamba2()
    stats = collect_stats(model, calib(), {"inputs", "hessians"}, batch_size=4)
    scorer = Scorer(model, ScoringContext(model=model, stats=stats), ["obs", "wanda"])
    windows = calib(4, 16, seed=1)
    return model, scorer, windows, batch_losses(model, windows, 2)


@pytest.mark.parametrize("target", ["out_proj", "unit:head_or_channel"])
def test_obs_trial_changes_kept_weights_and_restores_exactly(obs_setup, target):
    model, scorer, windows, dense = obs_setup
    mixers = find_mixers(model)
    if target.startswith("unit:"):
        target = "unit:channel" if "channel" in mixers[0].unit_families() else "unit:head"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = {}

    def evaluate(m, w):
        for n, p in m.named_parameters():
            seen[n] = p.detach().clone()
        return batch_losses(m, w, 2)

    trial = run_trial(model, TrialSpec(target, "obs", 0.5), scorer, mixers, windows, float(dense.mean()),
                      evaluate=evaluate)
    name = mixers[0].full_name("out_proj.weight")
    kept = seen[name] != 0
    assert trial.pruned_params > 0
    assert not torch.equal(seen[name][kept], before[name][kept])  # reconstruction moved the kept weights
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n  # bit for bit


def test_incremental_evaluator_equals_full_forward_for_obs(obs_setup):
    from ssm_profile.profiling.incremental import IncrementalEvaluator

    model, scorer, windows, dense = obs_setup
    mixers = find_mixers(model)
    ev = IncrementalEvaluator(model, windows, 2).prepare(dense)
    for target in ("out_proj", "in_proj"):
        for criterion in ("wanda", "obs"):
            spec = TrialSpec(target, criterion, 0.5, layer=mixers[-1].layer)
            fast = run_trial(model, spec, scorer, mixers, windows, float(dense.mean()), batch_size=2, evaluate=ev)
            full = run_trial(model, spec, scorer, mixers, windows, float(dense.mean()), batch_size=2)
            assert fast.window_losses == full.window_losses, (target, criterion)
    # same zeros, different kept values: not a repeat
    pruning = scorer.prune(TrialSpec("out_proj", "obs", 0.5), mixers)
    with MaskApplier(model) as applier:
        applier.apply(pruning.mask)
        masked_only = ev(model, windows, mask=pruning.mask)
    with MaskApplier(model) as applier:
        applier.apply(pruning.mask, pruning.values)
        reconstructed = ev(model, windows, mask=pruning.mask, values=pruning.values)
        assert torch.equal(reconstructed, batch_losses(model, windows, 2))
    assert not torch.equal(masked_only, reconstructed)


def test_apply_obs_plan_writes_reconstructed_weights_that_reload(tmp_path):
    from transformers import AutoModelForCausalLM

    from ssm_profile.pruning.apply import apply_plan
    from ssm_profile.profiling.recipe import RunRecipe
    from ssm_profile.model.resolve import load_model
    from test_apply_validate import make_plan, unit_action

    loaded = load_model("tiny-mamba")
    layers = [m.layer for m in find_mixers(loaded.model)]
    plan = make_plan(loaded, [{"target": "in_proj", "structure": "unstructured", "criterion": "obs", "sparsity": 0.5},
                              {**unit_action("channel", {layers[0]: [0, 3]}, execution="zero"), "criterion": "obs"}])
    dense = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    # oracle: the same cuts through the profiler's own scorer on a fresh copy of the dense model
    fresh = load_model("tiny-mamba")
    from ssm_profile.documents import as_plan
    from ssm_profile.calibration.data import load_dataset

    recipe = RunRecipe.of_plan(as_plan(plan))
    with recipe.installed(fresh.model):
        data = load_dataset(fresh.tokenizer, recipe.data)
        scorer = recipe.scorer(fresh.model, recipe.statistics(fresh.model, data.calibration, {"inputs", "hessians"}),
                               ["obs"])
        expected = scorer.prune(TrialSpec("in_proj", "obs", 0.5), find_mixers(fresh.model))
    apply_plan(loaded, plan, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    params = dict(reloaded.named_parameters())
    E = find_mixers(reloaded)[0].intermediate_size
    for name, value in expected.values.items():
        value = value.clone()
        if name.startswith(f"backbone.layers.{layers[0]}."):
            value[[0, 3, E, E + 3]] = 0  # the channel action's in_proj rows
        torch.testing.assert_close(params[name], value.to(params[name].dtype))
        assert not torch.equal(params[name], dense[name] * expected.mask[name])
    out_proj = params[f"backbone.layers.{layers[0]}.mixer.out_proj.weight"]
    assert torch.all(out_proj[:, [0, 3]] == 0)
    kept = torch.ones(out_proj.shape[1], dtype=torch.bool)
    kept[[0, 3]] = False
    assert not torch.equal(out_proj[:, kept], dense[f"backbone.layers.{layers[0]}.mixer.out_proj.weight"][:, kept])


# ------------------------------------------------------------------ the Gramian of a diagonal SSM


def test_ssm_gramian_is_the_hankel_proxy_of_a_constant_diagonal_ssm():
    """Constant dt, B, C: Wc_ii = Σ_k a^2k (dt·B)², Wo_ii = Σ_k a^2k C² summed term by term."""
    from ssm_profile.criteria import get

    model = tiny_mamba(layers=1)
    mixer = find_mixers(model)[0]
    E, N = mixer.intermediate_size, mixer.state_size
    dt = torch.linspace(0.05, 0.4, E, dtype=torch.float64)
    B = torch.linspace(0.5, 2.0, N, dtype=torch.float64)
    Cc = torch.linspace(1.5, 0.2, N, dtype=torch.float64)
    T = 7  # tokens: every statistic is a sum over T equal tokens
    stats = CalibrationStats(ssm={mixer.path: {
        "dt_sum": T * dt, "dt2_sum": T * dt**2, "dt2x2_sum": T * dt**2 * 3.0, "x2_sum": T * torch.full((E,), 3.0),
        "B2_sum": T * B**2, "C2_sum": T * Cc**2, "n": torch.tensor(T)}})
    A = -torch.exp(mixer.param("A_log").detach().double())
    decay = torch.exp(dt[:, None] * A)[..., None] ** (2 * torch.arange(20000, dtype=torch.float64))  # a^2k
    wc = (decay * (dt[:, None] * B[None, :])[..., None] ** 2).sum(-1)
    wo = (decay * (Cc[None, :] ** 2)[..., None]).sum(-1)
    oracle = (wc * wo).sqrt()
    ctx = ScoringContext(model=model, stats=stats)
    got = get("ssm_gramian").score(ctx, mixer, "A_log").double()
    torch.testing.assert_close(got, oracle, rtol=1e-4, atol=0)
    torch.testing.assert_close(get("ssm_gramian").unit_scores(ctx, mixer, mixer.unit_family("state")),
                               got.sum(0), rtol=1e-5, atol=0)


# ------------------------------------------------------------------ predicted vs measured


def test_prediction_agreement_is_spearman_with_an_interval():
    import math

    import numpy as np

    from ssm_profile.profiling.results import ProfileResult
    from ssm_profile.profiling.sensitivity import Trial

    rng = np.random.default_rng(3)
    measured = rng.random(12)
    predicted = measured + rng.normal(0, 0.3, 12)

    def t(criterion, s, pred, meas):
        return Trial("in_proj", criterion, s, None, 1 + meas, meas, 0, 0, 0, pred, 0.0, [])

    trials = [t("fisher", i / 20, float(p), float(m)) for i, (p, m) in enumerate(zip(predicted, measured))]
    trials += [t("magnitude", 0.5, None, 0.1), t("snip", 0.1, 0.0, 0.1), t("snip", 0.2, 1.0, 0.2)]
    result = ProfileResult(record=RunRecord.from_dict({}), analysis=None, dense_window_losses=[1.0, 1.0], trials=trials)
    agreement = result.prediction_agreement()
    assert set(agreement) == {"fisher"}  # magnitude predicts nothing; 2 snip trials are too few
    # oracle: Pearson correlation of the ranks (no ties), Fisher z interval by hand
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    rho = float(np.corrcoef(rank(predicted), rank(measured))[0, 1])
    half = 1.959964 * math.sqrt(1.06 / 9)
    a = agreement["fisher"]
    assert a["n"] == 12 and math.isclose(a["spearman"], rho, rel_tol=1e-12)
    assert math.isclose(a["low"], math.tanh(math.atanh(rho) - half), rel_tol=1e-9)
    assert math.isclose(a["high"], math.tanh(math.atanh(rho) + half), rel_tol=1e-9)
    assert a["low"] < rho < a["high"]


def test_prediction_scale_is_a_median_ratio_with_a_distribution_free_interval():
    """A criterion that predicts 1.25x the measured ΔL: the median measured/predicted is 0.8, its
    interval (order statistics 7 and 18 of 24, binomial(24, ½)) excludes 1, and the text says so."""
    import numpy as np

    from ssm_profile.base.fmt import agreement_text
    from ssm_profile.profiling.results import ProfileResult, median_ratio
    from ssm_profile.profiling.sensitivity import Trial

    rng = np.random.default_rng(4)
    measured = rng.uniform(0.01, 1.0, 24)
    predicted = measured / 0.8 * rng.uniform(0.9, 1.1, 24)
    trials = [Trial("in_proj", "fisher", i / 50, None, 1 + m, float(m), 0, 0, 0, float(p), 0.0, [])
              for i, (p, m) in enumerate(zip(predicted, measured))]
    a = ProfileResult(record=RunRecord.from_dict({}), analysis=None, dense_window_losses=[1.0, 1.0],
                      trials=trials).prediction_agreement()["fisher"]
    ratios = np.sort(measured / predicted)
    assert a["ratio"] == pytest.approx(np.median(ratios)) and a["ratio"] == pytest.approx(0.8, abs=0.03)
    assert (a["ratio_low"], a["ratio_high"], a["ratio_n"]) == (ratios[6], ratios[17], 24)
    assert a["ratio_high"] < 1 and "over-predicts" in agreement_text("fisher", a)
    assert "under-predicts" in agreement_text("x", {"spearman": 0.9, "n": 9, **median_ratio([2.0] * 9)})
    assert "too few" in agreement_text("x", {"spearman": 0.9, "n": 5, **median_ratio([2.0] * 5)})


# ------------------------------------------------------------------ FLAP bias compensation


@pytest.mark.parametrize("make,kind", [(tiny_mamba, "channel"), (tiny_mamba2, "head")])
def test_flap_unit_cut_keeps_the_mean_output_of_out_proj(make, kind):
    """Oracle: the out_proj's mean output over the calibration inputs (captured by a hook) is the same
    before and after the cut with compensation; the trial restores every tensor exactly."""
    model = make(layers=1, use_bias=True)
    tokens = calib()
    stats = collect_stats(model, tokens, {"inputs"}, batch_size=4)
    mixer = find_mixers(model)[0]
    captured = []
    handle = mixer.module.out_proj.register_forward_hook(lambda m, args, out: captured.append(args[0].detach()))
    with torch.no_grad():
        model(input_ids=tokens)
    handle.remove()
    x = torch.cat(captured).reshape(-1, captured[0].shape[-1]).double()
    w, b = (mixer.param(p).detach().double().clone() for p in ("out_proj.weight", "out_proj.bias"))
    scorer = Scorer(model, ScoringContext(model=model, stats=stats), ["flap"])
    pruning = scorer.prune(TrialSpec(f"unit:{kind}", "flap", 0.5), [mixer])
    name = mixer.full_name("out_proj.weight")
    keep = pruning.mask[name]
    assert not bool(keep.all())
    new_bias = pruning.values[mixer.full_name("out_proj.bias")].double()
    before = (x @ w.T + b).mean(0)
    after = (x @ (w * keep).T + new_bias).mean(0)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(new_bias, b)
    originals = {n: p.detach().clone() for n, p in model.named_parameters()}
    with MaskApplier(model) as applier:
        applier.apply(pruning.mask, pruning.values)
        assert torch.equal(mixer.param("out_proj.bias").detach(), pruning.values[mixer.full_name("out_proj.bias")])
    assert all(torch.equal(p, originals[n]) for n, p in model.named_parameters())


def test_flap_without_a_bias_changes_nothing_but_zeros():
    model = tiny_mamba2(layers=1)
    stats = collect_stats(model, calib(), {"inputs"}, batch_size=4)
    scorer = Scorer(model, ScoringContext(model=model, stats=stats), ["flap"])
    assert scorer.prune(TrialSpec("unit:head", "flap", 0.5), find_mixers(model)).values == {}


def test_applicability_is_decided_without_solving_a_cut(obs_setup, monkeypatch):
    """plan_trials asks `applies` for every (criterion, target): at mamba-130m size, building SparseGPT
    cuts of every layer there took over 15 minutes before the first trial."""
    from ssm_profile.criteria.masks import Target

    model, scorer, _, _ = obs_setup
    crit = scorer.criteria["obs"]

    def no_solving(*args, **kwargs):
        raise AssertionError("applies() solved a cut")

    monkeypatch.setattr(crit, "prune", no_solving)
    mixers = find_mixers(model)
    assert scorer.applies("obs", Target.parse("in_proj"), mixers) is None
    assert scorer.applies("obs", Target.parse("A_log"), mixers)  # obs scores linear weights only
