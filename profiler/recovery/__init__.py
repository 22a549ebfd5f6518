"""Recovery: knowledge distillation from the dense teacher (``train``: :func:`recover`) and its pieces
(``distill``)."""

from __future__ import annotations

from ..base.face import lazy_face

__all__, __getattr__ = lazy_face(__name__, {
    ".train": ("recover", "RecoverSettings", "check_recover_paths", "checkpoint_dir"),
})
