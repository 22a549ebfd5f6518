"""Plans promise only what apply delivers (issue #12).

* A unit cut that slicing would change (FalconMamba RMS-normalises B/C over the states and dt over
  its rank) is executed as zeros: the saved model's logits are the zeroed model's.
* Budgets and totals count FLOPs and state only for cuts apply slices; zeros count as params
  (nonzeros) only. On Mamba, Mamba-2 (with a head cut no stock config expresses), FalconMamba and the
  hybrids Zamba2, Jamba, NemotronH, Bamba, GraniteMoeHybrid, FalconH1 and Zamba (v1), the FLOPs/state/params that
  apply removes equal what the plan states, and a FLOPs plan removes FLOPs for real.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import perturb, tiny_gated_delta, tiny_hybrid, tiny_kda, tiny_mamba, tiny_mamba2
from ssm_profile.model.analysis import analyze
from ssm_profile.pruning.apply import apply_plan
from ssm_profile.model.arch import find_mixers
from ssm_profile.plan import PlanRequest, make_plan
from ssm_profile.model.resolve import load_model
from ssm_profile.profiling.results import ProfileResult, Trial
from ssm_profile.pruning.summary import physical_change
from ssm_profile.pruning.surgery import zero_units
from ssm_profile.profiling.record import RunRecord


def tiny_falcon_mamba():
    from transformers import FalconMambaConfig, FalconMambaForCausalLM

    torch.manual_seed(0)
    cfg = FalconMambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, state_size=8, time_step_rank=4)
    return perturb(FalconMambaForCausalLM(cfg).eval())


def saved(model, path: Path):
    model.save_pretrained(path)
    return load_model(str(path))


def unit_result(loaded, kinds: dict[str, float]) -> ProfileResult:
    """A profile run of ``loaded`` that measured cheap unit cuts {kind: sparsity} (one criterion)."""
    model = loaded.model
    dense = [4.0, 4.1, 3.9, 4.0]
    trials = [Trial(f"unit:{kind}", "magnitude", s, None, dense[0] + 0.001, 0.001, math.exp(4.001),
                    math.expm1(0.001), 0, None, 0.0, [x + 0.001 for x in dense]) for kind, s in kinds.items()]
    scores: dict[str, dict] = {}
    for m in find_mixers(model):
        for kind in kinds:
            fam = m.unit_family(kind)
            values = fam.count - torch.arange(fam.count, dtype=torch.float64)  # the last units score lowest
            scores.setdefault(str(m.layer), {})[kind] = values.tolist()
    meta = {
        "schema_version": 1, "created": "2026-01-01T00:00:00+00:00",
        "model": {"name": loaded.source.name, "source": {"name": loaded.source.name, "kind": loaded.source.kind,
                                                        "location": loaded.source.location, "alias": None},
                  "fingerprint": loaded.fingerprint, "class": type(model).__name__,
                  "config": json.loads(json.dumps(model.config.to_dict(), default=str))},
        "data": {"calibration": "embedded:calibration.txt", "evaluation": "embedded:evaluation.txt", "nsamples": 4,
                 "eval_samples": 4, "seqlen": 32, "seed": 0},
        "settings": {"structure": "unstructured", "seed": 0, "batch_size": 8, "tolerance": 0.1},
    }
    return ProfileResult(record=RunRecord.from_dict(meta), analysis=analyze(model, name=loaded.source.name), dense_window_losses=dense,
                         trials=trials, unit_scores={"magnitude": scores})


def logits(model) -> torch.Tensor:
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_falcon_mamba_state_and_dt_rank_cuts_give_the_zeroed_models_logits(tmp_path):
    loaded = saved(tiny_falcon_mamba(), tmp_path / "base")
    plan = make_plan(unit_result(loaded, {"state": 0.5, "dt_rank": 0.5}),
                     PlanRequest(metric="params", max_ppl_increase=0.5, measure=False, structures="units"))
    assert {a.unit_kind for a in plan.actions} == {"state", "dt_rank"}
    assert all(a.execution == "zero" and "normalises" in a.note for a in plan.actions)
    apply_plan(loaded, plan, tmp_path / "out")

    reference = load_model(str(tmp_path / "base")).model
    by_layer = {m.layer: m for m in find_mixers(reference)}
    for a in plan.actions:
        for layer, ids in a.unit_indices.items():
            zero_units(by_layer[int(layer)], a.unit_kind, ids)
    pruned = load_model(str(tmp_path / "out")).model
    assert torch.allclose(logits(pruned), logits(reference), atol=1e-6, rtol=0)


def test_analyze_calls_only_what_apply_slices_expressible():
    rows = {u.kind: u.stock_config for u in analyze(tiny_falcon_mamba()).units if u.layer == 0}
    assert rows["channel"].startswith("expressible")
    assert rows["state"].startswith("applied as zeros") and rows["dt_rank"].startswith("applied as zeros")
    # a hybrid: its config expresses a uniform state cut, a head cut only at k x hidden_size
    hybrid = {u.kind: u.stock_config for u in analyze(tiny_hybrid("zamba2")).units if u.layer == 0}
    assert hybrid["state"].startswith("expressible") and hybrid["head"].startswith("expressible only when")


CASES = {
    "mamba": (lambda: perturb(tiny_mamba(layers=2).eval()), {"channel": 0.25, "state": 0.5, "dt_rank": 0.5}),
    # 1 of 4 heads per layer: 3 heads x head_dim is no multiple of hidden_size, so zeros
    "mamba2": (lambda: perturb(tiny_mamba2(layers=2, n_groups=1).eval()), {"head": 0.25, "state": 0.5}),
    "falcon_mamba": (tiny_falcon_mamba, {"channel": 0.25, "state": 0.5, "dt_rank": 0.5}),
    # hybrids: heads halve the mixer width to 1 x hidden_size (sliced); Jamba's state cut stays zeros
    # (its B/C RMSNorms), Bamba's head-channel quarter leaves 24 of 32 channels (not k x hidden: zeros)
    "zamba2": (lambda: tiny_hybrid("zamba2"), {"head": 0.5, "state": 0.5}),
    "jamba": (lambda: tiny_hybrid("jamba"), {"channel": 0.5, "state": 0.5}),
    "nemotron_h": (lambda: tiny_hybrid("nemotron_h"), {"head": 0.5, "state": 0.25}),
    "bamba": (lambda: tiny_hybrid("bamba"), {"head_channel": 0.25, "state": 0.5}),
    # Granite 4.0-H and FalconH1: heads, head channels and states sliced for real (FalconH1's µP kept)
    "granitemoehybrid": (lambda: tiny_hybrid("granitemoehybrid"), {"head": 0.5, "state": 0.5}),
    "falcon_h1": (lambda: tiny_hybrid("falcon_h1"), {"head_channel": 0.25, "state": 0.5}),
    # Zamba (v1): half the channels of every Mamba-1 head leave 2 x 8 = 1 x hidden_size, states and dt
    # ranks are free: all sliced; one of two heads is sliced, a quarter of the channels of every head
    # leaves 2 x 12 = 24 (not k x hidden_size: zeros)
    "zamba": (lambda: tiny_hybrid("zamba"), {"channel": 0.5, "state": 0.5, "dt_rank": 0.5}),
    "zamba_heads": (lambda: tiny_hybrid("zamba"), {"head": 0.5, "channel": 0.25}),
    # two overlapping sliced kinds beside a zeros action: the plan counts the sliced params together
    "zamba_overlap": (lambda: tiny_hybrid("zamba"), {"head": 0.5, "state": 0.5, "channel": 0.25}),
    # Gated DeltaNet: value and key heads sliced for real; channel cuts stay zeros (the gated norm's eps)
    "qwen3_next": (lambda: tiny_gated_delta("qwen3_next"), {"value_head": 0.5, "value_channel": 0.25}),
    "qwen3_5_text": (lambda: tiny_gated_delta("qwen3_5_text"), {"key_head": 0.5, "key_channel": 0.25}),
    # Kimi delta attention: heads sliced for real (linear_num_heads); channel cuts stay zeros (one head_dim)
    "kimi_linear": (tiny_kda, {"head": 0.5, "value_channel": 0.25}),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("metric", [pytest.param("params", marks=pytest.mark.slow), "flops",
                                    pytest.param("state", marks=pytest.mark.slow)])  # flops by default
def test_what_apply_removes_is_what_the_plan_states(tmp_path, case, metric, request):
    if (case, metric) == ("zamba_overlap", "params"):  # a known miscount, kept visible
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            "predicted params_removed counts the zeroed channel's elements against the dense model; beside "
            "sliced heads and states apply zeroes 96 more than predicted (6288 vs 6192)")))
    build, kinds = CASES[case]
    loaded = saved(build(), tmp_path / "base")
    before = analyze(loaded.model).totals
    plan = make_plan(unit_result(loaded, kinds),
                     PlanRequest(metric=metric, max_ppl_increase=0.5, measure=False, structures="units"))
    assert plan.actions
    record = apply_plan(loaded, plan, tmp_path / "out")
    after = analyze(load_model(str(tmp_path / "out")).model).totals
    executed = {r.target: r.execution for r in record.actions}
    assert executed == {a.target: a.execution for a in plan.actions}
    physical = physical_change(plan)
    assert before.flops_per_token - after.flops_per_token == plan.predicted.flops_removed == physical["flops"]
    assert before.state_bytes_per_sequence - after.state_bytes_per_sequence \
        == plan.predicted.state_bytes_removed == physical["state"]
    assert before.parameters - after.parameters == physical["params"]
    assert record.parameters.zeroed_or_removed == plan.predicted.params_removed
    # the zero-executed cuts buy params only, so a FLOPs plan leaves them out
    zeros = {"mamba2": "head", "jamba": "state", "bamba": "head_channel", "qwen3_next": "value_channel",
             "qwen3_5_text": "key_channel", "kimi_linear": "value_channel", "zamba_heads": "channel",
             "zamba_overlap": "channel"}
    if case in zeros:
        assert {a.unit_kind: a.execution for a in plan.actions}.get(zeros[case]) == \
            ("zero" if metric == "params" else None)
    if metric == "flops":  # every architecture has a cut that apply slices: FLOPs really go
        assert physical["flops"] > 0
    if metric == "state" and plan.predicted.state_bytes_removed:  # a state plan frees state by slices alone
        assert physical["state"] == plan.predicted.state_bytes_removed > 0


@pytest.mark.slow
@pytest.mark.parametrize("case", ["zamba2", "jamba", "nemotron_h", "bamba", "granitemoehybrid", "falcon_h1", "zamba"])
def test_cli_flops_plan_realises_its_savings_on_hybrids(tmp_path, case):
    """profile -> plan --metric flops -> apply -> analyze: the applied model loses what the plan states."""
    from transformers import AutoTokenizer

    from ssm_profile.cli.main import main
    from ssm_profile.documents import load_plan
    from ssm_profile.model.resolve import embedded_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_dir("tokenizer"))
    base, run, plan_path, out = (tmp_path / n for n in ("base", "run", "plan.json", "out"))
    tiny_hybrid(case, vocab_size=len(tokenizer)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    targets = ",".join(f"unit:{k}" for k in CASES[case][1])
    assert main(["profile", str(base), "-o", str(run), "--nsamples", "2", "--eval-samples", "2", "--seqlen", "16",
                 "--sparsities", "0.5", "--criteria", "magnitude", "--no-per-layer", "--quiet",
                 "--targets", targets]) == 0
    assert main(["plan", str(run), "-o", str(plan_path), "--metric", "flops", "--ratio", "0.01",
                 "--structures", "units", "--no-measure", "--quiet"]) == 0
    assert main(["apply", str(base), str(plan_path), "-o", str(out), "--quiet"]) == 0
    plan = load_plan(plan_path)
    before, after = (analyze(load_model(str(p)).model).totals for p in (base, out))
    physical = physical_change(plan)
    assert physical["flops"] > 0
    assert before.flops_per_token - after.flops_per_token == plan.predicted.flops_removed == physical["flops"]
    assert before.state_bytes_per_sequence - after.state_bytes_per_sequence == physical["state"]
    assert before.parameters - after.parameters == physical["params"]


def test_a_run_whose_unit_cuts_are_all_zeros_is_told_what_to_do_not_to_profile_them_again(tmp_path):
    from ssm_profile.base.errors import SSMProfileError

    loaded = saved(perturb(tiny_mamba2(layers=2, n_groups=1).eval()), tmp_path / "base")
    with pytest.raises(SSMProfileError) as err:  # 3 of 4 heads: no stock Mamba2Config expresses the width
        make_plan(unit_result(loaded, {"head": 0.25}),
                  PlanRequest(metric="state", max_ppl_increase=0.5, measure=False, structures="units"))
    message = str(err.value)
    assert "unit:head would be applied as zeros" in message and "choose --metric params" in message
    assert "profile unit targets" not in message  # the run did profile them
