"""`ssm-profile bench --quick` runs end to end and writes the expected JSON and Markdown."""

from __future__ import annotations

import pytest

import json

from ssm_profile.calibration import data
from ssm_profile.cli.main import main


@pytest.mark.slow  # ~15 s: runs every benchmark once on tiny data
def test_bench_quick_writes_json_and_tables(tmp_path, capsys):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    assert main(["bench", "--quick", "--quiet", "--reference-profile", "--json", str(out), "--markdown", str(md)]) == 0
    printed = capsys.readouterr().out
    assert "Default profile of the embedded models" in printed and "Speed goals: fast kernels and the incremental sweep" in printed
    report = json.loads(out.read_text())
    assert {"machine", "threads", "quick", "layer_forward", "layer_backward", "profiles", "throughput",
            "goals"} <= report.keys()
    assert report["threads"] == 1 and report["quick"] is True
    assert {"cpu", "cores", "date", "torch"} <= report["machine"].keys()
    fwd = report["layer_forward"]
    assert {"reference_s", "fast_s", "floor_s", "floor_torch_s", "speedup", "fast_over_floor", "linear"} <= fwd.keys()
    assert {"reference_s", "fast_s", "speedup"} <= report["layer_backward"].keys()
    delta = report["delta_forward"]
    assert {"reference_s", "fast_s", "floor_s", "speedup", "shape"} <= delta.keys() and delta["speedup"] > 0
    for name in ("tiny-mamba", "tiny-mamba2"):
        p = report["profiles"][name]
        assert p["identical"] is True and p["trials"] > 0
        assert p["reference_max_abs_loss_diff"] < 1e-3 and p["speedup_vs_reference"] > 0
        for mode in ("plain", "incremental", "reference"):
            assert {"seconds", "trial_seconds", "peak_rss_mib", "delta_mib", "trials"} <= p[mode].keys()
        assert p["speedup"] > 0 and p["incremental_summary"]["enabled"]
        assert p["exact_reuse_bound"] > 1 and len(p["stage_seconds"]["layers"]) == 4
        t = report["throughput"][name]
        assert t["dense_tok_s"] > 0 and t["pruned_tok_s"] > 0 and t["params_pruned"] < t["params_dense"]
    assert all(g["met"] is None for g in report["goals"] if "identical" not in g["goal"])
    assert "| default profile |" in md.read_text() and "| Gated DeltaNet mixer (Qwen3.5)" in md.read_text()
    assert "USE_BLOCKED_HEAD" not in vars(data)  # the reference run's choice is a value (Kernels.reference())


def test_exact_reuse_bound_charges_only_what_follows_the_first_touched_layer():
    from ssm_profile.bench.bench import exact_reuse_bound

    stages = {"embedding": 1.0, "layers": [2.0, 2.0, 2.0], "head": 3.0}  # a full forward costs 10
    # 4 trials: one from layer 0 (charged 2 + 2 + 3), one from layer 2 (charged 3), one repeated
    # (free), one outside the layers (charged 10)
    counts = {"start_layer_0": 1, "start_layer_2": 1, "repeated": 1, "outside_layers": 1, "mode_full": 2}
    assert exact_reuse_bound(stages, counts, trials=4) == 40 / (7 + 3 + 10)
