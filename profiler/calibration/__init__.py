"""Calibration: texts in, token windows out (``data``), and the passes over them that gather what
the criteria read (``stats``), with their memory bound (``memory``) and disk offload (``offload``)."""

from __future__ import annotations

from ..base.face import lazy_face

__all__, __getattr__ = lazy_face(__name__, {
    ".data": ("DataSpec", "Dataset", "DEFAULT_VERIFY_SAMPLES", "load_dataset", "data_spec_from_meta", "batch_losses",
              "head_window_losses", "logits_window_losses", "has_blocked_head", "paired_increase",
              "calibration_windows", "text_windows", "domain_windows", "windows_digest"),
    ".stats": ("collect_stats",),
    ".memory": ("ModelDims", "CAPTUM_SEQUENCES", "FLOAT32", "FORWARD_WIDTH_FACTOR", "check_batch_fits",
                "resident_weights", "score_cache_budget", "statistics_activations", "statistics_budget",
                "statistics_bytes_held"),
    ".offload": ("STATS_PREFIX", "remove_leftovers"),
})
