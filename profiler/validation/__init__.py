"""Validation: a pruned model checked against its base (``validate``) and the before/after table
every front end shows (``comparison``)."""
