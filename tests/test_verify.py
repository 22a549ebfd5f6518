"""Plans that keep their promise out of sample: disjoint data roles, cross-fitted costs, verification,
validate on held-out and extra texts, and tokenizer checks."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from ssm_profile.cli.main import main
from ssm_profile.calibration.data import DataSpec, load_dataset, paired_increase, split_windows
from ssm_profile.base.errors import DataError
from ssm_profile.plan import PlanRequest, make_plan
from ssm_profile.plan.options import build_options
from ssm_profile.plan.options import crossfit_delta
from ssm_profile.calibration.data import data_spec_from_meta
from ssm_profile.model.resolve import load_model, tokenizer_info, use_tokenizer
from ssm_profile.profiling.sensitivity import Trial


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-mamba")


def _rows(t: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(r.tolist()) for r in t}


def test_three_roles_are_disjoint_and_recorded(tiny):
    spec = DataSpec(nsamples=4, eval_samples=4, seqlen=32, verify_samples=6)
    data = load_dataset(tiny.tokenizer, spec)
    assert data.verification.shape == (6, 32) and data.evaluation.shape == (4, 32)
    assert not _rows(data.verification) & _rows(data.evaluation)
    assert not _rows(data.verification) & _rows(data.calibration)
    meta = data.describe()
    assert meta["verify_samples"] == 6 and "held out" in meta["verification"]
    again = data_spec_from_meta(meta)
    assert again == spec  # the run's data block reproduces the same three roles
    assert torch.equal(load_dataset(tiny.tokenizer, again).verification, data.verification)


def test_seeds_resample_search_windows_not_verification(tiny):
    """Two seeds search on different windows (a replication) and verify on the same held-out tail;
    the three roles stay disjoint and the run record lists each role's windows."""
    spec = DataSpec(nsamples=4, eval_samples=6, seqlen=64, verify_samples=8)
    data = {seed: load_dataset(tiny.tokenizer, replace(spec, seed=seed)) for seed in (0, 1, 2)}
    windows = {seed: d.describe()["windows"] for seed, d in data.items()}
    assert windows[0]["search"] == list(range(6))  # seed 0: the first windows, as before
    assert windows[1]["search"] != windows[2]["search"] != windows[0]["search"]
    assert not torch.equal(data[1].evaluation, data[2].evaluation)
    assert windows[0]["verification"] == windows[1]["verification"] == windows[2]["verification"]
    assert torch.equal(data[1].verification, data[2].verification)
    for seed, d in data.items():
        assert not set(windows[seed]["search"]) & set(windows[seed]["verification"])
        assert not _rows(d.evaluation) & _rows(d.verification)
        assert not _rows(d.calibration) & (_rows(d.evaluation) | _rows(d.verification))
        assert len(windows[seed]["calibration"]) == 4
        again = load_dataset(tiny.tokenizer, data_spec_from_meta(d.describe()))  # the record rebuilds them
        assert torch.equal(again.evaluation, d.evaluation)
    legacy = {k: v for k, v in data[1].describe().items() if k != "windows"}  # a run before seeded search
    assert data_spec_from_meta(legacy).search_windows == tuple(range(6))


def test_split_never_shares_a_window():
    ids = torch.arange(5 * 8)
    search, verify = split_windows(ids, search=16, verify=16, seqlen=8)
    assert len(search) == 3 and len(verify) == 2 and not _rows(search) & _rows(verify)
    with pytest.raises(DataError, match="fewer than two windows"):
        split_windows(torch.arange(12), 4, 4, 8)


def test_single_source_split_has_a_verification_tail(tiny, tmp_path):
    text = (tiny.tokenizer.decode(list(range(5, 4000))) + " ") * 3
    path = tmp_path / "one.txt"
    path.write_text(text)
    data = load_dataset(tiny.tokenizer, DataSpec(calibration=str(path), nsamples=2, eval_samples=2, seqlen=64,
                                                 verify_samples=3))
    assert data.sources["verification"].startswith(f"{path} [last 20%]")
    assert not _rows(data.verification) & _rows(data.evaluation)


def _trial(criterion: str, deltas: list[float]) -> Trial:
    mean = sum(deltas) / len(deltas)
    return Trial("in_proj", criterion, 0.5, None, mean, mean, math.exp(mean), math.expm1(mean), 1, None, 0.0,
                 list(deltas))


def test_criterion_choice_and_cost_use_different_windows():
    dense = [0.0, 0.0, 0.0, 0.0]
    a = _trial("a", [0.0, 0.9, 0.0, 0.9])  # best on the even windows, and over all (0.45)
    b = _trial("b", [1.0, 0.0, 1.0, 0.0])  # best on the odd windows
    # chosen on even -> a, costed on odd (0.9); chosen on odd -> b, costed on even (1.0)
    assert crossfit_delta([a, b], dense) == pytest.approx(0.95)
    assert crossfit_delta([a], dense) == a.delta_loss  # nothing chosen: as measured
    consistent = _trial("c", [-0.05, -0.02, -0.05, -0.02])  # best on both folds
    assert crossfit_delta([a, b, consistent], dense) == consistent.delta_loss


def test_options_are_not_the_minimum_over_criteria(tmp_path):
    # The winner's curse on a synthetic run: the option's cost is the cross-fitted one, above the minimum.
    from tests.test_plan import synthetic as make_synthetic

    result = make_synthetic.__wrapped__()
    dense = result.dense_window_losses
    trials = [t for t in result.trials if t.target != "in_proj"]
    for s in (0.25, 0.5, 0.75):
        for c, d in (("magnitude", [0.0, 0.9, 0.0, 0.9]), ("fisher", [1.0, 0.0, 1.0, 0.0])):
            pruned = [x + y for x, y in zip(dense, d)]
            delta = sum(pruned) / 4 - sum(dense) / 4
            trials.append(Trial("in_proj", c, s, None, sum(pruned) / 4, delta, 0.0, math.expm1(delta),
                                1000, None, 0.0, pruned))
    options, _ = build_options(replace(result, trials=trials), "params")
    in_proj = next(levels for levels in options if levels[0].target == "in_proj")
    assert all(o.delta_loss == pytest.approx(0.95) for o in in_proj[1:])


def test_paired_interval_brackets_the_estimate():
    dense = [4.0, 4.2, 3.9, 4.1, 4.0, 4.3]
    pruned = [x + 0.05 + 0.01 * i for i, x in enumerate(dense)]
    m = paired_increase(dense, pruned)
    lo, hi = m["interval"]
    assert lo <= m["rel_ppl_increase"] <= hi and m["windows"] == 6
    assert m["rel_ppl_increase"] == pytest.approx(math.expm1(0.075))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from ssm_profile.profiling.record import ProfileSettings
    from ssm_profile.profiling.profile import profile_model
    from ssm_profile.profiling.results import ProfileResult

    loaded = load_model("tiny-mamba2")
    run_dir = tmp_path_factory.mktemp("verify") / "run"
    profile_model(loaded, DataSpec(nsamples=4, eval_samples=4, seqlen=32, verify_samples=8),
                  ProfileSettings(sparsities=[0.25, 0.5], criteria=["magnitude", "fisher"], per_layer=False),
                  run_dir=run_dir)
    return run_dir, ProfileResult.load(run_dir), loaded


def test_run_records_roles_and_tokenizer(tiny_run):
    run_dir, result, _ = tiny_run
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["data"]["verify_samples"] == 8 and meta["data"]["eval_samples"] == 4
    assert len(result.dense_window_losses) == 4  # the profile evaluates the search windows only
    tok = meta["tokenizer"]
    assert tok["path"] == "embedded" and tok["vocab_size"] == 4096 and len(tok["tokenizer_json_sha256"]) == 64


def test_plan_records_its_verification(tiny_run, tmp_path, capsys):
    run_dir, result, loaded = tiny_run
    plan = make_plan(result, PlanRequest(metric="params", max_ppl_increase=0.10), loaded=loaded, run_path=run_dir)
    v = plan.verification
    assert v is not None and v.windows == 8 and plan.data.verify_samples == 8
    assert v.interval[0] <= v.rel_ppl_increase <= v.interval[1]
    assert v.kept == (v.rel_ppl_increase <= 0.10)
    # accepted on the search windows' prediction bound, which the plan records (and which sits above the mean)
    c = plan.certification
    assert c is not None and c.certified and c.windows == 4 and c.unseen_windows == 8
    assert c.increase == plan.measured.rel_ppl_increase <= c.bound <= 0.10
    assert plan.to_dict()["verification"]["kept"] == v.kept
    assert make_plan(result, PlanRequest(metric="params", measure=False)).verification is None
    # the CLI says plainly when the promise is not kept on verification
    broken = replace(plan, verification=replace(v, rel_ppl_increase=0.5, kept=False))
    from ssm_profile.cli.plan_cmd import print_plan

    print_plan(broken)
    assert "NOT kept on verification" in " ".join(capsys.readouterr().out.split())


def test_a_plan_that_breaks_its_promise_exits_3_and_suggests_no_apply(tiny_run, tmp_path, capsys, monkeypatch):
    import ssm_profile.plan as plan_module
    from ssm_profile.cli.main import main

    run_dir, _, _ = tiny_run
    real = plan_module.make_plan

    def breaking(*args, **kw):  # the same plan, its verification measured above the tolerance
        plan = real(*args, **kw)
        return replace(plan, verification=replace(plan.verification, rel_ppl_increase=0.5, kept=False))

    monkeypatch.setattr(plan_module, "make_plan", breaking)
    out = tmp_path / "plan.json"
    assert main(["plan", str(run_dir), "-o", str(out), "--metric", "params", "--quiet"]) == 3
    printed = " ".join(capsys.readouterr().out.split())
    assert out.exists() and "do not apply it" in printed and "ssm-profile apply" not in printed
    monkeypatch.setattr(plan_module, "make_plan", real)
    assert main(["plan", str(run_dir), "-o", str(tmp_path / "kept.json"), "--metric", "params", "--ratio", "0.05",
                 "--quiet"]) == 0
    assert "next: ssm-profile apply" in " ".join(capsys.readouterr().out.split())


def test_larger_tokenizer_is_one_line_before_any_forward(tiny, tmp_path):
    from ssm_profile.profiling.profile import profile_model
    from tests.conftest import tiny_mamba

    small = tiny_mamba()  # a test model with fewer embedding rows than the shipped tokenizer
    rows = small.get_input_embeddings().num_embeddings
    assert rows < len(tiny.tokenizer)
    loaded = replace(tiny, model=small)
    with pytest.raises(DataError) as info:
        profile_model(loaded, DataSpec(nsamples=2, eval_samples=2, seqlen=16))
    assert str(info.value).count("\n") == 0 and str(len(tiny.tokenizer)) in str(info.value) and str(rows) in str(info.value)
    with pytest.raises(DataError, match=str(rows)):
        use_tokenizer(replace(tiny, model=small), "embedded")


def test_tokenizer_option_and_missing_tokenizer(tiny, tmp_path):
    bare = replace(tiny, tokenizer=None, tokenizer_path=None)
    with pytest.raises(DataError, match="--tokenizer"):
        load_dataset(bare.tokenizer, DataSpec())
    with_tok = use_tokenizer(bare, "embedded")
    assert tokenizer_info(with_tok)["path"] == "embedded"
    from ssm_profile.base.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="not a folder"):
        use_tokenizer(bare, str(tmp_path / "nope"))
    code = main(["profile", "tiny-mamba", "--tokenizer", str(tmp_path / "nope"), "-o", str(tmp_path / "r"),
                 "--quiet"])
    assert code == 2


def test_validate_reports_verification_and_extra_texts(tiny_run, tmp_path, capsys):
    from ssm_profile.pruning.apply import apply_plan
    from ssm_profile.documents import write_plan

    run_dir, result, loaded = tiny_run
    plan = make_plan(result, PlanRequest(metric="params", ratio=0.2, max_ppl_increase=0.5), loaded=loaded,
                     run_path=run_dir)
    write_plan(plan, tmp_path / "plan.json")
    out = tmp_path / "pruned"
    apply_plan(load_model("tiny-mamba2"), plan, out)
    other = tmp_path / "other.txt"
    other.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    report_path = tmp_path / "v.json"
    args = ["validate", "tiny-mamba2", str(out), "--no-lm-eval", "--speed-repeats", "1", "--speed-batch", "1", "8",
            "--evaluation", str(other), "-o", str(report_path), "--quiet"]
    code = main(args)
    v = json.loads(report_path.read_text())
    assert v["verification"]["windows"] == 8 and v["tolerance"]["decided_by"] == "verification"
    assert v["within_tolerance"] == v["verification"]["within_tolerance"] and code == (0 if v["within_tolerance"] else 3)
    assert [e["source"] for e in v["evaluations"]] == [str(other)]
    lo, hi = v["evaluations"][0]["interval"]
    assert lo <= v["evaluations"][0]["rel_ppl_increase"] <= hi
    # the verification windows are the plan's held-out ones, bit for bit the planner's measurement
    assert v["verification"]["rel_ppl_increase"] == pytest.approx(plan.verification.rel_ppl_increase, abs=1e-4)
    capsys.readouterr()
    # a tolerance below the verification increase: exit 3, and the message names the verification windows
    tight = v["verification"]["rel_ppl_increase"] / 2
    assert tight > 0  # a 20% cut costs something
    code = main([*args[:-3], "--max-ppl-increase", str(tight), "-o", str(report_path), "--overwrite", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and "verification" in err[0]
