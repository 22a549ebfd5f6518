"""Profiling: saliency under every criterion, then measured sensitivity, into one results object.

``profile`` runs it; ``schedule``, ``adaptive`` and ``sensitivity`` decide and run the trials,
``incremental`` and ``earlystop`` make them cheap, ``distributed`` shards them over processes,
``estimate`` refuses an impossible run up front; ``results`` is the :class:`ProfileResult` every
front end renders, ``saliency`` and ``findings`` its summaries.
"""

from __future__ import annotations

from ..base.face import lazy_face

__all__, __getattr__ = lazy_face(__name__, {
    ".profile": ("profile_model", "check_run_dir", "make_schedule"),
    ".results": ("ProfileResult", "run_frames", "write_csv_tables"),
    ".record": ("RunRecord", "ProfileSettings"),
    ".recipe": ("RunRecipe", "needs_of"),
    ".sensitivity": ("TrialSpec", "plan_trials", "run_trial", "relative"),
    ".incremental": ("IncrementalEvaluator", "DEFAULT_CACHE_BYTES"),
    ".distributed": ("World",),
    ".estimate": ("check_memory", "check_time", "duration_text", "estimate_profile_seconds"),
})
