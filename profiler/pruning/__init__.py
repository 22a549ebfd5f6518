"""Pruning: from scores to masks (``masks``), the recipe that rebuilds them (``recipe``), structured
surgery on mixers (``surgery``), executing a plan (``apply``) and saying what it changes (``summary``)."""
