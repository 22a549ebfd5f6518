"""Train the embedded default models that ship with ssm-profile.

Reproducible (seeded) and offline. The corpus is the King James Bible (public domain) from
Debian's ``bible-kjv`` package (``apt-get install bible-kjv``), split by *book* so that the
training, calibration and evaluation texts never share a verse:

* evaluation:  Ecclesiastes, Song of Solomon, Hebrews, James
* calibration: Ruth, Esther, Romans, 1 Peter
* training:    every other book

Steps (each can be run alone with ``--stage``):

1. ``data``:      dump the corpus, split it, train a 4,096-token byte-level BPE tokenizer.
2. ``mamba`` / ``mamba2`` / ``deltanet``: train ``tiny-mamba`` (Mamba-1), ``tiny-mamba2``
   (Mamba-2) or ``tiny-deltanet`` (a Qwen3.5-layout hybrid, ``qwen3_5_text``: three Gated
   DeltaNet ``linear_attention`` layers and one gated ``full_attention`` layer) and write the
   weights (safetensors), a model card and ``metrics.json`` beside them, with the held-out
   perplexity of the model and of an interpolated bigram model fitted on the same training text.

All three share the tokenizer; each was trained with sequence length 256, lr 3e-3, seed 0 and
one CPU thread (``--threads 1``), and its ``metrics.json`` records the run. The shipped models
come from these commands::

    python examples/train_embedded.py --stage data
    python examples/train_embedded.py --stage mamba    --steps 1400 --batch 8
    python examples/train_embedded.py --stage mamba2   --steps 1500
    python examples/train_embedded.py --stage deltanet --steps 2000

``data`` needs the ``bible`` command; the other stages read ``build/train/train.txt`` (``--work``)
that it writes, and the tokenizer and held-out texts under ``profiler/embedded``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "profiler" / "embedded"
EVAL_BOOKS = {"Eccl", "SSol", "Heb", "Jas"}
CALIB_BOOKS = {"Ruth", "Est", "Rom", "1Pet"}
VOCAB_SIZE = 4096
SEQ_LEN = 256
VERSE_RE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")

ARCHS = {
    # Mamba-1: x_proj and dt_proj exist; E = 256, N = 16, R = 8.
    "mamba": dict(
        name="tiny-mamba",
        config=dict(
            model_type="mamba", hidden_size=128, num_hidden_layers=4, state_size=16,
            expand=2, conv_kernel=4, time_step_rank=8, use_mambapy=True,
        ),
    ),
    # Mamba-2: 8 heads of 32 channels, one group, N = 32.
    "mamba2": dict(
        name="tiny-mamba2",
        config=dict(
            model_type="mamba2", hidden_size=128, num_hidden_layers=4, state_size=32,
            expand=2, head_dim=32, num_heads=8, n_groups=1, conv_kernel=4, chunk_size=64,
        ),
    ),
    # Qwen3.5 text layout (Qwen3_5ForCausalLM): three Gated DeltaNet layers (2 key heads of 32,
    # 4 value heads of 32, state 4 x 32 x 32 per layer) and one gated full-attention layer
    # (4 query heads, 2 key/value heads of 32, rotary on a quarter of each head as in Qwen3.5);
    # a SwiGLU MLP of 128 after every mixer.
    "deltanet": dict(
        name="tiny-deltanet",
        config=dict(
            model_type="qwen3_5_text", hidden_size=128, num_hidden_layers=4, intermediate_size=128,
            layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
            linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=32,
            linear_value_head_dim=32, linear_conv_kernel_dim=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        ),
    ),
}


def dump_corpus() -> dict[str, str]:
    """Return the train / calibration / evaluation texts, one verse per line."""
    raw = subprocess.run(
        ["bible", "-f", "gen1:1-rev22:21"], capture_output=True, text=True, check=True
    ).stdout
    parts: dict[str, list[str]] = {"train": [], "calibration": [], "evaluation": []}
    for line in raw.splitlines():
        match = VERSE_RE.match(line)
        if not match:
            continue
        book, text = match.group(1), match.group(4).strip()
        split = "evaluation" if book in EVAL_BOOKS else "calibration" if book in CALIB_BOOKS else "train"
        parts[split].append(text)
    return {k: "\n".join(v) + "\n" for k, v in parts.items()}


def stage_data(work: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = dump_corpus()
    work.mkdir(parents=True, exist_ok=True)
    (work / "train.txt").write_text(texts["train"])
    data_dir = EMBEDDED / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "calibration.txt").write_text(texts["calibration"])
    (data_dir / "evaluation.txt").write_text(texts["evaluation"])

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts["train"].splitlines(keepends=True), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|pad|>",
    )
    fast.save_pretrained(EMBEDDED / "tokenizer")
    sizes = {k: len(v) for k, v in texts.items()}
    print(f"corpus bytes: {sizes}; tokenizer saved to {EMBEDDED / 'tokenizer'}")


def load_tokens(work: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(EMBEDDED / "tokenizer")
    paths = {
        "train": work / "train.txt",
        "calibration": EMBEDDED / "data" / "calibration.txt",
        "evaluation": EMBEDDED / "data" / "evaluation.txt",
    }
    return {k: torch.tensor(tok(p.read_text())["input_ids"]) for k, p in paths.items()}


def bigram_nll(train: torch.Tensor, tune: torch.Tensor, test: torch.Tensor, vocab: int) -> float:
    """Interpolated bigram (Jelinek-Mercer with add-one unigram), lambda tuned on ``tune``."""
    counts = torch.zeros(vocab, vocab, dtype=torch.float64)
    counts.index_put_((train[:-1], train[1:]), torch.ones(len(train) - 1, dtype=torch.float64), accumulate=True)
    unigram = (torch.bincount(train, minlength=vocab).double() + 1.0)
    unigram /= unigram.sum()
    row = counts.sum(1, keepdim=True)
    bigram = torch.where(row > 0, counts / row.clamp_min(1), unigram.expand_as(counts))

    def nll(tokens: torch.Tensor, lam: float) -> float:
        p = lam * bigram[tokens[:-1], tokens[1:]] + (1 - lam) * unigram[tokens[1:]]
        return float(-p.log().mean())

    best = min((nll(tune, lam), lam) for lam in [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95])
    return nll(test, best[1])


@torch.no_grad()
def model_nll(model: torch.nn.Module, tokens: torch.Tensor, seq_len: int = SEQ_LEN) -> float:
    """Mean next-token loss over non-overlapping windows (the tool's own evaluation protocol)."""
    model.eval()
    n = (len(tokens) // seq_len) * seq_len
    windows = tokens[:n].view(-1, seq_len)
    total, count = 0.0, 0
    for batch in windows.split(16):
        out = model(input_ids=batch, labels=batch)
        total += float(out.loss) * batch.numel()
        count += batch.numel()
    return total / count


def stage_model(arch: str, work: Path, steps: int, batch: int, lr: float, seed: int) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = ARCHS[arch]
    tokens = load_tokens(work)
    torch.manual_seed(seed)
    cfg_kwargs = dict(spec["config"])
    model_type = cfg_kwargs.pop("model_type")
    config = AutoConfig.for_model(
        model_type, vocab_size=VOCAB_SIZE, pad_token_id=1, bos_token_id=0, eos_token_id=0,
        tie_word_embeddings=True, **cfg_kwargs,
    )
    model = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{spec['name']}: {n_params:,} parameters")

    train = tokens["train"]
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        # No decay for norms and biases (ndim < 2) nor for the SSM / DeltaNet dynamics.
        skip = p.ndim < 2 or "A_log" in name or name.endswith(".D") or "dt_bias" in name
        (no_decay if skip else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95),
    )
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    gen = torch.Generator().manual_seed(seed)
    log = []
    start = time.time()
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(train) - SEQ_LEN - 1, (batch,), generator=gen)
        x = torch.stack([train[i : i + SEQ_LEN] for i in idx.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            elapsed = time.time() - start
            print(f"step {step:5d} loss {loss.item():.3f} {elapsed:7.0f}s", flush=True)
            log.append({"step": step, "train_loss": round(loss.item(), 4), "seconds": round(elapsed, 1)})
    train_seconds = time.time() - start

    if model_type.startswith("mamba"):
        model.config.use_mambapy = False  # a training aid only; inference uses the default path
    eval_nll = model_nll(model, tokens["evaluation"])
    bigram = bigram_nll(train, tokens["calibration"], tokens["evaluation"], VOCAB_SIZE)
    metrics = {
        "model": spec["name"],
        "architecture": model_type,
        "parameters": n_params,
        "train_tokens_seen": steps * batch * SEQ_LEN,
        "train_corpus_tokens": len(train),
        "steps": steps, "batch": batch, "seq_len": SEQ_LEN, "lr": lr, "seed": seed,
        "threads": torch.get_num_threads(),
        "train_seconds": round(train_seconds, 1),
        "eval_tokens": len(tokens["evaluation"]),
        "eval_loss": round(eval_nll, 4),
        "eval_perplexity": round(math.exp(eval_nll), 2),
        "bigram_eval_loss": round(bigram, 4),
        "bigram_eval_perplexity": round(math.exp(bigram), 2),
        "torch": torch.__version__,
        "log": log,
    }
    out = EMBEDDED / spec["name"]
    model.save_pretrained(out, safe_serialization=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(metrics, config))
    print(json.dumps({k: v for k, v in metrics.items() if k != "log"}, indent=2))


def describe(config) -> str:
    """The architecture lines of a model card, for each model type in ``ARCHS``."""
    head = f"hidden size {config.hidden_size}, {config.num_hidden_layers} layers"
    vocab = f"vocabulary {config.vocab_size} (byte-level BPE, shared by all embedded models)"
    if config.model_type == "mamba":
        return (f"{head},\n  expand {config.expand} (inner size {config.intermediate_size}), "
                f"state size {config.state_size}, dt rank {config.time_step_rank}, "
                f"conv kernel {config.conv_kernel}, {vocab}.")
    if config.model_type == "mamba2":
        return (f"{head},\n  {config.num_heads} heads of {config.head_dim} channels, "
                f"{config.n_groups} group(s), state size {config.state_size}, "
                f"conv kernel {config.conv_kernel}, {vocab}.")
    if config.model_type == "qwen3_5_text":
        layout = ", ".join(config.layer_types)
        nv, dk, dv = config.linear_num_value_heads, config.linear_key_head_dim, config.linear_value_head_dim
        rotary = int(config.head_dim * config.rope_parameters.get("partial_rotary_factor", 1.0))
        return (f"{head} ({layout}),\n"
                f"  SwiGLU MLP of {config.intermediate_size} after every mixer, tied embeddings, {vocab}.\n"
                f"- Gated DeltaNet (`linear_attention`) layers: {config.linear_num_key_heads} query/key heads "
                f"of {dk}, {nv} value heads of {dv},\n"
                f"  conv kernel {config.linear_conv_kernel_dim}, gated RMSNorm on the output; recurrent state "
                f"per layer {nv} x {dk} x {dv} = {nv * dk * dv:,} values.\n"
                f"- Full-attention layer(s): {config.num_attention_heads} query heads, "
                f"{config.num_key_value_heads} key/value heads, head dim {config.head_dim},\n"
                f"  sigmoid output gate, q/k RMSNorm, rotary on {rotary} of {config.head_dim} dims "
                f"(theta {config.rope_parameters['rope_theta']:g}).")
    raise ValueError(f"no model card description for {config.model_type}")


def model_card(m: dict, config) -> str:
    return f"""# {m['model']}

A small {m['architecture']} language model trained by ssm-profile's `examples/train_embedded.py`
so that every feature of the tool runs offline. Not a useful language model: a test subject.

- Architecture: `{m['architecture']}`, {describe(config)}
- Parameters: {m['parameters']:,}
- Training data: King James Bible (public domain, Debian `bible-kjv`), all books except the
  evaluation books (Ecclesiastes, Song of Solomon, Hebrews, James) and the calibration books
  (Ruth, Esther, Romans, 1 Peter); {m['train_corpus_tokens']:,} tokens.
- Training: {m['steps']} steps of {m['batch']} x {m['seq_len']} tokens ({m['train_tokens_seen']:,} tokens seen), AdamW,
  lr {m['lr']}, seed {m['seed']}, {m['threads']} CPU thread(s), {m['train_seconds']:.0f} s, torch {m['torch']}.

| held-out evaluation text ({m['eval_tokens']:,} tokens) | loss | perplexity |
|---|---|---|
| this model (windows of {m['seq_len']} tokens) | {m['eval_loss']:.3f} | {m['eval_perplexity']:.2f} |
| interpolated bigram fitted on the same training text | {m['bigram_eval_loss']:.3f} | {m['bigram_eval_perplexity']:.2f} |
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=["data", *ARCHS], required=True)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "train")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.stage == "data":
        stage_data(args.work)
    else:
        stage_model(args.stage, args.work, args.steps, args.batch, args.lr, args.seed)


if __name__ == "__main__":
    main()
