"""Nothing lost, nothing hangs: the journal, the run-directory lock, stale partial outputs, option parsers."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssm_profile.base.errors import RunDirError, SSMProfileError
from ssm_profile.profiling.journal import append_journal, read_journal, repair_journal
from ssm_profile.profiling.sensitivity import Trial

PYTHON = sys.executable
TINY = ["--nsamples", "2", "--eval-samples", "2", "--seqlen", "16", "--sparsities", "0.3,0.6",
        "--criteria", "magnitude", "--no-per-layer", "--quiet"]


def trial(sparsity: float = 0.5, target: str = "in_proj") -> Trial:
    return Trial(target=target, criterion="magnitude", sparsity=sparsity, layer=None, loss=5.0, delta_loss=0.1,
                 perplexity=150.0, rel_ppl_increase=0.1, pruned_params=10, predicted_delta=None, seconds=0.1,
                 window_losses=[5.0, 5.0])


# ---------------------------------------------------------------------------------------------- journal
def test_torn_tail_is_cut_before_the_next_append(tmp_path):
    journal = tmp_path / "trials.jsonl"
    for s in (0.1, 0.2):
        append_journal(journal, trial(s))
    journal.write_bytes(journal.read_bytes()[:-15])  # a killed writer
    assert [t.sparsity for t in read_journal(journal)] == [0.1]
    append_journal(journal, trial(0.3))
    lines = journal.read_text().splitlines()
    assert [json.loads(line)["sparsity"] for line in lines] == [0.1, 0.3]


def test_record_missing_only_its_newline_is_kept(tmp_path):
    journal = tmp_path / "trials.jsonl"
    append_journal(journal, trial(0.1))
    journal.write_bytes(journal.read_bytes().rstrip(b"\n"))
    append_journal(journal, trial(0.2))
    assert [t.sparsity for t in read_journal(journal)] == [0.1, 0.2]


def test_nul_filled_tail_is_torn_and_nul_line_in_the_middle_is_damage(tmp_path):
    journal = tmp_path / "trials.jsonl"
    append_journal(journal, trial(0.1))
    journal.write_bytes(journal.read_bytes() + b"\x00" * 64 + b"\n")
    assert len(read_journal(journal)) == 1
    repair_journal(journal)
    append_journal(journal, trial(0.2))
    assert [t.sparsity for t in read_journal(journal)] == [0.1, 0.2]
    journal.write_bytes(b"\x00\x00\n" + journal.read_bytes())
    with pytest.raises(RunDirError, match="line 1"):
        read_journal(journal)


@pytest.mark.parametrize("line,reason", [
    ('{"target": "x"}', "missing field"),
    ('[1, 2]', "not an object"),
    ("{oops", "not JSON"),
    (json.dumps({**asdict(trial()), "layer": "3"}), "field 'layer'"),
    (json.dumps({**asdict(trial()), "pruned_params": 1.5}), "field 'pruned_params'"),
    (json.dumps({**asdict(trial()), "sparsity": True}), "field 'sparsity'"),
    (json.dumps({**asdict(trial()), "window_losses": ["a"]}), "field 'window_losses'"),
    (json.dumps({**asdict(trial()), "extra": 1}), "unknown field 'extra'"),
])
def test_malformed_record_in_the_middle_names_its_line(tmp_path, line, reason):
    journal = tmp_path / "trials.jsonl"
    append_journal(journal, trial(0.1))
    journal.write_text(journal.read_text() + line + "\n")
    append_journal(journal, trial(0.2))
    with pytest.raises(RunDirError, match=f"line 2 is damaged.*{reason}"):
        read_journal(journal)


def test_duplicate_trials_count_once(tmp_path):
    journal = tmp_path / "trials.jsonl"
    for s in (0.1, 0.2, 0.1):
        append_journal(journal, trial(s))
    assert [t.sparsity for t in read_journal(journal)] == [0.1, 0.2]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=2000), garbage=st.binary(max_size=60))
def test_any_damaged_tail_is_repaired_or_one_line(tmp_path_factory, cut, garbage):
    journal = tmp_path_factory.mktemp("j") / "trials.jsonl"
    for s in (0.1, 0.2, 0.3):
        append_journal(journal, trial(s))
    data = journal.read_bytes()
    journal.write_bytes(data[:min(cut, len(data))] + garbage)
    try:
        before = read_journal(journal)
        append_journal(journal, trial(0.9))
    except SSMProfileError as err:
        assert "\n" not in str(err) and "line" in str(err)
        return
    after = read_journal(journal)
    assert [t.key for t in after] == [t.key for t in before] + [trial(0.9).key]


# ---------------------------------------------------------------------------------------------- options
@given(st.text(max_size=30))
def test_sparsity_parser_accepts_only_unique_fractions(text):
    from ssm_profile.cli.options import sparsity_list

    try:
        values = sparsity_list(text)
    except argparse.ArgumentTypeError as err:
        assert "\n" not in str(err)
        return
    assert values and all(0 < v < 1 for v in values) and len({round(v, 4) for v in values}) == len(values)


@given(st.text(max_size=20))
def test_number_parsers_never_raise_anything_else(text):
    from ssm_profile.cli.options import at_least, fraction, positive_float

    for parse, ok in ((fraction, lambda v: 0 < v < 1), (positive_float, lambda v: v > 0),
                      (at_least(2), lambda v: v >= 2)):
        try:
            assert ok(parse(text))
        except argparse.ArgumentTypeError:
            pass


# ---------------------------------------------------------------------------------------------- partial outputs
def test_stale_partial_of_a_dead_process_is_removed(tmp_path):
    from ssm_profile.base.io import atomic_directory, pid_alive

    dead = subprocess.run([PYTHON, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    assert not pid_alive(dead_pid)
    stale = tmp_path / f".out.pid{dead_pid}.abc{'.partial'}"
    live = tmp_path / f".out.pid{os.getpid()}.xyz.partial"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "weights").write_text("half")
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "done").write_text("ok")
    assert not stale.exists() and live.exists() and (tmp_path / "out" / "done").exists()


# ---------------------------------------------------------------------------------------------- run lock
HOLD = """
import sys, time
from ssm_profile.base.lock import run_dir_lock
with run_dir_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_lock_refuses_a_second_writer_and_names_the_holder(tmp_path):
    from ssm_profile.base.lock import run_dir_lock

    holder = subprocess.Popen([PYTHON, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"in use by process {holder.pid} on "):
            with run_dir_lock(tmp_path / "run"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_dir_lock(tmp_path / "run"):  # the dead holder's lock does not block
        assert f"pid {os.getpid()} " in (tmp_path / "run" / ".lock").read_text()


@pytest.mark.slow  # 10-13 s: keeps the default run under 5 minutes
def test_two_profiles_on_one_run_directory_one_proceeds(tmp_path):
    run = tmp_path / "run"
    command = [PYTHON, "-m", "ssm_profile.cli.main", "profile", "tiny-mamba", "-o", str(run), *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while not (run / ".lock").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    first_err = first.communicate(timeout=120)[1]
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 2], (first_err, second.stderr)
    refused = second.stderr if second.returncode == 2 else first_err
    assert len(refused.strip().splitlines()) == 1 and ("in use by process" in refused or "--resume" in refused)
    keys = [(r["target"], r["criterion"], r["sparsity"]) for r in map(json.loads, (run / "trials.jsonl").open())]
    assert len(keys) == len(set(keys))  # no trial twice


def test_resume_after_a_torn_journal_gives_the_same_trials(tmp_path, capsys):
    from ssm_profile.cli.main import main
    from ssm_profile.profiling.results import ProfileResult

    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(["profile", "tiny-mamba", "-o", str(full), *TINY]) == 0
    assert main(["profile", "tiny-mamba", "-o", str(cut), *TINY]) == 0
    journal = cut / "trials.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:3]) + lines[3][:20])  # three whole records and a torn fourth
    assert main(["profile", "tiny-mamba", "-o", str(cut), *TINY, "--resume"]) == 0
    records = [json.loads(line) for line in journal.read_text().splitlines()]  # every line parses
    assert len(records) == len(lines)
    key = lambda t: t.key  # noqa: E731
    assert [(t.key, t.loss) for t in sorted(ProfileResult.load(cut).trials, key=key)] == \
           [(t.key, t.loss) for t in sorted(ProfileResult.load(full).trials, key=key)]


# ---------------------------------------------------------------------------------------------- the --overwrite swap
KILL_BETWEEN_RENAMES = """
import os, signal, sys
import ssm_profile.base.io as io

real = os.replace


def replace(src, dst):
    real(src, dst)
    if str(dst).endswith(io.BACKUP_SUFFIX):  # the old output moved aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)


io.os.replace = replace
with io.atomic_directory(sys.argv[1], overwrite=True) as tmp:
    (tmp / "run.json").write_text("new")
"""


class Failed(Exception):
    """A command that fails after it built its new output aside."""


def _siblings(final: Path) -> list[str]:
    return sorted(p.name for p in final.parent.iterdir() if p.name.startswith(f".{final.name}."))


def _killed_between_renames(final: Path) -> None:
    """``final`` (holding run.json "old") replaced by a process SIGKILLed between the swap's two renames."""
    final.mkdir()
    (final / "run.json").write_text("old")
    done = subprocess.run([PYTHON, "-c", KILL_BETWEEN_RENAMES, str(final)], capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    assert not final.exists()  # neither the old nor the new in place: both hidden beside it
    names = _siblings(final)
    assert len(names) == 2 and names[0].endswith(".backup") and names[1].endswith(".partial"), names


def test_swap_killed_between_renames_keeps_the_old_run_for_the_next_writer(tmp_path):
    from ssm_profile.base.io import atomic_directory

    final = tmp_path / "run"
    _killed_between_renames(final)
    with pytest.raises(Failed), atomic_directory(final, overwrite=True) as tmp:
        (tmp / "run.json").write_text("newer")
        raise Failed  # the next --overwrite fails too: the old run is still there
    assert (final / "run.json").read_text() == "old" and _siblings(final) == []
    with atomic_directory(final, overwrite=True) as tmp:
        (tmp / "run.json").write_text("newer")
    assert (final / "run.json").read_text() == "newer" and _siblings(final) == []


def test_swap_killed_between_renames_is_put_back_by_a_reader(tmp_path):
    from ssm_profile.base.lock import run_dir_lock

    final = tmp_path / "run"
    _killed_between_renames(final)
    with run_dir_lock(final, shared=True):
        assert (final / "run.json").read_text() == "old"
    assert _siblings(final) == []  # the dead writer's unfinished new run went with it


def test_swap_crash_between_renames_monkeypatched(tmp_path, monkeypatch):
    """The same crash in this process: the second rename and everything after it never happen."""
    from ssm_profile.base import io

    class Crash(BaseException):
        pass

    final = tmp_path / "run"
    final.mkdir()
    (final / "run.json").write_text("old")
    real = os.replace

    def replace(src, dst):
        if str(src).endswith(io.PARTIAL_SUFFIX) or str(src).endswith(io.BACKUP_SUFFIX):
            raise Crash  # the rename of the new output, and the handler's putting back
        real(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    monkeypatch.setattr(io.shutil, "rmtree", lambda *a, **k: None)  # a dead process cleans nothing up
    with pytest.raises(Crash), io.atomic_directory(final, overwrite=True) as tmp:
        (tmp / "run.json").write_text("new")
    monkeypatch.undo()
    assert not final.exists() and [n.rsplit(".", 1)[1] for n in _siblings(final)] == ["backup", "partial"]
    monkeypatch.setattr(io, "pid_alive", lambda pid: False)  # as if this process had died
    with pytest.raises(Failed), io.atomic_directory(final, overwrite=True):
        raise Failed
    assert (final / "run.json").read_text() == "old" and _siblings(final) == []


# ---------------------------------------------------------------------------------------------- output locks
def _one_line_error(capsys, says: str) -> None:
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


HOLD_OUTPUT = """
import sys, time
from ssm_profile.base.lock import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def _holding(script: str, path: Path) -> subprocess.Popen:
    holder = subprocess.Popen([PYTHON, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_output_lock_is_released_and_removed(tmp_path):
    from ssm_profile.base.errors import OutputExistsError
    from ssm_profile.base.lock import output_lock

    out = tmp_path / "out"
    with output_lock(out), output_lock(out):  # re-entrant in one process
        assert (tmp_path / ".out.lock").is_file()
    assert not (tmp_path / ".out.lock").exists()
    holder = _holding(HOLD_OUTPUT, out)
    holder.kill()
    holder.wait()
    with output_lock(out):  # a killed holder's lock does not block
        pass
    with pytest.raises(OutputExistsError, match="being written"):
        holder = _holding(HOLD_OUTPUT, out)
        try:
            with output_lock(out):
                pass
        finally:
            holder.kill()
            holder.wait()


# ---------------------------------------------------------------------------------------------- resume
@pytest.mark.slow  # 4-7 s: three profile starts (the bad-input matrix has the fast digest cases)
def test_resume_refuses_an_edited_text(tmp_path, capsys):
    from ssm_profile.cli.main import main
    from ssm_profile.model.resolve import embedded_data

    texts = {name: tmp_path / f"{name}.txt" for name in ("calibration", "evaluation")}
    for name, path in texts.items():
        path.write_text(embedded_data(f"{name}.txt").read_text())
    argv = ["profile", "tiny-mamba", "-o", str(tmp_path / "run"), *TINY,
            "--calibration", str(texts["calibration"]), "--evaluation", str(texts["evaluation"])]
    assert main(argv) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    capsys.readouterr()
    for name, path in texts.items():
        original = path.read_text()
        path.write_text(original.replace(" the ", " thy "))  # same name, same number of windows: other tokens
        assert main([*argv, "--resume"]) == 2
        _one_line_error(capsys, f"the {name} text")
        path.write_text(original)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == before
    assert main([*argv, "--resume"]) == 0  # the same texts again: resumed


KILLED_PROFILE = """
import os, signal, sys
import ssm_profile.base.io as io

real = os.replace


def replace(src, dst):
    real(src, dst)
    if str(dst).endswith(io.BACKUP_SUFFIX):
        os.kill(os.getpid(), signal.SIGKILL)


io.os.replace = replace
from ssm_profile.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # a profile in a subprocess: 10-30 s
def test_profile_overwrite_killed_between_renames_keeps_the_old_run(tmp_path, capsys):
    import hashlib

    from ssm_profile.cli.main import main

    run = tmp_path / "run"
    assert main(["profile", "tiny-mamba", "-o", str(run), *TINY]) == 0

    def digests() -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir() if p.is_file()
                and p.name != ".lock"}  # (the lock records its last holder)

    old = digests()
    argv = ["profile", "tiny-mamba", "-o", str(run), *TINY, "--seed", "1", "--overwrite"]
    done = subprocess.run([PYTHON, "-c", KILLED_PROFILE, *argv], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == -9, done.stderr
    assert not run.exists()
    assert main(["plan", str(run), "-o", str(tmp_path / "p.json"), "--no-measure", "--quiet"]) == 0
    assert digests() == old  # the old run back in place, as it was
    assert main(argv) == 0  # the next --overwrite replaces it for good
    assert digests() != old and _siblings(run) == []


# ---------------------------------------------------------------------------------------------- big texts
@pytest.mark.slow  # ~15-30 s: a 19 MB record
def test_a_19_mb_jsonl_record_is_read_bounded(tmp_path):
    """One 19 MB record hung (2.8 GB at 120 s): the text is tokenised in pieces, up to the token limit."""
    record = tmp_path / "one.jsonl"
    record.write_text(json.dumps({"text": "In the beginning God created the heaven and the earth. " * 340_000}) + "\n")
    code = ("import resource, torch; torch.set_num_threads(1)\n"
            "from ssm_profile.calibration.data import TEXT_TOKEN_LIMIT, _tokenize, read_text\n"
            "from ssm_profile.model.resolve import load_model\n"
            "tok = load_model('tiny-mamba').tokenizer\n"
            f"ids = _tokenize(tok, read_text({str(record)!r}))\n"
            "print(len(ids), TEXT_TOKEN_LIMIT, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n")
    done = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    tokens, limit, peak_mib = map(int, done.stdout.split())
    assert tokens == limit and peak_mib < 1500, done.stdout


def test_a_text_past_the_token_cap_says_how_much_was_read(tmp_path, monkeypatch, capsys):
    """Texts over the cap were cut silently: one note on stderr and in the run record's data.notes
    (the cap lowered so that a small text reaches it)."""
    from ssm_profile.calibration import data
    from ssm_profile.cli.profile_cmd import _load_data
    from ssm_profile.model.resolve import load_model
    from ssm_profile.profiling.record import RunData

    monkeypatch.setattr(data, "CHUNK_CHARS", 0)
    monkeypatch.setattr(data, "TEXT_TOKEN_LIMIT", 300)
    calibration, evaluation = tmp_path / "calib.txt", tmp_path / "eval.txt"
    calibration.write_text(" ".join(f"word{i} of the calibration" for i in range(400)))
    evaluation.write_text(" ".join(f"other{i} evaluation" for i in range(12)))  # under the cap: no note
    loaded = load_model("tiny-mamba")
    capsys.readouterr()
    spec = data.DataSpec(calibration=str(calibration), evaluation=str(evaluation), nsamples=2, eval_samples=2,
                         seqlen=16)
    dataset = _load_data(loaded, spec)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ssm-profile: note: the calibration text ({calibration}) was read "
                                                "up to 300 tokens, the cap"), err
    assert "the rest was not read" in err[0] and f"of {len(calibration.read_text()):,} characters" in err[0]
    record = RunData.from_dict(dataset.describe())
    assert record.notes == [err[0].removeprefix("ssm-profile: note: ")]
    monkeypatch.setattr(data, "TEXT_TOKEN_LIMIT", 10**6)  # the same text under the cap: nothing to say
    assert _load_data(loaded, spec).notes == [] and capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------- Ctrl-C
def test_an_interrupt_a_library_swallowed_still_ends_as_interrupted(monkeypatch, capsys):
    """recover printed a traceback, then ran on to exit 0: the interrupt was caught inside a library."""
    import signal

    from ssm_profile.cli import main as cli

    def swallowing(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
        except BaseException:  # noqa: BLE001 - what the library did
            pass
        return 0

    module = type(sys)("swallowing")
    module.register = lambda sub: sub.add_parser("swallow").set_defaults(handler=swallowing)
    monkeypatch.setattr(cli, "COMMANDS", _with_command(cli.COMMANDS, "swallow", module))
    assert cli.main(["swallow"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ssm-profile: interrupted; run it again with: ssm-profile swallow")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # in-process: the handler restored


def _with_command(commands, name, module):
    from ssm_profile.base.registry import Registry

    registry = Registry("command", "ssm_profile.commands.none")
    for known in commands.names():
        registry.add(known, commands.get(known))
    registry.add(name, module)
    return registry


ENTRY = "import sys; from ssm_profile.cli.entry import main; sys.exit(main())"  # the console script's entry


def _interrupt(argv: list[str], after: float) -> tuple[int, list[str]]:
    import signal

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([PYTHON, "-c", ENTRY, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    time.sleep(after)
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=300)
    return process.returncode, [line for line in err.decode().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def kill_inputs(tmp_path_factory) -> Path:
    from ssm_profile.cli.main import main

    base = tmp_path_factory.mktemp("kill")
    assert main(["profile", "tiny-mamba", "-o", str(base / "run"), *TINY]) == 0
    assert main(["plan", str(base / "run"), "-o", str(base / "plan.json"), "--ratio", "0.1", "--quiet"]) in (0, 3)
    # the tiny profile's plan may break its promise (exit 3); these tests interrupt apply, not judge the plan
    assert main(["apply", "tiny-mamba", str(base / "plan.json"), "-o", str(base / "pruned"), "--quiet",
                 "--allow-broken-promise"]) == 0
    return base


def _kill_command(name: str, base: Path, out: Path) -> list[str]:
    return {
        "plan": ["plan", str(base / "run"), "-o", str(out), "--ratio", "0.1", "--quiet"],
        "apply": ["apply", "tiny-mamba", str(base / "plan.json"), "-o", str(out), "--quiet", "--allow-broken-promise"],
        "recover": ["recover", str(base / "pruned"), "-o", str(out), "--steps", "12", "--batch-size", "2",
                    "--seqlen", "32", "--checkpoint-every", "3", "--no-lm-eval", "--quiet"],
        "validate": ["validate", "tiny-mamba", str(base / "pruned"), "-o", str(out), "--no-lm-eval", "--quiet",
                     "--speed-repeats", "1", "--speed-batch", "1", "8"],
    }[name]


def _result(name: str, out: Path) -> object:
    """What must be identical between an interrupted-then-rerun command and an uninterrupted one."""
    if name in ("plan", "validate"):
        document = json.loads(out.read_text())
        if name == "plan":
            return document["actions"], document["predicted"], document.get("measured")
        return document["perplexity"], document["verification"]
    from safetensors.torch import load_file

    weights = load_file(out / "model.safetensors")
    return {k: v.double().sum().item() for k, v in weights.items()}


@pytest.mark.slow  # a fresh process per moment: ~1-2 min per command
@pytest.mark.parametrize("name", ["plan", "apply", "recover", "validate"])
def test_ctrl_c_at_any_moment_is_one_line_130_and_the_rerun_is_identical(kill_inputs, tmp_path, name):
    whole = tmp_path / "whole"
    done = subprocess.run([PYTHON, "-c", ENTRY, *_kill_command(name, kill_inputs, whole)], capture_output=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode in (0, 3), done.stderr.decode()
    interrupted = 0
    # from 1 s: the interpreter's own start-up has no handler (tests/test_interrupts.py covers the imports)
    for moment, after in enumerate((1.0, 3.0, 6.0, 9.0)):
        out = tmp_path / f"cut{moment}"
        argv = _kill_command(name, kill_inputs, out)
        code, err = _interrupt(argv, after)
        if code in (0, 3):  # finished before the signal: nothing to say
            continue
        interrupted += 1
        assert code == 130 and len(err) == 1 and err[0].startswith("ssm-profile: interrupted; "), (after, code, err)
        again = argv + (["--resume"] if "continue from" in err[0] else [])
        rerun = subprocess.run([PYTHON, "-c", ENTRY, *again], capture_output=True, timeout=600,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert rerun.returncode in (0, 3), rerun.stderr.decode()
        assert _result(name, out) == _result(name, whole), (name, after)
    assert interrupted >= 1, f"{name} finished before every signal: nothing was interrupted"
