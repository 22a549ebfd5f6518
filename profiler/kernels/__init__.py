"""Kernels: the fast CPU code the project owns, and which of it a model runs.

``choice`` holds the :class:`Kernels` value and installs it on one model; ``fastscan`` (Mamba-1
selective scan, forward and backward), ``fastscan2`` (Mamba-2 SSD), ``fastlinear`` and ``simd`` are
the kernels themselves. The kernel modules import nothing of the rest of ssm-profile.
"""
