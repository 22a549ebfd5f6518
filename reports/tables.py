"""CSV export of the report's tables (the same ProfileResult views the run directory stores)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ssm_profile.profiling.results import run_frames, write_csv_tables

from .facts import Facts

TABLES = ("ranking", "sweep", "layers", "layer_ranking", "findings", "groups", "group_summary", "units", "dynamics")


def frames(facts: Facts) -> dict[str, "object"]:
    """name -> pandas DataFrame for every exported table: the run directory's tables, then the analysis's."""
    import pandas as pd

    r = facts.result
    dynamics = pd.DataFrame([
        {"layer": d.layer, "mixer_kind": d.mixer_kind,
         **{f"decay_rate_{k}": v for k, v in d.decay_rate.items()}, **{f"dt_{k}": v for k, v in d.dt.items()},
         **{f"horizon_{k}": v for k, v in d.horizon.items()}} for d in r.analysis.dynamics])
    tables = {
        **run_frames(r, facts.ranking, facts.layer_ranking, facts.findings),
        "groups": r.analysis.groups_frame(),
        "group_summary": pd.DataFrame(r.analysis.summary_by_group()),
        "units": pd.DataFrame([asdict(u) for u in r.analysis.units]),
        "dynamics": dynamics,
    }
    return {name: tables[name] for name in TABLES}


def export_csv(result_or_facts, directory: str | Path) -> list[Path]:
    """Write ranking.csv, sweep.csv, layers.csv, layer_ranking.csv, findings.csv, groups.csv, group_summary.csv,
    units.csv and dynamics.csv to ``directory`` (atomically, file by file); returns the paths."""
    facts = result_or_facts if isinstance(result_or_facts, Facts) else Facts.of(result_or_facts)
    return write_csv_tables(frames(facts), directory)
