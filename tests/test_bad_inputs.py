"""Bad inputs: every case exits 2 with exactly one stderr line, no traceback, and changes no input file.

Cases run the CLI in-process. Option errors are caught before a model loads; data, model and run
directory cases use the embedded tiny-mamba with the smallest settings.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

from ssm_profile.cli.main import main
from ssm_profile.model.resolve import embedded_dir

TINY = ["--nsamples", "2", "--eval-samples", "2", "--seqlen", "16", "--sparsities", "0.5",
        "--criteria", "magnitude", "--no-per-layer", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run, with its plan (``_plan(run)``) and pruned checkpoint (``_pruned(run)``) beside it."""
    run = tmp_path_factory.mktemp("bad") / "run"
    assert main(["profile", "tiny-mamba", "-o", str(run), *TINY]) == 0
    assert main(["plan", str(run), "-o", str(_plan(run)), "--ratio", "0.1", "--no-measure", "--quiet"]) == 0
    assert main(["apply", "tiny-mamba", str(_plan(run)), "-o", str(_pruned(run)), "--quiet"]) == 0
    return run


def _plan(run: Path) -> Path:
    return run.parent / "plan.json"


def _pruned(run: Path) -> Path:
    return run.parent / "pruned"


def _plan_copy(tmp: Path, run: Path, change: Callable[[dict], None], seal: bool = True) -> str:
    from ssm_profile.documents.plan import Plan, actions_digest

    plan = json.loads(_plan(run).read_text())
    change(plan)
    try:  # re-sealed, so the case is refused for its own reason and not as an edited plan
        if seal:
            plan["actions_digest"] = actions_digest(Plan.from_dict(plan))
    except Exception:  # noqa: BLE001 - a change the document itself refuses needs no seal
        pass
    return str(_file(tmp, "changed-plan.json", json.dumps(plan)))


def _apply(tmp: Path, run: Path, *extra: str) -> list[str]:
    return ["apply", "tiny-mamba", str(_plan(run)), "-o", str(tmp / "out"), "--quiet", *extra]


def _apply_copy(tmp: Path, run: Path, change: Callable[[dict], None], seal: bool = True) -> list[str]:
    return ["apply", "tiny-mamba", _plan_copy(tmp, run, change, seal), "-o", str(tmp / "out"), "--quiet"]


def _config(model: Path, **changes) -> None:
    config = json.loads((model / "config.json").read_text())
    config.update(changes)
    (model / "config.json").write_text(json.dumps(config))


def _pruned_copy(tmp: Path, run: Path, damage: Callable[[Path], None]) -> str:
    copy = tmp / "pruned"
    shutil.copytree(_pruned(run), copy)
    damage(copy)
    return str(copy)


def _json_edit(name: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(directory: Path) -> None:
        document = json.loads((directory / name).read_text())
        change(document)
        (directory / name).write_text(json.dumps(document))
    return damage


def _double_width(model: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    config["intermediate_size"] *= 2
    (model / "config.json").write_text(json.dumps(config))


def _profile(tmp: Path, *extra: str) -> list[str]:
    return ["profile", "tiny-mamba", "-o", str(tmp / "out"), *TINY, *extra]


def _file(tmp: Path, name: str, content: bytes | str) -> Path:
    path = tmp / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _fifo(tmp: Path) -> Path:
    path = tmp / "pipe.txt"
    os.mkfifo(path)
    return path


def _zero_link(tmp: Path, name: str = "zero.txt") -> Path:
    path = tmp / name
    path.symlink_to("/dev/zero")
    return path


def _model_copy(tmp: Path, damage: Callable[[Path], None]) -> str:
    model = tmp / "model"
    shutil.copytree(embedded_dir("tiny-mamba"), model)
    damage(model)
    return str(model)


def _truncate(model: Path) -> None:
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])


def _run_copy(tmp: Path, run: Path, damage: Callable[[Path], None]) -> str:
    copy = tmp / "run"
    shutil.copytree(run, copy)
    damage(copy)
    return str(copy)


def _damage_journal_middle(run: Path) -> None:
    journal = run / "trials.jsonl"
    journal.write_text('{"target": 1}\n' + journal.read_text())


def _wrong_field_type(run: Path) -> None:
    journal = run / "trials.jsonl"
    record = json.loads(journal.read_text().splitlines()[0])
    record["sparsity"] = "half"
    journal.write_text(json.dumps(record) + "\n" + journal.read_text())


def _edit_digest(run: Path, role: str) -> None:
    """What an edited text looks like to a resume: the run's windows of ``role`` had another digest."""
    meta = json.loads((run / "run.json").read_text())
    meta["data"]["digests"][role] = "sha256:" + "0" * 64
    (run / "run.json").write_text(json.dumps(meta))


def _journal_edit(change: Callable[[list[dict]], None]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        journal = run / "trials.jsonl"
        records = [json.loads(line) for line in journal.read_text().splitlines()]
        change(records)
        journal.write_text("".join(json.dumps(r) + "\n" for r in records))
    return damage


def _run_json_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        meta = json.loads((run / "run.json").read_text())
        change(meta)
        (run / "run.json").write_text(json.dumps(meta))
    return damage


def _raise(err: OSError):
    def fail(*_args, **_kwargs):
        raise err
    return fail


def _unwritable(monkeypatch, err: OSError) -> None:
    monkeypatch.setattr("ssm_profile.base.io.tempfile.mkstemp", _raise(err))


def _unwritable_in(monkeypatch, folder: Path, err: OSError) -> Path:
    """Writing in ``folder`` (made empty here) fails as a read-only place does; elsewhere it works."""
    import tempfile

    folder.mkdir(exist_ok=True)
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if Path(kwargs.get("dir") or "").resolve() == folder.resolve():
            raise err
        return real(*args, **kwargs)

    monkeypatch.setattr("ssm_profile.base.io.tempfile.mkstemp", mkstemp)
    monkeypatch.setattr("ssm_profile.base.outputs.tempfile.mkstemp", mkstemp)
    return folder


def _text_in(folder: Path, name: str = "cal.txt") -> Path:
    """A copy of the embedded calibration text at ``folder/name`` (folders made)."""
    from ssm_profile.model.resolve import embedded_data

    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(embedded_data("calibration.txt"), path)
    return path


def _with_tokenizer(model: Path) -> None:
    for item in embedded_dir("tokenizer").iterdir():
        shutil.copyfile(item, model / item.name)


def _tokenizer_copy(tmp: Path) -> Path:
    return Path(shutil.copytree(embedded_dir("tokenizer"), tmp / "tok"))


def _symlink_to_dir(tmp: Path) -> Path:
    (tmp / "real").mkdir()
    _file(tmp / "real", "mine.txt", "keep")
    (tmp / "link").symlink_to(tmp / "real")
    return tmp / "link"


EROFS = OSError(errno.EROFS, "Read-only file system")

# id -> (tmp_path, run_dir, monkeypatch) -> argv
CASES: dict[str, Callable[[Path, Path, pytest.MonkeyPatch], list[str]]] = {
    # profile options: refused before a model loads
    "sparsities empty": lambda t, r, m: _profile(t, "--sparsities", ""),
    "sparsities repeated": lambda t, r, m: _profile(t, "--sparsities", "0.5,0.5"),
    "sparsities zero": lambda t, r, m: _profile(t, "--sparsities", "0,0.5"),
    "sparsities one": lambda t, r, m: _profile(t, "--sparsities", "1"),
    "sparsities nan": lambda t, r, m: _profile(t, "--sparsities", "nan"),
    "sparsities words": lambda t, r, m: _profile(t, "--sparsities", "a,b"),
    "sparsities empty item": lambda t, r, m: _profile(t, "--sparsities", "0.1,,0.5"),
    "probe sparsity 2": lambda t, r, m: _profile(t, "--probe-sparsity", "2"),
    "probe sparsity 0": lambda t, r, m: _profile(t, "--probe-sparsity", "0"),
    "tolerance negative": lambda t, r, m: _profile(t, "--tolerance", "-1"),
    "tolerance zero": lambda t, r, m: _profile(t, "--tolerance", "0"),
    "tolerance infinite": lambda t, r, m: _profile(t, "--tolerance", "inf"),
    "threads 0": lambda t, r, m: _profile(t, "--threads", "0"),
    "threads 999": lambda t, r, m: _profile(t, "--threads", str((os.cpu_count() or 1) + 1)),
    "seqlen 1": lambda t, r, m: _profile(t, "--seqlen", "1"),
    "seqlen 0": lambda t, r, m: _profile(t, "--seqlen", "0"),
    "nsamples 0": lambda t, r, m: _profile(t, "--nsamples", "0"),
    "nsamples words": lambda t, r, m: _profile(t, "--nsamples", "many"),
    "eval samples negative": lambda t, r, m: _profile(t, "--eval-samples", "-3"),
    "batch size 0": lambda t, r, m: _profile(t, "--batch-size", "0"),
    "unknown criterion": lambda t, r, m: _profile(t, "--criteria", "nonsense"),
    "unknown layer criterion": lambda t, r, m: _profile(t, "--layer-criterion", "nonsense"),
    "unknown option": lambda t, r, m: _profile(t, "--bogus"),
    "device mps": lambda t, r, m: _profile(t, "--device", "mps"),
    "device unknown": lambda t, r, m: _profile(t, "--device", "tpu9"),
    "dtype unknown": lambda t, r, m: _profile(t, "--dtype", "float7"),
    "unknown model": lambda t, r, m: ["profile", "no-such-model", "-o", str(t / "out"), *TINY],
    # data files
    "data missing": lambda t, r, m: _profile(t, "--calibration", str(t / "missing.txt")),
    "data is a directory": lambda t, r, m: _profile(t, "--calibration", str(t)),
    "data is a FIFO": lambda t, r, m: _profile(t, "--calibration", str(_fifo(t))),
    "data is /dev/zero": lambda t, r, m: _profile(t, "--calibration", str(_zero_link(t))),
    "data jsonl binary": lambda t, r, m: _profile(t, "--calibration", str(_file(t, "d.jsonl", os.urandom(4096)))),
    "data txt binary": lambda t, r, m: _profile(t, "--calibration", str(_file(t, "d.txt", b"\xff\xfe\x00" * 999))),
    "data jsonl bad record": lambda t, r, m: _profile(t, "--calibration", str(_file(t, "d.jsonl", '{"text": 1}\n'))),
    "data empty": lambda t, r, m: _profile(t, "--calibration", str(_file(t, "d.txt", ""))),
    "data too short": lambda t, r, m: _profile(t, "--calibration", str(_file(t, "c.txt", "a b")),
                                               "--evaluation", str(_file(t, "e.txt", "c d"))),
    "data calibration is the evaluation": lambda t, r, m: _profile(
        t, "--calibration", str(_file(t, "c.txt", "words " * 5000)), "--evaluation", str(t / "c.txt")),
    "data calibration is the evaluation by another path": lambda t, r, m: _profile(
        t, "--calibration", str(_file(t, "c.txt", "words " * 5000)), "--evaluation", str(t / "." / "c.txt")),
    # run directories
    "output is a file": lambda t, r, m: (_file(t, "out", "mine"), _profile(t))[1],
    "output is not a run": lambda t, r, m: ((t / "out").mkdir(), _file(t / "out", "mine.txt", "keep"),
                                            _profile(t))[2],
    "output already a run": lambda t, r, m: ["profile", "tiny-mamba", "-o", str(r), *TINY],
    "resume damaged run.json": lambda t, r, m: ["profile", "tiny-mamba", "-o", _run_copy(
        t, r, lambda d: (d / "run.json").write_text("{oops")), *TINY, "--resume"],
    "resume damaged journal": lambda t, r, m: ["profile", "tiny-mamba", "-o", _run_copy(
        t, r, _damage_journal_middle), *TINY, "--resume"],
    "resume with an edited calibration text": lambda t, r, m: [
        "profile", "tiny-mamba", "-o", _run_copy(t, r, lambda d: _edit_digest(d, "calibration")), *TINY, "--resume"],
    "resume with an edited evaluation text": lambda t, r, m: [
        "profile", "tiny-mamba", "-o", _run_copy(t, r, lambda d: _edit_digest(d, "evaluation")), *TINY, "--resume"],
    "memory estimate too large": lambda t, r, m: (
        m.setattr("ssm_profile.profiling.estimate.available_memory", lambda: 1 << 20), _profile(t))[1],
    # models
    "model weights truncated": lambda t, r, m: ["analyze", _model_copy(t, _truncate)],
    "model weights random": lambda t, r, m: ["analyze", _model_copy(
        t, lambda d: (d / "model.safetensors").write_bytes(os.urandom(50_000)))],
    "model config is /dev/zero": lambda t, r, m: ["analyze", _model_copy(
        t, lambda d: ((d / "config.json").unlink(), _zero_link(d, "config.json")))],
    "model is a file": lambda t, r, m: ["analyze", str(_file(t, "model.bin", "x"))],
    # reports
    "report over the plan": lambda t, r, m: ["report", str(r), "--plan", str(_file(t, "plan.json", "{}")),
                                             "-o", str(t / "plan.json"), "--overwrite"],
    "report over a file": lambda t, r, m: ["report", str(r), "-o", str(_file(t, "mine.html", "keep"))],
    "report over run.json": lambda t, r, m: ["report", str(r), "-o", str(r / "run.json"), "--overwrite"],
    "report csv not empty": lambda t, r, m: (_file(t, "keep.csv", "a"), ["report", str(r), "-o", str(t / "r.html"),
                                                                        "--csv", str(t)])[1],
    "report csv is a file": lambda t, r, m: ["report", str(r), "-o", str(t / "r.html"), "--csv",
                                             str(_file(t, "tables", "x"))],
    "report run.json is /dev/zero": lambda t, r, m: ["report", _run_copy(
        t, r, lambda d: ((d / "run.json").unlink(), _zero_link(d, "run.json"))), "-o", str(t / "r.html")],
    "report run.json a list": lambda t, r, m: ["report", _run_copy(
        t, r, lambda d: (d / "run.json").write_text("[1]")), "-o", str(t / "r.html")],
    "report journal damaged": lambda t, r, m: ["report", _run_copy(t, r, _damage_journal_middle),
                                               "-o", str(t / "r.html")],
    "report journal wrong type": lambda t, r, m: ["report", _run_copy(t, r, _wrong_field_type),
                                                  "-o", str(t / "r.html")],
    # poisoned runs: every record checked on read, the file and field named (were silent wrong plans or tracebacks)
    "plan journal nan loss": lambda t, r, m: ["plan", _run_copy(t, r, _journal_edit(
        lambda rs: rs[0].update(loss=float("nan")))), "-o", str(t / "p.json"), "--no-measure"],
    "plan journal unknown target": lambda t, r, m: ["plan", _run_copy(t, r, _journal_edit(
        lambda rs: rs[0].update(target="bogus"))), "-o", str(t / "p.json"), "--no-measure"],
    "report journal unknown target": lambda t, r, m: ["report", _run_copy(t, r, _journal_edit(
        lambda rs: rs[0].update(target="bogus"))), "-o", str(t / "r.html")],
    "plan journal window count": lambda t, r, m: ["plan", _run_copy(t, r, _journal_edit(
        lambda rs: rs[0].update(window_losses=[1.0, 2.0, 3.0]))), "-o", str(t / "p.json"), "--no-measure"],
    "plan dense record empty": lambda t, r, m: ["plan", _run_copy(
        t, r, lambda d: (d / "dense.json").write_text('{"window_losses": []}')), "-o", str(t / "p.json")],
    "plan settings a string": lambda t, r, m: ["plan", _run_copy(t, r, _run_json_edit(
        lambda j: j.update(settings="x"))), "-o", str(t / "p.json"), "--no-measure"],
    "report settings a string": lambda t, r, m: ["report", _run_copy(t, r, _run_json_edit(
        lambda j: j.update(settings="x"))), "-o", str(t / "r.html")],
    "resume settings a string": lambda t, r, m: ["profile", "tiny-mamba", "-o", _run_copy(t, r, _run_json_edit(
        lambda j: j.update(settings="x"))), *TINY, "--resume"],
    "report tolerance a string": lambda t, r, m: ["report", _run_copy(t, r, _run_json_edit(
        lambda j: j["settings"].update(tolerance="x"))), "-o", str(t / "r.html")],
    "report tolerance negative": lambda t, r, m: ["report", _run_copy(t, r, _run_json_edit(
        lambda j: j["settings"].update(tolerance=-1))), "-o", str(t / "r.html")],
    # analyze outputs
    "analyze json exists": lambda t, r, m: ["analyze", "--json", str(_file(t, "a.json", "{}"))],
    "analyze json over model config": lambda t, r, m: ["analyze", _model_copy(t, lambda d: None), "--json",
                                                       str(t / "model" / "config.json"), "--overwrite"],
    "analyze json permission denied": lambda t, r, m: (
        _unwritable(m, PermissionError(errno.EACCES, "Permission denied", str(t))),
        ["analyze", "--json", str(t / "a.json")])[1],
    "analyze json read-only filesystem": lambda t, r, m: (
        _unwritable(m, OSError(errno.EROFS, "Read-only file system", str(t))),
        ["analyze", "--json", str(t / "a.json")])[1],
    # numbers that cannot be meant: refused before anything loads (they were tracebacks, or trained to inf)
    "profile seed negative": lambda t, r, m: _profile(t, "--seed", "-1"),
    "profile seed past 2**32": lambda t, r, m: _profile(t, "--seed", str(2**90)),
    "profile targets empty": lambda t, r, m: _profile(t, "--targets", ","),
    "recover lr inf": lambda t, r, m: ["recover", _model_copy(t, lambda d: None), "-o", str(t / "out"), "--lr", "inf"],
    "recover temperature inf": lambda t, r, m: ["recover", _model_copy(t, lambda d: None), "-o", str(t / "out"),
                                                "--temperature", "inf"],
    "recover lm-weight nan": lambda t, r, m: ["recover", _model_copy(t, lambda d: None), "-o", str(t / "out"),
                                              "--lm-weight", "nan"],
    "recover minutes inf": lambda t, r, m: ["recover", _model_copy(t, lambda d: None), "-o", str(t / "out"),
                                            "--minutes", "inf"],
    "recover seed negative": lambda t, r, m: ["recover", _model_copy(t, lambda d: None), "-o", str(t / "out"),
                                              "--seed", "-1"],
    # profile run directories: refused before a model loads
    "profile resume and overwrite": lambda t, r, m: _profile(t, "--resume", "--overwrite"),
    "profile overwrite of a non-run": lambda t, r, m: ((t / "out").mkdir(), _file(t / "out", "mine.txt", "keep"),
                                                       _profile(t, "--overwrite"))[2],
    "profile time estimate too long": lambda t, r, m: (
        m.setattr("ssm_profile.profiling.estimate.estimate_profile_seconds", lambda *a: 90_000.0), _profile(t))[1],
    "model config shape mismatch": lambda t, r, m: ["analyze", _model_copy(t, _double_width)],
    # plan outputs and options
    "plan output exists": lambda t, r, m: ["plan", str(r), "-o", str(_file(t, "p.json", "keep")), "--no-measure"],
    "plan output is run.json": lambda t, r, m: ["plan", str(r), "-o", str(r / "run.json"), "--overwrite",
                                                "--no-measure"],
    "plan output is a directory": lambda t, r, m: ["plan", str(r), "-o", str(t), "--overwrite", "--no-measure"],
    "plan threads 0": lambda t, r, m: ["plan", str(r), "-o", str(t / "p.json"), "--threads", "0"],
    "plan run missing": lambda t, r, m: ["plan", str(t / "nothing"), "-o", str(t / "p.json")],
    "plan also-on text missing": lambda t, r, m: ["plan", str(r), "-o", str(t / "p.json"), "--also-on",
                                                  str(t / "none.txt")],
    "plan also-on text empty": lambda t, r, m: ["plan", str(r), "-o", str(t / "p.json"), "--also-on",
                                                str(_file(t, "empty.txt", ""))],
    "plan also-on without measuring": lambda t, r, m: ["plan", str(r), "-o", str(t / "p.json"), "--no-measure",
                                                       "--also-on", str(_file(t, "other.txt", "words"))],
    # apply: plans, outputs and options, all refused before the model loads
    "apply plan missing": lambda t, r, m: ["apply", "tiny-mamba", str(t / "none.json"), "-o", str(t / "out")],
    "apply plan is /dev/zero": lambda t, r, m: ["apply", "tiny-mamba", str(_zero_link(t, "p.json")), "-o",
                                                str(t / "out")],
    "apply plan random bytes": lambda t, r, m: ["apply", str(_file(t, "p.json", os.urandom(2000))), "-o",
                                                str(t / "out")],
    "apply plan over the size limit": lambda t, r, m: (
        m.setattr("ssm_profile.documents.plan.PLAN_LIMIT", 100), _apply(t, r))[1],
    "apply plan without actions key": lambda t, r, m: ["apply", _plan_copy(t, r, lambda p: p.pop("actions")),
                                                       "-o", str(t / "out")],
    "apply no plan": lambda t, r, m: ["apply", "-o", str(t / "out")],
    "apply output exists": lambda t, r, m: ((t / "out").mkdir(), _file(t / "out", "mine.txt", "keep"),
                                            _apply(t, r))[2],
    "apply output is a file": lambda t, r, m: (_file(t, "out", "keep"), _apply(t, r, "--overwrite"))[1],
    "apply output holds the plan": lambda t, r, m: ["apply", "tiny-mamba", str(_file(t, "p.json", _plan(r).read_text())),
                                                    "-o", str(t), "--overwrite"],
    "apply output inside the model": lambda t, r, m: ["apply", _model_copy(t, lambda d: None), str(_plan(r)),
                                                      "-o", str(t / "model" / "pruned")],
    "apply output validated already": lambda t, r, m: (shutil.copytree(_pruned(r), t / "out"), _file(
        t / "out", "validation.json", "{}"), _apply(t, r, "--validate"))[2],
    "apply threads 0": lambda t, r, m: _apply(t, r, "--threads", "0"),
    "apply plan of other weights": lambda t, r, m: [
        "apply", "tiny-mamba2", _plan_copy(t, r, lambda p: None), "-o", str(t / "out"), "--quiet"],
    # plans checked on read: numbers finite, actions consistent, the actions as `plan` wrote them
    "apply plan nan sparsity": lambda t, r, m: _apply_copy(
        t, r, lambda p: p["actions"][0].update(sparsity=float("nan"))),
    "apply plan unit kind not its target": lambda t, r, m: _apply_copy(t, r, lambda p: p["actions"][-1].update(
        unit_kind="state" if p["actions"][-1]["unit_kind"] != "state" else "channel")),
    "apply plan action duplicated": lambda t, r, m: _apply_copy(t, r, lambda p: p["actions"].append(p["actions"][0])),
    "apply plan edited": lambda t, r, m: _apply_copy(t, r, lambda p: p["actions"][0].update(sparsity=0.9), seal=False),
    "validate against another plan": lambda t, r, m: ["validate", "tiny-mamba", str(_pruned(r)), "--plan", _plan_copy(
        t, r, lambda p: p["actions"][0].update(sparsity=0.9)), "-o", str(t / "v.json")],
    # sizes and numbers checked before anything is built (a config of 10^5 layers hung validate; 1e400 a traceback)
    "analyze config of 10^6 layers": lambda t, r, m: ["analyze", _model_copy(
        t, lambda d: _config(d, num_hidden_layers=10**6))],
    "validate config of 10^5 layers": lambda t, r, m: (
        m.setenv("SSM_PROFILE_AVAILABLE_MEMORY", "8GiB"),
        ["validate", _model_copy(t, lambda d: _config(d, num_hidden_layers=10**5)), str(_pruned(r)), "-o",
         str(t / "v.json"), "--no-lm-eval"])[1],
    "validate tokenizer config a list": lambda t, r, m: ["validate", "tiny-mamba", _pruned_copy(
        t, r, lambda d: (d / "tokenizer_config.json").write_text("[1]")), "-o", str(t / "v.json"), "--no-lm-eval"],
    "plan absolute 1e400": lambda t, r, m: ["plan", str(r), "-o", str(t / "p.json"), "--absolute", "1e400"],
    "validate max-ppl-increase 1e400": lambda t, r, m: ["validate", "tiny-mamba", str(_pruned(r)), "-o",
                                                        str(t / "v.json"), "--max-ppl-increase", "1e400"],
    "validate max-ppl-increase nan": lambda t, r, m: ["validate", "tiny-mamba", str(_pruned(r)), "-o",
                                                      str(t / "v.json"), "--max-ppl-increase", "nan"],
    "validate speed batch past memory": lambda t, r, m: [
        "validate", "tiny-mamba", str(_pruned(r)), "-o", str(t / "v.json"), "--no-lm-eval", "--speed-batch",
        "100000000", "128", "--quiet"],
    "recover batch size past memory": lambda t, r, m: ["recover", str(_pruned(r)), "-o", str(t / "out"), "--no-lm-eval",
                                                       "--steps", "1", "--batch-size", str(10**9), "--quiet"],
    "validate pruning record field of another type": lambda t, r, m: ["validate", "tiny-mamba", _pruned_copy(
        t, r, _json_edit("pruning.json", lambda d: d["parameters"].update(before="many"))), "-o", str(t / "v.json")],
    # validate
    "validate output over pruning.json": lambda t, r, m: ["validate", "tiny-mamba", str(_pruned(r)), "-o",
                                                          str(_pruned(r) / "pruning.json"), "--overwrite"],
    "validate output exists": lambda t, r, m: ["validate", "tiny-mamba", str(_pruned(r)), "-o",
                                               str(_file(t, "v.json", "keep"))],
    "validate output over the plan": lambda t, r, m: ["validate", "tiny-mamba", str(_pruned(r)), "--plan",
                                                      str(_plan(r)), "-o", str(_plan(r)), "--overwrite"],
    "validate threads too many": lambda t, r, m: ["validate", "tiny-mamba", str(_pruned(r)), "--threads",
                                                  str((os.cpu_count() or 1) + 1)],
    "validate not a pruned directory": lambda t, r, m: ["validate", "tiny-mamba", str(t)],
    # report
    "report plan of other weights": lambda t, r, m: [
        "report", str(r), "--plan", _plan_copy(t, r, lambda p: p["model"].update(fingerprint="sha256:" + "0" * 64)),
        "-o", str(t / "r.html")],
    "report plan is a directory": lambda t, r, m: ["report", str(r), "--plan", str(t), "-o", str(t / "r.html")],
    # bench and the terminal UI: refused before anything runs
    "bench json exists": lambda t, r, m: ["bench", "--quick", "--json", str(_file(t, "b.json", "keep"))],
    "bench markdown is a directory": lambda t, r, m: ["bench", "--quick", "--markdown", str(t), "--overwrite"],
    "bench json and markdown the same": lambda t, r, m: ["bench", "--quick", "--json", str(t / "b"),
                                                         "--markdown", str(t / "b")],
    "bench scaling shape past memory": lambda t, r, m: ["bench", "--scaling-shapes", "huge:99999999:99999999"],
    "bench scaling shapes garbage": lambda t, r, m: ["bench", "--scaling-shapes", "garbage"],
    "bench scaling shapes empty": lambda t, r, m: ["bench", "--scaling-shapes", ","],
    "bench threads 0": lambda t, r, m: ["bench", "--quick", "--threads", "0"],
    "tui threads 0": lambda t, r, m: ["tui", "tiny-mamba", "--threads", "0"],
    # an output is never, never holds and never lies inside an input, by any path (issue 26)
    "profile overwrite of a run holding its calibration": lambda t, r, m: (
        shutil.copytree(r, t / "out"), _profile(t, "--overwrite", "--calibration", str(_text_in(t / "out"))))[1],
    "recover overwrite of a folder holding its data": lambda t, r, m: (
        ["recover", str(_pruned(r)), "-o", str(t / "out"), "--overwrite", "--data",
         str(_text_in(t / "out" / "texts")), "--steps", "1", "--no-lm-eval", "--quiet"]),
    "apply overwrite of a folder holding the plan's calibration": lambda t, r, m: [
        "apply", "tiny-mamba", _plan_copy(t, r, lambda p: p["data"].update(calibration=str(_text_in(t / "out")))),
        "-o", str(t / "out"), "--overwrite", "--quiet"],
    "plan output over the model's config.json": lambda t, r, m: [
        "plan", str(r), "--model", _model_copy(t, _with_tokenizer), "-o", str(t / "model" / "config.json"),
        "--overwrite", "--quiet"],
    "apply output is the tokenizer folder": lambda t, r, m: [
        "apply", "tiny-mamba", str(_plan(r)), "--tokenizer", str(_tokenizer_copy(t)), "-o", str(t / "tok"),
        "--overwrite", "--quiet"],
    "validate report over its evaluation text": lambda t, r, m: [
        "validate", "tiny-mamba", str(_pruned(r)), "--evaluation", str(_text_in(t, "e.txt")), "-o", str(t / "e.txt"),
        "--overwrite", "--quiet"],
    "validate report over the tokenizer.json": lambda t, r, m: [
        "validate", "tiny-mamba", str(_pruned(r)), "--tokenizer", str(_tokenizer_copy(t)), "-o",
        str(t / "tok" / "tokenizer.json"), "--overwrite", "--quiet"],
    "report over the recovery.json it read": lambda t, r, m: (
        m.setattr("ssm_profile.documents.load_recovery", lambda path: None),
        ["report", _run_copy(t, r, lambda d: _file(d, "recovery.json", "{}")), "-o", str(t / "run" / "recovery.json"),
         "--overwrite"])[1],
    "recover output is the teacher's folder": lambda t, r, m: [
        "recover", str(_pruned(r)), "--teacher", _model_copy(t, lambda d: None), "-o", str(t / "model"),
        "--overwrite", "--steps", "1", "--no-lm-eval", "--quiet"],
    "recover input named OUT.checkpoint": lambda t, r, m: (
        shutil.copytree(_pruned(r), t / "out.checkpoint"),
        ["recover", str(t / "out.checkpoint"), "-o", str(t / "out"), "--overwrite", "--steps", "1", "--no-lm-eval",
         "--quiet"])[1],
    "apply output a symlink to a folder": lambda t, r, m: _apply(t, r, "--overwrite")[:4] + [
        str(_symlink_to_dir(t)), "--overwrite", "--quiet"],
    "profile output a symlink to a run": lambda t, r, m: (
        (t / "link").symlink_to(r), ["profile", "tiny-mamba", "-o", str(t / "link"), *TINY, "--overwrite"])[1],
    "plan of a run called -": lambda t, r, m: ["plan", "-", "-o", str(t / "p.json"), "--no-measure"],
    "profile output -": lambda t, r, m: (m.chdir(t), ["profile", "tiny-mamba", "-o", "-", *TINY])[1],
    # every output writable before any work: read-only places refused before the benchmark, the report
    "bench json read-only": lambda t, r, m: (_unwritable(m, EROFS), ["bench", "--quick", "--json", str(t / "b.json")])[1],
    "report csv read-only": lambda t, r, m: (
        _unwritable_in(m, t / "tables", EROFS), ["report", str(r), "-o", str(t / "out"), "--csv", str(t / "tables")])[1],
    "plan read-only": lambda t, r, m: (_unwritable(m, EROFS), ["plan", str(r), "-o", str(t / "p.json"),
                                                                "--no-measure", "--quiet"])[1],
    "recover read-only": lambda t, r, m: (_unwritable(m, EROFS), [
        "recover", str(_pruned(r)), "-o", str(t / "out"), "--steps", "1", "--no-lm-eval", "--quiet"])[1],
}
if not torch.cuda.is_available():
    CASES["device cuda"] = lambda t, r, m: _profile(t, "--device", "cuda")


def _hashes(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_changes_nothing(case, tmp_path, run_dir, monkeypatch, capsys):
    argv = CASES[case](tmp_path, run_dir, monkeypatch)
    before = _hashes(tmp_path, run_dir.parent)
    started = time.monotonic()
    code = main(argv)
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (case, err)
    assert len(lines) == 1 and err.strip() == lines[0] and "Traceback" not in err, err
    assert "error:" in lines[0]
    after = _hashes(tmp_path, run_dir.parent)
    assert {p: h for p, h in after.items() if p in before} == before, f"{case} changed an input"
    left = [p for root in (tmp_path, run_dir.parent) for p in root.rglob("*")
            if p.name.endswith((".partial", ".tmp", ".backup")) or p.name.endswith(".lock") and p.name != ".lock"]
    assert not left, f"{case} left {left}"
    out = str(tmp_path / "out")
    out_existed = any(p == out or p.startswith(out + os.sep) for p in before)
    assert out_existed or not (tmp_path / "out").exists(), f"{case} left an output behind"
    assert elapsed < 30, f"{case} took {elapsed:.0f} s"


def test_messages_name_the_problem(tmp_path, capsys):
    """Misleading messages of the probe: a directory or FIFO 'does not exist'; --seqlen 1 'loss not finite'."""
    expectations = {
        "is a directory": _profile(tmp_path, "--calibration", str(tmp_path)),
        "FIFO": _profile(tmp_path, "--calibration", str(_fifo(tmp_path))),
        "--seqlen": _profile(tmp_path, "--seqlen", "1"),
        "--probe-sparsity": _profile(tmp_path, "--probe-sparsity", "2"),
    }
    for needle, argv in expectations.items():
        assert main(argv) == 2
        assert needle in capsys.readouterr().err


def test_read_user_file_names_the_limit_and_the_kind(tmp_path):
    from ssm_profile.base.errors import SSMProfileError
    from ssm_profile.base.safe_read import read_user_file

    big = _file(tmp_path, "big.txt", "x" * 2000)
    with pytest.raises(SSMProfileError, match="larger than the 1000 bytes limit"):
        read_user_file(big, "data file", 1000)
    with pytest.raises(SSMProfileError, match="a device"):
        read_user_file(_zero_link(tmp_path), "data file", 1000)


def test_eval_cap_is_announced(tmp_path, capsys):
    text = _file(tmp_path, "short.txt", "In the beginning God created the heaven and the earth. " * 40)
    assert main(_profile(tmp_path, "--evaluation", str(text), "--eval-samples", "100000")) == 0
    err = capsys.readouterr().err
    assert "note: the evaluation text holds" in err and "--eval-samples 100000" in err


# ---------------------------------------------------------------------------------------------- readers and writers
HOLD_RUN = """
import sys, time
from ssm_profile.base.lock import run_dir_lock
with run_dir_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""
HOLD_OUTPUT = """
import sys, time
from ssm_profile.base.lock import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def _holding(script: str, path: Path):
    """A process that holds ``path``'s lock (a profile writing a run, an apply or recover writing OUT_DIR)."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def _one_line_error(capsys, says: str) -> None:
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def _siblings(final: Path) -> list[str]:
    return sorted(p.name for p in final.parent.iterdir() if p.name.startswith(f".{final.name}."))


def test_plan_and_report_refuse_a_run_being_written(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    holder = _holding(HOLD_RUN, run)  # a profile writing it
    try:
        assert main(["plan", str(run), "-o", str(tmp_path / "p.json"), "--no-measure", "--quiet"]) == 2
        _one_line_error(capsys, f"is being written by process {holder.pid}")
        assert main(["report", str(run), "-o", str(tmp_path / "r.html")]) == 2
        _one_line_error(capsys, "is being written")
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "p.json").exists() and not (tmp_path / "r.html").exists()
    assert main(["report", str(run), "-o", str(tmp_path / "r.html")]) == 0  # the writer gone, the run reads


def test_plan_and_report_say_the_run_is_unfinished(run_dir, tmp_path, capsys):
    from ssm_profile.documents import load_plan

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    meta = json.loads((run / "run.json").read_text())
    meta["status"] = "running"  # what a profile killed mid-sweep leaves
    (run / "run.json").write_text(json.dumps(meta))
    assert main(["plan", str(run), "-o", str(tmp_path / "p.json"), "--no-measure", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "unfinished profile" in err and "--resume" in err
    assert any("unfinished profile run" in note for note in load_plan(tmp_path / "p.json").notes)
    assert main(["report", str(run), "-o", str(tmp_path / "r.html")]) == 0
    assert "unfinished profile" in capsys.readouterr().err


def test_second_writer_of_an_output_is_refused_before_any_work(run_dir, tmp_path, capsys):

    out = tmp_path / "out"
    holder = _holding(HOLD_OUTPUT, out)  # a recover (or apply) writing OUT_DIR
    try:
        started = time.monotonic()
        assert main(["recover", str(_pruned(run_dir)), "-o", str(out), "--steps", "1", "--no-lm-eval", "--quiet"]) == 2
        _one_line_error(capsys, f"is being written by process {holder.pid}")
        assert main(["apply", str(_plan(run_dir)), "-o", str(out), "--quiet"]) == 2
        _one_line_error(capsys, "is being written")
        assert time.monotonic() - started < 10  # refused before loading a model, let alone training
    finally:
        holder.kill()
        holder.wait()
    assert not out.exists() and _siblings(out) in ([], [".out.lock"])  # the killed holder's lock file may stay




def test_an_edited_plan_applies_only_when_told_and_an_old_one_with_a_note(tmp_path, run_dir, capsys):
    plan = json.loads(_plan(run_dir).read_text())
    assert plan["actions_digest"].startswith("sha256:")
    plan["actions"][0]["sparsity"] = 0.9
    edited = _file(tmp_path, "edited.json", json.dumps(plan))
    assert main(["apply", "tiny-mamba", str(edited), "-o", str(tmp_path / "a"), "--quiet", "--allow-edited-plan"]) == 0
    assert "applying it as edited" in capsys.readouterr().out
    del plan["actions_digest"]
    old = _file(tmp_path, "old.json", json.dumps(plan))
    assert main(["apply", "tiny-mamba", str(old), "-o", str(tmp_path / "b"), "--quiet"]) == 0
    assert "carries no digest" in capsys.readouterr().out


def _ascii_run(*argv: str):
    import subprocess
    import sys

    env = {**os.environ, "PYTHONIOENCODING": "ascii", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ssm_profile.cli.main", *argv], capture_output=True, env=env,
                          timeout=300)


def test_an_ascii_terminal_gets_question_marks_not_a_traceback(tmp_path, run_dir, monkeypatch):
    """PYTHONIOENCODING=ascii: plan printed ≥ and died with a UnicodeEncodeError."""
    import io
    import sys

    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", out)
    argv = ["plan", str(run_dir), "-o", str(tmp_path / "p.json"), "--ratio", "0.1", "--no-measure", "--quiet"]
    assert main(argv) == 0
    out.flush()
    printed = out.buffer.getvalue()
    assert (tmp_path / "p.json").is_file() and b"?" in printed
    printed.decode("ascii")  # nothing but ASCII reached the terminal


@pytest.mark.slow  # a profile in a subprocess: ~10 s
def test_an_ascii_terminal_profiles_without_a_traceback(tmp_path):
    done = _ascii_run(*_profile(tmp_path))
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode()
    done.stdout.decode("ascii")
