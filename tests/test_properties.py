"""Property-based tests of the readers of user files: whatever the bytes, a value or one line of error.

The plan loader gets random JSON documents and random mutations of a real plan; the data reader gets
random bytes as .txt and .jsonl files. Any exception other than the documented one-line error fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssm_profile.cli.main import main
from ssm_profile.base.errors import DataError, PlanError

TINY = ["--nsamples", "2", "--eval-samples", "2", "--seqlen", "16", "--sparsities", "0.5",
        "--criteria", "magnitude", "--no-per-layer", "--quiet"]
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def real_plan(tmp_path_factory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("plan")
    assert main(["profile", "tiny-mamba", "-o", str(base / "run"), *TINY]) == 0
    assert main(["plan", str(base / "run"), "-o", str(base / "plan.json"), "--ratio", "0.1", "--no-measure",
                 "--quiet"]) == 0
    return json.loads((base / "plan.json").read_text())


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scratch")


def _load_plan_or_one_line(path: Path) -> None:
    from ssm_profile.documents import Plan, load_plan

    try:
        plan = load_plan(path)
    except PlanError as err:
        assert "\n" not in str(err) and str(err), repr(str(err))
        return
    assert isinstance(plan, Plan)
    plan.to_dict()  # a loaded plan can be written back


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every location in a JSON value (keys and list indices from the root)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _mutate(document: Any, path: tuple, how: str, new: Any) -> Any:
    if not path:
        return new
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if how == "delete":
        del parent[last]
    elif how == "add" and isinstance(parent, dict):
        parent[f"{last}_extra"] = new
    else:
        parent[last] = new
    return document


@PROPERTY
@given(document=JSON)
def test_any_json_document_is_a_plan_or_one_line(scratch, document):
    path = scratch / "random.json"
    path.write_text(json.dumps(document))
    _load_plan_or_one_line(path)


@PROPERTY
@given(data=st.data(), how=st.sampled_from(["replace", "delete", "add"]), new=JSON)
def test_any_mutation_of_a_real_plan_is_a_plan_or_one_line(real_plan, scratch, data, how, new):
    document = json.loads(json.dumps(real_plan))
    path = data.draw(st.sampled_from(_paths(document)))
    document = _mutate(document, path, how, new)
    target = scratch / "mutated.json"
    target.write_text(json.dumps(document))
    _load_plan_or_one_line(target)


@PROPERTY
@given(cut=st.integers(min_value=0, max_value=4000), garbage=st.binary(max_size=40))
def test_a_torn_or_garbled_plan_file_is_one_line(real_plan, scratch, cut, garbage):
    text = json.dumps(real_plan, indent=2).encode()
    target = scratch / "torn.json"
    target.write_bytes(text[:cut] + garbage)
    _load_plan_or_one_line(target)


@PROPERTY
@given(content=st.binary(max_size=600) | st.text(max_size=300).map(str.encode),
       suffix=st.sampled_from([".txt", ".jsonl"]))
def test_any_data_file_is_text_or_one_line(scratch, content, suffix):
    from ssm_profile.calibration.data import read_text

    path = scratch / f"data{suffix}"
    path.write_bytes(content)
    try:
        text = read_text(str(path))
    except DataError as err:
        assert "\n" not in str(err) and str(err)
        return
    assert isinstance(text, str) and text.strip()


@PROPERTY
@given(lines=st.lists(JSON.map(json.dumps) | st.text(max_size=30), max_size=6))
def test_any_jsonl_lines_are_text_or_one_line(scratch, lines):
    from ssm_profile.calibration.data import read_text

    path = scratch / "records.jsonl"
    path.write_text("\n".join(lines))
    try:
        text = read_text(str(path))
    except DataError as err:
        assert "\n" not in str(err) and str(err)
        return
    assert isinstance(text, str)
