"""Model resolution: turn what the user typed into a loaded transformers model.

A MODEL argument is, in this order of precedence:

1. an embedded model shipped with the package (``tiny-mamba``, ``tiny-mamba2``, ``tiny-deltanet``);
2. an existing local directory, either in transformers format (``config.json`` with
   ``model_type``) or in the original mamba-ssm format (``config.json`` with ``d_model`` and
   ``n_layer``), which is converted to the transformers classes on load;
3. a short alias (``mamba-1.4b``) that names a hub repository;
4. a hub repository id (``owner/name``).

Loading is safe by default: safetensors only (mamba-ssm checkpoints are read with
``torch.load(weights_only=True)``) and no remote code unless the caller opts in.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: `models` and unknown-name errors need none of it
    import torch

    from ..base.outputs import Input

from .fits import check_config_fits
from ..base.errors import (DataError, HubUnreachableError, ModelNotFoundError, SSMProfileError, UnsupportedModelError,
                           first_line)

DEFAULT_MODEL = "tiny-mamba"
EMBEDDED_MODELS = ("tiny-mamba", "tiny-mamba2", "tiny-deltanet")


@dataclass(frozen=True)
class Alias:
    name: str
    repo: str
    architecture: str
    params: str
    note: str = ""


# Repositories checked to hold transformers-format weights (config.json with model_type,
# safetensors). The state-spaces/mamba2-* repositories hold mamba-ssm-format weights without a
# tokenizer; the AntonV conversions are the transformers-format copies of the same weights.
ALIASES: dict[str, Alias] = {
    a.name: a
    for a in [
        Alias("mamba-130m", "state-spaces/mamba-130m-hf", "mamba", "130M"),
        Alias("mamba-370m", "state-spaces/mamba-370m-hf", "mamba", "370M"),
        Alias("mamba-790m", "state-spaces/mamba-790m-hf", "mamba", "790M"),
        Alias("mamba-1.4b", "state-spaces/mamba-1.4b-hf", "mamba", "1.4B"),
        Alias("mamba-2.8b", "state-spaces/mamba-2.8b-hf", "mamba", "2.8B"),
        Alias("mamba2-130m", "AntonV/mamba2-130m-hf", "mamba2", "130M", "conversion of state-spaces/mamba2-130m"),
        Alias("mamba2-370m", "AntonV/mamba2-370m-hf", "mamba2", "370M", "conversion of state-spaces/mamba2-370m"),
        Alias("mamba2-780m", "AntonV/mamba2-780m-hf", "mamba2", "780M", "conversion of state-spaces/mamba2-780m"),
        Alias("mamba2-1.3b", "AntonV/mamba2-1.3b-hf", "mamba2", "1.3B", "conversion of state-spaces/mamba2-1.3b"),
        Alias("mamba2-2.7b", "AntonV/mamba2-2.7b-hf", "mamba2", "2.7B", "conversion of state-spaces/mamba2-2.7b"),
        Alias("falcon-mamba-7b", "tiiuae/falcon-mamba-7b", "falcon_mamba", "7B"),
        Alias("zamba2-1.2b", "Zyphra/Zamba2-1.2B", "zamba2", "1.2B", "hybrid: Mamba-2 layers and shared attention"),
    ]
}

AUTO_DEVICE = "auto"  # --device default: CUDA when available, else the CPU
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}  # --dtype name -> torch attribute


@dataclass
class ModelSource:
    """Where a model came from, in words a user recognises."""

    name: str  # what the user typed (or the default)
    kind: str  # "embedded" | "local" | "local-mamba-ssm" | "hub"
    location: str  # directory or repository id
    alias: str | None = None


@dataclass
class LoadedModel:
    """A model ready for analysis, with its tokenizer (if any) and provenance."""

    model: torch.nn.Module
    tokenizer: Any | None
    source: ModelSource
    _fingerprint: str | None = field(default=None, repr=False)
    tokenizer_path: str | None = None  # folder the tokenizer was read from ("embedded": the shipped one)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model)
        return self._fingerprint


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over parameter names, shapes, dtypes and bytes: identifies these exact weights."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        data = tensor.detach().cpu().contiguous()
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return "sha256:" + digest.hexdigest()


def embedded_dir(name: str) -> Path:
    return Path(str(resources.files("ssm_profile") / "embedded" / name))


def embedded_data(name: str) -> Path:
    """Path of an embedded text (``calibration.txt``, ``evaluation.txt``)."""
    return embedded_dir("data") / name


def model_input(name: str | None, what: str = "the model") -> Input | None:
    """A local or embedded model's folder, read as a whole, for the one output rule (None: a hub model, or a
    name that names nothing: loading it says so)."""
    from ..base.outputs import Input

    try:
        source = locate(name)
    except SSMProfileError:
        return None
    return None if source.kind.startswith("hub") else Input(Path(source.location), f"{what} folder")


def locate(name: str | None) -> ModelSource:
    """Decide what ``name`` refers to without loading anything."""
    name = name or DEFAULT_MODEL
    if name in EMBEDDED_MODELS:
        return ModelSource(name, "embedded", str(embedded_dir(name)))
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise ModelNotFoundError(
                f"'{name}' exists but is not a model directory (no config.json); "
                "pass a directory saved with save_pretrained or a mamba-ssm checkpoint folder"
            )
        config = _read_json(path / "config.json")
        kind = "local-mamba-ssm" if "d_model" in config and "n_layer" in config else "local"
        return ModelSource(name, kind, str(path.resolve()))
    if name in ALIASES:
        return ModelSource(name, "hub", ALIASES[name].repo, alias=name)
    if _looks_like_repo_id(name):
        return ModelSource(name, "hub", name)
    import difflib

    near = difflib.get_close_matches(name, [*EMBEDDED_MODELS, *ALIASES], n=1, cutoff=0.6)
    hint = f"did you mean '{near[0]}'? " if near else ""
    known = ", ".join([*EMBEDDED_MODELS, *ALIASES])
    raise ModelNotFoundError(
        f"unknown model '{name}': not a local directory, an alias or a hub id (owner/name); "
        f"{hint}known names: {known} (see `ssm-profile models`)"
    )


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def _read_json(path: Path, what: str = "model config") -> dict[str, Any]:
    from ..base.safe_read import read_user_json

    data = read_user_json(path, what, error=ModelNotFoundError)
    if not isinstance(data, dict):
        raise ModelNotFoundError(f"{what} '{path}' must hold a JSON object, not {type(data).__name__}; restore it")
    return data


def load_model(
    name: str | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    revision: str | None = None,
    with_tokenizer: bool = True,
) -> LoadedModel:
    """Resolve ``name`` and load it (see the module docstring for what ``name`` may be) onto ``device``
    (``auto``: CUDA when available, else the CPU; see :func:`resolve_device`)."""
    device = resolve_device(device)
    source = locate(name)
    torch_dtype = _parse_dtype(dtype)
    if source.kind == "hub":
        directory = _download(source, revision=revision, allow_pickle=allow_pickle)
        config = _read_json(directory / "config.json")
        if "d_model" in config and "n_layer" in config:
            source.kind = "hub-mamba-ssm"
    else:
        directory = Path(source.location)

    if source.kind.endswith("mamba-ssm"):
        from .convert import load_mamba_ssm_checkpoint

        check_config_fits(_read_json(directory / "config.json"), directory, torch_dtype)
        model = load_mamba_ssm_checkpoint(directory, dtype=torch_dtype)
    else:
        model = _load_transformers(directory, torch_dtype, trust_remote_code, allow_pickle)
    model.to(device)
    model.eval()
    _check_has_mixers(model, source)
    tokenizer, tokenizer_path = _load_tokenizer(directory, trust_remote_code) if with_tokenizer else (None, None)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, tokenizer_path=tokenizer_path)


def load_skeleton(name: str | None, *, revision: str | None = None, trust_remote_code: bool = False):
    """The model's modules built from its config alone, on the meta device: no weights are read (a hub
    model fetches config.json only), for questions its architecture answers (``profile --list-criteria``).
    A mamba-ssm checkpoint (its config needs the weights to convert) is loaded in full."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    source = locate(name)
    if source.kind.endswith("mamba-ssm"):
        return load_model(name, revision=revision, with_tokenizer=False).model
    where: str | Path = source.location
    if source.kind == "hub":
        where = _download_config(source, revision)
        if "d_model" in _read_json(Path(where) / "config.json"):  # a mamba-ssm checkpoint on the hub
            return load_model(name, revision=revision, with_tokenizer=False).model
    config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    _check_has_mixers(model, source)
    return model


def _download_config(source: ModelSource, revision: str | None) -> Path:
    """The folder holding a hub model's config.json, fetching that file alone."""
    from huggingface_hub import hf_hub_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}
    try:
        return Path(hf_hub_download(source.location, "config.json", revision=revision,
                                    local_files_only=offline)).parent
    except Exception:  # noqa: BLE001 - the same one-line errors as a full download
        return _download(source, revision, allow_pickle=False)


def use_tokenizer(loaded: LoadedModel, where: str | None, trust_remote_code: bool = False) -> LoadedModel:
    """Replace ``loaded``'s tokenizer with the one in folder ``where`` (``embedded``: the shipped one;
    None: keep the model's own); one line when it cannot be read or does not fit the model."""
    if where is None:
        return loaded
    directory = embedded_dir("tokenizer") if where == "embedded" else Path(where).expanduser()
    if not directory.is_dir():
        raise ModelNotFoundError(f"--tokenizer '{where}' is not a folder; pass a folder holding tokenizer.json "
                                 "(or tokenizer_config.json) or 'embedded'")
    tokenizer, _ = _load_tokenizer(directory, trust_remote_code, sibling=False)
    if tokenizer is None:
        raise ModelNotFoundError(f"--tokenizer '{where}' holds no tokenizer AutoTokenizer can read; pass a folder "
                                 "with tokenizer.json or 'embedded'")
    check_vocabulary(tokenizer, loaded.model)
    loaded.tokenizer = tokenizer
    loaded.tokenizer_path = "embedded" if where == "embedded" else str(directory.resolve())
    return loaded


def embedding_rows(model: torch.nn.Module) -> int | None:
    """Rows of the model's input embedding (the largest token id it can read, plus one)."""
    try:
        return int(model.get_input_embeddings().num_embeddings)
    except (AttributeError, NotImplementedError, TypeError):
        return None


def check_vocabulary(tokenizer: Any, model: torch.nn.Module) -> None:
    """One line, before any forward pass, when the tokenizer can produce ids the model cannot read."""
    rows = embedding_rows(model)
    if tokenizer is not None and rows is not None and len(tokenizer) > rows:
        raise DataError(f"the tokenizer's vocabulary ({len(tokenizer)} tokens) is larger than the model's embedding "
                        f"({rows} rows): it is not this model's tokenizer; pass --tokenizer with the model's own")


def tokenizer_info(loaded: LoadedModel) -> dict[str, Any] | None:
    """What run.json records of the tokenizer: where it came from, its class, vocabulary size and a
    SHA-256 of its tokenizer.json (when there is one)."""
    tokenizer = loaded.tokenizer
    if tokenizer is None:
        return None
    info: dict[str, Any] = {"path": loaded.tokenizer_path, "class": type(tokenizer).__name__,
                            "vocab_size": len(tokenizer)}
    path = embedded_dir("tokenizer") if loaded.tokenizer_path == "embedded" else \
        Path(loaded.tokenizer_path) if loaded.tokenizer_path else None
    if path is not None and (path / "tokenizer.json").is_file():
        info["tokenizer_json_sha256"] = hashlib.sha256((path / "tokenizer.json").read_bytes()).hexdigest()
    return info


def resolve_device(device: str | None) -> str:
    """The device to load onto: ``auto`` (or None) is ``cuda`` when torch sees a GPU, else ``cpu``;
    any other name is checked (:func:`check_device`) and returned as given."""
    import torch

    if device is None or device == AUTO_DEVICE:
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device)
    return device


def check_device(device: str) -> None:
    """Refuse, in one line, a device this machine does not have (before anything is loaded);
    ``auto`` is always accepted (it falls back to the CPU)."""
    if device == AUTO_DEVICE:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise SSMProfileError(f"unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SSMProfileError(f"--device {device}: CUDA is not available on this machine "
                                  "(no GPU or torch built without CUDA); use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise SSMProfileError(f"--device {device}: this machine has {count} CUDA device(s) "
                                  f"(cuda:0..cuda:{count - 1})")
    elif parsed.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise SSMProfileError(f"--device {device}: Apple MPS is not available on this machine; use --device cpu")
    elif parsed.type != "cpu":
        raise SSMProfileError(f"--device {device}: unsupported device type '{parsed.type}'; use cpu, cuda or mps")


def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in DTYPES:
        raise SSMProfileError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[dtype])


def _download(source: ModelSource, revision: str | None, allow_pickle: bool) -> Path:
    """Fetch (or find in the cache) the files a model needs; one clear error when impossible."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a dependency of transformers
        raise SSMProfileError("huggingface_hub is not installed; pip install huggingface_hub") from None
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]
    if allow_pickle:
        patterns.append("*.bin")
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}
    try:
        path = snapshot_download(source.location, revision=revision, allow_patterns=patterns,
                                 local_files_only=offline)
    except Exception as err:  # noqa: BLE001 - the hub client raises many types; all mean the same here
        if _is_not_found(err):
            raise ModelNotFoundError(
                f"hub repository '{source.location}' does not exist or is private; check the name "
                "(`ssm-profile models` lists aliases) or log in with `hf auth login`"
            ) from None
        how = "offline mode is on (HF_HUB_OFFLINE=1)" if offline else "the Hugging Face Hub cannot be reached"
        raise HubUnreachableError(
            f"cannot load '{source.name}' ({source.location}): {how} and it is not in the local cache; "
            "connect to the network, or download it on another machine and pass its local directory"
        ) from None
    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise ModelNotFoundError(f"hub repository '{source.location}' has no config.json; is it a model?")
    return directory


def _is_not_found(err: Exception) -> bool:
    return type(err).__name__ in {"RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError"}


def _load_transformers(directory: Path, dtype: torch.dtype | None, trust_remote_code: bool,
                       allow_pickle: bool) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    has_safetensors = any(directory.glob("*.safetensors"))
    if not has_safetensors and not allow_pickle:
        raise SSMProfileError(
            f"{directory} has no .safetensors weights; pickled weights run code when loaded, so they "
            "are refused by default; convert them to safetensors or pass --allow-pickle if you trust them"
        )
    try:
        config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise UnsupportedModelError(
                f"{directory} needs custom code from the model author; review it, then pass --trust-remote-code"
            ) from None
        raise UnsupportedModelError(f"{directory}: {str(err).splitlines()[0]}") from None
    check_config_fits(config, directory, dtype)  # before minutes of building what cannot fit
    try:
        return AutoModelForCausalLM.from_pretrained(
            directory, config=config, dtype=dtype or "auto", trust_remote_code=trust_remote_code,
            use_safetensors=has_safetensors or not allow_pickle,
        )
    except (OSError, ValueError, RuntimeError) as err:
        if "mismatched_sizes" in str(err):  # transformers' message points at a report it printed
            raise UnsupportedModelError(_shape_mismatch(directory, config)) from None
        raise UnsupportedModelError(f"cannot load {directory}: {first_line(err)}") from None
    except Exception as err:  # noqa: BLE001 - safetensors' error type lives in a compiled module
        if not is_safetensors_error(err):
            raise
        raise UnsupportedModelError(f"cannot load {directory}: its .safetensors weights are damaged "
                                    f"({first_line(err)}); download or save them again") from None


def _shape_mismatch(directory: Path, config: Any) -> str:
    """One line naming the tensors whose saved shape differs from what config.json builds."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
    differing = []
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as weights:
            for key in weights.keys():
                saved = tuple(weights.get_slice(key).get_shape())
                if key in expected and expected[key] != saved:
                    differing.append((key, saved, expected[key]))
    what = "its weights do not match its config.json"
    if differing:
        key, saved, wanted = differing[0]
        what += (f": {len(differing)} tensors differ in shape, e.g. {key} is {list(saved)} in the weights but "
                 f"{list(wanted)} by the config")
    return f"cannot load {directory}: {what}; restore the config.json saved with these weights"


def is_safetensors_error(err: BaseException) -> bool:
    """A damaged or truncated .safetensors file (safetensors raises its own exception type)."""
    return type(err).__name__ == "SafetensorError"


def _load_tokenizer(directory: Path, trust_remote_code: bool, sibling: bool = True) -> tuple[Any | None, str | None]:
    """The tokenizer in ``directory`` (or, for embedded models, the shared sibling folder) and where it is."""
    if not any((directory / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        shared = directory.parent / "tokenizer"  # embedded models share one tokenizer
        if not sibling or not (shared / "tokenizer.json").exists():
            return None, None
        directory = shared
    from transformers import AutoTokenizer

    for name in ("tokenizer_config.json", "tokenizer.json"):  # a list there was an AttributeError deep in transformers
        if (directory / name).is_file():
            _read_json(directory / name, "tokenizer file")
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None, None
    except (AttributeError, TypeError, KeyError) as err:
        raise ModelNotFoundError(f"the tokenizer in '{directory}' is damaged ({type(err).__name__}: "
                                 f"{first_line(err)}); restore its tokenizer files") from None
    where = "embedded" if directory.resolve() == embedded_dir("tokenizer").resolve() else str(directory.resolve())
    return tokenizer, where


def _check_has_mixers(model: torch.nn.Module, source: ModelSource) -> None:
    from .arch import find_mixers, other_recurrent_layers

    if find_mixers(model):
        return
    others = other_recurrent_layers(model)
    if others:
        found = "; ".join(f"{len(layers)} {kind} (layer{'s' if len(layers) > 1 else ''} {_layer_list(layers)})"
                          for kind, layers in others.items())
        raise UnsupportedModelError(
            f"'{source.name}' loaded as {type(model).__name__}; its recurrent layers are {found}: that family is "
            "not supported yet (ssm-profile profiles Mamba and Mamba-2 mixers, in Mamba, Mamba-2, FalconMamba, "
            "Jamba, Zamba, Zamba2, Bamba, NemotronH, GraniteMoeHybrid and FalconH1 models, the Gated DeltaNet layers "
            "of Qwen3-Next and Qwen3.5, and Kimi Linear's delta attention)")
    raise UnsupportedModelError(f"'{source.name}' loaded as {type(model).__name__} but has no Mamba/Mamba-2 mixer "
                                "(no module with an A_log parameter); ssm-profile analyses state-space models only")


def _layer_list(layers: list[int], shown: int = 6) -> str:
    text = ", ".join(str(i) for i in layers[:shown])
    return text + (f", … ({len(layers)} in all)" if len(layers) > shown else "")


def list_models() -> list[dict[str, str]]:
    """Rows for `ssm-profile models`: embedded models first, then hub aliases."""
    rows = []
    for name in EMBEDDED_MODELS:
        card = embedded_dir(name) / "metrics.json"
        info = _read_json(card) if card.exists() else {}
        rows.append({"name": name, "source": "embedded (offline)", "architecture": info.get("architecture", "?"),
                     "params": f"{info.get('parameters', 0) / 1e6:.2f}M", "note": "default" if name == DEFAULT_MODEL else ""})
    for alias in ALIASES.values():
        rows.append({"name": alias.name, "source": alias.repo, "architecture": alias.architecture,
                     "params": alias.params, "note": alias.note})
    return rows
