"""Pruning: from scores to masks (``masks``), the recipe that rebuilds them (``recipe``), structured
surgery on mixers (``surgery``), executing a plan (``apply``) and saying what it changes (``summary``)."""

from __future__ import annotations

from ..base.face import lazy_face

__all__, __getattr__ = lazy_face(__name__, {
    ".apply": ("apply_plan",),
    ".summary": ("UNITS_HINT", "changes_nothing", "physical_change", "plan_summary_lines"),
    ".surgery": ("slice_cuts", "slice_units", "sync_config"),
    ".layers": ("ssm_layers", "layer_parameters", "removed_parameters", "removal_problem", "skipped"),
})
