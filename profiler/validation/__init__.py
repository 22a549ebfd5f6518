"""Validation: a pruned model checked against its base (``check``: :func:`validate`) and the before/after table
every front end shows (``comparison``)."""

from __future__ import annotations

from ..base.face import lazy_face

__all__, __getattr__ = lazy_face(__name__, {
    ".check": ("validate", "ValidationOptions", "ToleranceBreachedError", "LmEvalRunner", "count_parameters"),
    ".comparison": ("ComparisonRow", "comparison_rows", "relative_change"),
    ".domains": ("check_texts_are_there",),
})
