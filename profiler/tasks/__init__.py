"""lm-eval tasks shipped with ssm-profile; they run offline on held-out embedded text.

* ``ssm_next_verse`` (multiple choice): given a verse, pick the verse that truly follows it
  among four (the true one and three seeded distractors from elsewhere in the text).
* ``ssm_heldout_ppl`` (``loglikelihood_rolling``): word/byte perplexity and bits per byte on
  documents of consecutive verses.

Both come from the embedded evaluation text (books held out of the embedded models' training
and of calibration). :mod:`ssm_profile.tasks.build` regenerates the ``.jsonl`` files
deterministically; the YAML files name their data relative to this folder and
:class:`ssm_profile.validation.check.LmEvalRunner` rewrites the paths (to absolute ones) when it loads them.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUILTIN_TASKS", "TASKS_DIR"]

TASKS_DIR = Path(__file__).resolve().parent
BUILTIN_TASKS = ("ssm_next_verse", "ssm_heldout_ppl")
