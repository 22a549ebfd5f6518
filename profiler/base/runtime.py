"""Process set-up shared by every front-end (CLI, TUI, bench): torch threads and quiet libraries.

Torch-free at import time, so a front-end can import it before it decides to load torch.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

AVAILABLE_ENV = "SSM_PROFILE_AVAILABLE_MEMORY"  # bytes (or 8GiB, 512MiB) said to be available: tests, shared machines
FAST_KERNELS_ENV = "SSM_PROFILE_FAST_SCAN"  # 0/false/off/no: every fast CPU kernel off


def fast_kernels_enabled() -> bool:
    """False when ``SSM_PROFILE_FAST_SCAN`` switches the fast kernels off (read at call time)."""
    return os.environ.get(FAST_KERNELS_ENV, "1").strip().lower() not in {"0", "false", "off", "no"}


# Tiny models run far faster on one thread: thread hand-offs cost more than their matrix products.
SMALL_MODEL = 20_000_000


def check_threads(threads: int | None) -> None:
    """``--threads`` between 1 and this machine's CPU cores (more only slows torch down)."""
    if threads is None:
        return
    cores = os.cpu_count() or 1
    if not 1 <= threads <= cores:
        from .errors import SSMProfileError

        raise SSMProfileError(f"--threads must be between 1 and {cores} (this machine's CPU cores), got {threads}")


def configure_threads(threads: int | None, model=None) -> None:
    """Set torch's thread count: ``threads`` (checked), else 1 for small models, else torch's choice."""
    check_threads(threads)
    import torch

    if threads:
        torch.set_num_threads(threads)
    elif model is not None and sum(p.numel() for p in model.parameters()) < SMALL_MODEL:
        torch.set_num_threads(1)


_FORMAT_WARNING = warnings.formatwarning


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """The project's own warnings (an owned mixer forward switched off, ...) as one line."""
    if category.__module__.startswith("ssm_profile"):
        return f"ssm-profile: warning: {message}\n"
    return _FORMAT_WARNING(message, category, filename, lineno, line)


def quiet_libraries() -> None:
    """Keep library chatter (kernel fallbacks, deprecations) out of the tool's output; the tool's own
    warnings (e.g. a mixer that runs transformers' slower forward, :mod:`ssm_profile.mixers`) stay,
    one line each."""
    warnings.formatwarning = _one_line_warning
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("transformers", "huggingface_hub", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # "Loading weights" bars would break one-line errors
    except ImportError:  # pragma: no cover
        pass


def parse_bytes(text: str) -> int:
    """'1234', '1.5GiB', '512 MiB', '2G' -> bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(i?B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        from .errors import SSMProfileError

        raise SSMProfileError(f"{AVAILABLE_ENV}={text!r} is not an amount of memory; use e.g. 8GiB or 8589934592")
    power = " KMGT".index(match.group(2).upper() or " ")
    return int(float(match.group(1)) * 1024 ** power)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (None when it cannot be told);
    ``SSM_PROFILE_AVAILABLE_MEMORY`` overrides it."""
    if os.environ.get(AVAILABLE_ENV):
        return parse_bytes(os.environ[AVAILABLE_ENV])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a dependency of the test environment only
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
