"""Base: what every other wing stands on and that knows nothing of models.

Errors a user reads (``errors``), wording of numbers (``fmt``), atomic files and bounded reads
(``io``, ``safe_read``), the one rule every output obeys (``outputs``), the run-directory and output
locks (``lock``), process set-up (``runtime``), the generic registry (``registry``), per-instance
patching (``patching``) and torch-free defaults (``defaults``). Nothing here imports another wing.
"""
