"""Whether a model's config can fit in this machine's memory, told from its sizes before anything is
built: a config.json with 10^5 layers or a million-wide vocabulary hung validate and analyze (minutes of
module construction, then gigabytes) where one line was due."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..base.errors import SSMProfileError
from ..base.fmt import human_bytes
from ..base.runtime import available_memory

_HALF = {"float16", "bfloat16", "torch.float16", "torch.bfloat16"}


def _size(config: Any, *names: str) -> int:
    for name in names:
        value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def least_parameters(config: Any) -> int:
    """A lower bound of the parameters ``config`` builds (a dict or a transformers config): the
    embedding plus, per layer, the input and output projections of its mixer or MLP (3 x hidden x inner)."""
    layers = _size(config, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _size(config, "hidden_size", "d_model")
    vocab = _size(config, "vocab_size")
    inner = _size(config, "intermediate_size", "d_inner") or _size(config, "expand") * hidden or hidden
    return vocab * hidden + layers * 3 * hidden * inner


def check_config_fits(config: Any, where: str | Path, dtype: Any = None) -> None:
    """One line, before the model is built, when ``config``'s weights alone exceed the memory available."""
    available = available_memory()
    if available is None:
        return
    saved = config.get("torch_dtype") or config.get("dtype") if isinstance(config, dict) else \
        getattr(config, "torch_dtype", None) or getattr(config, "dtype", None)
    wanted = str(dtype if dtype not in (None, "auto") else saved or "float32")
    params = least_parameters(config)
    need = params * (2 if wanted in _HALF else 4)
    if need > available:
        raise SSMProfileError(f"the config of '{where}' describes at least {params:,} parameters ({human_bytes(need)} "
                              f"of weights), more than the {human_bytes(available)} of memory available; check its "
                              "config.json (layers, hidden size, vocabulary) or use a machine with more memory")
