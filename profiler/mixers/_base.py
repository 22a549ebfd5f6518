"""The mixer-family interface: one object per SSM family holds its forward as a chain of stages.

A family (:class:`MixerFamily`) recognises a transformers mixer module by its parameters and the
fields it carries (never by the code of its ``forward``), reads the hyper-parameters it needs into a
:class:`Spec`-like value, and computes the mixer's full-sequence output from the mixer's own
parameters through :attr:`MixerFamily.stages`. The same stages serve three users:

* the owned forward installed on a model (:mod:`ssm_profile.mixers._install`);
* the incremental evaluator, which keeps a stage's input from the dense pass and restarts there
  when a trial touches only parameter groups that later stages read (:meth:`MixerFamily.run`);
* the runtime check that the owned forward is the model (:func:`ssm_profile.mixers._install.check`).

A stage is ``run(module, spec, state, kernel) -> state``: ``state`` maps names to tensors, the first
stage gets ``{"h": hidden_states}`` and the last returns ``{"out": mixer_output}``. ``reads`` names the
parameter groups (first component of a parameter name inside the mixer) the stage reads, which is
what tells the evaluator where a trial must restart.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

State = dict[str, Any]


@dataclass(frozen=True)
class Stage:
    """One step of a mixer's computation."""

    name: str
    reads: frozenset[str]  # parameter groups of the mixer this step reads
    run: Callable[[nn.Module, Any, State, str], State]
    resumable: bool = False  # the evaluator may keep this stage's input and start here


class MixerFamily(ABC):
    """A family of SSM mixers whose full-sequence forward the project computes itself."""

    name: str  # registry name, e.g. "selective_scan"
    kind: str  # arch kind: "mamba1", "mamba2" or "gated_delta"
    title: str  # for people, e.g. "Mamba-1 selective scan"
    stages: tuple[Stage, ...]

    @abstractmethod
    def matches(self, module: nn.Module) -> bool:
        """``module`` is a mixer of this family (read from its parameters and fields)."""

    @abstractmethod
    def spec(self, module: nn.Module) -> Any:
        """The hyper-parameters the stages need, read once per call from ``module``."""

    @abstractmethod
    def kernels(self, device: torch.device, grad: bool) -> str | None:
        """The kernel this family runs on ``device`` (``grad``: autograd needs gradients), or None
        when it has none there (then transformers' forward runs)."""

    def unsupported(self, module: nn.Module) -> str | None:
        """Why the owned forward cannot run this particular mixer (None: it can)."""
        return None

    def hidden_size(self, module: nn.Module) -> int:
        """The width of the hidden states ``module`` reads (what :func:`ssm_profile.mixers._install.check` feeds it)."""
        return module.in_proj.weight.shape[1]

    def run(self, module: nn.Module, hidden_states: torch.Tensor, kernel: str, *, start: str | None = None,
            state: State | None = None, keep: MutableMapping[str, State] | None = None) -> torch.Tensor:
        """The mixer's output. From the first stage on ``hidden_states``, or from stage ``start`` on
        ``state`` (its input kept from an earlier run). ``keep`` receives the input state of every
        resumable stage this call passes through (the very tensor objects, so a restart from them
        repeats the same operations on the same inputs)."""
        spec = self.spec(module)
        index = 0 if start is None else self.stage_index(start)
        current: State = {"h": hidden_states} if start is None else dict(state or {})
        for stage in self.stages[index:]:
            if keep is not None and stage.resumable:
                keep[stage.name] = dict(current)
            current = stage.run(module, spec, current, kernel)
        return current["out"]

    def stage_index(self, name: str) -> int:
        for i, stage in enumerate(self.stages):
            if stage.name == name:
                return i
        raise KeyError(f"{self.name} has no stage '{name}'")

    def restart_stage(self, groups: set[str]) -> str | None:
        """The latest resumable stage before any stage that reads one of ``groups`` (the stage a trial
        that changes those parameter groups can restart from), or None to run the whole mixer."""
        first_reader = next((i for i, s in enumerate(self.stages) if s.reads & groups), None)
        if first_reader is None:  # a group no stage reads (outside the mixer): nothing inside is reusable
            return None
        for stage in reversed(self.stages[:first_reader + 1]):
            if stage.resumable:
                return stage.name
        return None

    def __repr__(self) -> str:
        return f"<mixer family {self.name}>"
