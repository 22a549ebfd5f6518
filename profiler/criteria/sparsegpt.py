"""SparseGPT (Frantar & Alistarh 2023): prune a linear layer's weight and update the kept weights.

The layer's output error ‖(W - Ŵ) X‖² is a quadratic in each row of W with Hessian H = XᵀX (every
row shares it). Removing w_ij and moving the rest of row i optimally costs w_ij² / [H⁻¹]_jj and
changes the row by -(w_ij / [H⁻¹]_jj)·[H⁻¹]_j,: (the OBS update). SparseGPT walks the input
columns left to right in blocks and freezes each column once processed, so the update of column j
only reaches the columns after it: then the needed rows of the successive inverses are the rows of
the upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU), scaled by their diagonal. In each block the mask
is chosen adaptively from w² / U_jj² on the already-updated weights (unstructured: the lowest
fraction of the block's elements; N:M: the M-N lowest of every M consecutive columns of a row).

:func:`remove_columns` is the exact structured case: whole input columns S removed at once, the
other columns updated jointly (δW = -W_S [H⁻¹]_SS⁻¹ [H⁻¹]_S,:).

Everything runs in float64 on the CPU; ``hessian`` is XᵀX summed over tokens (its scale does not
matter: the damping is relative to its mean diagonal).
"""

from __future__ import annotations

import torch

DEFAULT_BLOCK = 128
DEFAULT_DAMP = 0.01


def damped(hessian: torch.Tensor, damp: float = DEFAULT_DAMP) -> torch.Tensor:
    """H + damp·mean(diag H)·I in float64; inputs that never fire (H_jj = 0) get H_jj = 1."""
    h = hessian.detach().double().cpu().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    mean_diag = float(h.diagonal().mean())
    h.diagonal().add_(damp * mean_diag if mean_diag > 0 else 1e-8)
    return h


def inverse(h: torch.Tensor) -> torch.Tensor:
    """H⁻¹ of a damped Hessian (Cholesky; a pseudo-inverse if rounding made it indefinite)."""
    try:
        return torch.cholesky_inverse(torch.linalg.cholesky(h))
    except RuntimeError:
        return torch.linalg.pinv(h, hermitian=True)


def upper_inverse_factor(h: torch.Tensor) -> torch.Tensor:
    """U with H⁻¹ = UᵀU (upper Cholesky factor of the inverse), float64."""
    inv = inverse(h)
    try:
        return torch.linalg.cholesky(inv, upper=True)
    except RuntimeError:  # indefinite in rounding: damp the inverse a little more
        inv.diagonal().add_(1e-10 * float(inv.diagonal().mean()))
        return torch.linalg.cholesky(inv, upper=True)


def sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float = 0.0, nm: tuple[int, int] | None = None,
              keep: torch.Tensor | None = None, block: int = DEFAULT_BLOCK,
              damp: float = DEFAULT_DAMP) -> tuple[torch.Tensor, torch.Tensor]:
    """(updated weight float64 with zeros where pruned, keep-mask) of a (rows, cols) linear weight.

    ``keep`` given: that fixed mask, with SparseGPT's updates. Otherwise the mask is chosen per block:
    ``nm = (N, M)`` keeps N of every M consecutive columns in each row; else ``round(sparsity·rows·width)``
    elements of each block of ``block`` columns are removed.
    """
    w = weight.detach().double().cpu().clone()
    rows, cols = w.shape
    u = upper_inverse_factor(damped(hessian, damp))
    pruned = torch.zeros(rows, cols, dtype=torch.bool)
    if keep is not None:
        pruned = ~keep.detach().cpu().bool()
    if nm is not None and block % nm[1]:
        block = max(nm[1], block - block % nm[1])  # N:M groups must not straddle blocks
    for start in range(0, cols, block):
        end = min(start + block, cols)
        w1, u1 = w[:, start:end].clone(), u[start:end, start:end]
        d = u1.diagonal()
        if keep is None and nm is None:
            pruned[:, start:end] = _lowest(w1.square() / d.square(), sparsity)
        errors = torch.zeros_like(w1)
        for i in range(end - start):
            if keep is None and nm is not None and i % nm[1] == 0:
                group = w1[:, i:i + nm[1]].square() / d[i:i + nm[1]].square()
                drop = torch.argsort(group, dim=1, stable=True)[:, :nm[1] - nm[0]]
                pruned[:, start + i:start + i + nm[1]].scatter_(1, drop, True)
            col = w1[:, i]
            err = torch.where(pruned[:, start + i], col, torch.zeros_like(col)) / d[i]
            w1[:, i:] -= err[:, None] * u1[i, i:][None, :]
            w1[:, i] = torch.where(pruned[:, start + i], torch.zeros_like(col), w1[:, i])
            errors[:, i] = err
        w[:, start:end] = w1
        w[:, end:] -= errors @ u[start:end, end:]
    return w, ~pruned


def _lowest(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """True at the ``round(fraction·numel)`` lowest entries (ties in index order)."""
    flat = scores.reshape(-1)
    k = int(round(fraction * flat.numel()))
    out = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        out[torch.argsort(flat, stable=True)[:k]] = True
    return out.view_as(scores)


def remove_columns(weight: torch.Tensor, hessian: torch.Tensor, columns: torch.Tensor,
                   damp: float = DEFAULT_DAMP) -> torch.Tensor:
    """Weight (float64) with input ``columns`` removed and every other column updated (structured OBS)."""
    w = weight.detach().double().cpu().clone()
    columns = torch.as_tensor(columns, dtype=torch.long)
    if columns.numel() == 0:
        return w
    inv = inverse(damped(hessian, damp))
    solve = torch.linalg.solve(inv[columns][:, columns], inv[columns])  # [H⁻¹]_SS⁻¹ [H⁻¹]_S,:
    w -= w[:, columns] @ solve
    w[:, columns] = 0.0
    return w
