"""Profiling: saliency under every criterion, then measured sensitivity, into one results object.

``profile`` runs it; ``schedule``, ``adaptive`` and ``sensitivity`` decide and run the trials,
``incremental`` and ``earlystop`` make them cheap, ``distributed`` shards them over processes,
``estimate`` refuses an impossible run up front; ``results`` is the :class:`ProfileResult` every
front end renders, ``saliency`` and ``findings`` its summaries.
"""
