"""ssm_profile.mixers: the project's own mixer forwards are the model, run their fast kernels, and
fall back loudly (never silently) when a transformers release computes something else.

This file is also CI's lowest-transformers leg: everything here must hold on every transformers
release pyproject.toml allows.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import GATED_DELTA, MIXER_ARCHITECTURES, tiny_architecture, tiny_gated_delta, tiny_mamba, tiny_mamba2

from ssm_profile import mixers
from ssm_profile.kernels import fastdelta, fastscan, fastscan2
from ssm_profile.mixers.choice import Kernels, installed
from ssm_profile.mixers import _install, _ledger, registry

torch.set_num_threads(1)
ARCHITECTURES = [(family, name) for family, names in MIXER_ARCHITECTURES.items() for name in names]
# Allowed gradient difference per unit of scale (1 + max |grad|). Gated DeltaNet's tiny hybrids amplify
# float32 rounding more than the Mamba ones: measured against the whole model in float64 (the owned forward,
# since transformers computes the delta rule in float32 whatever the model's dtype), transformers' float32
# gradients are off by up to 6e-6 of scale on these two configurations and 3.5e-5 at hidden size 32, and
# the owned forward's by as much again in other directions (owned vs transformers: 1.3e-5 on qwen3_next
# under 5.25). Two float32 implementations cannot be held to 1e-5 here; 5e-5 still catches any real error.
GRAD_TOLERANCE = {"gated_delta": 5e-5}


def first_mixer(model):
    return next(m for m in model.modules() if mixers.family_of(m) is not None)


@pytest.fixture
def fresh_ledger(monkeypatch):
    """A ledger of this test's own: no verdict or count of an earlier test carries over."""
    ledger = _ledger.Ledger()
    monkeypatch.setattr(_ledger, "LEDGER", ledger)
    monkeypatch.setattr(_install, "LEDGER", ledger)
    return ledger


def ids_for(model, length=21, seed=1):
    return torch.randint(0, model.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(seed))


def logits_and_grads(model, ids, choice):
    model.zero_grad(set_to_none=True)
    with installed(model, choice):
        out = model(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family,name", ARCHITECTURES, ids=[name for _, name in ARCHITECTURES])
def test_owned_forward_equals_transformers_in_logits_and_gradients(family, name, fresh_ledger):
    model = tiny_architecture(name)
    ids = ids_for(model)
    want_logits, want_grads = logits_and_grads(model, ids, Kernels.transformers())
    before = mixers.snapshot()
    got_logits, got_grads = logits_and_grads(model, ids, Kernels.fast())
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-4, atol=1e-4)
    assert got_grads.keys() == want_grads.keys()
    for key, grad in got_grads.items():
        scale = 1.0 + want_grads[key].abs().max().item()
        assert (grad - want_grads[key]).abs().max().item() <= GRAD_TOLERANCE.get(family, 1e-5) * scale, key
    with torch.no_grad(), installed(model, Kernels.fast()):  # inference: the forward-only kernels
        torch.testing.assert_close(model(input_ids=ids, use_cache=False).logits, want_logits, rtol=1e-4, atol=1e-4)
    used = mixers.usage(before)
    assert used and all(entry["family"] == family for entry in used.values())
    for mixer, entry in used.items():  # every call of every mixer ran the owned forward, none transformers'
        assert set(entry["calls"]) <= {"owned/numba", "owned/torch"} and entry["calls"], (mixer, entry)
        assert all(check["ok"] for check in entry["checks"]) and entry["checks"], entry


def tiny_qwen3_5(layers: int = 2):
    return tiny_gated_delta("qwen3_5_text")  # 2 linear-attention layers around a full-attention one


def tiny_qwen3_next(layers: int = 2):
    return tiny_gated_delta("qwen3_next")


KERNEL_MODULES = {"ssd_scan": fastscan2, "gated_delta_scan": fastdelta}


@pytest.mark.parametrize("make,kernels", [(tiny_mamba, ("selective_scan", "causal_conv1d")),
                                          (tiny_mamba2, ("ssd_scan", "causal_conv1d")),
                                          (tiny_qwen3_5, ("gated_delta_scan", "causal_conv1d")),
                                          (tiny_qwen3_next, ("gated_delta_scan", "causal_conv1d"))],
                         ids=["mamba1", "mamba2", "qwen3_5", "qwen3_next"])
def test_the_fast_cpu_kernels_are_the_ones_that_run(make, kernels, monkeypatch, fresh_ledger):
    """Fails when the owned forward stops reaching the numba kernels (the regression 5.25 caused)."""
    model = make(layers=2)
    ids = ids_for(model)
    with torch.no_grad(), installed(model, Kernels.fast()):
        model(input_ids=ids, use_cache=False)  # the first use checks the owned forward
        calls = []
        for name in kernels:
            module = KERNEL_MODULES.get(name, fastscan)
            real = getattr(module, name)
            monkeypatch.setattr(module, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or
                                _real(*a, **k))
        model(input_ids=ids, use_cache=False)
    assert sorted(calls) == sorted(kernels * 2)  # each kernel once per mixer, both layers
    entry = next(iter(mixers.usage().values()))
    assert entry["calls"] == {"owned/numba": 4}


@pytest.mark.parametrize("make", [tiny_mamba2, tiny_qwen3_5, tiny_qwen3_next], ids=["mamba2", "qwen3_5", "qwen3_next"])
def test_a_changed_transformers_forward_falls_back_with_one_warning_and_a_record(make, monkeypatch, fresh_ledger):
    """A release whose mixer computes something else (here: 1% more) is never silently replaced."""
    model = make(layers=2)
    cls = type(first_mixer(model))
    original = cls.forward
    monkeypatch.setattr(cls, "forward", lambda self, *a, **k: original(self, *a, **k) * 1.01)
    ids = ids_for(model)
    with torch.no_grad():
        changed = model(input_ids=ids, use_cache=False).logits
        # the owned mixers alone: with torch's linear, transformers' forward is bit-equal to the plain model
        with warnings.catch_warnings(record=True) as caught, installed(model, Kernels(fast_scan=True)):
            warnings.simplefilter("always")
            first = model(input_ids=ids, use_cache=False).logits
            second = model(input_ids=ids, use_cache=False).logits
    fallbacks = [w for w in caught if issubclass(w.category, mixers.MixerFallbackWarning)]
    assert len(fallbacks) == 1 and "\n" not in str(fallbacks[0].message)
    assert "slower" in str(fallbacks[0].message) and cls.__name__ in str(fallbacks[0].message)
    assert torch.equal(first, changed) and torch.equal(second, changed)  # transformers' (changed) forward ran
    entry = mixers.usage()[cls.__name__]
    assert entry["calls"] == {"transformers": 4}
    assert [c["ok"] for c in entry["checks"]] == [False] and entry["checks"][0]["max_abs_diff"] > entry["checks"][0]["bound"]
    assert any("failed the check" in why for why in entry["transformers_because"])


def test_an_owned_forward_that_raises_is_a_recorded_fallback(monkeypatch, fresh_ledger):
    model = tiny_mamba(layers=1)
    family = mixers.family_of(model.backbone.layers[0].mixer)
    monkeypatch.setattr(type(family), "spec", lambda self, module: (_ for _ in ()).throw(AttributeError("moved")))
    with pytest.warns(mixers.MixerFallbackWarning, match="raised AttributeError"), torch.no_grad(), \
            installed(model, Kernels.fast()):
        model(input_ids=ids_for(model), use_cache=False)
    assert mixers.usage()["MambaMixer"]["calls"] == {"transformers": 1}


def test_cache_and_padding_calls_run_transformers_forward_and_say_why(fresh_ledger):
    model = tiny_mamba(layers=1)
    ids = ids_for(model, length=7)
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=3, do_sample=False)
        with installed(model, Kernels.fast()):
            assert torch.equal(model.generate(ids, max_new_tokens=3, do_sample=False), want)
            mask = torch.ones_like(ids)
            mask[0, :2] = 0
            model(input_ids=ids, attention_mask=mask, use_cache=False)
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)  # no padding: owned
    entry = mixers.usage()["MambaMixer"]
    assert entry["calls"]["owned/numba"] == 1
    why = entry["transformers_because"]
    assert any("cache" in w for w in why) and why.get("a padding mask was passed") == 1


@pytest.mark.parametrize("name", GATED_DELTA)
def test_gated_delta_cache_and_padding_calls_run_transformers_forward_and_say_why(name, fresh_ledger):
    """Generation (a cache: prefill and decode steps) and padded batches run transformers' forward; an
    all-ones mask does not count as padding."""
    model = tiny_gated_delta(name)
    ids = ids_for(model, length=7)
    cls = type(first_mixer(model)).__name__
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=3, do_sample=False)
        mask = torch.ones_like(ids)
        mask[0, :2] = 0
        padded = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        with installed(model, Kernels(fast_scan=True)):  # torch's linear: transformers' forward is bit-equal
            assert torch.equal(model.generate(ids, max_new_tokens=3, do_sample=False), want)
            assert torch.equal(model(input_ids=ids, attention_mask=mask, use_cache=False).logits, padded)
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)  # no padding: owned
    entry = mixers.usage()[cls]
    assert entry["family"] == "gated_delta" and entry["calls"]["owned/numba"] == 2  # two mixers, one call
    why = entry["transformers_because"]
    assert why.get("a cache or packed sequences were passed") == 2 * 3  # prefill + 2 decode steps, 2 mixers
    assert why.get("a padding mask was passed") == 2


def test_transformers_kernels_are_counted_too(fresh_ledger):
    model = tiny_mamba2(layers=2)
    with torch.no_grad(), installed(model, Kernels.transformers()):
        model(input_ids=ids_for(model), use_cache=False)
    assert mixers.usage()["Mamba2Mixer"]["calls"] == {"transformers": 2}
    assert mixers.describe(mixers.usage()) == ("Mamba2Mixer: transformers' forward ×2 "
                                               "(asked for transformers' kernels)")


@pytest.mark.parametrize("family,groups,stage", [
    ("selective_scan", {"out_proj"}, "out_proj"), ("selective_scan", {"A_log", "D"}, "scan"),
    ("selective_scan", {"dt_proj"}, "scan"), ("selective_scan", {"x_proj"}, "conv1d"),
    ("selective_scan", {"conv1d", "out_proj"}, "conv1d"), ("selective_scan", {"in_proj"}, None),
    ("ssd", {"norm"}, "norm"), ("ssd", {"norm", "out_proj"}, "norm"), ("ssd", {"dt_bias"}, "conv1d"),
    ("ssd", {"in_proj", "D"}, None), ("ssd", {"<block>"}, None),
    ("gated_delta", {"A_log"}, "scan"), ("gated_delta", {"dt_bias", "norm"}, "scan"), ("gated_delta", {"norm"}, "norm"),
    ("gated_delta", {"conv1d"}, "conv1d"), ("gated_delta", {"out_proj"}, "out_proj"),
    ("gated_delta", {"in_proj_z"}, None), ("gated_delta", {"in_proj_ba", "out_proj"}, None)])
def test_a_trial_restarts_at_the_last_kept_stage_before_its_first_reader(family, groups, stage):
    assert registry.family_named(family).restart_stage(groups) == stage


@pytest.mark.parametrize("name", ["mamba", "zamba", "mamba2", "falcon_h1", "qwen3_next", "qwen3_5_text"])
def test_restarting_from_a_kept_stage_repeats_the_run_bit_for_bit(name):
    model = tiny_architecture(name)
    mixer = first_mixer(model)
    family = mixers.family_of(mixer)
    h = torch.randn(2, 13, family.hidden_size(mixer), generator=torch.Generator().manual_seed(0))
    kept: dict = {}
    with torch.no_grad():
        full = family.run(mixer, h, "numba", keep=kept)
        assert set(kept) == {s.name for s in family.stages if s.resumable}
        for stage, state in kept.items():
            assert torch.equal(family.run(mixer, None, "numba", start=stage, state=state), full), stage


def test_the_check_is_stated_and_sees_no_hooks(fresh_ledger):
    model = tiny_mamba(layers=1)
    mixer = model.backbone.layers[0].mixer
    seen = []
    handle = mixer.in_proj.register_forward_hook(lambda *a: seen.append(1))
    try:
        verdict = _install.check(mixer, mixers.family_of(mixer), "numba")
    finally:
        handle.remove()
    assert seen == [] and verdict.ok and verdict.bound >= _install.tolerance(torch.float32) == 1e-4
    assert 0 <= verdict.max_abs_diff < 1e-5  # float32 rounding, far inside the bound


def test_arguments_passed_by_position_are_read_by_name(fresh_ledger):
    """A release whose block passes the cache or the mask by position is understood, not guessed."""
    model = tiny_mamba(layers=1)
    mixer = model.backbone.layers[0].mixer
    h = torch.randn(1, 9, 16, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(1, 9, dtype=torch.long)
    with torch.no_grad(), installed(model, Kernels.fast()):
        want = mixer(h)
        assert torch.equal(mixer(h, None, mask), want)  # (hidden_states, cache, attention_mask) by position
        mask[0, 0] = 0
        mixer(h, None, mask)
    entry = mixers.usage()["MambaMixer"]
    assert entry["calls"]["owned/numba"] == 2 and entry["transformers_because"] == {"a padding mask was passed": 1}
