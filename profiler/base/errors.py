"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""

from __future__ import annotations


class SSMProfileError(Exception):
    """An error the user can act on. ``str(err)`` says what is wrong and what to do."""

    exit_code = 2


class ModelNotFoundError(SSMProfileError):
    """The model name is neither an alias, a local directory nor a reachable hub repository."""


class HubUnreachableError(SSMProfileError):
    """The model must come from the hub, the hub cannot be reached and nothing is cached."""


class UnsupportedModelError(SSMProfileError):
    """The model loads but has no Mamba mixer this tool understands."""


class DataError(SSMProfileError):
    """Calibration or evaluation data is missing, malformed or too short."""


class PlanError(SSMProfileError):
    """A plan is malformed, schema-invalid, made for another model, or cannot be met."""


class RunDirError(SSMProfileError):
    """A run directory is missing, incomplete or from an incompatible version."""


class OutputExistsError(SSMProfileError):
    """An output path exists and would be overwritten."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none): what a one-line error quotes."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
