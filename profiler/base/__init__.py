"""Base: what every other wing stands on and that knows nothing of models.

Errors a user reads (``errors``), wording of numbers (``fmt``), atomic files and bounded reads
(``io``, ``safe_read``), the run-directory lock and trial journal (``lock``, ``journal``), process
set-up (``runtime``), the generic registry (``registry``), per-instance patching (``patching``) and
torch-free defaults (``defaults``). Nothing here imports another wing.
"""
