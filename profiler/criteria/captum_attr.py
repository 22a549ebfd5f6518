"""captum channel attributions (imported only when the ``captum`` criterion is asked for).

Gradient × activation (``LayerGradientXActivation``) of each mixer's out_proj *input* — the gated
SSM output channels — for the forward function "per-sequence mean log-likelihood of the
calibration tokens". Channel score = mean |attribution| over sequences and positions; a unit's
score is the sum over its channels (Mamba-1 channel; Mamba-2 head, head_channel, group).
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

if importlib.util.find_spec("captum") is None:  # the registry turns this into the one-line install hint
    raise ImportError("No module named 'captum'", name="captum")

from ..model.arch import find_mixers
from ._common import out_proj_slot
from .base import Criterion, NotApplicable, register


@register
class CaptumChannelAttribution(Criterion):
    """mean_{sequences, positions} |x_c · ∂log p(tokens)/∂x_c| for out_proj input channel c.

    Uses the first ``max_samples`` calibration sequences in batches of ``batch_size``. All mixers'
    channels are attributed in one pass per batch and cached until a model parameter changes.
    NotApplicable: element scores, state and dt_rank units (they own no out_proj input channel).
    """

    name = "captum"
    description = "captum gradient×activation of out_proj input channels (per-channel attribution)"
    needs = frozenset({"tokens"})
    scores_elements = False

    def __init__(self, max_samples: int = 8, batch_size: int = 4):
        self.max_samples = max_samples
        self.batch_size = batch_size
        self._key = None
        self._channels: dict[str, torch.Tensor] = {}

    def check(self, mixer, param):
        raise NotApplicable("captum attributes structured channels (out_proj inputs), not single weights")

    def score(self, ctx, mixer, param):
        self.check(mixer, param)

    def check_units(self, mixer, family):
        if out_proj_slot(family) is None:
            raise NotApplicable(f"captum attributes out_proj input channels; a {family.kind} unit owns none")

    def channel_scores(self, ctx) -> dict[str, torch.Tensor]:
        """Mixer path -> mean |attribution| per out_proj input channel, float64 (E,)."""
        model, tokens = ctx.model, ctx.stats.tokens
        if tokens is None:
            raise KeyError("calibration statistics hold no tokens; collect them with needs={'tokens'}")
        params = list(model.parameters())
        versions = tuple(p._version for p in params)
        if (self._key is not None and self._key[0] is model and self._key[1] is tokens
                and self._key[2] == versions):
            return self._channels
        mixers = find_mixers(model)
        layers = [m.out_linear for m in mixers]
        device = params[0].device if params else torch.device("cpu")

        def forward(ids: torch.Tensor) -> torch.Tensor:
            logits = model(input_ids=ids, use_cache=False).logits.float()
            nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
            return -nll.view(ids.shape[0], -1).mean(1)  # per-sequence mean log-likelihood

        from captum.attr import LayerGradientXActivation  # seconds to import: only when attributing

        attr = LayerGradientXActivation(forward, layers)
        sums = [torch.zeros(m.intermediate_size, dtype=torch.float64) for m in mixers]
        count = 0
        was_training = model.training
        saved_req = [p.requires_grad for p in params]
        try:
            model.eval()
            for p in params:
                p.requires_grad_(False)  # gradients are needed w.r.t. the layer inputs only
            ids_all = torch.as_tensor(tokens, dtype=torch.long)[: self.max_samples]
            for start in range(0, ids_all.shape[0], self.batch_size):
                ids = ids_all[start:start + self.batch_size].to(device)
                out = attr.attribute(ids, attribute_to_layer_input=True)
                if len(layers) == 1 and not isinstance(out, list):
                    out = [out]
                for i, a in enumerate(out):
                    a = a[0] if isinstance(a, tuple) else a
                    sums[i] += a.detach().abs().double().reshape(-1, a.shape[-1]).sum(0).cpu()
                count += ids.shape[0] * ids.shape[1]
        finally:
            for p, req in zip(params, saved_req):
                p.requires_grad_(req)
            model.train(was_training)
        self._channels = {m.path: s / max(count, 1) for m, s in zip(mixers, sums)}
        self._key = (model, tokens, versions)
        return self._channels

    def unit_scores(self, ctx, mixer, family):
        self.check_units(mixer, family)
        channels = self.channel_scores(ctx)[mixer.path]
        slot = out_proj_slot(family)
        idx = slot.indices(torch.arange(family.count)).view(family.count, slot.span)
        return channels[idx].sum(1)
