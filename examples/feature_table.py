"""The README's feature-by-architecture table, read from what ``analyze`` says on tiny random
checkpoints of every supported architecture (the test suite's, ``tests/conftest.py``).

A cell says how a uniform cut of that unit kind is executed: ``sliced`` (shapes shrink and the stock
config describes the result), ``sliced*`` (sliced under a condition on the kept width, else zeros;
the hybrid table in the README states it), ``zeros`` (applied as zeros), ``refused`` (the model is
refused in one line) or ``–`` (the family has no such unit).

Usage (from the repository root)::

    python examples/feature_table.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

KINDS = ("channel", "state", "dt_rank", "head", "head_channel", "value_head", "key_head", "value_channel",
         "key_channel", "decay_rank", "gate_rank", "layer")


def verdict(stock_config: str) -> str:
    if stock_config.startswith("expressible only when"):
        return "sliced*"
    if stock_config.startswith("expressible"):
        return "sliced"
    return "zeros"


def row(name: str) -> dict[str, str]:
    import conftest

    from ssm_profile import analyze
    from ssm_profile.base.errors import SSMProfileError

    torch.manual_seed(0)
    try:
        model = conftest.tiny_kda() if name == "kimi_linear" else conftest.tiny_architecture(name)
        units = analyze(model).units
    except SSMProfileError:
        units = []
    if not units:  # no mixer the tool models: load_model refuses it in one line, naming the layers
        return {kind: "refused" for kind in KINDS}
    found: dict[str, str] = {}
    for unit in units:
        found.setdefault(unit.kind, verdict(unit.stock_config))
    return {kind: found.get(kind, "–") for kind in KINDS}


def main() -> None:
    import conftest

    torch.set_num_threads(1)
    names = [n for family in conftest.MIXER_ARCHITECTURES.values() for n in family] + ["kimi_linear"]
    print("| architecture | " + " | ".join(KINDS) + " |")
    print("|---" * (len(KINDS) + 1) + "|")
    for name in names:
        cells = row(name)
        print(f"| {name} | " + " | ".join(cells[k] for k in KINDS) + " |")


if __name__ == "__main__":
    main()
