"""Calibration, search and verification data: texts in, token windows out, never overlapping.

Three data roles, disjoint by construction:

* **calibration** (``nsamples`` windows): the statistics the saliency scores are computed from;
* **search** (``eval_samples`` windows, ``Dataset.evaluation``): the sensitivity sweep, the
  planner's measurements and its choice of plan;
* **verification** (``verify_samples`` windows, ``Dataset.verification``): never seen by the
  profile or by the plan's selection; the plan's promise is checked on it after selection, and
  ``validate`` reports it by default.

Sources (``--calibration`` / ``--evaluation``):

* nothing: the embedded calibration and evaluation texts (different books of the KJV Bible);
* a local ``.txt`` file (plain text) or ``.jsonl`` file (one JSON object per line with a
  ``text`` field);
* ``hf:NAME[:CONFIG][:SPLIT]``: a dataset from the Hugging Face hub (needs the network or a
  cached copy and the ``datasets`` package).

Calibration windows are drawn at seeded random offsets; evaluation windows are consecutive and
non-overlapping so every evaluation token is scored once. When calibration and evaluation come
from the same source, the text is split in two (first 80% calibration, last 20% evaluation)
so that they cannot overlap.

The evaluation text (embedded, a user's file, or the last 20% of a single source) is cut into
consecutive windows; verification takes the last ``verify_samples`` of them (a held-out tail, the
same for every seed) and search ``eval_samples`` of the rest (the *pool*). On a short text
verification takes at most half the windows and search at most the rest, so the two never share a
window (:func:`split_windows`). Which pool windows search takes depends on ``seed``
(:func:`search_indices`): seed 0 takes the first ones (what every run took before seeds resampled
them, so earlier figures reproduce), any other seed a seeded random draw, so that a profile run
again with another seed is a replication on other search windows, not only other calibration
windows. The run record lists the windows of each role (:meth:`Dataset.describe`).
"""

from __future__ import annotations

import json
import re
import math
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import torch

from ..base.errors import DataError
from ..mixers.choice import Kernels, active, installed, model_device
from ..base.safe_read import DATA_LIMIT, read_user_text

SPLIT_FRACTION = 0.8
DEFAULT_VERIFY_SAMPLES = 32  # verification windows: more than the search's 16, for a tighter interval


@dataclass
class DataSpec:
    calibration: str | None = None  # None = embedded
    evaluation: str | None = None
    nsamples: int = 32  # calibration windows
    eval_samples: int = 16  # search windows (the sweep and the plan's selection)
    seqlen: int = 256
    seed: int = 0
    verify_samples: int = DEFAULT_VERIFY_SAMPLES  # verification windows (held-out tail of the evaluation text)
    # Pool indices of the search windows, when given (runs from before seeds drew them took the first
    # ones); None: drawn by ``seed`` (:func:`search_indices`).
    search_windows: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("nsamples", "eval_samples", "seqlen", "verify_samples"):
            if int(getattr(self, name)) < 1:
                raise DataError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")


@dataclass
class Dataset:
    """Tokenised calibration, search (``evaluation``) and verification windows with their provenance."""

    calibration: torch.Tensor  # (nsamples, seqlen)
    evaluation: torch.Tensor  # (eval_samples, seqlen): the search windows
    spec: DataSpec
    sources: dict[str, str] = field(default_factory=dict)
    verification: torch.Tensor | None = None  # (verify_samples, seqlen): held out from profile and plan selection
    # Which windows each role took: "calibration" token offsets into the calibration text; "search"
    # and "verification" window indices into the evaluation text (window i = tokens i*seqlen ...).
    windows: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was not read of a text past TEXT_TOKEN_LIMIT

    def digests(self) -> dict[str, str]:
        """SHA-256 of each role's token windows, what a resumed run must measure again: a text edited in place
        shows here (an edit that changes none of its windows changes nothing the run measures)."""
        roles = {"calibration": self.calibration, "evaluation": self.evaluation, "verification": self.verification}
        return {role: windows_digest(windows) for role, windows in roles.items() if windows is not None}

    def describe(self) -> dict[str, Any]:
        out = {"calibration": self.sources.get("calibration"), "evaluation": self.sources.get("evaluation"),
               "nsamples": int(self.calibration.shape[0]), "eval_samples": int(self.evaluation.shape[0]),
               "seqlen": int(self.evaluation.shape[1]), "seed": self.spec.seed,
               "calibration_tokens": int(self.calibration.numel()), "evaluation_tokens": int(self.evaluation.numel())}
        if self.verification is not None:
            out.update(verification=self.sources.get("verification"),
                       verify_samples=int(self.verification.shape[0]),
                       verification_tokens=int(self.verification.numel()),
                       roles={"calibration": "saliency scores", "evaluation": "search: sweep and plan selection",
                              "verification": "held out: the plan's promise, checked after selection"})
        if self.windows:
            out["windows"] = {role: list(v) for role, v in self.windows.items()}
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def read_text(source: str) -> str:
    """Read a text source (see the module docstring) into one string."""
    if source.startswith("hf:"):
        return _read_hub_dataset(source)
    path = Path(source).expanduser()
    hint = "pass a .txt or .jsonl file or hf:NAME[:CONFIG][:SPLIT]"
    if not path.exists():
        raise DataError(f"data file '{source}' does not exist; {hint}")
    text = read_user_text(path, "data file", DATA_LIMIT, DataError)
    if path.suffix == ".jsonl":
        return _parse_jsonl(path, text)
    if not text.strip():
        raise DataError(f"data file '{source}' is empty")
    return text


def _parse_jsonl(path: Path, text: str) -> str:
    texts = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: not valid JSON ({err.msg}); each line must be an object "
                            'like {"text": "..."}') from None
        except RecursionError:
            raise DataError(f"{path}:{number}: nested too deeply; each line must be an object like "
                            '{"text": "..."}') from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f'{path}:{number}: each line must be a JSON object with a string "text" field')
        texts.append(record["text"])
    if not texts:
        raise DataError(f"{path} holds no records")
    return "\n\n".join(texts)


def _read_hub_dataset(source: str) -> str:
    parts = source[3:].split(":")
    name, config = parts[0], parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 else "train"
    try:
        import datasets
    except ImportError:
        raise DataError("hub datasets need the `datasets` package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # noqa: BLE001 - datasets raises many types for the same user problem
        raise DataError(f"cannot load dataset '{name}' ({type(err).__name__}); without the network use a local "
                        ".txt or .jsonl file instead") from None
    column = "text" if "text" in ds.column_names else ds.column_names[0]
    return "\n\n".join(str(t) for t in ds[column])


def _embedded(name: str) -> str:
    from ..model.resolve import embedded_data

    return embedded_data(name).read_text(encoding="utf-8")


def load_dataset(tokenizer: Any, spec: DataSpec | None = None) -> Dataset:
    """Tokenise the calibration and evaluation sources of ``spec`` into windows."""
    spec = spec or DataSpec()
    if tokenizer is None:
        raise DataError("this model has no tokenizer; save one beside the weights (tokenizer.json) "
                        "or pass --tokenizer PATH|embedded")
    calib_text, eval_text, sources = role_texts(spec)
    notes: list[str] = []
    calib_ids = _tokenize(tokenizer, calib_text, what=f"the calibration text ({sources['calibration']})", notes=notes)
    eval_ids = _tokenize(tokenizer, eval_text, what=f"the evaluation text ({sources['evaluation']})", notes=notes)
    windows = consecutive_windows(eval_ids, len(eval_ids) // max(1, spec.seqlen), spec.seqlen, "evaluation")
    search_idx, verify_idx = role_indices(windows.shape[0], spec)
    sources["verification"] = f"{sources['evaluation']} [last {len(verify_idx)} windows, held out]"
    offsets = sample_offsets(calib_ids, spec.nsamples, spec.seqlen, spec.seed, "calibration")
    return Dataset(
        calibration=torch.stack([calib_ids[s: s + spec.seqlen] for s in offsets]),
        evaluation=windows[search_idx].clone(), verification=windows[verify_idx].clone(), spec=spec, sources=sources,
        windows={"calibration": offsets, "search": search_idx, "verification": verify_idx}, notes=notes,
    )


def role_indices(available: int, spec: DataSpec) -> tuple[list[int], list[int]]:
    """Indices of the search and verification windows among ``available`` consecutive evaluation
    windows: verification the held-out tail, search ``spec``'s draw from the windows before it."""
    if available < 2:
        raise DataError(f"the evaluation text holds {available} window(s) of --seqlen {spec.seqlen}: fewer than two "
                        "(one to search, one to verify); give more text or a shorter --seqlen")
    held_out = min(spec.verify_samples, available // 2)
    pool = available - held_out
    if spec.search_windows is not None:
        search = [i for i in spec.search_windows if 0 <= i < pool]
    else:
        search = search_indices(pool, spec.eval_samples, spec.seed)
    return search, list(range(pool, available))


def search_indices(pool: int, count: int, seed: int) -> list[int]:
    """``count`` of the ``pool`` windows before the held-out tail, in text order: seed 0 the first
    ones (as every run before seeds drew them), another seed a seeded random draw without replacement."""
    count = min(count, pool)
    if seed == 0:
        return list(range(count))
    gen = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(pool, generator=gen)[:count].tolist())


def role_texts(spec: DataSpec) -> tuple[str, str, dict[str, str]]:
    """The calibration text, the evaluation text (search + verification) and their descriptions."""
    if spec.calibration is None and spec.evaluation is None:
        calib_text, eval_text = _embedded("calibration.txt"), _embedded("evaluation.txt")
        sources = {"calibration": "embedded:calibration.txt", "evaluation": "embedded:evaluation.txt"}
    elif spec.calibration is not None and spec.evaluation is not None and spec.calibration != spec.evaluation:
        calib_text, eval_text = read_text(spec.calibration), read_text(spec.evaluation)
        if calib_text.strip() == eval_text.strip():
            raise DataError("calibration and evaluation texts are identical; pass different files")
        sources = {"calibration": spec.calibration, "evaluation": spec.evaluation}
    else:
        source = spec.calibration or spec.evaluation
        text = read_text(source)
        cut = int(len(text) * SPLIT_FRACTION)
        calib_text, eval_text = text[:cut], text[cut:]
        sources = {"calibration": f"{source} [first 80%]", "evaluation": f"{source} [last 20%]"}
    return calib_text, eval_text, sources


def calibration_windows(tokenizer: Any, spec: DataSpec) -> tuple[torch.Tensor, str]:
    """Every consecutive ``spec.seqlen`` window of the whole calibration text (not only the
    ``nsamples`` drawn for statistics) and its description: what recovery trains on by default.
    It never reaches the evaluation text, so never a search or verification window."""
    calib_text, _, sources = role_texts(spec)
    ids = _tokenize(tokenizer, calib_text)
    return consecutive_windows(ids, len(ids) // spec.seqlen, spec.seqlen, "calibration"), sources["calibration"]


def text_windows(tokenizer: Any, source: str, count: int, seqlen: int) -> torch.Tensor:
    """Up to ``count`` consecutive windows of a whole text source (``validate --evaluation``: another
    domain, which no plan was chosen on)."""
    if tokenizer is None:
        raise DataError("this model has no tokenizer; pass --tokenizer PATH|embedded")
    return consecutive_windows(_tokenize(tokenizer, read_text(source)), count, seqlen, f"evaluation text '{source}'")


def domain_windows(tokenizer: Any, source: str, search: int, verify: int, seqlen: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """A text the promise must also hold on (``plan --also-on``): certifying windows from its start,
    held-out windows from its end (:func:`split_windows`), at least :data:`MIN_DOMAIN_WINDOWS` of each:
    a bound from one window has no spread to widen it, and one held-out window checks nothing."""
    if tokenizer is None:
        raise DataError("this model has no tokenizer; pass --tokenizer PATH|embedded")
    try:
        ids = _tokenize(tokenizer, read_text(source), what=f"text '{source}'")
    except DataError as err:
        raise DataError(f"--also-on: {err}") from None
    what = f"--also-on text '{source}'"
    certify, check = split_windows(ids, search, verify, seqlen, what=what)
    if min(certify.shape[0], check.shape[0]) < MIN_DOMAIN_WINDOWS:
        need = 2 * MIN_DOMAIN_WINDOWS
        raise DataError(f"{what} holds {len(ids) // seqlen} window(s) of --seqlen {seqlen}: too few to certify on "
                        f"{MIN_DOMAIN_WINDOWS} and check on {MIN_DOMAIN_WINDOWS}; give a longer text (at least "
                        f"{need * seqlen:,} tokens)")
    return certify, check


MIN_DOMAIN_WINDOWS = 4  # of each role, for an --also-on text


def windows_digest(windows: torch.Tensor) -> str:
    """``sha256:...`` of a set of token windows (their ids' bytes): what a plan's ``--also-on``
    text held out, so ``validate`` can tell that it measures the same windows again."""
    import hashlib

    return "sha256:" + hashlib.sha256(windows.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def split_windows(ids: torch.Tensor, search: int, verify: int, seqlen: int, what: str = "evaluation text"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Search windows from the start of the evaluation text, verification windows from its end.

    Verification takes ``min(verify, n // 2)`` of the ``n`` available windows and search at most the
    rest, so they never overlap; a text of fewer than two windows cannot hold both roles."""
    n = len(ids) // max(1, seqlen)
    if n < 2:
        raise DataError(f"{what} has {len(ids)} tokens: fewer than two windows of --seqlen {seqlen} "
                        "(one to search, one to verify); give more text or a shorter --seqlen")
    windows = consecutive_windows(ids, n, seqlen, what)
    search_idx, verify_idx = role_indices(n, DataSpec(eval_samples=search, verify_samples=verify, seqlen=seqlen))
    return windows[search_idx].clone(), windows[verify_idx].clone()


# A text longer than this is tokenised in pieces cut at whitespace, and only up to TEXT_TOKEN_LIMIT tokens
# (far more than any window count needs): one call on a 60 MB text took 5.8 GB and aborted, and a 19 MB
# record hung. Shorter texts are tokenised whole, exactly as before.
CHUNK_CHARS = 1 << 20
PIECE_CHARS = 1 << 16
TEXT_TOKEN_LIMIT = 1_000_000


def _tokenize(tokenizer: Any, text: str, limit: int | None = None, what: str = "a text",
              notes: list[str] | None = None) -> torch.Tensor:
    """The text's token ids, at most ``limit`` (TEXT_TOKEN_LIMIT); a text cut there adds one line to
    ``notes`` saying how much was read and that the rest was not (it was cut silently before)."""
    limit = TEXT_TOKEN_LIMIT if limit is None else limit  # read at call time: a test can lower the cap
    if len(text) <= CHUNK_CHARS:
        return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    pieces, count, start, cut_short = [], 0, 0, False
    while start < len(text) and count < limit:
        end = _cut(text, start)
        ids = torch.tensor(tokenizer(text[start:end], add_special_tokens=False)["input_ids"], dtype=torch.long)
        pieces.append(ids[: limit - count])
        cut_short = len(pieces[-1]) < len(ids)
        count += len(pieces[-1])
        # a piece cut short was read in part: about its share of characters
        start = start + (end - start) * len(pieces[-1]) // max(1, len(ids)) if cut_short else end
    if (cut_short or start < len(text)) and notes is not None:
        notes.append(f"{what} was read up to {count:,} tokens, the cap (about its first {start:,} of "
                     f"{len(text):,} characters); the rest was not read")
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


def _cut(text: str, start: int) -> int:
    """The end of the piece from ``start``: before the last space within PIECE_CHARS characters (a word
    is never split), or a hard cut where a piece has none."""
    end = min(len(text), start + PIECE_CHARS)
    if end == len(text):
        return end
    space = text.rfind(" ", start + 1, end)  # the next piece starts with " word", as the whole text has it
    return space if space > start else end


def sample_windows(ids: torch.Tensor, count: int, seqlen: int, seed: int, what: str) -> torch.Tensor:
    """``count`` windows at seeded random offsets (windows may overlap each other)."""
    return torch.stack([ids[s : s + seqlen] for s in sample_offsets(ids, count, seqlen, seed, what)])


def sample_offsets(ids: torch.Tensor, count: int, seqlen: int, seed: int, what: str) -> list[int]:
    """The token offsets of :func:`sample_windows`' windows."""
    if len(ids) < seqlen + 1:
        raise DataError(f"{what} text has {len(ids)} tokens, fewer than --seqlen {seqlen}; give more text "
                        "or a shorter --seqlen")
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, len(ids) - seqlen, (count,), generator=gen).tolist()


def consecutive_windows(ids: torch.Tensor, count: int, seqlen: int, what: str) -> torch.Tensor:
    """Up to ``count`` non-overlapping windows from the start of the text."""
    available = len(ids) // seqlen
    if available < 1:
        raise DataError(f"{what} text has {len(ids)} tokens, fewer than --seqlen {seqlen}")
    n = min(count, available)
    return ids[: n * seqlen].view(n, seqlen).clone()


# The LM head runs on this many rows at a time: 128 rows x 4,096 (embedded vocabulary) float32
# logits = 2 MB stay in cache; 50k-token vocabularies (mamba-130m ...) take 26 MB per block
# instead of gigabytes for a whole batch. Measured on the embedded models (8 x 256 rows per
# batch, one core): 13 ms per batch for the head and loss vs 37 ms via full logits.
HEAD_ROWS = 128
# Causal LMs whose logits are exactly ``lm_head(backbone(ids).last_hidden_state)``.
BLOCKED_HEAD_CLASSES = ("MambaForCausalLM", "Mamba2ForCausalLM", "FalconMambaForCausalLM")


@torch.no_grad()
def batch_losses(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 8,
                 kernels: Kernels | None = None) -> torch.Tensor:
    """Mean next-token loss of each window (shape ``(n_windows,)``): the unit of the bootstrap.

    ``kernels``: the CPU kernels to run (installed on ``model`` for the call); None runs those
    installed on it (:func:`ssm_profile.mixers.choice.active`). With ``kernels.blocked_head`` the Mamba
    families' head and loss run in row blocks (:func:`head_window_losses`); otherwise, and for other
    models, the loss comes from ``model(...).logits``."""
    check_token_ids(model, windows)
    choice = kernels or active(model)
    losses = []
    device = model_device(model)
    with installed(model, choice):
        blocked = has_blocked_head(model, choice)
        for batch in windows.split(batch_size):
            ids = batch.to(device)
            if blocked:
                hidden = model.backbone(input_ids=ids, use_cache=False).last_hidden_state
                losses.append(head_window_losses(model.lm_head, hidden, ids))
                continue
            losses.append(logits_window_losses(model(input_ids=ids, use_cache=False).logits, ids))
    return torch.cat(losses).double()


def paired_increase(dense: Any, pruned: Any, seed: int = 0, resamples: int = 2000) -> dict[str, Any]:
    """Relative perplexity increase of ``pruned`` over ``dense`` (per-window losses of the same windows)
    with a paired bootstrap 95% interval: windows are resampled together for both models."""
    import numpy as np

    d, p = np.asarray(dense, dtype=np.float64), np.asarray(pruned, dtype=np.float64)
    delta = float(p.mean() - d.mean())
    idx = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    boots = np.expm1(np.minimum(p[idx].mean(axis=1) - d[idx].mean(axis=1), 700.0))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"dense_loss": float(d.mean()), "loss": float(p.mean()), "delta_loss": delta,
            "rel_ppl_increase": math.expm1(min(delta, 700.0)), "interval": [float(lo), float(hi)], "windows": len(d)}


def check_token_ids(model: torch.nn.Module, windows: torch.Tensor) -> None:
    """One line, before any forward pass, when a token id is beyond the model's embedding rows."""
    from ..model.resolve import embedding_rows

    rows = embedding_rows(model)
    if rows is not None and windows.numel() and int(windows.max()) >= rows:
        raise DataError(f"token id {int(windows.max())} is beyond the model's {rows} embedding rows: the tokenizer "
                        "does not belong to this model; pass --tokenizer with the model's own tokenizer")


def logits_window_losses(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss per window from whole-batch logits ``(windows, seqlen, vocab)``."""
    logits = logits.float()  # bf16/fp16 models: log-softmax and loss in float32
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
    )
    return loss.view(ids.shape[0], -1).mean(dim=1).cpu()


def has_blocked_head(model: torch.nn.Module, kernels: Kernels | None = None) -> bool:
    """``kernels`` (None: those installed on ``model``) take the blocked head, and the model's logits
    are a plain bias-free ``nn.Linear`` (no hooks) of its backbone's output."""
    head = getattr(model, "lm_head", None)
    return ((kernels or active(model)).blocked_head and type(model).__name__ in BLOCKED_HEAD_CLASSES
            and hasattr(model, "backbone") and isinstance(head, torch.nn.Linear)
            and type(head).forward is torch.nn.Linear.forward
            and head.bias is None and not head._forward_hooks and not head._forward_pre_hooks)


def head_window_losses(head: torch.nn.Module, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss per window from the final (normed) hidden states ``(windows, seqlen, d)``.

    Runs ``head`` and ``log_softmax`` on ``HEAD_ROWS`` rows at a time, gathers each row's
    next-token log-probability and averages the ``seqlen - 1`` scored tokens of each window.
    Deterministic given its inputs: :class:`ssm_profile.profiling.incremental.IncrementalEvaluator` calls it
    too, which is what makes its losses equal ``batch_losses`` bit for bit."""
    windows, length = ids.shape
    rows = hidden.to(head.weight.dtype).reshape(windows * length, -1)
    # next token of every row; a window's last row has none and reads its first id (dropped below)
    next_ids = torch.cat([ids[:, 1:], ids[:, :1]], dim=1).reshape(-1, 1)
    logp = torch.empty(min(HEAD_ROWS, rows.shape[0]), head.weight.shape[0], dtype=torch.float32, device=rows.device)
    token = torch.empty(rows.shape[0], 1, dtype=torch.float32, device=rows.device)
    for start in range(0, rows.shape[0], HEAD_ROWS):
        logits = head(rows[start:start + HEAD_ROWS]).float()  # bf16/fp16 models: the loss in float32
        block = torch.log_softmax(logits, dim=-1, out=logp[:logits.shape[0]])
        torch.gather(block, -1, next_ids[start:start + HEAD_ROWS], out=token[start:start + logits.shape[0]])
    per_token = token.view(windows, length)[:, :-1].neg().contiguous()
    return per_token.view(windows, -1).mean(dim=1).cpu()


def data_spec_from_meta(data: Mapping[str, Any]) -> DataSpec:
    """The :class:`DataSpec` that reproduces a run's (or a plan's) data windows.

    Accepts both a run's ``run.json`` ``data`` (source descriptions such as
    ``embedded:calibration.txt`` or ``file.txt [first 80%]``) and a plan's ``data`` (the DataSpec
    values themselves, ``null`` = embedded). One source named for both calibration and evaluation
    is the run's single source split 80/20 (:mod:`ssm_profile.calibration.data`), so it is named once.
    Runs and plans from before the verification split have no ``verify_samples``: the default
    held-out tail, which never overlaps their search windows (:func:`ssm_profile.calibration.data.split_windows`).
    """

    def source(value: Any) -> str | None:
        if value is None or str(value).startswith("embedded:"):
            return None
        return re.sub(r" \[(first 80|last 20)%\]$", "", str(value))

    cal, ev = source(data.get("calibration")), source(data.get("evaluation"))
    if cal is not None and cal == ev:
        ev = None  # one source split 80/20, as the run did
    seed, eval_samples = int(data.get("seed", 0)), int(data["eval_samples"])
    # A run record (it counts tokens; a plan's data does not) that lists no windows is older than
    # seeded search windows: it searched the first ones, whatever its seed.
    legacy = "calibration_tokens" in data and "windows" not in data and seed != 0
    return DataSpec(calibration=cal, evaluation=ev, nsamples=int(data["nsamples"]),
                    eval_samples=eval_samples, seqlen=int(data["seqlen"]), seed=seed,
                    verify_samples=int(data.get("verify_samples") or DEFAULT_VERIFY_SAMPLES),
                    search_windows=tuple(range(eval_samples)) if legacy else None)
