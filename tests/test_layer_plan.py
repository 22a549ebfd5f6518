"""Whole SSM layers as plan actions (`--structures layers`, issue 24 item 6).

* a layer is offered only where transformers can describe and run the model without it: NemotronH's
  only attention layer is never removed (nor is the last SSM layer), by the plan or by apply;
* the planner measures a layer's removal as the model with that layer skipped, which equals the model
  with the layer removed;
* apply removes layers after every other action (the plan's layer numbers hold for all of them), and
  the saved model reloads with plain ``from_pretrained`` with the logits of the original model whose
  removed layers' mixers output zeros (residual only) and whose other cuts are zeros, computed here
  independently of the planner's and apply's code;
* end to end (slow): a `--structures layers` plan on the embedded tiny-mamba picks whole layers when the
  budget asks for it, and its predicted params, FLOPs and state are what apply removes.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_gated_delta, tiny_hybrid, tiny_mamba
from ssm_profile.base.errors import PlanError
from ssm_profile.documents import as_plan
from ssm_profile.model.analysis import analyze
from ssm_profile.model.arch import find_mixers
from ssm_profile.model.resolve import load_model
from ssm_profile.plan import PlanRequest, make_plan
from ssm_profile.plan.request import parse_structures
from ssm_profile.plan.layers import LayerVeto, layer_options
from ssm_profile.pruning.apply import apply_plan
from ssm_profile.pruning.layers import meta_copy, removal_problem, removed_parameters, skipped
from ssm_profile.pruning.summary import plan_summary_lines
from ssm_profile.pruning.surgery import remove_layers, zero_units
from test_apply_validate import lowest_magnitude, unit_action
from test_apply_validate import make_plan as hand_plan
from test_plan import synthetic  # noqa: F401 - the fixture
from transformers import AutoModelForCausalLM

torch.set_num_threads(1)
IDS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(3))
TEXT_IDS = torch.randint(0, 4096, (2, 40), generator=torch.Generator().manual_seed(0))


def layer_action(layer: int) -> dict:
    return {"target": "layer", "structure": "layers", "layers": [layer], "criterion": "measured", "sparsity": 1.0,
            "execution": "remove"}


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def residual_only(model, layers: list[int]) -> None:
    """The oracle of a removed layer: its mixer outputs zeros, so the block passes its residual."""
    by_layer = {m.layer: m for m in find_mixers(model)}
    for layer in layers:
        by_layer[layer].module.register_forward_hook(lambda module, args, out: torch.zeros_like(out))


def test_structures_parse_layers_beside_the_others():
    assert parse_structures("units,layers") == ["units", "layers"]
    assert parse_structures(["layers"]) == ["layers"]
    with pytest.raises(PlanError, match="layers"):
        parse_structures("blocks")


@pytest.mark.parametrize("name,layer,words", [
    ("nemotron_h", 1, "cannot run"),  # M * M -: the only attention layer (the hybrid cache needs one)
    ("bamba", 1, "cannot run"),
    ("granitemoehybrid", 1, "cannot run"),
    ("zamba", 1, "one hybrid layer"),  # the stock config's own refusal
    ("qwen3_5_text", 1, "cannot run"),  # the embedded tiny-deltanet's layout: its one full-attention layer
])
def test_layouts_transformers_cannot_run_are_refused(name, layer, words):
    model = tiny_gated_delta(name) if name == "qwen3_5_text" else tiny_hybrid(name)
    why = removal_problem(model, [layer])
    assert words in why and "\n" not in why
    assert removal_problem(model, [0]) == ""  # a Mamba layer may go
    ssm = sorted({m.layer for m in find_mixers(model)})
    assert "every SSM layer" in removal_problem(model, ssm)


def test_skipping_a_layer_is_removing_it():
    """(Bit for bit on every hybrid of conftest too, checked by hand on 2026-12-06.)"""
    for model, layers in ((tiny_mamba(layers=3), [1]), (tiny_hybrid("nemotron_h"), [0, 2]),
                          (tiny_hybrid("zamba2"), [1])):  # a hybrid layer: its adapter goes, the shared block stays
        reduced = copy.deepcopy(model)
        remove_layers(reduced, layers)
        with skipped(model, layers):
            skip = logits(model)
        torch.testing.assert_close(logits(reduced), skip, atol=1e-6, rtol=0)
        residual_only(model, layers)  # independent: the mixers' outputs zeroed
        torch.testing.assert_close(logits(model), skip, atol=1e-6, rtol=0)


def fake_measurer(model):
    """What layer_options reads of a Measurer: the model, progress, and a layer's measured removal."""
    return SimpleNamespace(model=model, note=lambda *a: None,
                           measure_layers=lambda layers: {"delta_loss": 0.01 * (1 + layers[0]), "interval": [0.0, 0.05]})


def test_only_removable_ssm_layers_are_options_and_they_count_what_they_free():
    model = tiny_hybrid("nemotron_h")  # M * M -
    result = SimpleNamespace(analysis=analyze(model))
    shapes = SimpleNamespace(model=meta_copy(model))
    options, _ = layer_options(result, shapes, fake_measurer(model))
    assert [levels[1].layers for levels in options] == [[0], [2]]  # never the attention (1) nor MLP (3) layer
    for levels in options:
        option = levels[1]
        layer = option.layers[0]
        reduced = copy.deepcopy(model)
        before = sum(p.numel() for p in reduced.parameters())
        remove_layers(reduced, [layer])
        assert option.params == before - sum(p.numel() for p in reduced.parameters()) \
            == removed_parameters(shapes.model, [layer]) > 0
        assert option.delta_loss == pytest.approx(0.01 * (1 + layer))
        assert option.state > 0 and option.flops > 0  # the mixer's recurrent state and FLOPs go with it
    veto = LayerVeto(options, fake_measurer(model), shapes)
    assert veto([1, 1]) == {0: 1, 1: 1}  # both Mamba layers: no SSM layer left
    assert veto([1, 0]) is None and any("every SSM layer" in n for n in veto.notes)


def test_unmeasured_plans_leave_layers_out_and_say_so(synthetic):  # noqa: F811 - the imported fixture
    plan = make_plan(synthetic, PlanRequest(metric="state", max_ppl_increase=0.1, measure=False,
                                            structures="units,layers"))
    assert not any(a.is_layer for a in plan.actions)
    assert any("--no-measure they are left out" in n for n in plan.notes)
    with pytest.raises(PlanError) as err:
        make_plan(synthetic, PlanRequest(metric="params", max_ppl_increase=0.1, measure=False, structures="layers"))
    assert "no SSM layer can be removed" in str(err.value) and "\n" not in str(err.value)


def test_apply_refuses_a_layer_transformers_cannot_run_without(tmp_path):
    model = tiny_hybrid("nemotron_h")
    model.save_pretrained(tmp_path / "src")
    loaded = load_model(str(tmp_path / "src"))
    plan = hand_plan(loaded, [layer_action(1)])  # hand-edited: the planner never offers it
    with pytest.raises(PlanError) as err:
        apply_plan(loaded, plan, tmp_path / "out")
    assert "cannot run" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_mixed_plan_applies_layers_last_and_reloads_with_the_oracles_logits(tmp_path):
    """Units sliced in every layer, zeros in the last layer's out_proj, and layer 1 removed: the zeros
    stay on the layer the plan named (now numbered 2) and the logits are the oracle's."""
    loaded = load_model("tiny-mamba")
    channels = lowest_magnitude(loaded.model, "channel", 0.25)
    plan = hand_plan(loaded, [unit_action("channel", channels),
                              {"target": "out_proj", "structure": "unstructured", "layers": [3]},
                              layer_action(1)], max_ppl_increase=5.0)
    record = apply_plan(loaded, plan, tmp_path / "out")

    oracle = load_model("tiny-mamba").model
    by_layer = {m.layer: m for m in find_mixers(oracle)}
    weight = by_layer[3].module.out_proj.weight  # magnitude on the dense weights, 50% of the tensor
    with torch.no_grad():
        weight.view(-1)[weight.abs().flatten().argsort()[: weight.numel() // 2]] = 0
    for layer, ids in channels.items():
        zero_units(by_layer[layer], "channel", ids)
    residual_only(oracle, [1])

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert reloaded.config.num_hidden_layers == 3
    torch.testing.assert_close(logits(reloaded, TEXT_IDS), logits(oracle, TEXT_IDS), atol=1e-4, rtol=0)
    units, zeros, removal = record.actions
    assert removal.execution == "remove" and removal.requested == "remove" and record.summary.removed == 1
    assert zeros.zeroed_params == ["backbone.layers.2.mixer.out_proj.weight"]  # layer 3, renumbered
    assert not any(name.startswith("backbone.layers.3.") for name in units.zeroed_params)
    assert any("removed decoder layer(s) [1]" in n for n in record.notes)


def test_plan_summary_names_the_removed_layers():
    loaded = load_model("tiny-mamba")
    plan = hand_plan(loaded, [layer_action(2)])
    plan["actions"][0].update(params_removed=116608, flops_removed=257024, state_bytes_removed=19456)
    plan["predicted"].update(params_removed=116608, flops_removed=257024, state_bytes_removed=19456,
                             params_sliced=116608)
    lines = plan_summary_lines(as_plan(plan))
    assert lines[0].startswith("physically removed (1 whole layer(s) removed): ")
    bad = copy.deepcopy(plan)
    bad["actions"][0]["execution"] = "zero"  # a removed layer is never zeros
    with pytest.raises(PlanError, match="schema"):
        as_plan(bad)


# --------------------------------------------------------------------------------------------
# end to end on the embedded tiny-mamba (a profile run: slow)


@pytest.fixture(scope="module")
def mamba_run(tmp_path_factory):
    from ssm_profile.calibration.data import DataSpec
    from ssm_profile.profiling.profile import profile_model
    from ssm_profile.profiling.record import ProfileSettings
    from ssm_profile.profiling.results import ProfileResult

    loaded = load_model("tiny-mamba")
    run_dir = tmp_path_factory.mktemp("layers") / "run"
    profile_model(loaded, DataSpec(nsamples=2, eval_samples=4, seqlen=32),
                  ProfileSettings(sparsities=[0.125, 0.25], criteria=["magnitude"], targets=["unit:channel"], per_layer=False,
                                  sweep="grid"), run_dir=run_dir)
    return run_dir, ProfileResult.load(run_dir), loaded


@pytest.mark.slow
def test_layer_plan_predicts_what_apply_removes(mamba_run, tmp_path):
    run_dir, result, loaded = mamba_run
    plan = make_plan(result, PlanRequest(metric="params", ratio=0.2, max_ppl_increase=5.0, structures="layers"),
                     loaded=loaded, run_path=run_dir)
    assert plan.actions and all(a.is_layer and a.execution == "remove" for a in plan.actions)
    assert plan.predicted.reduction_ratio >= 0.2 and plan.measured.within_tolerance
    assert plan.verification is not None
    dropped = sorted(a.layers[0] for a in plan.actions)
    record = apply_plan(load_model("tiny-mamba"), plan, tmp_path / "out")
    assert record.parameters.removed == plan.predicted.params_removed == plan.predicted.params_sliced
    before, after = record.analysis.before, record.analysis.after
    assert before.flops_per_token - after.flops_per_token == plan.predicted.flops_removed > 0
    assert before.state_bytes_per_sequence - after.state_bytes_per_sequence == plan.predicted.state_bytes_removed > 0
    # the plan's measured loss is the applied model's on the search windows (skipped = removed)
    oracle = load_model("tiny-mamba").model
    residual_only(oracle, dropped)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(logits(reloaded, TEXT_IDS), logits(oracle, TEXT_IDS), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_units_and_layers_plan_applies_both(mamba_run, tmp_path, capsys):
    from ssm_profile.cli.main import main
    from ssm_profile.documents import load_plan

    run_dir, _, _ = mamba_run
    out = tmp_path / "plan.json"
    # 30% of the SSM-mixer params: one layer (25%) and 12.5% of the channels cost less than two layers
    code = main(["plan", str(run_dir), "--metric", "params", "--ratio", "0.3", "--max-ppl-increase", "900%",
                 "--structures", "units,layers", "-o", str(out)])
    printed = capsys.readouterr().out
    assert code in (0, 3) and "whole layer(s) removed" in printed
    plan = load_plan(out)
    kinds = {a.structure for a in plan.actions}
    assert kinds == {"units", "layers"}
    record = apply_plan(load_model("tiny-mamba"), plan, tmp_path / "out")
    oracle = load_model("tiny-mamba").model
    by_layer = {m.layer: m for m in find_mixers(oracle)}
    for a in plan.actions:
        for layer, ids in (a.unit_indices or {}).items():
            zero_units(by_layer[int(layer)], a.unit_kind, ids)
    residual_only(oracle, [a.layers[0] for a in plan.actions if a.is_layer])
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(logits(reloaded, TEXT_IDS), logits(oracle, TEXT_IDS), atol=1e-4, rtol=0)
    assert record.parameters.removed == plan.predicted.params_sliced
