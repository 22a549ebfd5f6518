"""Kernels: the fast CPU code the project owns, and which of it a model runs.

``fastscan`` (Mamba-1 selective scan, forward and backward), ``fastscan2`` (Mamba-2 SSD), ``fastdelta``
(the gated delta rule) and ``fastlinear`` are the kernels themselves (``simd``, their vector helpers, is theirs alone); which of them a model runs is
a :class:`ssm_profile.mixers.choice.Kernels` value, installed by the mixers wing. The kernel modules import
nothing of the rest of ssm-profile, this package neither: each kernel module is its own public face.
"""

__all__ = ["fastdelta", "fastlinear", "fastscan", "fastscan2"]
