"""Write a randomly initialised Mamba checkpoint (default: mamba-1.4b's shape) to a local folder.

    python tests/gpu/make_random_model.py OUT_DIR [--layers 48 --hidden 2048 --vocab 50280 --dtype bfloat16]

The weights are random (the shape, not the quality, is what a timing needs); no network is used.
The model is built on CUDA when available (its initialisation is much faster there).
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import MambaConfig, MambaForCausalLM

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def make_model(layers: int, hidden: int, vocab: int, seed: int = 0) -> MambaForCausalLM:
    """A mamba-*-hf-shaped model: state 16, expand 2, conv 4, dt rank ceil(hidden / 16)."""
    config = MambaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, state_size=16,
                         expand=2, conv_kernel=4, use_bias=False, use_conv_bias=True, tie_word_embeddings=True)
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        return MambaForCausalLM(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=50280)
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    args = parser.parse_args()
    started = time.perf_counter()
    model = make_model(args.layers, args.hidden, args.vocab).to(DTYPES[args.dtype])
    model.save_pretrained(args.out_dir)
    params = sum(p.numel() for p in model.parameters())
    print(f"random Mamba: {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}, {params / 1e9:.2f}B "
          f"parameters, {args.dtype} -> {args.out_dir} ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
