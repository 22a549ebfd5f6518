"""Incremental evaluation for sensitivity sweeps: recompute only what a trial can change.

A trial masks some mixer parameters and measures the per-window evaluation loss
(:func:`ssm_profile.calibration.data.batch_losses`). :class:`IncrementalEvaluator` returns exactly those losses,
bit for bit, while skipping work the mask cannot affect. Once per profile it runs the dense model
over the evaluation windows (the same batches as ``batch_losses``) and keeps:

* the residual-stream input of every decoder layer (layer 0's is the embedding output). A trial
  whose first touched layer is ``l`` starts there: layers ``< l`` and the embedding are never
  recomputed (the per-layer heatmap trials; model-wide trials start at layer 0);
* inside the first touched layer, the input of every resumable stage of the mixer's family
  (:mod:`ssm_profile.mixers`: the very stages its owned forward runs). A trial restarts that layer's
  mixer at the last such stage before the first stage that reads a touched parameter group: one on
  ``out_proj`` runs the mixer as one matrix product, one on ``A_log``/``D``/``conv1d``/``dt_bias``
  skips ``in_proj``. The stored tensors are the very objects the dense pass produced (same values,
  same strides), fed to the same code, so every later op sees identical inputs. Stage reuse needs the
  owned forward (``Kernels.fast_scan``); with transformers' forward only whole layers are reused;
* the result of each distinct mask: trials whose masks zero the same elements (e.g. 20% and 30%
  of 8 heads both prune 2, or two criteria that rank alike) are the same model, so the second
  one is not evaluated again. A mask that zeroes nothing returns the dense losses.

The head and the loss are :func:`ssm_profile.calibration.data.head_window_losses`, the function ``batch_losses``
itself uses (row blocks that stay in cache), so they match by construction.

Trials are not batched into one forward: different trials have different weights, so a shared
forward would need other kernels (batched matmuls) and other rounding. The only weight-shared
part is the head, whose cost per row does not shrink with more rows.

Equality is checked, not assumed: :meth:`IncrementalEvaluator.prepare` replays the dense model
through every restart stage and compares with the dense losses of ``batch_losses`` (``torch.equal``);
a stage that differs is switched off, and if the plain replay differs, every trial falls back to
``batch_losses`` (``reason`` says why). Supported: Mamba, Mamba-2 and FalconMamba causal LMs from
transformers (a backbone of embeddings, decoder blocks with a ``mixer``, ``norm_f``, ``lm_head``);
anything else falls back.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from ..calibration.data import batch_losses, has_blocked_head, head_window_losses, logits_window_losses
from ..mixers.choice import Kernels, active, installed
from ..criteria.masks import Mask
from ..mixers import owned_family, owned_kernel, run_owned
from ..base.patching import forwards_overridden

# Every this many trials, hand glibc's free heap pages back to the OS. The cached activations
# live in the heap among each trial's short-lived tensors, so without a trim the freed space is
# kept (RSS grew ~0.7 GB over a default tiny-mamba2 profile; live memory did not).
TRIM_EVERY = 16
SUPPORTED_CLASSES = ("MambaForCausalLM", "Mamba2ForCausalLM", "FalconMambaForCausalLM")
DEFAULT_CACHE_BYTES = 1 << 30

@dataclass
class _Batch:
    ids: torch.Tensor  # (b, l) input ids on the model device
    inputs: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> residual input
    stages: dict[int, dict[str, Any]] = field(default_factory=dict)  # layer -> stage tensors


def supports(model: torch.nn.Module) -> str | None:
    """None when ``model`` can be evaluated incrementally, else why not."""
    if type(model).__name__ not in SUPPORTED_CLASSES:
        return f"{type(model).__name__} is not one of {', '.join(SUPPORTED_CLASSES)}"
    backbone = getattr(model, "backbone", None)
    if backbone is None or not all(hasattr(backbone, a) for a in ("embeddings", "layers", "norm_f")):
        return "the model has no backbone with embeddings, layers and norm_f"
    if getattr(model, "lm_head", None) is None:
        return "the model has no lm_head"
    if not all(hasattr(layer, "mixer") for layer in backbone.layers):
        return "a decoder layer has no mixer"
    return None


class IncrementalEvaluator:
    """``evaluate(model, windows, mask=None) -> per-window losses`` for :func:`ssm_profile.profiling.sensitivity.run_trial`.

    Bound to one model, one set of evaluation windows, one batch size and one choice of kernels
    (``kernels``; None: those installed on the model now), which it installs while it runs; call
    :meth:`prepare` with the dense losses from ``batch_losses`` (same kernels) before the first
    trial. ``cache_bytes`` bounds the cached activations (layer inputs first, then stage outputs
    from layer 0 up); layers past the budget are recomputed from the nearest cached input.
    """

    accepts_mask = True

    def __init__(self, model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 8,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, dedupe: bool = True, kernels: Kernels | None = None):
        self.model = model
        self.kernels = kernels or active(model)
        self.windows = windows
        self.batch_size = batch_size
        self.cache_bytes = cache_bytes
        self.dedupe = dedupe
        self.reason: str | None = supports(model)
        self.enabled = False
        self.modes: dict[str, bool] = {}
        self.stats: Counter = Counter()
        self.seconds = {"prepare": 0.0}
        self._dense: torch.Tensor | None = None
        self._results: dict[bytes, torch.Tensor] = {}
        self._batches: list[_Batch] = []
        self._calls = 0
        if self.reason is None:
            self.backbone = model.backbone
            self.layers = list(model.backbone.layers)
            self._layer_of = {f"backbone.layers.{i}.": i for i in range(len(self.layers))}

    # ------------------------------------------------------------------ setup
    @torch.no_grad()
    def prepare(self, dense_losses: torch.Tensor) -> IncrementalEvaluator:
        """Cache the dense activations and check every reuse mode against ``dense_losses``."""
        start = time.perf_counter()
        self._dense = dense_losses.detach().clone()
        if self.reason is None:
            try:
                with installed(self.model, self.kernels):
                    self._capture()
                    self._verify()
            except Exception as err:  # noqa: BLE001 - any surprise means: evaluate plainly
                self.reason = f"incremental replay failed ({type(err).__name__}: {err})"
                self.enabled = False
                self._batches = []
        self.seconds["prepare"] = time.perf_counter() - start
        return self

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _budget(self) -> tuple[int, int]:
        """(layers whose inputs are cached, layers whose stages are cached), within ``cache_bytes``."""
        tokens = int(self.windows.numel())
        hidden = self.backbone.norm_f.weight.shape[0]
        per_input = tokens * hidden * 4
        n_inputs = max(1, min(len(self.layers), self.cache_bytes // max(per_input, 1)))
        left = self.cache_bytes - n_inputs * per_input
        n_stages = 0
        for layer in self.layers:
            mixer = layer.mixer
            width = mixer.in_proj.weight.shape[0] + 2 * mixer.out_proj.weight.shape[1]
            if isinstance(getattr(mixer, "x_proj", None), torch.nn.Module):
                width += mixer.x_proj.weight.shape[0]
            need = tokens * width * 4
            if need > left:
                break
            left -= need
            n_stages += 1
        return n_inputs, n_stages

    def _capture(self) -> None:
        device = self._device()
        n_inputs, n_stages = self._budget()
        self.cached_layers = n_inputs
        # stages are kept only where the mixer runs the owned forward (its stages are the model)
        self._kernels = {i: owned_kernel(self.layers[i].mixer) for i in range(len(self.layers))}
        self.staged_layers = next((i for i in range(n_stages) if self._kernels[i] is None), n_stages)
        self._batches = [_Batch(ids=ids.to(device)) for ids in self.windows.split(self.batch_size)]
        for batch in self._batches:
            h = self.backbone.embeddings(batch.ids)
            for i, layer in enumerate(self.layers):
                if i < n_inputs:
                    batch.inputs[i] = h
                if i < self.staged_layers:
                    batch.stages[i] = {}
                    with forwards_overridden({layer.mixer: self._mixer_run(i, keep=batch.stages[i])}):
                        h = layer(h, cache=None, attention_mask=None)
                else:
                    h = layer(h, cache=None, attention_mask=None)

    def _mixer_run(self, i: int, **how: Any):
        """Layer ``i``'s mixer forward through its family's stages (``how``: start, state, keep)."""
        mixer = self.layers[i].mixer
        family, kernel = owned_family(mixer), self._kernels[i]
        return lambda hidden_states, *a, **k: run_owned(mixer, family, kernel, hidden_states, **how)

    def _restart_stages(self) -> list[str]:
        family = owned_family(self.layers[0].mixer) if self.staged_layers else None
        return [stage.name for stage in family.stages if stage.resumable] if family is not None else []

    def _verify(self) -> None:
        """Replay the first batch from layer 0, plainly and from every restart stage: each must give the
        dense losses bit for bit (one batch: the others run the very same code on other windows)."""
        assert self._dense is not None
        first = self._dense[: len(self._batches[0].ids)]
        if not torch.equal(self._evaluate(start=0, mode=None, batches=1), first):
            self.reason = ("replaying the dense model layer by layer did not reproduce batch_losses bit for bit; "
                           "trials use batch_losses")
            return
        self.enabled = True
        for stage in self._restart_stages():
            self.modes[stage] = torch.equal(self._evaluate(start=0, mode=stage, batches=1), first)

    # ------------------------------------------------------------------ evaluation
    def __call__(self, model: torch.nn.Module, windows: torch.Tensor, mask: Mask | None = None,
                 values: dict[str, torch.Tensor] | None = None,
                 norm_eps: dict[str, float] | None = None) -> torch.Tensor:
        """Per-window losses of ``model`` (masked in place) on ``windows``, equal to ``batch_losses``.

        ``values``: tensors the trial rewrote besides zeroing (a reconstructing criterion's kept
        weights): they count as touched, and their contents are part of the repeat key; likewise
        ``norm_eps`` (norm module path -> the eps the trial set: the sliced form of a head cut)."""
        return torch.cat(list(self.chunks(model, windows, mask, values, norm_eps)))

    def chunks(self, model: torch.nn.Module, windows: torch.Tensor, mask: Mask | None = None,
               values: dict[str, torch.Tensor] | None = None,
               norm_eps: dict[str, float] | None = None) -> Iterator[torch.Tensor]:
        """:meth:`__call__`'s losses batch by batch (window order), so a caller may stop early
        (:mod:`ssm_profile.profiling.earlystop`); each batch's losses are the very numbers of a full evaluation.
        Close the iterator (or exhaust it) before changing the model's weights."""
        if model is not self.model or not (windows is self.windows or torch.equal(windows, self.windows)):
            self.stats["plain"] += 1
            yield batch_losses(model, windows, self.batch_size, kernels=self.kernels)
            return
        with installed(model, self.kernels):
            yield from self._pieces(model, windows, mask, values or {}, norm_eps or {})

    def _pieces(self, model: torch.nn.Module, windows: torch.Tensor, mask: Mask | None,
                values: dict[str, torch.Tensor], norm_eps: dict[str, float]) -> Iterator[torch.Tensor]:
        """:meth:`chunks` on the bound model and windows, its kernels installed. Only complete
        results are remembered for repeated masks."""
        touched = None if mask is None else _touched(mask)
        if touched is not None:
            touched.update({name: None for name in values if name not in touched})
            touched.update({f"{path}.variance_epsilon": None for path in norm_eps})  # the norm's group
        key = None
        if touched is not None and self.dedupe:
            if not touched and self._dense is not None:
                self.stats["unchanged"] += 1
                yield self._dense.clone()
                return
            key = _mask_key(touched, values, norm_eps)
            if key in self._results:
                self.stats["repeated"] += 1
                yield self._results[key].clone()
                return
        self._calls += 1
        if self._calls % TRIM_EVERY == 0:
            _release_free_heap()
        plan = self._plan(touched) if self.enabled else None
        if plan is None:  # disabled, or a cut of embeddings, final norm or head: nothing cached applies
            self.stats["outside_layers" if self.enabled else "plain"] += 1
            pieces = (batch_losses(model, part, self.batch_size, kernels=self.kernels)
                      for part in windows.split(self.batch_size))
        else:
            start, mode = plan
            self.stats[f"start_layer_{start}"] += 1
            self.stats[f"mode_{mode or 'full'}"] += 1
            pieces = self._batch_losses(start, mode)
        done = []
        for piece in pieces:
            done.append(piece.double())
            yield done[-1]
        if key is not None:
            self._results[key] = torch.cat(done)

    def _plan(self, touched: dict[str, torch.Tensor] | None) -> tuple[int, str | None] | None:
        """(first layer to recompute, stage of its mixer to restart at) for a trial touching ``touched``;
        None when it touches something outside the decoder layers (then nothing cached is valid)."""
        if touched is None:
            return None  # no mask given: it may have changed anything
        layers: dict[int, set[str]] = {}
        for name in touched:
            layer, group = self._locate(name)
            if layer is None:
                return None
            layers.setdefault(layer, set()).add(group)
        first = min(layers)
        start = min(first, self.cached_layers - 1)
        if start != first or first >= self.staged_layers:
            return start, None
        stage = owned_family(self.layers[first].mixer).restart_stage(layers[first])
        return first, stage if stage is not None and self.modes.get(stage) else None

    def _locate(self, name: str) -> tuple[int | None, str]:
        """(decoder layer, mixer parameter group) of a full parameter name."""
        for prefix, layer in self._layer_of.items():
            if name.startswith(prefix):
                rest = name[len(prefix):]
                if not rest.startswith("mixer."):
                    return layer, "<block>"
                return layer, rest[len("mixer."):].split(".")[0]
        return None, ""

    def _evaluate(self, start: int, mode: str | None, batches: int | None = None) -> torch.Tensor:
        return torch.cat(list(self._batch_losses(start, mode, batches))).double()

    def _batch_losses(self, start: int, mode: str | None, batches: int | None = None) -> Iterator[torch.Tensor]:
        """Per-window losses of each cached batch in turn (the first ``batches``), recomputed from layer ``start``."""
        for batch in self._batches[:batches]:
            with torch.no_grad():
                h = batch.inputs[start]
                for i in range(start, len(self.layers)):
                    if i == start and mode is not None:
                        h = self._run_layer_reusing(i, h, batch.stages[i], mode)
                    else:
                        h = self.layers[i](h, cache=None, attention_mask=None)
                loss = self._head_loss(h, batch)
            yield loss

    def _run_layer_reusing(self, i: int, h: torch.Tensor, stages: dict[str, Any], mode: str) -> torch.Tensor:
        """Layer ``i`` with its mixer restarted at stage ``mode`` from the dense pass's input of it."""
        run = self._mixer_run(i, start=mode, state=stages[mode])
        with forwards_overridden({self.layers[i].mixer: run}):  # the fast kernels installed on other modules stay
            return self.layers[i](h, cache=None, attention_mask=None)

    def _head_loss(self, h: torch.Tensor, batch: _Batch) -> torch.Tensor:
        """``batch_losses``' loss of one batch from the last layer's output: the same final norm
        and the same loss functions (:func:`ssm_profile.calibration.data.head_window_losses`, or
        :func:`ssm_profile.calibration.data.logits_window_losses` for a head that must see the whole batch)."""
        hidden = self.backbone.norm_f(h)
        if has_blocked_head(self.model, self.kernels):  # asked each time, as batch_losses does (hooks may come and go)
            return head_window_losses(self.model.lm_head, hidden, batch.ids)
        return logits_window_losses(self.model.lm_head(hidden.to(self.model.lm_head.weight.dtype)), batch.ids)

    # ------------------------------------------------------------------ reporting
    def summary(self) -> dict[str, Any]:
        """What was reused: counts by kind, for run.json and the benchmark."""
        return {"enabled": self.enabled, "reason": self.reason, "modes": dict(self.modes),
                "blocked_head": has_blocked_head(self.model, self.kernels),
                "cached_layers": getattr(self, "cached_layers", 0), "staged_layers": getattr(self, "staged_layers", 0),
                "counts": dict(sorted(self.stats.items())), "prepare_s": round(self.seconds["prepare"], 3)}


def _touched(mask: Mask) -> dict[str, torch.Tensor | None]:
    """The mask entries that zero at least one element (an all-True entry changes nothing)."""
    return {name: keep for name, keep in mask.items() if not bool(keep.all())}


def _mask_key(touched: dict[str, torch.Tensor | None], values: dict[str, torch.Tensor],
              norm_eps: dict[str, float] | None = None) -> bytes:
    """A digest of exactly which elements of which tensors are zeroed, of any rewritten values and
    of the eps set in any norm."""
    digest = hashlib.blake2b(digest_size=32)
    for name in sorted(touched):
        keep = touched[name]
        digest.update(name.encode())
        if keep is not None:
            digest.update(repr(tuple(keep.shape)).encode())
            digest.update(np.packbits(keep.detach().cpu().numpy().reshape(-1)).tobytes())
    for name in sorted(values):
        value = values[name].detach().cpu().contiguous()
        digest.update(f"values:{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.numpy().tobytes())
    for path in sorted(norm_eps or {}):
        digest.update(f"eps:{path}:{float(norm_eps[path]).hex()}".encode())
    return digest.digest()


_LIBC: Any = None


def _release_free_heap() -> None:
    """``malloc_trim(0)`` where glibc provides it (a no-op elsewhere)."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes
            import ctypes.util

            name = ctypes.util.find_library("c")
            _LIBC = ctypes.CDLL(name) if name else False
            if _LIBC and not hasattr(_LIBC, "malloc_trim"):
                _LIBC = False
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)
