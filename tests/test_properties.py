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


NON_FINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])


@PROPERTY
@given(data=st.data(), bad=NON_FINITE)
def test_a_non_finite_number_anywhere_in_a_plan_is_one_line(real_plan, scratch, data, bad):
    """NaN passed the schema's bounds (every comparison with it is false): apply cut at a NaN sparsity."""
    document = json.loads(json.dumps(real_plan))
    numbers = [p for p in _paths(document) if p and isinstance(_at(document, p), float)]
    document = _mutate(document, data.draw(st.sampled_from(numbers)), "replace", bad)
    target = scratch / "non-finite.json"
    target.write_text(json.dumps(document))  # json writes NaN and Infinity, and reads them back
    from ssm_profile.documents import load_plan

    with pytest.raises(PlanError, match="non-finite number at"):
        load_plan(target)


def _at(document: Any, path: tuple) -> Any:
    for step in path:
        document = document[step]
    return document


@pytest.fixture(scope="module")
def tokenizer():
    from ssm_profile.model.resolve import load_model

    return load_model("tiny-mamba").tokenizer


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.text(alphabet="abcdé.,7", min_size=1, max_size=12), min_size=1, max_size=200),
       piece=st.integers(min_value=14, max_value=300))
def test_a_long_text_tokenised_in_pieces_is_the_whole_text_tokenised(tokenizer, monkeypatch, words, piece):
    """Texts past CHUNK_CHARS are tokenised in pieces cut before a space (a 60 MB text took 5.8 GB in one
    call): words between single spaces, none longer than a piece, give the same tokens as one call, and
    never more than the limit."""
    from ssm_profile.calibration import data

    text = " ".join(words)
    whole = data._tokenize(tokenizer, text)
    monkeypatch.setattr(data, "CHUNK_CHARS", 0)
    monkeypatch.setattr(data, "PIECE_CHARS", piece)
    assert data._tokenize(tokenizer, text).tolist() == whole.tolist()
    limit = max(1, len(whole) // 2)
    assert data._tokenize(tokenizer, text, limit=limit).tolist() == whole[:limit].tolist()


@pytest.fixture(scope="module")
def real_record(real_plan, tmp_path_factory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("record")
    (base / "plan.json").write_text(json.dumps(real_plan))
    assert main(["apply", "tiny-mamba", str(base / "plan.json"), "-o", str(base / "pruned"), "--quiet"]) == 0
    return json.loads((base / "pruned" / "pruning.json").read_text())


@PROPERTY
@given(data=st.data(), how=st.sampled_from(["replace", "delete", "add"]), new=JSON)
def test_any_mutation_of_a_pruning_record_is_a_record_or_one_line(real_record, scratch, data, how, new):
    """Every document reads its fields by type (Document.from_dict): a string where a count was is one line."""
    from ssm_profile.base.errors import SSMProfileError
    from ssm_profile.documents import PruningRecord, load_pruning_record

    document = json.loads(json.dumps(real_record))
    document = _mutate(document, data.draw(st.sampled_from(_paths(document))), how, new)
    target = scratch / "pruning.json"
    target.write_text(json.dumps(document))
    try:
        record = load_pruning_record(target)
    except SSMProfileError as err:
        assert "\n" not in str(err) and str(err), repr(str(err))
        return
    assert isinstance(record, PruningRecord)
