"""Report rendering for ssm-profile runs: one self-contained HTML page, a Markdown summary, CSV tables.

Everything is rendered from :class:`ssm_profile.profiling.results.ProfileResult` (the object the CLI and the run
directory use), optionally with a pruning plan (``plan.json``) and a validation (``validation.json``)::

    from ssm_profile.profiling.results import ProfileResult
    from ssm_profile import reports

    result = ProfileResult.load("runs/tiny-mamba2")
    html = reports.render_html(result, plan=None, validation=None)   # str, no network needed to view
    text = reports.render_markdown(result)
    reports.export_csv(result, "tables/")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ssm_profile.documents import Plan, RecoveryRecord, ValidationReport

__all__ = ["render_html", "render_markdown", "export_csv", "write_report"]


def render_html(result, plan: Plan | None = None, validation: ValidationReport | None = None,
                recovery: RecoveryRecord | None = None) -> str:
    """The self-contained HTML report of ``result`` (a ProfileResult)."""
    from .html import render_html as _render

    return _render(result, plan, validation, recovery)


def render_markdown(result, plan: Plan | None = None, validation: ValidationReport | None = None,
                    recovery: RecoveryRecord | None = None) -> str:
    """A Markdown summary: header, ranking, findings, plan/validation/recovery summaries."""
    from .markdown import render_markdown as _render

    return _render(result, plan, validation, recovery)


def export_csv(result, directory):
    """Write the report's tables as CSV files to ``directory``; returns the written paths."""
    from .tables import export_csv as _export

    return _export(result, directory)


def write_report(result, output, *, fmt: str = "html", plan: Plan | None = None,
                 validation: ValidationReport | None = None, csv_dir=None, recovery: RecoveryRecord | None = None,
                 plan_path: str | None = None):
    """Render and write ``output`` atomically (and the CSV tables to ``csv_dir``); returns the output path.

    ``output`` None or ``"-"`` writes no file and returns the rendered text instead."""
    from pathlib import Path

    from ssm_profile.base.errors import SSMProfileError
    from ssm_profile.base.io import write_text_atomic

    from .facts import Facts
    from .html import render_facts
    from .markdown import render_facts_md
    from .tables import export_csv as _export

    if fmt not in ("html", "md"):
        raise SSMProfileError(f"unknown report format '{fmt}'; choose html or md")
    facts = Facts.of(result)
    text = (render_facts(facts, plan, validation, recovery, plan_path=plan_path) if fmt == "html"
            else render_facts_md(facts, plan, validation, recovery, plan_path=plan_path))
    target = None if output is None or str(output) == "-" else Path(output)
    if target is not None and target.is_dir():
        raise SSMProfileError(f"output '{target}' is a directory; give a file name such as {target / 'report.html'}")
    try:
        if target is not None:
            write_text_atomic(target, text)
        if csv_dir is not None:
            _export(facts, csv_dir)
    except OSError as err:
        where = getattr(err, "filename", None) or output
        raise SSMProfileError(f"cannot write '{where}': {err.strerror or err}") from None
    return target if target is not None else text

