"""Applying plans (slice or zero, atomically, never touching the source) and validating the result."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from ssm_profile.pruning.apply import apply_plan
from ssm_profile.validation.check import ValidationOptions
from ssm_profile.documents import as_plan, load_plan
from ssm_profile.validation.comparison import comparison_rows
from ssm_profile.model.arch import find_mixers
from ssm_profile.cli.main import main
from ssm_profile.base.errors import DataError, OutputExistsError, PlanError
from ssm_profile.model.resolve import load_model
from ssm_profile.pruning.surgery import zero_units

SMALL_DATA = {"calibration": None, "evaluation": None, "nsamples": 4, "eval_samples": 2, "seqlen": 32, "seed": 0}
FAST_VALIDATION = ValidationOptions(limit=4, speed_batch=(1, 16), speed_repeats=1, max_length=256)


def make_plan(loaded, actions: list[dict], max_ppl_increase: float = 0.1, data: dict | None = None) -> dict:
    """A schema-valid plan for ``loaded`` with hand-written actions."""
    model = loaded.model
    return {
        "schema_version": 1, "kind": "ssm-profile-plan", "created": "2026-01-01T00:00:00+00:00",
        "tool_version": "0.1.0",
        "model": {"name": loaded.source.name, "source": {"name": loaded.source.name, "kind": loaded.source.kind,
                                                         "location": loaded.source.location, "alias": None},
                  "fingerprint": loaded.fingerprint, "architecture": model.config.model_type,
                  "class": type(model).__name__},
        "run": {"path": "", "created": ""},
        "data": dict(data or SMALL_DATA),
        "objective": {"target": "params", "ratio": None, "absolute": None, "max_ppl_increase": max_ppl_increase},
        "dense": {"loss": 0.0, "perplexity": 1.0, "parameters": 1, "flops_per_token": 1, "state_bytes_per_sequence": 1},
        "actions": [{"layers": [m.layer for m in find_mixers(model)], "criterion": "magnitude", "sparsity": 0.5,
                     "unit_kind": None, "unit_indices": None, "params_removed": 0, "flops_removed": 0,
                     "state_bytes_removed": 0, "predicted_delta_loss": 0.01, "execution": "zero", "note": "",
                     **a} for a in actions],
        "predicted": {"delta_loss": 0.05, "rel_ppl_increase": 0.05, "params_removed": 0, "flops_removed": 0,
                      "state_bytes_removed": 0, "reduction_ratio": 0.1},
        "measured": None, "notes": [],
    }


def unit_action(kind: str, indices: dict[int, list[int]], execution: str = "slice", sparsity: float = 0.25) -> dict:
    return {"target": f"unit:{kind}", "structure": "units", "unit_kind": kind, "sparsity": sparsity,
            "layers": sorted(indices), "unit_indices": {str(k): v for k, v in indices.items()}, "execution": execution}


def lowest_magnitude(model, kind: str, fraction: float) -> dict[int, list[int]]:
    """Unit ids removed by magnitude, per layer (what a plan would list)."""
    from ssm_profile.criteria import CalibrationStats, ScoringContext, get
    from ssm_profile.criteria.masks import select_units

    crit, ctx = get("magnitude"), ScoringContext(model=model, stats=CalibrationStats())
    out = {}
    for m in find_mixers(model):
        fam = m.unit_family(kind)
        out[m.layer] = select_units(crit.unit_scores(ctx, m, fam), fam, fraction).tolist()
    return out


def tree_hash(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def zeroed_reference(source: Path, kind: str, indices: dict[int, list[int]]):
    model = load_model(str(source)).model
    by_layer = {m.layer: m for m in find_mixers(model)}
    for layer, ids in indices.items():
        zero_units(by_layer[layer], kind, ids)
    return model


def logits(model, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits


def no_partials(parent: Path) -> bool:
    return not any(p.name.endswith(".partial") for p in parent.iterdir())


# --------------------------------------------------------------------------------------------
# apply


def test_mamba1_channel_slice_is_smaller_reloads_plainly_and_matches_zeros(tmp_path, mamba1_dir):
    from transformers import AutoModelForCausalLM

    source_before = tree_hash(mamba1_dir)
    loaded = load_model(str(mamba1_dir))
    indices = lowest_magnitude(loaded.model, "channel", 0.25)
    plan = make_plan(loaded, [unit_action("channel", indices)])
    out = tmp_path / "pruned"
    report = apply_plan(loaded, plan, out)

    assert tree_hash(mamba1_dir) == source_before  # the source is never written
    assert report.actions[0].execution == "slice" and report.sliced[0].kind == "channel"
    p = report.parameters
    assert p.after < p.before and p.nonzero_after <= p.after
    assert (out / "model.safetensors").stat().st_size < (mamba1_dir / "model.safetensors").stat().st_size
    saved = json.loads((out / "pruning.json").read_text())
    assert saved["parameters"] == p.to_dict() and saved["plan"] == plan
    assert saved["source"]["fingerprint"] == plan["model"]["fingerprint"]

    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers, no remote code
    E = find_mixers(reloaded)[0].intermediate_size
    assert E == 32 - 8 and reloaded.config.intermediate_size == E
    assert sum(t.numel() for t in reloaded.state_dict().values()) < sum(
        t.numel() for t in zeroed_reference(mamba1_dir, "channel", {}).state_dict().values())
    torch.testing.assert_close(logits(reloaded), logits(zeroed_reference(mamba1_dir, "channel", indices)),
                               rtol=1e-5, atol=1e-5)
    assert (out / "model.safetensors").stat().st_mode & 0o044  # readable like any saved file, not private


def test_mamba2_state_slices_and_head_channel_falls_back_to_zeros(tmp_path, mamba2_dir):
    from transformers import AutoModelForCausalLM

    loaded = load_model(str(mamba2_dir))
    state = {0: [0, 5], 1: [1, 6]}  # one state per group (2 groups x 4 states) in each layer
    # one channel of every head (4 heads x 8): E = 28 is no multiple of hidden 16 -> no stock config
    head_channel = {layer: [h * 8 + 3 for h in range(4)] for layer in (0, 1)}
    plan = make_plan(loaded, [unit_action("state", state), unit_action("head_channel", head_channel)])
    out = tmp_path / "pruned"
    report = apply_plan(loaded, plan, out)
    executed = {a.target: a for a in report.actions}
    assert executed["unit:state"].execution == "slice"
    assert executed["unit:head_channel"].execution == "zero"
    assert "not sliced" in executed["unit:head_channel"].note and report.notes

    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.state_size == 3 and find_mixers(reloaded)[0].intermediate_size == 32
    reference = zeroed_reference(mamba2_dir, "state", state)
    by_layer = {m.layer: m for m in find_mixers(reference)}
    for layer, ids in head_channel.items():
        zero_units(by_layer[layer], "head_channel", ids)
    torch.testing.assert_close(logits(reloaded), logits(reference), rtol=1e-4, atol=1e-4)


def test_uneven_cut_is_zeroed_not_sliced(tmp_path, mamba1_dir):
    loaded = load_model(str(mamba1_dir))
    plan = make_plan(loaded, [unit_action("channel", {0: [1, 2, 3], 1: [4]})])
    report = apply_plan(loaded, plan, tmp_path / "out")
    assert report.actions[0].execution == "zero" and "differs between layers" in report.actions[0].note
    assert report.parameters.after == report.parameters.before
    assert report.parameters.nonzero_before - report.parameters.nonzero_after == \
        report.actions[0].elements_zeroed


def test_unstructured_and_nm_plans_give_exact_sparsity(tmp_path, mamba1_dir):
    from safetensors.torch import load_file

    loaded = load_model(str(mamba1_dir))
    plan = make_plan(loaded, [
        {"target": "in_proj", "structure": "unstructured", "criterion": "magnitude", "sparsity": 0.3},
        {"target": "out_proj", "structure": "2:4", "criterion": "magnitude", "sparsity": 0.5},
    ])
    out = tmp_path / "sparse"
    apply_plan(loaded, plan, out)
    before, after = load_file(mamba1_dir / "model.safetensors"), load_file(out / "model.safetensors")
    for name, tensor in after.items():
        if name.endswith("mixer.in_proj.weight"):
            assert int((tensor == 0).sum()) == round(0.3 * tensor.numel())
        elif name.endswith("mixer.out_proj.weight"):
            assert ((tensor.reshape(-1, 4) == 0).sum(dim=1) == 2).all()
        else:
            assert torch.equal(tensor, before[name]), name  # nothing else touched


def test_data_driven_criterion_is_deterministic():
    # wanda needs calibration activations: scored on the plan's data, same mask every time
    masks = []
    for _ in range(2):
        loaded = load_model("tiny-mamba2")
        plan = make_plan(loaded, [{"target": "in_proj", "structure": "unstructured", "criterion": "wanda",
                                   "sparsity": 0.5}])
        from ssm_profile.pruning.apply import _execute

        _execute(loaded, as_plan(plan), lambda *a: None)
        masks.append({n: (p == 0) for n, p in loaded.model.named_parameters() if "in_proj" in n})
    assert masks[0].keys() == masks[1].keys()
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])


@pytest.mark.parametrize("fast", [True, False, None])
def test_element_masks_are_scored_with_the_profiles_kernels(fast, monkeypatch):
    from ssm_profile.profiling import recipe
    from ssm_profile.pruning.apply import _execute

    seen = []
    original = recipe.installed  # RunRecipe.installed: where plan, apply and profile choose kernels
    monkeypatch.setattr(recipe, "installed",
                        lambda model, choice: seen.append(choice.fast_scan) or original(model, choice))
    loaded = load_model("tiny-mamba2")
    plan = make_plan(loaded, [{"target": "in_proj", "structure": "unstructured", "criterion": "wanda", "sparsity": 0.5}])
    if fast is not None:
        plan["run"]["fast_kernels"] = fast
    _execute(loaded, as_plan(plan), lambda *a: None)
    assert seen == [bool(fast)]  # an older plan without the field: transformers' kernels, as apply always did
    zeros = [(p == 0).float().mean().item() for n, p in loaded.model.named_parameters() if "in_proj" in n]
    assert zeros and all(z == pytest.approx(0.5, abs=0.01) for z in zeros)


def test_existing_output_and_wrong_weights_leave_everything_as_it_was(tmp_path, mamba1_dir):
    loaded = load_model(str(mamba1_dir))
    plan = make_plan(loaded, [unit_action("channel", {0: [0], 1: [0]})])
    existing = tmp_path / "taken"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        apply_plan(loaded, plan, existing)
    assert tree_hash(existing) == {"keep.txt": hashlib.sha256(b"mine").hexdigest()}

    other = dict(plan, model=dict(plan["model"], fingerprint="sha256:" + "0" * 64))
    with pytest.raises(PlanError, match="other weights"):
        apply_plan(loaded, other, tmp_path / "new")
    assert not (tmp_path / "new").exists() and no_partials(tmp_path)
    # the model was not touched by the refused plan
    assert loaded.fingerprint == plan["model"]["fingerprint"]

    bad = make_plan(loaded, [unit_action("channel", {0: [999]})])
    with pytest.raises(PlanError, match="out of range"):
        apply_plan(loaded, bad, tmp_path / "new")
    assert not (tmp_path / "new").exists() and no_partials(tmp_path)


def test_load_plan_rejects_bad_files(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("{not json")
    with pytest.raises(PlanError):
        load_plan(path)
    path.write_text(json.dumps({"kind": "something-else", "schema_version": 1}))
    with pytest.raises(PlanError):
        load_plan(path)


# --------------------------------------------------------------------------------------------
# validate


@pytest.fixture(scope="module")
def applied(tmp_path_factory):
    """tiny-mamba with 25% of the channels of every layer sliced out by magnitude, validated."""
    loaded = load_model("tiny-mamba")
    plan = make_plan(loaded, [unit_action("channel", lowest_magnitude(loaded.model, "channel", 0.25))],
                     max_ppl_increase=0.5)
    out = tmp_path_factory.mktemp("applied") / "tiny-mamba-pruned"
    report = apply_plan(loaded, plan, out, validate=True, validate_options=FAST_VALIDATION)
    return plan, out, report


def test_validate_writes_every_field_and_runs_shipped_tasks_offline(applied):
    plan, out, report = applied
    v = json.loads((out / "validation.json").read_text())
    assert v == json.loads(json.dumps(report.validation.to_dict()))
    assert {"perplexity", "measured", "tolerance", "within_tolerance", "lm_eval", "size", "speed", "data",
            "models"} <= set(v)
    ppl = v["perplexity"]
    assert ppl["base"]["perplexity"] > 1 and ppl["pruned"]["perplexity"] > 1
    assert abs(ppl["rel_ppl_increase"] - (ppl["pruned"]["perplexity"] / ppl["base"]["perplexity"] - 1)) < 1e-9
    assert v["measured"]["predicted_delta_loss"] == plan["predicted"]["delta_loss"]
    assert v["tolerance"] == {"max_ppl_increase": 0.5, "source": "plan", "within_tolerance": v["within_tolerance"],
                              "decided_by": "verification"}
    assert v["data"]["eval_samples"] == 2 and v["data"]["seqlen"] == 32  # the plan's evaluation windows
    tasks = v["lm_eval"]["tasks"]
    assert set(tasks) == {"ssm_next_verse", "ssm_heldout_ppl"}
    assert tasks["ssm_next_verse"]["items"] == 4
    assert 0 <= tasks["ssm_next_verse"]["base"]["acc"] <= 1
    assert tasks["ssm_heldout_ppl"]["pruned"]["word_perplexity"] > 1
    # an accuracy's change carries its paired interval over the items; a perplexity task has no per-item score
    low, high = tasks["ssm_next_verse"]["interval"]["acc"]
    assert low <= tasks["ssm_next_verse"]["delta"]["acc"] <= high  # [0, 0] when both answer every item alike
    assert "word_perplexity" not in tasks["ssm_heldout_ppl"]["interval"]
    size = v["size"]
    assert size["pruned"]["parameters"] < size["base"]["parameters"] == 990848
    assert size["pruned"]["weight_bytes_on_disk"] < size["base"]["weight_bytes_on_disk"]
    assert size["pruned"]["state_bytes_per_sequence"] == 0.75 * size["base"]["state_bytes_per_sequence"]
    for name in ("base", "pruned"):
        assert v["speed"][name]["latency_s"] > 0 and v["speed"][name]["tokens_per_s"] > 0
    assert v["speed"]["threads"] == torch.get_num_threads()
    # validate measures as a user runs the saved model: transformers' forward, every call counted
    assert v["mixer_forwards"]["MambaMixer"]["calls"].keys() == {"transformers"}


def test_cli_validate_exits_3_when_tolerance_is_breached(applied, tmp_path, capsys):
    _, out, _ = applied
    report_path = tmp_path / "v.json"
    code = main(["validate", "tiny-mamba", str(out), "--no-lm-eval", "--max-ppl-increase", "0.000001",
                 "--speed-repeats", "1", "--speed-batch", "1", "8", "-o", str(report_path), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and "perplexity rose" in err[0]
    report = json.loads(report_path.read_text())
    assert report["within_tolerance"] is False and report["lm_eval"]["tasks"] == {}


def test_cli_apply_ridiculous_plan_breaches_tolerance(tmp_path, capsys):
    loaded = load_model("tiny-mamba")
    keep_one = {m.layer: list(range(1, 256)) for m in find_mixers(loaded.model)}  # 255 of 256 channels
    plan = make_plan(loaded, [unit_action("channel", keep_one, sparsity=0.99)], max_ppl_increase=0.01)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    out = tmp_path / "out"
    code = main(["apply", "tiny-mamba", str(path), "-o", str(out), "--validate", "--no-lm-eval", "--quiet",
                 "--speed-repeats", "1", "--speed-batch", "1", "8"])
    captured = capsys.readouterr()
    assert code == 3 and "tolerance" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert (out / "validation.json").is_file() and "Before / after" in captured.out


def test_cli_user_errors_are_one_line(tmp_path, capsys, mamba1_dir):
    loaded = load_model(str(mamba1_dir))
    plan = make_plan(loaded, [unit_action("channel", {0: [0], 1: [0]})])
    plan["model"]["fingerprint"] = "sha256:" + "1" * 64
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    code = main(["apply", str(mamba1_dir), str(path), "-o", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "other weights" in err[0]
    assert not (tmp_path / "out").exists()
    (tmp_path / "exists").mkdir()
    code = main(["apply", str(mamba1_dir), str(path), "-o", str(tmp_path / "exists"), "--quiet"])
    assert code == 2 and "already exists" in capsys.readouterr().err


def test_validate_without_tokenizer_is_a_clear_error(mamba1_dir):
    from ssm_profile.validation.check import validate

    base, pruned = load_model(str(mamba1_dir)), load_model(str(mamba1_dir))
    with pytest.raises(DataError, match="tokenizer"):
        validate(base, pruned, None, ValidationOptions(tasks=()))


def test_shipped_task_data_is_regenerated_identically(tmp_path):
    from ssm_profile.tasks import BUILTIN_TASKS, TASKS_DIR
    from ssm_profile.tasks.build import write

    write(tmp_path)
    for name in BUILTIN_TASKS:
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (TASKS_DIR / f"{name}.jsonl").read_bytes()
        assert (TASKS_DIR / f"{name}.yaml").is_file()
    items = [json.loads(line) for line in (TASKS_DIR / "ssm_next_verse.jsonl").read_text().splitlines()]
    assert len(items) == 100 and all(len(i["choices"]) == 4 and len(set(i["choices"])) == 4 for i in items)
    assert len({i["label"] for i in items}) == 4  # the answer is not always in one position
    docs = (TASKS_DIR / "ssm_heldout_ppl.jsonl").read_text().splitlines()
    assert len(docs) == 30


@pytest.mark.slow
def test_standard_task_offline_is_a_one_line_error():
    from ssm_profile.validation.check import LmEvalRunner

    with pytest.raises(DataError, match="hellaswag"):
        LmEvalRunner((), ["hellaswag"])
    with pytest.raises(Exception, match="unknown lm-eval task"):
        LmEvalRunner((), ["no_such_task_xyz"])


# --------------------------------------------------------------------------------------------
# the documents apply and validate write


def test_pruning_and_validation_files_round_trip_through_their_types(applied):
    from ssm_profile.documents import PruningRecord, ValidationReport, load_pruning_record

    plan, out, report = applied
    for cls, name in ((PruningRecord, "pruning.json"), (ValidationReport, "validation.json")):
        data = json.loads((out / name).read_text())
        assert cls.from_dict(data).to_dict() == data
    record = load_pruning_record(out / "pruning.json")
    assert record.plan.to_dict() == plan and record.parameters == report.parameters
    assert record.output_dir is None and "output_dir" not in record.to_dict()


def test_before_after_rows_come_from_the_validation_report(applied):
    from ssm_profile.validation.comparison import relative_change

    _, out, report = applied
    v = report.validation
    rows = {row.label: row for row in comparison_rows(v)}
    ppl, size = v.perplexity, v.size
    assert rows["perplexity, search windows"].before == ppl.base.perplexity
    assert rows["perplexity, search windows"].after == ppl.pruned.perplexity
    assert rows["loss, search windows"].delta == pytest.approx(ppl.delta_loss)
    # "held out" is the verification split, with its paired interval (it was the search split's label)
    verified = rows[f"perplexity, {v.verification.windows} verification windows (held out)"]
    assert verified.change == pytest.approx(v.verification.rel_ppl_increase)
    assert verified.interval == tuple(v.verification.interval) and "95% CI" in verified.change_text()
    params = rows["parameters"]
    assert (params.before, params.after) == (size.base.parameters, size.pruned.parameters)
    assert params.change == size.change["parameters"] == relative_change(params.before, params.after) < 0
    assert params.better is True  # fewer parameters
    assert rows["tokens / s"].lower_is_better is False
    tasks = [row for row in comparison_rows(v) if row.section == "lm-eval"]
    assert {row.label.split()[0] for row in tasks} == set(v.lm_eval.tasks)
    acc = next(row for row in tasks if row.label == "ssm_next_verse acc")
    assert "95% CI" in acc.change_text() and "paired over 4 items" in acc.change_text()
    assert relative_change(None, 1.0) is None and relative_change(0, 1.0) is None
    assert relative_change(2.0, 3.0) == pytest.approx(0.5)


def test_every_front_end_shows_the_same_before_after_rows(applied, capsys):
    """CLI, HTML and Markdown show the rows of one builder with one formatting (the TUI uses the same
    ``ComparisonRow.text``/``change_text``; its Apply table is checked in test_tui)."""
    from ssm_profile.cli.validate_cmd import print_validation
    from ssm_profile.reports.markdown import validation_md
    from ssm_profile.reports.plan_sections import validation_section

    _, out, report = applied
    data = json.loads((out / "validation.json").read_text())
    html, markdown = validation_section(report.validation), "\n".join(validation_md(report.validation))
    print_validation(report.validation)
    cli = capsys.readouterr().out
    rows = comparison_rows(report.validation)
    assert rows and all(r.section in ("model", "lm-eval") for r in rows)
    for row in rows:
        after = row.text(row.after)
        assert f"| {row.label} | {row.text(row.before)} | {after} |" in markdown, row
        assert html.count(f">{after}<") >= 1, row
        if row.section == "model":
            assert row.label in cli and after in cli, row
    held_out = next(r for r in rows if r.label.endswith("verification windows (held out)"))
    assert "of base" in held_out.change_text() and held_out.change_text() in html


# --------------------------------------------------------------------------------------------
# timing noise and third-party noise (issue #15)


def test_speed_change_has_a_paired_interval_and_noise_is_called_noise():
    from ssm_profile.validation.comparison import ComparisonRow, paired_change
    from ssm_profile.validation.check import measure_speed

    model = load_model("tiny-mamba").model
    speed = measure_speed({"base": model, "pruned": model}, 64, batch=1, seqlen=8, repeats=4)
    change = speed["change"]
    assert change["pairs"] == 4 and len(speed["base"]["runs_s"]) == len(speed["pruned"]["runs_s"]) == 4
    latency = change["latency"]
    assert latency["low"] <= latency["mean"] <= latency["high"]
    recorded = paired_change(speed["base"]["runs_s"], speed["pruned"]["runs_s"])  # runs_s are rounded to 1 µs
    assert latency["mean"] == pytest.approx(recorded["mean"], abs=0.01)
    noisy = ComparisonRow("latency", 1.0, 0.8, "seconds", interval=(-0.3, 0.1))
    clear = ComparisonRow("latency", 1.0, 0.5, "seconds", interval=(-0.6, -0.4))
    same = ComparisonRow("latency", 1.0, 0.8, "seconds", interval=(-0.3, -0.1), same_work=True)
    assert "within noise" in noisy.change_text() and noisy.better is None
    assert "within noise" not in clear.change_text() and "95% CI -60.0% to -40.0%" in clear.change_text()
    assert clear.better is True
    assert "within noise (same FLOPs/token" in same.change_text() and same.better is None
    assert paired_change([1.0, 1.0, 1.0], [1.1, 1.1, 1.1]) == pytest.approx({"mean": 0.1, "low": 0.1, "high": 0.1})
    assert paired_change([1.0], [2.0]) == {"mean": 1.0, "low": None, "high": None}


def test_zeros_only_validation_claims_no_speed_up(tmp_path, capsys):
    loaded = load_model("tiny-mamba")
    plan = make_plan(loaded, [{"target": "in_proj", "structure": "unstructured", "criterion": "magnitude",
                               "sparsity": 0.5}])
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    out = tmp_path / "out"
    assert main(["apply", "tiny-mamba", str(path), "-o", str(out), "--validate", "--no-lm-eval", "--quiet",
                 "--speed-repeats", "3", "--speed-batch", "1", "8", "--max-ppl-increase", "100%"]) == 0
    text = capsys.readouterr().out
    speed = json.loads((out / "validation.json").read_text())["speed"]
    assert speed["change"]["pairs"] == 3 and speed["change"]["latency"]["low"] is not None
    from ssm_profile.documents import load_validation

    timings = [row for row in comparison_rows(load_validation(out / "validation.json"))
               if row.kind in ("seconds", "rate")]
    assert len(timings) == 2 and all(row.same_work and row.better is None for row in timings)
    assert all("within noise (same FLOPs/token" in row.change_text() for row in timings)
    assert "nothing physical changed" in " ".join(text.split()) and "--structures units" in text


def test_lm_eval_prints_nothing_on_the_terminal_outside_a_git_repository(tmp_path, monkeypatch, capfd):
    """lm-eval runs `git describe`, which writes "fatal: not a git repository" to file descriptor 2."""
    from ssm_profile.validation.check import LmEvalRunner

    monkeypatch.chdir(tmp_path)
    runner = LmEvalRunner(["ssm_next_verse"], limit=2, max_length=256)
    try:
        runner.evaluate(load_model("tiny-mamba"))
        capfd.readouterr()
        runner.evaluate(load_model("tiny-mamba"))
        err = capfd.readouterr().err
        assert "fatal" not in err and "not a git repository" not in err, err
        runner.close(keep_log=tmp_path / "lm-eval.log")
        assert "not a git repository" in (tmp_path / "lm-eval.log").read_text()
    finally:
        runner.close()
