"""`ssm-profile bench --scaling` on tiny injected shapes: the JSON keys and consistent numbers."""

from __future__ import annotations

import json

import pytest

from ssm_profile.bench.scaling import parse_shape
from ssm_profile.cli.main import main

KEYS = {"params", "trial_seconds", "calibration_seconds", "trials_adaptive", "trials_grid", "profile_seconds",
        "extrapolated", "peak_rss_mib"}


@pytest.mark.slow  # ~15 s; test_scaling_full_runs_the_default_profile checks the JSON in the default run
def test_scaling_json_on_tiny_shapes(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--scaling-shapes", "a:1:32:128,b:2:32:128", "--quick", "--json", str(out),
                 "--quiet"]) == 0
    entries = json.loads(out.read_text())["scaling"]
    assert [e["shape"]["name"] for e in entries] == ["a", "b"]
    for e in entries:
        assert KEYS <= set(e)
        assert e["extrapolated"] is True and isinstance(e["extrapolated"], bool)
        assert all(e[k] > 0 for k in KEYS - {"extrapolated"})
        assert e["trials_grid"] >= e["trials_adaptive"]  # the adaptive schedule's own expectation
        assert e["profile_seconds"] >= e["calibration_seconds"] + e["trials_adaptive"] * e["trial_seconds"] - 1e-3
    assert entries[1]["params"] > entries[0]["params"]
    assert entries[1]["trials_grid"] > entries[0]["trials_grid"]  # more layers, more per-layer probes
    assert "Profile cost by model shape" in capsys.readouterr().out


@pytest.mark.slow  # 10-13 s: keeps the default run under 5 minutes
def test_scaling_full_runs_the_default_profile(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--scaling-shapes", "a:2:32:128", "--scaling-full", "--quick", "--json", str(out),
                 "--quiet"]) == 0
    (e,) = json.loads(out.read_text())["scaling"]
    assert e["extrapolated"] is False and KEYS <= set(e)
    assert 0 < e["trials_adaptive"] < e["trials_grid"]  # trials the adaptive profile ran, against the grid's
    assert e["trials_timed"] == e["trials_adaptive"] and 0 <= e["trials_stopped_early"] <= e["trials_adaptive"]
    assert e["profile_seconds"] >= e["calibration_seconds"] + e["trial_seconds"] * e["trials_adaptive"] - 1e-3


@pytest.mark.parametrize("text", ["x:1", "x:0:8", "x:a:8", "x:1:8:9:9"])
def test_bad_shapes_are_refused(text):
    with pytest.raises(ValueError, match="NAME:LAYERS:HIDDEN"):
        parse_shape(text)
    assert main(["bench", "--scaling-shapes", text]) == 2
