"""The incremental sweep equals the plain sweep bit for bit; the fast kernels agree with the reference.

* ssm_profile.profiling.incremental: every trial loss and window loss of a profile is ``==`` with and without
  the incremental evaluator (model-wide and per-layer trials, Mamba-1 and Mamba-2, tiny random
  models and the embedded ones), and every reuse mode is actually exercised;
* ssm_profile.kernels.fastscan2: the Mamba-2 recurrence (numba and torch) and the chunked form equal a
  step-by-step loop written here to float32 rounding; the owned forward takes the recurrence for
  inference and the chunked form when gradients are needed;
* fast kernels on vs off: the same profile agrees to float32 rounding.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_mamba, tiny_mamba2

from ssm_profile.calibration import data as data_module
from ssm_profile.kernels import fastscan2
from ssm_profile.calibration.data import Dataset, DataSpec, batch_losses, load_dataset
from ssm_profile.profiling.incremental import IncrementalEvaluator, supports
from ssm_profile.mixers.choice import Kernels, installed
from ssm_profile.profiling.record import ProfileSettings
from ssm_profile.profiling.profile import profile_model
from ssm_profile.model.resolve import LoadedModel, ModelSource, load_model

torch.set_num_threads(1)

SMALL_DATA = DataSpec(nsamples=4, eval_samples=4, seqlen=32)


def random_dataset(vocab: int, n_eval: int = 5, seqlen: int = 24, seed: int = 0) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    return Dataset(calibration=torch.randint(0, vocab, (4, seqlen), generator=gen),
                   evaluation=torch.randint(0, vocab, (n_eval, seqlen), generator=gen),
                   spec=DataSpec(nsamples=4, eval_samples=n_eval, seqlen=seqlen), sources={"evaluation": "random"})


def as_loaded(model: torch.nn.Module) -> LoadedModel:
    return LoadedModel(model=model, tokenizer=None, source=ModelSource("tiny-random", "local", "-"))


def settings(**kw) -> ProfileSettings:
    # the grid: every path of the evaluator (each start layer, reuse mode, repeated mask) runs whatever
    # the losses, where the adaptive sweep's choices depend on them
    base = {"criteria": ["magnitude", "random", "fisher"], "sparsities": [0.3, 0.6], "bootstrap": 10,
            "sweep": "grid"}
    base.update(kw)
    return ProfileSettings(**base)


def losses_of(result) -> dict:
    return {t.key: (t.loss, t.delta_loss, t.perplexity, t.window_losses) for t in result.trials}


def assert_identical_profiles(loaded, data, **kw):
    plain = profile_model(loaded, data, settings(incremental=False, **kw))
    inc = profile_model(loaded, data, settings(incremental=True, **kw))
    assert plain.dense_window_losses == inc.dense_window_losses
    a, b = losses_of(plain), losses_of(inc)
    assert a.keys() == b.keys() and len(a) > 10
    assert [k for k in a if a[k] != b[k]] == []  # == on floats: bit for bit
    assert any(t.layer is not None for t in inc.trials) and any(t.layer is None for t in inc.trials)
    return inc.record.incremental


@pytest.mark.parametrize("make,fast", [(tiny_mamba, True), (tiny_mamba2, True),
                                       pytest.param(tiny_mamba2, False, marks=pytest.mark.slow),  # 5 s
                                       pytest.param(tiny_mamba, False, marks=pytest.mark.slow)],  # transformers' loop: 6 s
                         ids=["fast-mamba1", "fast-mamba2", "reference-mamba2", "reference-mamba1"])
def test_incremental_equals_plain_on_random_models(make, fast, monkeypatch):
    monkeypatch.setattr(data_module, "HEAD_ROWS", 7)  # several head blocks per batch, the last one ragged
    model = make(layers=3)
    summary = assert_identical_profiles(as_loaded(model), random_dataset(model.config.vocab_size), fast_scan=fast,
                                        batch_size=2)
    assert summary.enabled and all(summary.modes.values()) and summary.blocked_head, summary
    counts = summary.counts
    # every path ran: later start layers (per-layer trials), each reuse mode, repeated masks
    assert counts.get("start_layer_2", 0) > 0 and counts.get("mode_full", 0) > 0
    assert all(counts.get(f"mode_{m}", 0) > 0 for m in summary.modes), counts


@pytest.mark.slow  # the random-model variants run by default; the embedded ones take ~6 s each
@pytest.mark.parametrize("name", ["tiny-mamba", "tiny-mamba2"])
def test_incremental_equals_plain_on_embedded_models(name):
    loaded = load_model(name)
    summary = assert_identical_profiles(loaded, SMALL_DATA, criteria=["magnitude", "wanda", "fisher", "random"],
                                        sparsities=[0.2, 0.3, 0.7])
    assert summary.enabled and summary.blocked_head and summary.counts.get("repeated", 0) > 0


@pytest.fixture(scope="module")
def m2_setup():
    model = tiny_mamba2(layers=3)
    data = random_dataset(model.config.vocab_size)
    dense = batch_losses(model, data.evaluation, 2, kernels=Kernels.fast())
    return model, data, dense, IncrementalEvaluator(model, data.evaluation, 2, kernels=Kernels.fast()).prepare(dense)


def masked_losses(model, mask, windows, evaluate=None, kernels=Kernels.fast()):
    """Per-window losses with ``mask`` applied: by ``evaluate``, else plainly (the profiler's kernels)."""
    from ssm_profile.criteria.masks import MaskApplier

    with MaskApplier(model) as applier:
        applier.apply(mask)
        return evaluate(model, windows, mask=mask) if evaluate else batch_losses(model, windows, 2, kernels=kernels)


def test_evaluator_reuse_and_repeats(m2_setup):
    model, data, dense, ev = m2_setup
    params = dict(model.named_parameters())

    def zero_some(name, seed):
        keep = torch.rand(params[name].shape, generator=torch.Generator().manual_seed(seed)) > 0.4
        return {name: keep}

    cases = [zero_some("backbone.layers.1.mixer.out_proj.weight", 1),
             zero_some("backbone.layers.2.mixer.A_log", 2),
             zero_some("backbone.layers.0.mixer.in_proj.weight", 3),
             {**zero_some("backbone.layers.2.mixer.norm.weight", 4), **zero_some("backbone.layers.0.mixer.D", 5)},
             zero_some("backbone.embeddings.weight", 6),  # outside the layers: recomputed from scratch
             zero_some("backbone.layers.1.norm.weight", 7)]  # block norm, not a mixer group
    for mask in cases:
        assert torch.equal(masked_losses(model, mask, data.evaluation, ev), masked_losses(model, mask, data.evaluation))
    before = dict(ev.stats)
    assert torch.equal(masked_losses(model, cases[0], data.evaluation, ev), masked_losses(model, cases[0],
                                                                                         data.evaluation))
    assert ev.stats["repeated"] == before.get("repeated", 0) + 1
    nothing = {"backbone.layers.0.mixer.D": torch.ones_like(params["backbone.layers.0.mixer.D"], dtype=torch.bool)}
    assert torch.equal(masked_losses(model, nothing, data.evaluation, ev), dense)
    assert ev.stats["unchanged"] >= 1
    assert ev.stats["start_layer_1"] >= 2 and ev.stats["mode_out_proj"] >= 1 and ev.stats["mode_conv1d"] >= 1


def test_evaluator_falls_back_when_the_replay_differs(monkeypatch):
    model = tiny_mamba(layers=2)
    data = random_dataset(model.config.vocab_size)
    dense = batch_losses(model, data.evaluation, 2)
    original = IncrementalEvaluator._head_loss

    def off_by_a_little(self, h, batch):
        return original(self, h, batch) * (1 + 1e-7)

    monkeypatch.setattr(IncrementalEvaluator, "_head_loss", off_by_a_little)
    ev = IncrementalEvaluator(model, data.evaluation, 2).prepare(dense)
    assert not ev.enabled and "bit for bit" in ev.reason
    mask = {"backbone.layers.1.mixer.out_proj.weight": torch.rand(model.backbone.layers[1].mixer.out_proj.weight.shape,
                                                                  generator=torch.Generator().manual_seed(0)) > 0.5}
    assert torch.equal(masked_losses(model, mask, data.evaluation, ev),
                       masked_losses(model, mask, data.evaluation, kernels=Kernels.transformers()))
    assert ev.stats["plain"] == 1


def test_unsupported_models_and_other_windows_use_batch_losses():
    model = tiny_mamba(layers=1)
    assert supports(model) is None
    assert "backbone" in supports(model.backbone) or "not one of" in supports(model.backbone)
    data = random_dataset(model.config.vocab_size)
    ev = IncrementalEvaluator(model, data.evaluation, 2).prepare(batch_losses(model, data.evaluation, 2))
    other = data.evaluation.flip(0)
    assert torch.equal(ev(model, other), batch_losses(model, other, 2)) and ev.stats["plain"] == 1


def test_resume_accepts_other_kernel_and_sweep_choices(tmp_path):
    loaded = as_loaded(tiny_mamba2(layers=2))
    data = random_dataset(loaded.model.config.vocab_size)
    kw = {"per_layer": False, "targets": ["D"], "criteria": ["magnitude"]}
    first = profile_model(loaded, data, settings(**kw), run_dir=tmp_path / "r")
    again = profile_model(loaded, data, settings(fast_scan=False, incremental=False, **kw), run_dir=tmp_path / "r",
                          resume=True)
    assert losses_of(first) == losses_of(again)
    assert again.record.settings.fast_scan is False


# ------------------------------------------------------------------------------ Mamba-2 fast path


def stepwise_ssd(x, dt, A, B, C, D, dt_bias, dt_limit, initial=None):
    """The Mamba-2 recurrence one step at a time in float64: the oracle for both SSD forms."""
    x, dt, A, B, C, D, dt_bias = (t.double() for t in (x, dt, A, B, C, D, dt_bias))
    b, length, h, p = x.shape
    rep = h // B.shape[2]
    B, C = B.repeat_interleave(rep, dim=2), C.repeat_interleave(rep, dim=2)
    dt = torch.nn.functional.softplus(dt + dt_bias).clamp(*dt_limit)
    state = torch.zeros(b, h, p, B.shape[-1], dtype=torch.float64) if initial is None else initial.double()
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        state = decay * state + (dt[:, t, :, None, None] * x[:, t, :, :, None]) * B[:, t, :, None, :]
        ys.append((state * C[:, t, :, None, :]).sum(-1) + D[:, None] * x[:, t])
    return torch.stack(ys, dim=1), state


@pytest.mark.parametrize("length,chunk,groups", [(37, 8, 2), (64, 16, 1), (5, 64, 4)])
@pytest.mark.parametrize("initial", [False, True])
@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_ssd_scan_matches_the_stepwise_recurrence(length, chunk, groups, initial, backend, monkeypatch):
    monkeypatch.setattr(fastscan2, "BACKEND", backend)
    gen = torch.Generator().manual_seed(length)
    b, h, p, n = 2, 4, 8, 6

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    x, dt, A, B, C = (rand(b, length, h, p), rand(b, length, h), -torch.rand(h, generator=gen) - 0.05,
                      rand(b, length, groups, n), rand(b, length, groups, n))
    D, bias, start = rand(h), rand(h), rand(b, h, p, n) if initial else None
    want_y, want_state = stepwise_ssd(x, dt, A, B, C, D, bias, (0.0, 5.0), start)
    kw = {"D": D, "dt_bias": bias, "dt_softplus": True, "dt_limit": (0.0, 5.0), "return_final_states": True,
          "initial_states": start}
    got_y, got_state = fastscan2.ssd_scan(x, dt, A, B, C, chunk, **kw)
    torch.testing.assert_close(got_y.double(), want_y, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_state.double(), want_state, rtol=1e-4, atol=1e-4)
    assert torch.equal(fastscan2.ssd_scan(x, dt, A, B, C, chunk, **{**kw, "return_final_states": False}), got_y)
    if not initial:  # the chunked form (the gradient path) starts from zero
        chunked = fastscan2.ssd_chunked(x, dt, A, B, C, chunk, D=D, dt_bias=bias, dt_limit=(0.0, 5.0))
        torch.testing.assert_close(chunked.double(), want_y, rtol=1e-4, atol=1e-4)


def test_owned_ssd_forward_takes_the_recurrence_for_inference_and_the_chunked_form_for_gradients(monkeypatch):
    model = tiny_mamba2(layers=1)
    ids = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(0))
    calls = []
    for name in ("ssd_scan", "ssd_chunked"):
        original = getattr(fastscan2, name)
        monkeypatch.setattr(fastscan2, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    with installed(model, Kernels(fast_scan=True)):
        assert "forward" in model.backbone.layers[0].mixer.__dict__
        calls.clear()  # the first use checked the owned forward against transformers'
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
        assert calls == ["ssd_scan"]
        model(input_ids=ids, use_cache=False).logits.sum().backward()
        assert calls == ["ssd_scan", "ssd_chunked"]
    assert not any("forward" in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("name", [pytest.param("tiny-mamba", marks=pytest.mark.slow), "tiny-mamba2"])  # one in the default run
def test_fast_kernels_on_and_off_agree_to_float32_rounding(name):
    loaded = load_model(name)
    kw = {"criteria": ["magnitude", "random"], "sparsities": [0.3, 0.7], "per_layer": True,
          "layer_criterion": "magnitude"}
    fast = profile_model(loaded, SMALL_DATA, settings(fast_scan=True, **kw))
    ref = profile_model(loaded, SMALL_DATA, settings(fast_scan=False, **kw))
    assert not any("forward" in m.__dict__ for m in loaded.model.modules())  # nothing left installed
    torch.testing.assert_close(torch.tensor(fast.dense_window_losses), torch.tensor(ref.dense_window_losses),
                               rtol=1e-5, atol=1e-5)
    a, b = losses_of(fast), losses_of(ref)
    assert a.keys() == b.keys()
    worst = max(abs(a[k][0] - b[k][0]) for k in a)
    assert worst < 1e-4, worst


def test_embedded_dense_losses_equal_with_fast_kernels_in_the_evaluator():
    loaded = load_model("tiny-mamba2")
    data = load_dataset(loaded.tokenizer, SMALL_DATA)
    dense = batch_losses(loaded.model, data.evaluation, 8, kernels=Kernels.fast())
    ev = IncrementalEvaluator(loaded.model, data.evaluation, 8, kernels=Kernels.fast()).prepare(dense)
    assert ev.enabled, ev.reason
