"""The pieces of recovery training: frozen masks, the distillation loss, the schedule, the batches,
one data-parallel optimiser step. :mod:`ssm_profile.recovery.train` runs them.

Everything here is a function of the step number (batches, learning rate), so a run resumed from a
checkpoint takes exactly the steps an uninterrupted run takes, and every data-parallel rank computes
the same update: gradients are summed over ranks (``torch.distributed`` all-reduce; each rank's loss
is already divided by the global token count), then every rank takes the same optimiser step.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from ..profiling.distributed import World

Masks = dict[str, torch.Tensor]  # parameter name -> keep (bool), only for parameters with pruned entries


# --------------------------------------------------------------------------------------------
# masks: what apply zeroed stays zero


def frozen_masks(model: nn.Module, names: set[str] | None = None) -> Masks:
    """Keep-masks of the zeros ``apply`` wrote (unstructured, N:M or zeroed units): of the parameters
    ``names`` its record lists, else (an older record, or none) of every parameter with exact zeros,
    since a trained dense weight is almost never exactly 0.0."""
    masks: Masks = {}
    for name, p in model.named_parameters():
        if names is not None and name not in names:
            continue
        keep = p.detach() != 0
        if not bool(keep.all()):
            masks[name] = keep
    return masks


def mask_gradients(model: nn.Module, masks: Masks) -> None:
    """Zero the gradients of pruned entries, so Adam's moments never move them."""
    for name, p in model.named_parameters():
        if name in masks and p.grad is not None:
            p.grad.masked_fill_(~masks[name], 0)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Write the pruned entries back to zero (after every optimiser step: weight decay, rounding)."""
    for name, p in model.named_parameters():
        if name in masks:
            p.masked_fill_(~masks[name], 0)


def frozen_entries(masks: Masks) -> int:
    return int(sum(int((~keep).sum()) for keep in masks.values()))


# --------------------------------------------------------------------------------------------
# loss and schedule


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, ids: torch.Tensor, temperature: float,
                      lm_weight: float, tokens: int) -> tuple[torch.Tensor, float, float]:
    """``kd + lm_weight * lm`` summed over this batch's scored positions and divided by ``tokens``
    (the global count, so summing over ranks gives the global mean). ``kd`` is the token-level
    KL(teacher || student) of the temperature-softened distributions times ``temperature**2``
    (Hinton et al.), ``lm`` the student's next-token cross-entropy. Also returns the two parts
    (this batch's sums / ``tokens``) as floats for the loss curve."""
    vocab = student.shape[-1]
    s = student[:, :-1].float().reshape(-1, vocab)
    t = teacher[:, :-1].float().reshape(-1, vocab)
    log_s = F.log_softmax(s / temperature, dim=-1)
    log_t = F.log_softmax(t / temperature, dim=-1)
    kd = F.kl_div(log_s, log_t, log_target=True, reduction="sum") * temperature ** 2 / tokens
    loss = kd
    lm_value = 0.0
    if lm_weight > 0:
        lm = F.cross_entropy(s, ids[:, 1:].reshape(-1), reduction="sum") / tokens
        loss = kd + lm_weight * lm
        lm_value = float(lm.detach())
    return loss, float(kd.detach()), lm_value


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to a tenth of ``peak`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


# --------------------------------------------------------------------------------------------
# batches


def batch_at(stream: torch.Tensor, step: int, batch: int, seqlen: int, seed: int) -> torch.Tensor:
    """The global batch of ``step``: ``batch`` windows of the token ``stream`` at offsets drawn from
    a generator seeded by (seed, step), so every epoch sees new cuts and a resumed run the same ones."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, len(stream) - seqlen + 1, (batch,), generator=gen)
    return torch.stack([stream[s:s + seqlen] for s in starts.tolist()])


def rank_rows(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's share of the global batch (rows ``rank::world``)."""
    return batch[rank::world]


def ngram_overlap(stream: torch.Tensor, windows: torch.Tensor, n: int = 64) -> int:
    """How many ``n``-token spans of ``stream`` also occur in ``windows`` (0: no verification text in
    the training text). Spans are compared by two polynomial hashes modulo 31-bit primes (a 62-bit key)."""
    held = {h for row in windows for h in _span_hashes(row, n)}
    return sum(1 for h in _span_hashes(stream, n) if h in held) if held else 0


# (prime, base): no product or sum of n <= 256 terms leaves int64 for vocabularies under 2**18
_HASHES = ((2_147_483_647, 1_000_003), (2_147_483_629, 999_983))


def _span_hashes(ids: torch.Tensor, n: int) -> list[int]:
    if len(ids) < n:
        return []
    spans = ids.long().unfold(0, n, 1)
    key = torch.zeros(spans.shape[0], dtype=torch.long)
    for prime, base in _HASHES:
        powers = torch.tensor([pow(base, n - 1 - i, prime) for i in range(n)], dtype=torch.long)
        key = key * prime + (spans * powers).sum(dim=1) % prime
    return key.tolist()


# --------------------------------------------------------------------------------------------
# data-parallel processes


def sum_over_ranks(world: "World", values: list[torch.Tensor]) -> None:
    """Sum tensors over ranks in place (one flat buffer, one all-reduce)."""
    if world.size <= 1 or not values:
        return
    import torch.distributed as dist

    flat = torch.cat([v.reshape(-1) for v in values])
    dist.all_reduce(flat)
    offset = 0
    for v in values:
        v.copy_(flat[offset:offset + v.numel()].view_as(v))
        offset += v.numel()


# --------------------------------------------------------------------------------------------
# one step


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on a GPU; nothing on the CPU (float32 training)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(student: nn.Module, teacher: nn.Module, optimizer: torch.optim.Optimizer, rows: torch.Tensor,
               global_tokens: int, masks: Masks, world: "World", temperature: float, lm_weight: float,
               lr: float) -> tuple[float, float]:
    """One optimiser step on this rank's ``rows`` (gradients summed over ranks, masks held); returns
    the global KD and LM losses (means over the global batch)."""
    device = next(student.parameters()).device
    rows = rows.to(device)
    with torch.no_grad(), autocast(device):
        teacher_logits = teacher(input_ids=rows, use_cache=False).logits
    with autocast(device):
        student_logits = student(input_ids=rows, use_cache=False).logits
    loss, kd, lm = distillation_loss(student_logits, teacher_logits, rows, temperature, lm_weight, global_tokens)
    optimizer.zero_grad(set_to_none=False)
    loss.backward()
    params = [p for p in student.parameters() if p.grad is not None]  # shared weights once
    losses = torch.tensor([kd, lm], dtype=torch.float64)
    sum_over_ranks(world, [p.grad for p in params])
    sum_over_ranks(world, [losses])
    if not bool(torch.isfinite(losses).all()):  # before the step: the weights stay as they were
        raise Diverged(f"the loss is not finite (KD {float(losses[0])}, LM {float(losses[1])})")
    mask_gradients(student, masks)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    apply_masks(student, masks)
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise Diverged("the step made some weights non-finite")
    return float(losses[0]), float(losses[1])


class Diverged(ArithmeticError):
    """Training produced a non-finite loss or weights (what :func:`train_step` refuses to go on with)."""

