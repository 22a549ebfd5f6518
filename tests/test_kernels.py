"""ssm_profile.mixers.choice: a choice of kernels is a value installed on one model, never on torch or transformers."""

from __future__ import annotations

import importlib
import threading

import torch
import torch.nn.functional as F
from conftest import tiny_mamba, tiny_mamba2

from ssm_profile import mixers
from ssm_profile.kernels import fastscan2
from ssm_profile.mixers import choice as kernels
from ssm_profile.calibration.data import batch_losses
from ssm_profile.mixers.choice import Kernels, installed
from ssm_profile.base.patching import forwards_overridden
from ssm_profile.profiling.record import RunRecord

torch.set_num_threads(1)
SHARED_MODULES = ("torch.nn.functional", "transformers.models.mamba.modeling_mamba",
                  "transformers.models.mamba2.modeling_mamba2")
# every name of torch.nn.functional and of transformers' modeling modules, as first imported
ORIGINALS = {name: dict(vars(importlib.import_module(name))) for name in SHARED_MODULES}


def shared_modules_untouched() -> bool:
    for name, original in ORIGINALS.items():
        now = vars(importlib.import_module(name))
        if any(now.get(key, original) is not value for key, value in original.items()):
            return False
    return True


def ids_for(model, seed=0):
    return torch.randint(0, model.config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(seed))


def test_shared_functions_stay_torchs_and_transformers_inside_and_outside_blocks():
    assert shared_modules_untouched()
    for make in (tiny_mamba, tiny_mamba2):
        model = make(layers=2)
        with torch.no_grad(), installed(model, Kernels.fast()):
            model(ids_for(model))
            assert shared_modules_untouched()
        assert shared_modules_untouched()
        assert not any("forward" in m.__dict__ for m in model.modules())


def test_fast_kernels_reach_the_owned_forward_and_agree_with_transformers(monkeypatch):
    calls = []
    real = fastscan2.ssd_scan
    monkeypatch.setattr(fastscan2, "ssd_scan", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = tiny_mamba2(layers=2)
    ids = ids_for(model)
    with torch.no_grad():
        want = model(ids, use_cache=False).logits
        assert calls == []
        with installed(model, Kernels.fast()):
            model(ids, use_cache=False)  # the first use in this process also checks the owned forward
            calls.clear()
            got = model(ids, use_cache=False).logits
    assert len(calls) == 2  # one Mamba-2 scan per mixer
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_hooks_still_run_on_modules_with_installed_forwards():
    model = tiny_mamba(layers=2)
    seen = []
    handles = [model.backbone.layers[0].mixer.register_forward_hook(lambda *a: seen.append("mixer")),
               model.lm_head.register_forward_hook(lambda *a: seen.append("head"))]
    try:
        with torch.no_grad(), installed(model, Kernels.fast()):
            model(ids_for(model))
    finally:
        for handle in handles:
            handle.remove()
    assert seen == ["mixer", "head"]


def test_overrides_nest_and_restore_exactly():
    model = tiny_mamba(layers=1)
    proj = model.backbone.layers[0].mixer.in_proj
    with installed(model, Kernels.fast()):
        fast_forward = proj.__dict__["forward"]
        with forwards_overridden({proj: lambda *a, **k: "stage"}):  # as incremental evaluation reuses a stage
            assert proj(None) == "stage"
            with installed(model, Kernels.transformers()):  # someone else's override is left alone
                assert proj(None) == "stage"
        assert proj.__dict__["forward"] is fast_forward
    assert "forward" not in proj.__dict__


def test_a_fast_block_and_a_reference_block_in_two_threads_do_not_meet():
    """Thread A runs model a in a fast block; meanwhile thread B, in a reference block on model b,
    gets exactly transformers' logits. A leaves first, B last: nothing stays installed."""
    a, b = tiny_mamba(layers=2), tiny_mamba(layers=2)
    ids = ids_for(a)
    with torch.no_grad():
        plain = b(ids).logits
    a_in, b_done, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def block_a():
        with torch.no_grad(), installed(a, Kernels.fast()):
            a_in.set()
            seen["a"] = a(ids).logits
            b_done.wait(10)
            seen["a_still_fast"] = kernels.active(a) == Kernels.fast() and "forward" in a.lm_head.__dict__
        a_out.set()

    def block_b():
        a_in.wait(10)
        with torch.no_grad(), installed(b, Kernels.reference()):
            seen["b"] = b(ids).logits
            seen["b_plain"] = (not any(mixers.owned_kernel(m) for m in b.modules())
                               and "forward" not in b.lm_head.__dict__)
            b_done.set()
            a_out.wait(10)
            seen["b_after_a"] = b(ids).logits

    threads = [threading.Thread(target=block_a), threading.Thread(target=block_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert torch.equal(seen["b"], plain) and torch.equal(seen["b_after_a"], plain)
    assert seen["b_plain"] and seen["a_still_fast"]
    torch.testing.assert_close(seen["a"], plain, rtol=1e-4, atol=1e-4)
    assert not any("forward" in m.__dict__ for model in (a, b) for m in model.modules())
    assert kernels.active(a) == kernels.active(b) == Kernels.transformers() and shared_modules_untouched()


def test_two_fast_blocks_in_threads_each_keep_their_own_until_they_leave():
    a, b = tiny_mamba(layers=1), tiny_mamba(layers=1)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def block_a():
        with installed(a, Kernels.fast()):
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def block_b():
        a_in.wait(10)
        with installed(b, Kernels.fast()):
            b_in.set()
            a_out.wait(10)
            seen["b_after_a_left"] = "forward" in b.lm_head.__dict__ and "forward" not in a.lm_head.__dict__

    threads = [threading.Thread(target=block_a), threading.Thread(target=block_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert seen == {"b_after_a_left": True}
    assert not any("forward" in m.__dict__ for model in (a, b) for m in model.modules())


def test_batch_losses_takes_its_kernels_as_a_value():
    model = tiny_mamba(layers=2)
    windows = ids_for(model)
    reference = batch_losses(model, windows, 2, kernels=Kernels.reference())
    with installed(model, Kernels.fast()):
        fast = batch_losses(model, windows, 2)  # the installed choice
        assert torch.equal(batch_losses(model, windows, 2, kernels=Kernels.reference()), reference)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    assert torch.equal(batch_losses(model, windows, 2, kernels=Kernels.fast()), fast)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_kernels_of_a_run(monkeypatch):
    from ssm_profile.profiling.recipe import RunRecipe

    assert Kernels.for_run(True) == Kernels.fast() and Kernels.for_run(False) == Kernels.transformers()
    meta = {"data": {"nsamples": 1, "eval_samples": 1, "seqlen": 8}, "settings": {"fast_scan": True}}
    assert RunRecipe.of_run(RunRecord.from_dict(meta)).kernels == Kernels.fast()
    assert RunRecipe.of_run(RunRecord.from_dict({**meta, "settings": {"fast_scan": False}})).kernels == Kernels.transformers()
    monkeypatch.setenv(kernels.ENV_VAR, "off")
    assert Kernels.for_run(True) == Kernels.transformers() and RunRecipe.of_run(RunRecord.from_dict(meta)).kernels == Kernels.transformers()
