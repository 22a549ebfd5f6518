"""The report: self-contained HTML (sections, size, no network, escaping), Markdown, CSV, CLI, browser."""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import urllib.parse
import urllib.request
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from ssm_profile.criteria.base import DEFAULT_UNIT_AGGREGATION, UNIT_AGGREGATION
from ssm_profile import reports
from ssm_profile.cli.main import main
from ssm_profile.documents import Plan, RecoveryRecord, ValidationReport, Verification
from ssm_profile.profiling.results import ProfileResult

REPO = Path(__file__).resolve().parents[1]
SECTION_IDS = ["header", "anatomy", "saliency", "sensitivity", "ranking", "findings", "plan", "validation"]
XSS = "<script>window.__pwned=1;alert(1)</script>"
XSS2 = '</script><img src=x onerror="window.__pwned=2"><!--'
MAX_BYTES = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from ssm_profile.calibration.data import DataSpec
    from ssm_profile.profiling.record import ProfileSettings
    from ssm_profile.profiling.profile import profile_model
    from ssm_profile.model.resolve import load_model

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("report") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_VERBOSITY", "error")
        loaded = load_model("tiny-mamba2")
        profile_model(loaded, DataSpec(nsamples=4, eval_samples=4, seqlen=32),
                      ProfileSettings(sparsities=[0.25, 0.5], criteria=["magnitude", "wanda", "fisher", "random"],
                                      sweep="grid"),
                      run_dir=out)
    return out


@pytest.fixture(scope="module")
def result(run_dir) -> ProfileResult:
    return ProfileResult.load(run_dir)


@pytest.fixture()
def hostile(result) -> ProfileResult:
    """The run with script-injection attempts in every user-controlled string the header shows."""
    bad = copy.deepcopy(result)
    bad.record.model.name = XSS
    bad.analysis.model.name = XSS
    bad.record.data.calibration = XSS2
    bad.record.versions["evil"] = XSS2
    return bad


def make_plan(result, note: str = "keep the <b>dense</b> heads") -> Plan:
    """A complete plan (every key `ssm-profile plan` writes) for ``result``'s weights."""
    model = result.record.model
    return Plan.from_dict({
        "schema_version": 1, "kind": "ssm-profile-plan", "created": "2026-11-29T00:00:00+00:00",
        "model": {"name": model.name, "source": model.source.to_dict(), "fingerprint": model.fingerprint,
                  "architecture": "mamba", "class": model.class_name},
        "run": {"path": "runs/x", "created": "2026-11-29T00:00:00+00:00"},
        "data": {"calibration": None, "evaluation": None, "nsamples": 8, "eval_samples": 8, "seqlen": 64, "seed": 0},
        "objective": {"target": "params", "ratio": 0.2, "absolute": None, "max_ppl_increase": 0.1},
        "dense": {"loss": result.dense_loss, "perplexity": result.dense_perplexity, "parameters": 962528,
                  "flops_per_token": 1925056, "state_bytes_per_sequence": 65536},
        "actions": [
            {"target": "unit:state", "layers": [0, 1, 2, 3], "structure": "unit", "criterion": "fisher",
             "sparsity": 0.5, "unit_kind": "state", "unit_indices": {"0": [1, 2], "1": [3, 4]},
             "params_removed": 1234, "flops_removed": 5678, "state_bytes_removed": 4096,
             "predicted_delta_loss": 0.0123, "execution": "slice", "note": note},
            {"target": "in_proj", "layers": [0, 1, 2, 3], "structure": "unstructured", "criterion": "wanda",
             "sparsity": 0.3, "unit_kind": None, "unit_indices": None, "params_removed": 9000, "flops_removed": 0,
             "state_bytes_removed": 0, "predicted_delta_loss": 0.004, "execution": "zero", "note": ""},
        ],
        "predicted": {"delta_loss": 0.0163, "rel_ppl_increase": 0.0164, "params_removed": 10234,
                      "flops_removed": 5678, "state_bytes_removed": 4096, "reduction_ratio": 0.0106},
        "measured": None,
        "notes": [note, "state pruning is expressible in the stock config"],
    })


def _size(params: int, disk: int) -> dict:
    return {"parameters": params, "nonzero_parameters": params - 10, "weight_bytes_on_disk": disk,
            "bytes_on_disk": disk + 4000, "state_bytes_per_sequence": 65536, "flops_per_token": 2 * params}


def validation_document() -> dict:
    """A validation file as `ssm-profile validate` writes it (every key it always has)."""
    return {
        "schema_version": 1, "kind": "ssm-profile-validation", "created": "2026-11-29T00:00:00+00:00",
        "models": {"base": {"name": "tiny-mamba", "location": "embedded", "fingerprint": "sha256:aa", "directory": None},
                   "pruned": {"name": "out/pruned", "location": "out/pruned", "fingerprint": "sha256:bb",
                              "directory": "out/pruned"}},
        "plan": None, "data": {},
        "perplexity": {"base": {"loss": 6.1402, "perplexity": 464.2}, "pruned": {"loss": 6.1528, "perplexity": 470.1},
                       "delta_loss": 0.0126, "rel_ppl_increase": 0.0127},
        "measured": {"loss": 6.1528, "delta_loss": 0.0126, "rel_ppl_increase": 0.0127, "within_tolerance": True},
        "tolerance": {"max_ppl_increase": 0.1, "source": "argument", "within_tolerance": True,
                      "decided_by": "verification"},
        "within_tolerance": True,
        "verification": {"dense_loss": 6.2, "loss": 6.285, "delta_loss": 0.085, "rel_ppl_increase": 0.089,
                         "interval": [0.076, 0.103], "windows": 32, "source": "embedded:evaluation.txt [held out]",
                         "within_tolerance": True},
        "lm_eval": {"tasks": {"arc_tiny": {"builtin": True, "items": 8, "base": {"acc": 0.5, "acc_norm": 0.52},
                                           "pruned": {"acc": 0.375, "acc_norm": 0.5}, "delta": {"acc": -0.125}}},
                    "limit": None, "skipped": None},
        "size": {"base": _size(962528, 3850112), "pruned": _size(950000, 3800000),
                 "change": {"parameters": 950000 / 962528 - 1}},
        "speed": {"batch": [1, 128], "threads": 1, "base": {"latency_s": 0.0125, "tokens_per_s": 80.0},
                  "pruned": {"latency_s": 0.011, "tokens_per_s": 90.9}, "speedup": 1.136},
        "versions": {}, "threads": 1, "seconds": 1.0}


VALIDATION = ValidationReport.from_dict(validation_document())


def recovery_document() -> dict:
    """A recovery file as `ssm-profile recover` writes it (every key it always has)."""
    check = {"dense_loss": 6.2, "loss": 6.22, "delta_loss": 0.0198, "rel_ppl_increase": 0.02,
             "interval": [0.01, 0.03], "windows": 32}
    return {"schema_version": 1, "kind": "ssm-profile-recovery", "created": "2026-11-29T00:00:00+00:00",
            "pruned": {"directory": "out/pruned", "fingerprint": "sha256:bb", "plan_model": "tiny-mamba"},
            "teacher": {"name": "tiny-mamba", "location": "embedded", "fingerprint": "sha256:aa", "source_model": True},
            "output": {"fingerprint": "sha256:cc", "files": ["model.safetensors"]},
            "settings": {"steps": 10, "minutes": None, "lr": 1e-3, "temperature": 2.0, "lm_weight": 0.0, "batch_size": 8,
                         "seqlen": 64, "seed": 0, "checkpoint_every": 50, "eval_every": None, "data": None,
                         "lm_eval": True, "lm_eval_limit": None},
            "data": {"training": "embedded:calibration.txt", "training_tokens": 8192, "seqlen": 64,
                     "verification": "embedded:evaluation.txt [held out]", "verification_windows": 32},
            "kernels": {"choice": {}, "training": "torch"}, "world": {"size": 1, "rank_weights": []},
            "progress": {"steps_done": 10, "total_steps": 10, "train_seconds": 3.0, "seconds": 4.0},
            "curve": [{"step": 0, "verification_loss": 6.3}, {"step": 10, "kd_loss": 0.5, "verification_loss": 6.22}],
            "before": {"verification": {**check, "loss": 6.3, "rel_ppl_increase": 0.105, "interval": [0.09, 0.12]},
                       "lm_eval": {}},
            "after": {"verification": check, "lm_eval": {}},
            "sparsity": {"nonzero_before": 900000, "nonzero_after": 900000, "frozen_entries": 62528},
            "notes": [], "versions": {}}


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: list[str] = []
        self.refs: list[tuple[str, str, str]] = []
        self.scripts: list[tuple[dict, str]] = []
        self.title = ""
        self._script: dict | None = None
        self._in_title = False
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        for key, value in attrs:
            if key in ("src", "href", "xlink:href", "action", "poster", "srcset", "data", "formaction", "background"):
                self.refs.append((tag, key, value or ""))
        if tag == "script":
            self._script = a
            self._script_text = ""
        if tag == "title":
            self._in_title = True
        if tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table] = []
        if self._table and tag == "tbody":
            self._in_body = True
        if self._table and self._in_body and tag == "tr":
            self._row = []
        if self._row is not None and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "script" and self._script is not None:
            self.scripts.append((self._script, self._script_text))
            self._script = None
        if tag == "title":
            self._in_title = False
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None
        if tag == "table" and self._table:
            self._table, self._in_body = None, False

    def handle_data(self, data):
        if self._script is not None:
            self._script_text += data
        if self._in_title:
            self.title += data
        if self._cell is not None:
            self._cell.append(data)


def parse(html: str) -> _Collect:
    p = _Collect()
    p.feed(html)
    p.close()
    return p


# ---------------------------------------------------------------------------------------------- HTML
def test_html_has_every_section_is_small_and_loads_nothing(result):
    html = reports.render_html(result, plan=make_plan(result), validation=VALIDATION)
    page = parse(html)
    for sid in SECTION_IDS:
        assert page.ids.count(sid) == 1, sid
    assert len(html.encode("utf-8")) < MAX_BYTES
    remote = [r for r in page.refs if re.match(r"\s*(https?:|//|ftp:|file:)", r[2], re.I)]
    assert remote == [], remote
    assert all(v.startswith(("#", "data:")) for _, _, v in page.refs), page.refs
    assert "url(" not in html and "@import" not in html
    assert not any(a.get("src") for a, _ in page.scripts)  # every script is inline
    assert html.count("<svg") > 20
    # Colour per criterion is the same everywhere: the fisher chip colour in ranking and saliency.
    from ssm_profile.reports.svg import CRITERION_COLORS

    assert f'--c:{CRITERION_COLORS["fisher"]}">fisher' in html


def test_plan_and_validation_sections_only_when_given(result):
    html = reports.render_html(result)
    ids = parse(html).ids
    assert "plan" not in ids and "validation" not in ids
    assert all(s in ids for s in SECTION_IDS[:6])


def test_csp_allows_exactly_the_pages_own_scripts(result):
    html = reports.render_html(result)
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp.split("script-src")[1]
    page = parse(html)
    executable = [text for attrs, text in page.scripts if attrs.get("type", "text/javascript") != "application/json"]
    assert len(executable) == 2
    for text in executable:
        digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp


def test_ranking_and_findings_tables_match_profile_result(result):
    page = parse(reports.render_html(result))
    ranked = [row[1] for row in page.tables["ranking-table"]]
    assert ranked == [r.target for r in result.ranking()]
    assert [row[2] for row in page.tables["ranking-table"]] == [r.best_criterion for r in result.ranking()]
    rows = page.tables["findings-table"]
    assert len(rows) == len(result.findings())
    for row, finding in zip(rows, result.findings()):
        assert row[0].startswith(finding.claim) and row[1] == finding.verdict
        assert row[2] == finding.windows_text  # the windows its interval rests on
    assert any(f.windows for f in result.findings())


def test_user_strings_are_escaped_everywhere(hostile):
    plan = make_plan(hostile, note=XSS2)
    plan.actions[0].target = XSS
    plan.actions[0].criterion = XSS2
    validation = copy.deepcopy(VALIDATION)
    validation.models.pruned.name = XSS
    validation.lm_eval.tasks[XSS2] = validation.lm_eval.tasks["arc_tiny"]
    html = reports.render_html(hostile, plan=plan, validation=validation)
    for raw in (XSS, XSS2, "<img", "<!--", "<script>window.__pwned", "</script><"):
        assert raw not in html, raw
    assert "&lt;script&gt;window.__pwned=1;alert(1)&lt;/script&gt;" in html
    page = parse(html)
    assert XSS in page.title  # shown as text, not run
    meta = next(text for attrs, text in page.scripts if attrs.get("id") == "run-meta")
    assert "</" not in meta and "<!--" not in meta and "<" not in meta
    assert json.loads(meta)["run"]["model"]["name"] == XSS
    assert len(page.scripts) == 3  # guard, run metadata, page script: nothing injected


def test_plan_renders_actions_and_mismatch_warning(result):
    plan = make_plan(result)
    html = reports.render_html(result, plan=plan)
    assert 'id="plan-actions"' in html and "4 units" in html and "0–3" in html
    assert "made for other weights" not in html
    plan.model.fingerprint = "sha256:other"
    assert "made for other weights" in reports.render_html(result, plan=plan)


def test_validation_section_shows_the_shared_rows_and_the_verdict():
    from ssm_profile.reports.html import validation_section
    from ssm_profile.validation.comparison import comparison_rows

    html = unescape(validation_section(VALIDATION))
    for row in comparison_rows(VALIDATION):
        assert row.label in html and row.text(row.after) in html and row.change_text() in html, row.label
    assert "within tolerance" in html and "at most +10.0% (--max-ppl-increase)" in html
    assert "arc_tiny" in html and "acc_norm" in html


def test_report_opens_with_the_answer(result):
    """The decision comes first: safe sparsity per target (with its interval) and the next command."""
    html = reports.render_html(result)
    assert html.index('id="decision"') < min(html.index(f'id="{s}"') for s in SECTION_IDS[:6])
    rows = parse(html).tables["decision-table"]
    ranking = {r.target: r for r in result.ranking()}
    assert sorted(row[0] for row in rows) == sorted(ranking)
    for row in rows:
        assert row[1] == f"{ranking[row[0]].max_safe_sparsity:.0%}"
        assert row[2].startswith(("between", "at least"))
    assert "ssm-profile plan RUN_DIR" in html


@pytest.mark.parametrize("scope,words", [("ssm", "of SSM-mixer params"), (None, "of whole-model params")])
def test_plan_answer_names_its_total_and_promise(result, scope, words):
    from ssm_profile.reports.decision import decision_section
    from ssm_profile.reports.facts import Facts

    plan = make_plan(result)
    plan.objective.scope = scope
    plan.predicted.scope_total = 965000
    panel = unescape(decision_section(Facts.of(result), plan))
    assert f"1.1% {words} (total 965.00k)" in panel
    assert "perplexity rises by at most 10%" in panel and "predicted +1.6%" in panel
    assert "ssm-profile apply" in panel and "--validate" in panel


def test_a_zeros_only_plan_reads_as_no_size_win_in_html_and_markdown(result):
    from ssm_profile.reports.decision import decision_section
    from ssm_profile.reports.facts import Facts
    from ssm_profile.plan import PlanRequest, make_plan as real_plan

    plan = real_plan(result, PlanRequest(metric="params", ratio=0.1, measure=False, structures="unstructured"))
    assert {a.execution for a in plan.actions} == {"zero"}
    panel = unescape(decision_section(Facts.of(result), plan))
    assert "This plan sets to zero" in panel and "This plan removes" not in panel
    assert '<p class="warning">WARNING: this plan changes no shapes' in panel
    assert panel.index("WARNING") < panel.index("Promise")  # before the promise, not a footnote
    markdown = reports.render_markdown(result, plan=plan)
    answer = markdown[markdown.index("## What can I prune"):markdown.index("## The run")]
    assert "This plan sets to zero" in answer and "> **WARNING: this plan changes no shapes" in answer
    assert answer.index("WARNING") < answer.index("Promise")


def test_the_answers_next_command_follows_the_files_given(result):
    """The plan file the user passed, the validation's outcome and recovery: never a made-up plan.json."""
    from ssm_profile.reports.decision import decision_section
    from ssm_profile.reports.facts import Facts

    facts, plan = Facts.of(result), make_plan(result)
    panel = unescape(decision_section(facts, plan, plan_path="plans/thirty percent.json"))
    assert "'plans/thirty percent.json'" in panel and "plan.json is this plan's file" not in panel
    validation = VALIDATION
    panel = unescape(decision_section(facts, plan, validation, plan_path="p.json"))
    assert "Validated after applying: perplexity +8.9% (95% interval +7.6% to +10.3%) on 32 verification windows: " \
           "within the tolerance" in panel
    assert "ssm-profile recover out/pruned" in panel and "ssm-profile apply" not in panel
    recovery = RecoveryRecord.from_dict(recovery_document())
    panel = unescape(decision_section(facts, plan, validation, recovery))
    assert "After recovery by distillation: perplexity +2.0%" in panel and "validate" in panel.split("Next")[-1]
    plan.verification = Verification(dense_loss=6.0, loss=6.18, delta_loss=0.18, rel_ppl_increase=0.2,
                                     interval=[0.15, 0.25], windows=32, max_ppl_increase=0.1, kept=False)
    panel = unescape(decision_section(facts, plan, plan_path="p.json"))
    assert "do not apply this plan" in panel and "ssm-profile apply" not in panel


def test_loss_curves_zoom_on_the_tolerance(result):
    import math

    from ssm_profile.reports.facts import Facts
    from ssm_profile.reports.profile_sections import ZOOM, decision_scale, sensitivity_section

    facts = Facts.of(result)
    (low, high), (line, _) = decision_scale(facts)
    assert line == pytest.approx(math.log1p(result.tolerance))
    assert line < high <= ZOOM * line and low <= 0
    html = sensitivity_section(facts)
    panels = html.count('class="panel"')
    assert html.count('class="tolerance"') == panels > 0  # a tolerance line in every panel
    if max(t.delta_loss for t in result.model_trials) > high:
        assert "offscale" in html and "above the scale" in html


def _rgb_distance(a: str, b: str) -> float:
    rgb = [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in (a, b)]
    return sum((x - y) ** 2 for x, y in zip(*rgb)) ** 0.5


@pytest.mark.parametrize("family", [
    ["in_proj", "conv1d", "x_proj", "dt_proj", "A_log", "D", "out_proj", "unit:channel", "unit:state", "unit:dt_rank"],
    ["in_proj", "conv1d", "dt_bias", "A_log", "D", "norm", "out_proj", "unit:head", "unit:head_channel", "unit:state"],
])
def test_targets_of_one_model_have_distinguishable_colours(family):
    from itertools import combinations

    from ssm_profile.reports.svg import group_color

    assert _rgb_distance(group_color("in_proj"), group_color("unit:channel")) > 120
    closest = min(combinations(family, 2), key=lambda p: _rgb_distance(group_color(p[0]), group_color(p[1])))
    assert _rgb_distance(group_color(closest[0]), group_color(closest[1])) > 60, closest


def test_plan_and_validation_read_in_words(result):
    from ssm_profile.reports.html import validation_section
    from ssm_profile.reports.plan_sections import plan_section
    from ssm_profile.reports.facts import Facts

    note = "uniform cut: saved in the stock config\n(re-run validate after applying)"
    plan = make_plan(result)
    for action in plan.actions:
        action.note = note
    html = plan_section(Facts.of(result), plan)
    actions = html[html.index('id="plan-actions"'):]
    assert actions.count(note.split("\n")[0]) == 1 and "see note 1 below" in actions
    assert "max perplexity increase" in html and "+10.0%" in html and "max_ppl_increase" not in html
    assert "of whole-model params" in unescape(html)
    shown = validation_section(VALIDATION)
    assert "weights on disk" in shown and ">bytes_on_disk<" not in shown


def test_size_stays_bounded_for_a_large_model(result):
    """A 64-layer model with 5120 channels per layer must not blow the page past a few MB."""
    big = copy.deepcopy(result)
    d0 = big.analysis.dynamics[0]
    big.analysis.dynamics = []
    for layer in range(64):
        d = copy.deepcopy(d0)
        d.layer = layer
        d.horizon_per_channel = [1.0 + (i * 7919 % 5120) / 10 for i in range(5120)]
        big.analysis.dynamics.append(d)
    g_layer = [g for g in big.analysis.groups if g.layer == 0]
    big.analysis.groups = [g for g in big.analysis.groups if g.layer is None]
    for layer in range(64):
        for g in g_layer:
            c = copy.deepcopy(g)
            c.layer = layer
            big.analysis.groups.append(c)
    t0 = [t for t in big.layer_trials if t.layer == 0]
    big.trials = big.model_trials + [dataclasses.replace(t, layer=layer) for layer in range(64) for t in t0]
    html = reports.render_html(big)
    assert len(html.encode()) < MAX_BYTES
    assert html.count('class="strip-dot"') <= 64 * 96


# ---------------------------------------------------------------------------------------------- Markdown, CSV
def test_markdown_summary(hostile, result):
    text = reports.render_markdown(hostile, plan=make_plan(hostile, note="a | pipe"), validation=VALIDATION)
    assert text.startswith("# Profile report: &lt;script&gt;")
    assert XSS not in text and "<img" not in text
    for heading in ("## Sensitivity ranking", "## Literature findings", "## Pruning plan", "## Validation"):
        assert heading in text
    for r in result.ranking():
        assert f"| {r.rank} | {r.target} | {r.best_criterion} |" in text
    assert "a \\| pipe" in text and "Within tolerance" in text and "470.1" in text
    fisher = result.prediction_agreement()["fisher"]  # its scale beside its rank agreement
    assert f"measured/predicted ΔL median {fisher['ratio']:.2f}" in text and "measured / predicted" in reports.render_html(result)
    ran = {c: UNIT_AGGREGATION["mamba2"].get(c, DEFAULT_UNIT_AGGREGATION) for c in ("magnitude", "wanda", "fisher")}
    assert result.record.unit_aggregation == {"mamba2": ran}  # the run record says, per criterion
    assert "**Unit scores**: a unit's element scores summed per tensor, the tensors' sums combined in mamba2 " in text
    for criterion, how in ran.items():
        assert f"{criterion}" in text.split("**Unit scores**")[1].split("\n")[0] and f" by {how} (" in text
    measured = next(f for f in result.findings() if f.windows)
    assert f"| {measured.verdict} | {measured.windows} |" in reports.render_markdown(result)


def test_markdown_reads_like_the_html_answer_first(result):
    """The Markdown says what the HTML says, in words: the answer first (the same sentences), the next
    command, the verification interval; no raw field names, no percentage without its total."""
    from ssm_profile.reports.answer import answer
    from ssm_profile.reports.facts import Facts

    recovery = RecoveryRecord.from_dict(recovery_document())
    plan = make_plan(result)
    text = reports.render_markdown(result, plan=plan, validation=VALIDATION, recovery=recovery)
    first = text.index("## What can I prune, and how much")
    assert first < text.index("## The run") < text.index("## Sensitivity ranking")
    said = answer(Facts.of(result), plan, VALIDATION, recovery)
    flat = " ".join(text.replace("**", "").split())
    for sentence in [*said.lead, *said.outcome]:
        assert " ".join(sentence.text.split()) in flat
    assert "This plan removes **10.23k params**: **1.1% of whole-model params (total 962.53k)**." in text
    assert f"```sh\n{said.next_command}\n```" in text
    assert "+8.9% (95% interval +7.6% to +10.3%) on 32 verification windows" in flat
    assert "Objective: reduce params by 20.0% of whole-model params" in flat
    for raw in ("delta_loss", "within_tolerance", "schema_version", "dense_eval", "absolute None", "= true"):
        assert raw not in text, raw
    assert re.search(r"SSM mixers [0-9.]+% of whole-model params", text)
    bare = reports.render_markdown(result)
    assert "can be pruned to" in bare and "ssm-profile plan RUN_DIR" in bare and "| true limit |" in bare


def test_task_score_changes_carry_an_interval():
    """Paired bootstrap over items when per-item scores exist; else an unpaired normal interval on an
    accuracy difference, said so; a score with neither says it has no interval."""
    from ssm_profile.documents import ValidationReport
    from ssm_profile.validation.comparison import comparison_rows as _comparison_rows
    from ssm_profile.validation.comparison import paired_score_interval, proportion_difference_interval

    low, high = paired_score_interval([1, 1, 0, 0, 1, 0, 1, 1], [1, 0, 0, 0, 1, 0, 0, 1])
    assert low < -0.25 < high <= 0  # the mean change, -2/8, inside; never better than no change
    assert paired_score_interval([1.0], [0.0]) is None
    low, high = proportion_difference_interval(0.5, 0.375, 8)
    assert low < -0.125 < high and high - low == pytest.approx(2 * 1.96 * ((0.25 + 0.375 * 0.625) / 8) ** 0.5)
    assert proportion_difference_interval(50.0, 60.0, 8) is None  # a perplexity is no proportion
    doc = validation_document()
    v = ValidationReport.from_dict(doc)
    rows = {r.label: r for r in _comparison_rows(v) if r.section == "lm-eval"}
    assert "unpaired normal, 8 items" in rows["arc_tiny acc"].change_text()
    doc["lm_eval"]["tasks"]["arc_tiny"]["interval"] = {"acc": [-0.3, 0.05]}
    rows = {r.label: r for r in _comparison_rows(ValidationReport.from_dict(doc)) if r.section == "lm-eval"}
    assert rows["arc_tiny acc"].change_text() == "-0.1250 (95% CI -0.3000 to +0.0500, paired over 8 items)"


def test_csv_export(result, tmp_path):
    import pandas as pd

    paths = reports.export_csv(result, tmp_path / "tables")
    names = {p.name for p in paths}
    assert {"ranking.csv", "sweep.csv", "layers.csv", "findings.csv", "groups.csv"} <= names
    ranking = pd.read_csv(tmp_path / "tables" / "ranking.csv")
    assert list(ranking["target"]) == [r.target for r in result.ranking()]
    assert len(pd.read_csv(tmp_path / "tables" / "sweep.csv")) == len(result.model_trials)
    assert len(pd.read_csv(tmp_path / "tables" / "layers.csv")) == len(result.layer_trials)
    sweep = pd.read_csv(tmp_path / "tables" / "sweep.csv", keep_default_na=False)
    named = {(t, c): a for t, c, a in zip(sweep["target"], sweep["criterion"], sweep["unit_aggregation"])}
    for criterion in ("wanda", "fisher"):
        assert named[("unit:head", criterion)] == UNIT_AGGREGATION["mamba2"].get(criterion, DEFAULT_UNIT_AGGREGATION)
    assert named[("unit:head", "random")] == named[("in_proj", "wanda")] == ""  # native units; an element cut
    findings = pd.read_csv(tmp_path / "tables" / "findings.csv")
    assert len(findings) == len(result.findings())
    assert list(findings["windows"].fillna(-1)) == [-1 if f.windows is None else f.windows for f in result.findings()]
    assert len(pd.read_csv(tmp_path / "tables" / "groups.csv")) == len(result.analysis.groups)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_writes_html_markdown_and_csv(run_dir, result, tmp_path, capsys):
    from ssm_profile.plan import PlanRequest, make_plan as make_real_plan

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(make_real_plan(result, PlanRequest(ratio=0.2, measure=False)).to_dict()))
    validation = tmp_path / "validation.json"
    validation.write_text(json.dumps(validation_document()))
    out = tmp_path / "out" / "report.html"
    assert main(["report", str(run_dir), "-o", str(out), "--plan", str(plan), "--validation", str(validation),
                 "--csv", str(tmp_path / "csv")]) == 0
    html = out.read_text()
    assert all(f'id="{sid}"' in html for sid in SECTION_IDS)
    assert (tmp_path / "csv" / "ranking.csv").exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert main(["report", str(run_dir), "-o", str(tmp_path / "summary.md")]) == 0  # format from the suffix
    assert (tmp_path / "summary.md").read_text().startswith("# Profile report")
    assert main(["report", str(run_dir), "--format", "md", "-o", "-"]) == 0
    assert "## Sensitivity ranking" in capsys.readouterr().out


def run_dir_result(run_dir) -> ProfileResult:
    return ProfileResult.load(run_dir)


@pytest.mark.parametrize("case", ["missing_run", "not_a_run", "missing_plan", "bad_plan_json", "plan_not_object",
                                  "plan_fails_schema", "missing_validation", "validation_of_other_kind",
                                  "validation_lacks_keys", "output_is_dir"])
def test_cli_errors_are_one_line(case, run_dir, tmp_path, capsys):
    args = ["report", str(run_dir), "-o", str(tmp_path / "r.html")]
    if case == "missing_run":
        args[1] = str(tmp_path / "nope")
    elif case == "not_a_run":
        args[1] = str(tmp_path)
    elif case == "missing_plan":
        args += ["--plan", str(tmp_path / "missing-plan.json")]
    elif case == "bad_plan_json":
        (tmp_path / "p.json").write_text("{not json")
        args += ["--plan", str(tmp_path / "p.json")]
    elif case == "plan_not_object":
        (tmp_path / "p.json").write_text("[1, 2]")
        args += ["--plan", str(tmp_path / "p.json")]
    elif case == "plan_fails_schema":  # the report reads plans with the one loader apply uses
        bad = make_plan(run_dir_result(run_dir)).to_dict()
        del bad["dense"]
        (tmp_path / "p.json").write_text(json.dumps(bad))
        args += ["--plan", str(tmp_path / "p.json")]
    elif case == "missing_validation":
        args += ["--validation", str(tmp_path / "v.json")]
    elif case == "validation_of_other_kind":
        (tmp_path / "v.json").write_text(json.dumps({**validation_document(), "kind": "other"}))
        args += ["--validation", str(tmp_path / "v.json")]
    elif case == "validation_lacks_keys":
        doc = validation_document()
        del doc["perplexity"]
        (tmp_path / "v.json").write_text(json.dumps(doc))
        args += ["--validation", str(tmp_path / "v.json")]
    elif case == "output_is_dir":
        args[3] = str(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ssm-profile: error: ") and "\n" not in err and "Traceback" not in err, err
    assert not (tmp_path / "r.html").exists()


# ---------------------------------------------------------------------------------------------- browser
class _WebSocket:
    """Just enough of RFC 6455 for the DevTools protocol on localhost (text frames, no extensions)."""

    def __init__(self, url: str, timeout: float = 30.0):
        u = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket handshake failed")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError(head.decode(errors="replace"))

    def _frame(self, opcode: int, data: bytes) -> None:
        header = bytearray([0x80 | opcode])
        n = len(data)
        if n < 126:
            header.append(0x80 | n)
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(bytes(header) + mask + masked)

    def send(self, text: str) -> None:
        self._frame(0x1, text.encode())

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("websocket closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self) -> str:
        message = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the browser")
            if opcode == 0x9:
                self._frame(0xA, payload)
                continue
            if opcode in (0x0, 0x1, 0x2):
                message += payload
                if b0 & 0x80:
                    return message.decode()

    def close(self) -> None:
        try:
            self._frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


class _DevTools:
    def __init__(self, ws: _WebSocket):
        self.ws, self.next_id, self.events, self.dialogs = ws, 0, [], []

    def _event(self, msg: dict) -> None:
        self.events.append(msg)
        if msg["method"] == "Page.javascriptDialogOpening":  # an alert() ran: record it, dismiss it
            self.dialogs.append(msg["params"].get("message"))
            self.next_id += 1
            self.ws.send(json.dumps({"id": self.next_id, "method": "Page.handleJavaScriptDialog",
                                     "params": {"accept": True}}))

    def call(self, method: str, **params):
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self._event(msg)

    def wait(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self._event(msg)
                if msg["method"] == method:
                    return msg
        raise TimeoutError(method)

    def eval(self, expression: str):
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(out["exceptionDetails"])
        return out["result"].get("value")


def _start_chromium(profile: Path) -> tuple[subprocess.Popen, str]:
    exe = shutil.which("chromium")
    proc = subprocess.Popen(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
         "--hide-scrollbars", "--mute-audio", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "--window-size=1280,2400", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        match = re.search(r"DevTools listening on (ws://\S+)", line)
        if match:
            return proc, match.group(1)
    proc.kill()
    raise RuntimeError("chromium did not start its DevTools endpoint")


@contextlib.contextmanager
def _chromium(tmp_path: Path, width: int, height: int, domains=("Page", "Runtime", "Log", "Network")):
    """A headless chromium page at width x height, driven over the DevTools protocol; closed after."""
    proc, browser_ws = _start_chromium(tmp_path / "profile")
    ws = None
    try:
        ws = _WebSocket(_page_socket(browser_ws))
        cdp = _DevTools(ws)
        for domain in domains:
            cdp.call(f"{domain}.enable")
        cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        yield cdp
    finally:
        if ws is not None:
            ws.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _page_socket(browser_ws: str) -> str:
    u = urllib.parse.urlparse(browser_ws)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # localhost only, never a proxy
    with opener.open(f"http://{u.hostname}:{u.port}/json/list", timeout=10) as resp:
        targets = json.loads(resp.read())
    return next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")


def _visit(cdp: _DevTools, path: Path) -> dict:
    """Load ``path``; return what went wrong (console errors, exceptions, requests, dialogs)."""
    cdp.events.clear()
    url = path.resolve().as_uri()
    cdp.call("Page.navigate", url=url)
    cdp.wait("Page.loadEventFired")
    cdp.eval("new Promise(r => setTimeout(r, 300))")
    errors, requests = [], []
    for e in cdp.events:
        m, p = e["method"], e.get("params", {})
        if m == "Runtime.exceptionThrown":
            errors.append(p["exceptionDetails"].get("text", "") + str(p["exceptionDetails"].get("exception", "")))
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
            errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif m == "Log.entryAdded" and p["entry"].get("level") in ("error", "warning"):
            errors.append(p["entry"].get("text", ""))
        elif m == "Network.requestWillBeSent":
            requests.append(p["request"]["url"])
    others = [r for r in requests if r != url and not r.startswith("data:")]
    return {"errors": errors, "requests": others, "dialogs": list(cdp.dialogs)}


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium on PATH")
def test_page_renders_in_chromium_without_errors_or_network(result, hostile, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(reports.render_html(result, plan=make_plan(result), validation=VALIDATION), encoding="utf-8")
    evil = tmp_path / "evil.html"
    evil.write_text(reports.render_html(hostile, plan=make_plan(hostile, note=XSS2), validation=VALIDATION))
    with _chromium(tmp_path, 1280, 2400) as cdp:
        seen = _visit(cdp, page)
        assert seen == {"errors": [], "requests": [], "dialogs": []}, seen
        assert cdp.eval("document.documentElement.getAttribute('data-ready')") == "1"
        assert cdp.eval("document.getElementById('js-errors').textContent") == ""
        heights = cdp.eval("JSON.stringify(%s.map(id => { const e = document.getElementById(id); "
                           "return e ? e.getBoundingClientRect().height : -1; }))" % json.dumps(SECTION_IDS))
        assert all(h > 40 for h in json.loads(heights)), heights
        assert cdp.eval("document.querySelectorAll('svg.chart').length") > 20
        # Screenshots for people to look at: the first 1280x2400 pixels and the whole page.
        out = REPO / "build" / "report-screenshot.png"
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"]))
        assert out.stat().st_size > 10_000
        height = cdp.eval("document.documentElement.scrollHeight")
        full = cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                        clip={"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1})
        (REPO / "build" / "report-screenshot-full.png").write_bytes(base64.b64decode(full["data"]))

        # Sorting: the ranking table by target name, ascending.
        order = cdp.eval("""(() => { const t = document.getElementById('ranking-table');
            t.querySelectorAll('thead th')[1].click();
            return Array.from(t.tBodies[0].rows).map(r => r.cells[1].textContent.trim()); })()""")
        assert order == sorted(order, key=str.lower) or order == sorted(order), order
        # Series toggling: the first legend button hides its series in every panel of the figure.
        hidden = cdp.eval("""(() => { const b = document.querySelector('#sensitivity .legend button');
            b.click(); const id = b.getAttribute('data-toggle');
            const fig = b.closest('.fig');
            return [b.getAttribute('aria-pressed'),
                    Array.from(fig.querySelectorAll('[data-s]')).filter(e => e.getAttribute('data-s') === id)
                         .every(e => e.classList.contains('off'))]; })()""")
        assert hidden == ["false", True]
        # Tooltip on a curve point.
        tip = cdp.eval("""(() => { const p = document.querySelector('#sensitivity circle.pt[data-tip]');
            const r = p.getBoundingClientRect();
            p.dispatchEvent(new MouseEvent('mouseover', {bubbles: true, clientX: r.x, clientY: r.y}));
            const t = document.getElementById('tip');
            return [getComputedStyle(t).display, t.textContent]; })()""")
        assert tip[0] == "block" and "ΔL" in tip[1]

        # Injected markup in the model name, notes and data paths shows as text and never runs.
        seen = _visit(cdp, evil)
        assert seen == {"errors": [], "requests": [], "dialogs": []}, seen
        assert cdp.eval("window.__pwned === undefined") is True
        assert cdp.eval("document.title").startswith(XSS)
        assert cdp.eval("document.querySelector('h1.title').textContent") == XSS
        assert cdp.eval("document.scripts.length") == 3


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium on PATH")
def test_answer_is_on_the_first_screen(result, tmp_path):
    """At 1400x900 the decision panel starts on the first screen; with SSM_PROFILE_GALLERY=1 the
    screen is saved as the README's gallery picture."""
    page = tmp_path / "report.html"
    page.write_text(reports.render_html(result, plan=make_plan(result), validation=VALIDATION), encoding="utf-8")
    bare = tmp_path / "bare.html"
    bare.write_text(reports.render_html(result), encoding="utf-8")
    with _chromium(tmp_path, 1400, 900, domains=("Page", "Runtime")) as cdp:
        for path in (bare, page):  # the page with a plan last: it is the gallery picture
            _visit(cdp, path)
            top = cdp.eval("document.getElementById('decision').getBoundingClientRect().top")
            assert 0 <= top < 900 - 200, (path.name, top)  # the panel, not just its edge, is on screen
        if os.environ.get("SSM_PROFILE_GALLERY") == "1":
            out = REPO / "docs" / "gallery" / "report-first-screen.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"]))
            assert out.stat().st_size < 300_000


def test_answer_states_the_promise_checked_on_verification(result):
    from ssm_profile.reports.decision import decision_section
    from ssm_profile.reports.facts import Facts

    plan = make_plan(result)
    plan.objective.max_ppl_increase = 0.1
    plan.verification = Verification(dense_loss=6.0, loss=6.03, delta_loss=0.033, rel_ppl_increase=0.034,
                                     interval=[0.021, 0.047], windows=32, max_ppl_increase=0.1, kept=True)
    html = unescape(decision_section(Facts.of(result), plan))
    assert "kept: perplexity +3.4% (95% interval +2.1% to +4.7%) on 32 held-out verification windows" in html
    plan.verification.kept = False
    assert "NOT kept: perplexity +3.4%" in unescape(decision_section(Facts.of(result), plan))


def test_every_report_renders_from_the_typed_documents_alone(result):
    """Plan, validation and recovery reach the HTML and Markdown renderers as typed documents; a dict
    (the JSON the renderers used to re-check key by key) is not accepted in their place."""
    plan, recovery = make_plan(result), RecoveryRecord.from_dict(recovery_document())
    html = reports.render_html(result, plan=plan, validation=VALIDATION, recovery=recovery)
    markdown = reports.render_markdown(result, plan=plan, validation=VALIDATION, recovery=recovery)
    assert all(f'id="{sid}"' in html for sid in ("decision", "plan", "validation", "recovery"))
    assert all(h in markdown for h in ("## Pruning plan", "## Validation", "## Recovery"))
    assert VALIDATION.verification.phrase() in unescape(html)  # one wording of the interval everywhere
    with pytest.raises(AttributeError):
        reports.render_html(result, plan=plan.to_dict())


def test_every_report_renders_from_document_files_alone(run_dir, tmp_path, capsys):
    """The run (``ProfileResult.load``), the plan, validation and recovery written as JSON and read back by
    their loaders: the HTML and Markdown reports, the report's answer and the CLI's plan answer render from
    those typed objects alone, each showing what the files hold."""
    from ssm_profile.base.io import write_json_atomic
    from ssm_profile.cli.plan_cmd import print_plan
    from ssm_profile.documents import load_plan, load_recovery, load_validation, write_plan
    from ssm_profile.plan import PlanRequest, make_plan as real_plan
    from ssm_profile.reports.answer import answer
    from ssm_profile.reports.facts import Facts

    result = ProfileResult.load(run_dir)
    write_plan(real_plan(result, PlanRequest(ratio=0.1, measure=False)), tmp_path / "plan.json")
    write_json_atomic(tmp_path / "validation.json", validation_document())
    write_json_atomic(tmp_path / "recovery.json", recovery_document())
    plan, validation = load_plan(tmp_path / "plan.json"), load_validation(tmp_path / "validation.json")
    recovery = load_recovery(tmp_path / "recovery.json")

    html = unescape(reports.render_html(result, plan=plan, validation=validation, recovery=recovery))
    markdown = reports.render_markdown(result, plan=plan, validation=validation, recovery=recovery)
    facts = Facts.of(result)
    said = answer(facts, plan, validation, recovery, plan_path=str(tmp_path / "plan.json"))
    print_plan(plan)
    printed = capsys.readouterr().out
    verification = validation.verification.phrase()
    assert verification in html and "After recovery by distillation: perplexity +2.0%" in html
    assert all(h in markdown for h in ("## Pruning plan", "## Validation", "## Recovery")) and verification in markdown
    assert f"{result.analysis.totals.ssm_share:.0%}" in html  # the run's analysis, read from analysis.json
    assert [target for target, _ in said.cuts] == [a.target for a in plan.actions] and said.outcome
    assert result.record.model.name in printed and all(a.target in printed for a in plan.actions)
