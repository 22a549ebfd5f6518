"""`ssm-profile env`: versions and hardware, to paste into a bug report."""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("env", help="print versions and hardware for bug reports", description=__doc__)
    p.set_defaults(handler=run)


PACKAGES = ("torch", "transformers", "safetensors", "tokenizers", "numpy", "scipy", "pandas", "numba",
            "captum", "lm_eval", "accelerate", "textual", "textual_plotext", "rich", "mamba_ssm", "causal_conv1d")


def collect() -> dict[str, str]:
    from .. import __version__
    from ..base.runtime import quiet_libraries

    quiet_libraries()
    info = {"ssm-profile": __version__, "python": platform.python_version(),
            "platform": platform.platform(), "cpu cores": str(os.cpu_count())}
    for name in PACKAGES:  # versions from the installed metadata: importing captum or lm_eval costs seconds
        info[name] = _version(name)
    try:
        import torch

        info["torch threads"] = str(torch.get_num_threads())
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available"
        from ..kernels import fastlinear
        from ..mixers import describe, self_test

        info["fast linear (float32 inference)"] = fastlinear.backend()
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:  # found by running each family once, not from the settings
            info[f"SSM mixers on {device}"] = describe(self_test(device), calls=False)
    except ImportError:  # pragma: no cover
        pass
    # WORLD_SIZE/RANK/LOCAL_RANK: launched by torchrun or accelerate launch (ssm_profile.profiling.distributed)
    for var in ("HF_HOME", "HF_HUB_OFFLINE", "SSM_PROFILE_FAST_SCAN", "WORLD_SIZE", "RANK", "LOCAL_RANK",
                "SSM_PROFILE_DIST_TIMEOUT"):
        if var in os.environ:
            info[var] = os.environ[var]
    return info


def _version(module: str) -> str:
    from importlib import metadata

    for distribution in (module, module.replace("_", "-")):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "installed" if importlib.util.find_spec(module) is not None else "not installed"


def run(args: argparse.Namespace) -> int:
    for key, value in collect().items():
        print(f"- {key}: {value}")
    return 0
