"""Regenerate the shipped lm-eval task data from the embedded evaluation text.

``python -m ssm_profile.tasks.build`` rewrites ``ssm_next_verse.jsonl`` and ``ssm_heldout_ppl.jsonl``
beside this file. The output depends only on the evaluation text and the seed, so rerunning it
gives byte-identical files (a test checks this).

Verses are the lines of the evaluation text (Ecclesiastes, Song of Solomon, Hebrews, James).
The first ``SKIP_VERSES`` verses are left out: they hold the default held-out perplexity windows
(16 x 256 tokens), so the tasks measure something the perplexity number does not already see.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from . import TASKS_DIR

SKIP_VERSES = 160  # > the ~4,100 tokens of the default evaluation windows
ROLLING_DOCS = 30
VERSES_PER_DOC = 6
MC_ITEMS = 100
MC_CHOICES = 4


def _verses(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def build_records(text: str, seed: int = 0) -> dict[str, list[dict]]:
    """The task records (``{file stem: [record, ...]}``) made from ``text``."""
    verses = _verses(text)[SKIP_VERSES:]
    need = ROLLING_DOCS * VERSES_PER_DOC + MC_ITEMS + 1
    if len(verses) < need:
        raise ValueError(f"need at least {need + SKIP_VERSES} verses, got {len(verses) + SKIP_VERSES}")
    rng = random.Random(seed)

    rolling = []
    for d in range(ROLLING_DOCS):
        chunk = verses[d * VERSES_PER_DOC:(d + 1) * VERSES_PER_DOC]
        rolling.append({"id": d, "text": "\n".join(chunk)})

    # Multiple choice from the verses after the rolling documents: contexts are sampled,
    # distractors come from anywhere in the held-out verses except the pair itself.
    start = ROLLING_DOCS * VERSES_PER_DOC
    candidates = list(range(start, len(verses) - 1))
    contexts = sorted(rng.sample(candidates, MC_ITEMS))
    mc = []
    for n, i in enumerate(contexts):
        true = verses[i + 1]
        pool = [j for j in range(len(verses)) if j not in (i, i + 1) and verses[j] != true]
        distractors = [verses[j] for j in rng.sample(pool, MC_CHOICES - 1)]
        label = rng.randrange(MC_CHOICES)
        choices = distractors[:label] + [true] + distractors[label:]
        mc.append({"id": n, "context": verses[i], "choices": choices, "label": label})
    return {"ssm_heldout_ppl": rolling, "ssm_next_verse": mc}


def write(out_dir: str | Path | None = None, seed: int = 0) -> list[Path]:
    """Write the task ``.jsonl`` files into ``out_dir`` (default: this package folder)."""
    from ..model.resolve import embedded_data

    out = Path(out_dir) if out_dir is not None else TASKS_DIR
    out.mkdir(parents=True, exist_ok=True)
    text = embedded_data("evaluation.txt").read_text(encoding="utf-8")
    paths = []
    for stem, records in build_records(text, seed).items():
        path = out / f"{stem}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":  # pragma: no cover
    for p in write():
        print(p)
