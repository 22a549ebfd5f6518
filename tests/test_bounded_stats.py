"""Memory-bounded calibration: statistics collected layer chunk by layer chunk and kept on disk
are the same numbers, and give the same criterion scores, as the in-memory path."""

from __future__ import annotations

import gc

import pytest
import torch

from conftest import tiny_mamba, tiny_mamba2
from ssm_profile.model.arch import find_mixers
from ssm_profile.criteria import NotApplicable
from ssm_profile.calibration.data import DataSpec
from ssm_profile.base.defaults import DEFAULT_CRITERIA
from ssm_profile.calibration.offload import DiskTensors
from ssm_profile.profiling.recipe import RunRecipe, needs_of
from ssm_profile.calibration.stats import collect_stats, layer_chunks, statistics_bytes

ALL = {"inputs", "hessians", "grads", "ssm", "tokens"}


def calib(n=6, L=16):
    return torch.randint(0, 64, (n, L), generator=torch.Generator().manual_seed(1))


def _equal_maps(a, b) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _every_score(scorer, mixers, criteria) -> dict:
    """(criterion, layer, param or unit kind) -> scores, for every score the criteria can give."""
    out = {}
    for mixer in mixers:
        calls = [(p, scorer.element) for p in ("in_proj.weight", "out_proj.weight", "A_log", "D")]
        calls += [(kind, scorer.units) for kind in mixer.unit_families()]
        for criterion in criteria:
            for what, score in calls:
                try:
                    out[criterion, mixer.layer, what] = score(criterion, mixer, what)
                except NotApplicable:
                    pass
    return out


def _clean(model) -> bool:
    hooks = all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    no_forward = all("forward" not in m.__dict__ for m in model.modules())
    return hooks and no_forward and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("make", [tiny_mamba, tiny_mamba2])
def test_bounded_statistics_equal_in_memory(make, tmp_path):
    model = make(layers=3)
    free = collect_stats(model, calib(), ALL, batch_size=4)
    progress = []
    bounded = collect_stats(model, calib(), ALL, batch_size=4, memory_budget=1, offload_dir=tmp_path,
                            progress=lambda done, total, label: progress.append((done, total, label)))
    assert isinstance(bounded.hessians, DiskTensors) and isinstance(bounded.grad_sum, DiskTensors)
    assert bounded.hessians.directory.parent == tmp_path and len(bounded.hessians) > 0
    assert _clean(model)
    # one pass per layer for the activations, one per layer for the gradients
    assert progress[-1] == (2 * 3 * 6, 2 * 3 * 6, "gradients")
    _equal_maps(free.hessians, bounded.hessians)
    _equal_maps(free.grad_sum, bounded.grad_sum)
    _equal_maps(free.grad_sq_sum, bounded.grad_sq_sum)
    assert (free.grad_batches, free.grad_tokens) == (bounded.grad_batches, bounded.grad_tokens)
    for key in free.inputs:
        _equal_maps(free.inputs[key], bounded.inputs[key])
    for path in free.ssm:
        _equal_maps(free.ssm[path], bounded.ssm[path])

    recipe = RunRecipe(data=DataSpec())
    criteria = list(DEFAULT_CRITERIA)
    want = _every_score(recipe.scorer(model, free, criteria), find_mixers(model), criteria)
    got = _every_score(recipe.scorer(model, bounded, criteria), find_mixers(model), criteria)
    assert want.keys() == got.keys() and len(want) > 40
    assert all(torch.equal(want[key], got[key]) for key in want)

    directory = bounded.hessians.directory
    del bounded
    gc.collect()
    assert not directory.exists()  # offloaded statistics go with the statistics


def test_hessians_only_keep_their_token_counts(tmp_path):
    model = tiny_mamba(layers=3)
    free = collect_stats(model, calib(), {"hessians"})
    bounded = collect_stats(model, calib(), {"hessians"}, memory_budget=1, offload_dir=tmp_path)
    assert set(bounded.inputs) == set(bounded.hessians) == set(free.hessians)
    assert not bounded.grad_sum


def test_layer_chunks_fit_the_budget():
    mixers = find_mixers(tiny_mamba(layers=5))
    size = statistics_bytes(mixers[0], ALL)
    assert size > 0
    assert layer_chunks(mixers, ALL, None) == [mixers]
    assert layer_chunks(mixers, ALL, 5 * size) == [mixers]
    chunks = layer_chunks(mixers, ALL, 2 * size)
    assert [len(c) for c in chunks] == [2, 2, 1] and sum(chunks, []) == mixers
    assert [len(c) for c in layer_chunks(mixers, ALL, 1)] == [1] * 5  # at least one layer each


def test_recipe_bounds_statistics_by_available_memory(tmp_path, monkeypatch):
    """RunRecipe.statistics takes the bounded path when the memory said to be available is small."""
    model = tiny_mamba(layers=3)
    recipe = RunRecipe(data=DataSpec())
    needs = needs_of(DEFAULT_CRITERIA)
    roomy = recipe.statistics(model, calib(), needs)
    assert isinstance(roomy.hessians, dict)
    monkeypatch.setenv("SSM_PROFILE_AVAILABLE_MEMORY", "1")
    tight = recipe.statistics(model, calib(), needs, offload_dir=tmp_path)
    assert isinstance(tight.hessians, DiskTensors)
    _equal_maps(roomy.grad_sum, tight.grad_sum)


def test_profile_refused_up_front_when_memory_is_short(tmp_path, monkeypatch, capsys):
    from ssm_profile.cli.main import main

    # above the weights (3.5 MiB: the config check passes), below weights + statistics + activations
    monkeypatch.setenv("SSM_PROFILE_AVAILABLE_MEMORY", "4MiB")
    assert main(["profile", "tiny-mamba", "-o", str(tmp_path / "run"), "--nsamples", "2", "--eval-samples", "2",
                 "--seqlen", "16", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "profiling this model needs ~" in err[0]
    assert "weights" in err[0] and "statistics" in err[0] and "activations" in err[0] and "available" in err[0]
    assert not (tmp_path / "run" / "run.json").exists()


def test_estimate_covers_every_statistic():
    from ssm_profile.profiling.estimate import estimate_profile_memory

    model = tiny_mamba(layers=3)
    settings = dict(nsamples=4, eval_samples=4, seqlen=16, batch_size=4, cache_bytes=0)
    none = estimate_profile_memory(model, needs=set(), **settings)
    every = estimate_profile_memory(model, needs=needs_of(DEFAULT_CRITERIA), **settings)
    bounded = estimate_profile_memory(model, needs=needs_of(DEFAULT_CRITERIA), bounded=True, **settings)
    one_layer = statistics_bytes(find_mixers(model)[0], ALL)
    assert none.of("statistics") == 0 and every.of("statistics") == 3 * one_layer
    assert bounded.of("statistics") == one_layer and bounded.of("activations") < every.of("activations")
    assert every.of("weights") == none.of("weights") > 0


def _float_matrices_held(model) -> int:
    """Bytes of float tensors of two or more dimensions alive in this process besides the model's
    own (XᵀX and gradient sums are such; the per-channel statistics are vectors)."""
    own = {t.data_ptr() for t in [*model.parameters(), *model.buffers()]}
    gc.collect()
    return sum(t.numel() * t.element_size() for t in gc.get_objects()
               if isinstance(t, torch.Tensor) and t.is_floating_point() and t.ndim >= 2
               and t.data_ptr() not in own)


@pytest.mark.slow  # 5 s at 2 layers, ~20 s at 4; equality of the bounded statistics stays in the default run
@pytest.mark.parametrize("layers", [2, 4])
def test_bounded_passes_leave_nothing_large_in_ram(layers, tmp_path, monkeypatch):
    """After every chunk's pass of the bounded path, no XᵀX or gradient sum is left in RAM (they are
    all on disk), so what RAM holds does not grow with the layer count; the in-memory path holds them."""
    import ssm_profile.calibration.stats as stats_module

    model = tiny_mamba(layers=layers)
    held = []

    def measured(run):
        def wrapper(*args, **kwargs):
            run(*args, **kwargs)
            held.append(_float_matrices_held(model))
        return wrapper

    monkeypatch.setattr(stats_module, "_activation_pass", measured(stats_module._activation_pass))
    monkeypatch.setattr(stats_module, "_gradient_pass", measured(stats_module._gradient_pass))
    baseline = _float_matrices_held(model)
    collect_stats(model, calib(), ALL, batch_size=4, memory_budget=1, offload_dir=tmp_path)
    assert len(held) == 2 * layers and max(held) == baseline
    held.clear()
    in_memory = collect_stats(model, calib(), ALL, batch_size=4)
    hessians = sum(h.numel() * h.element_size() for h in in_memory.hessians.values())
    assert held[-1] - baseline > hessians > 0  # XᵀX and the gradient sums of the matrices
    del in_memory


def test_offloaded_folders_are_the_ones_a_later_run_removes(tmp_path):
    """A killed run leaves its offloaded statistics behind; the next run in that directory must
    recognise (and remove) them, so they carry the prefix remove_leftovers looks for."""
    from ssm_profile.calibration.offload import remove_leftovers

    model = tiny_mamba(layers=2)
    stats = collect_stats(model, calib(), ALL, batch_size=4, memory_budget=1, offload_dir=tmp_path)
    stores = [stats.hessians.directory, stats.grad_sum.directory, stats.grad_sq_sum.directory]
    assert all(d.exists() for d in stores)
    remove_leftovers(tmp_path)
    assert not any(d.exists() for d in stores)


def test_a_bounded_score_cache_recomputes_the_same_scores():
    """Element scores past ``cache_bytes`` are dropped (least recently used) and recomputed equal."""
    from ssm_profile.criteria import ScoringContext
    from ssm_profile.profiling.sensitivity import Scorer

    model = tiny_mamba(layers=3)
    stats = collect_stats(model, calib(), ALL, batch_size=4)
    mixers = find_mixers(model)
    criteria = ["magnitude", "wanda", "fisher", "obs"]
    free = Scorer(model, ScoringContext(model=model, stats=stats), criteria)
    weight = mixers[0].param("in_proj.weight").numel() * 4
    bounded = Scorer(model, ScoringContext(model=model, stats=stats), criteria, cache_bytes=2 * weight)
    first = _every_score(free, mixers, criteria)
    for _ in range(2):  # the second pass finds most scores evicted and recomputes them
        again = {k: v for k, v in _every_score(bounded, mixers, criteria).items() if k[2] in
                 ("in_proj.weight", "out_proj.weight", "A_log", "D")}
        _equal_maps({k: v for k, v in first.items() if k in again}, again)
        held = sum(v.numel() * 4 for v in bounded._elements.values() if isinstance(v, torch.Tensor))
        assert held <= 2 * weight
    assert len([v for v in free._elements.values() if isinstance(v, torch.Tensor)]) > len(
        [v for v in bounded._elements.values() if isinstance(v, torch.Tensor)])
