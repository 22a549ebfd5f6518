"""Ctrl-C in a fresh process: one line on stderr, exit 130, no partial output, nothing that existed changed.

tests/test_reliability.py interrupts plan, apply, recover and validate; this file covers the others
(profile with its --resume line, report, bench, analyze), the interrupt while Python still imports,
and one quick case in the default run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PYTHON = sys.executable
ENTRY = "import sys; from ssm_profile.cli.entry import main; sys.exit(main())"  # what the console script runs
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["--nsamples", "2", "--eval-samples", "2", "--seqlen", "16", "--sparsities", "0.3,0.6",
        "--criteria", "magnitude", "--no-per-layer", "--quiet"]


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too: a partial output is often hidden) and its digest."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _lines(err: bytes) -> list[str]:
    return [line for line in err.decode(errors="replace").splitlines() if line.strip()]


def _interrupt(argv: list[str], after: float) -> tuple[int, list[str]]:
    process = subprocess.Popen([PYTHON, "-c", ENTRY, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    time.sleep(after)
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=300)
    return process.returncode, _lines(err)


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-c", ENTRY, *argv], capture_output=True, timeout=600, env=ENV, check=False)


def _assert_one_line_130(code: int, err: list[str], after: float) -> None:
    assert code == 130 and len(err) == 1 and err[0].startswith("ssm-profile: interrupted; "), (after, code, err)


def _loaded_torch(pid: int) -> bool:
    """Whether the process has mapped torch's library: main() runs and a command imports its work."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _assert_whole_or_absent(folder: Path, before: dict[str, str], outputs: list[Path]) -> None:
    """Every file that was under ``folder`` is as it was; a new one is one of ``outputs`` (or inside one)
    and whole: a Ctrl-C that lands after an output was written (while the command prints) leaves it, and
    never leaves a partial or temporary file beside it."""
    def is_output(name: str) -> bool:
        return any(folder / name == out or out in (folder / name).parents for out in outputs)

    now = _tree(folder)
    assert {name: now.get(name) for name in before if not is_output(name)} == \
        {name: digest for name, digest in before.items() if not is_output(name)}
    for name in now:
        path = folder / name
        if name in before and not is_output(name):
            continue
        assert is_output(name), f"a file no output names was left: {name}"
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".html":
            assert path.read_text().rstrip().endswith("</html>"), name
        else:
            assert path.stat().st_size > 0, name


# ------------------------------------------------------------------------------------------ default run
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc to know when the command started")
def test_ctrl_c_of_analyze_while_it_works_is_one_line_and_130(tmp_path):
    """Interrupted once torch is loading (main has started): exactly one line, exit 130, no partial --json.
    A run that finished first is tried again sooner, never passed silently."""
    out = tmp_path / "analysis.json"
    for extra_wait in (0.05, 0.0):
        process = subprocess.Popen([PYTHON, "-c", ENTRY, "analyze", "tiny-mamba", "--json", str(out)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        deadline = time.monotonic() + 60
        while process.poll() is None and not _loaded_torch(process.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(extra_wait)
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=60)
        if process.returncode == 0:  # it finished before the signal: try again, sooner
            out.unlink(missing_ok=True)
            continue
        _assert_one_line_130(process.returncode, _lines(err), extra_wait)
        assert _lines(err)[0] == f"ssm-profile: interrupted; run it again with: ssm-profile analyze tiny-mamba " \
                                 f"--json {out}"
        _assert_whole_or_absent(tmp_path, {}, [out])
        return
    pytest.fail("analyze finished before every interrupt")


def test_an_interrupt_a_library_turned_into_another_error_is_still_one_line_and_130(monkeypatch, capsys):
    """transformers' lazy import re-raised what an interrupted import left as another exception: analyze
    printed a traceback and exited 1. An error after a Ctrl-C is the interruption's."""
    from ssm_profile.cli import main as cli

    def converting(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
        except KeyboardInterrupt:
            raise RuntimeError("module partially initialised") from None
        return 0

    module = type(sys)("converting")
    module.register = lambda sub: sub.add_parser("convert").set_defaults(handler=converting)
    registry = cli.Registry("command", "ssm_profile.commands.none")
    for known in cli.COMMANDS.names():
        registry.add(known, cli.COMMANDS.get(known))
    registry.add("convert", module)
    monkeypatch.setattr(cli, "COMMANDS", registry)
    assert cli.main(["convert"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ssm-profile: interrupted; run it again with: ssm-profile convert"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # in-process: the handler restored
    def crashing(args):
        raise RuntimeError("a bug")

    crash = type(sys)("crashing")
    crash.register = lambda sub: sub.add_parser("crash").set_defaults(handler=crashing)
    registry.add("crash", crash)
    with pytest.raises(RuntimeError, match="a bug"):  # without an interrupt an error is a bug: its traceback stays
        cli.main(["crash"])


def test_ctrl_c_while_python_imports_the_command_line_is_one_line_and_130(tmp_path):
    """The interrupt lands while the entry point imports the command line (before main starts): the
    entry's first statement has set a handler, so no traceback. The signal is sent by an import hook at
    that exact moment, so the test does not depend on timing."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import importlib.abc, os, signal, sys\n"
        "class Interrupt(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'ssm_profile.cli.main':\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "            signal.getsignal(signal.SIGINT)  # bytecode boundary: the handler has run here\n"
        "        return None\n"
        "sys.meta_path.insert(0, Interrupt())\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([PYTHON, "-c", ENTRY, "models"], capture_output=True, timeout=60, env=env, check=False)
    err = _lines(done.stderr)
    said = "ssm-profile: interrupted while starting; run it again with: ssm-profile models"
    assert done.returncode == 130 and err == [said], (done.returncode, err)
    assert done.stdout == b""


def test_the_console_script_is_the_entry_that_sets_the_handler_first():
    """Read, not imported: importing it would set its handler in this test process."""
    import tomllib

    root = Path(__file__).parents[1]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ssm-profile"] == "ssm_profile.cli.entry:main"
    source = (root / "profiler" / "cli" / "entry.py").read_text().split('"""')[2].strip().splitlines()
    code = [line for line in source if line.strip() and not line.lstrip().startswith("#")]
    assert code[:2] == ["import signal as _signal", "import sys as _sys"]  # stdlib's cheapest, then the handler


# --------------------------------------------------------------------------------------------- slow
@pytest.fixture(scope="module")
def interrupt_inputs(tmp_path_factory) -> Path:
    from ssm_profile.cli.main import main

    base = tmp_path_factory.mktemp("interrupt")
    assert main(["profile", "tiny-mamba", "-o", str(base / "run"), *TINY]) == 0
    assert main(["plan", str(base / "run"), "-o", str(base / "plan.json"), "--ratio", "0.1", "--quiet"]) in (0, 3)
    return base


def _trials(run: Path) -> list:
    from ssm_profile.profiling.results import ProfileResult

    result = ProfileResult.load(run)
    return sorted((t.target, t.criterion, t.sparsity, t.layer, t.loss) for t in result.trials)


@pytest.mark.slow  # a fresh profile per moment: ~1-2 min
def test_ctrl_c_of_profile_prints_the_resume_command_and_resuming_gives_the_uninterrupted_run(tmp_path):
    """Interrupted at 30-90% of an uninterrupted run's time: the line's command (with --resume once the
    run directory holds trials) finishes the run, and its trials equal the uninterrupted run's."""
    argv = ["profile", "tiny-mamba", *TINY]
    started = time.monotonic()
    whole = _run([*argv, "-o", str(tmp_path / "whole")])
    seconds = time.monotonic() - started
    assert whole.returncode == 0, whole.stderr.decode()
    resumed = 0
    for moment, share in enumerate((0.3, 0.5, 0.7, 0.9)):
        out = tmp_path / f"cut{moment}"
        code, err = _interrupt([*argv, "-o", str(out)], seconds * share)
        if code == 0:  # finished before the signal
            continue
        _assert_one_line_130(code, err, share)
        words = shlex.split(err[0].split(" with: ", 1)[1])
        assert words[:2] == ["ssm-profile", "profile"] and str(out) in words, err[0]
        if "--resume" in words:
            assert err[0].startswith("ssm-profile: interrupted; continue with: "), err[0]
            resumed += 1
        again = _run(words[1:])
        assert again.returncode == 0, (share, words, again.stderr.decode())
        assert _trials(out) == _trials(tmp_path / "whole"), share
    assert resumed, "no interrupt landed while profile was writing its run"


def _no_trace_of(argv: list[str], watched: Path, outputs: list[Path], moments) -> int:
    """Interrupt ``argv`` at ``moments``: one line, 130, no partial output (an output left is whole),
    every file under ``watched`` as it was. Moments start at 1 s: the interpreter's own start-up (before
    the entry point's handler) is the import-hook test's, and on a loaded machine it can pass 0.3 s.
    The number of moments that interrupted the command."""
    interrupted = 0
    for after in moments:
        before = _tree(watched)
        code, err = _interrupt(argv, after)
        made = [out for out in outputs if str(out.relative_to(watched)) not in before]
        if code in (0, 3):  # finished before the signal: take new outputs away for the next moment
            _remove(made)
            continue
        _assert_one_line_130(code, err, after)
        interrupted += 1
        _assert_whole_or_absent(watched, before, outputs)
        _remove(made)
    return interrupted


def _remove(outputs: list[Path]) -> None:
    import shutil

    for out in outputs:
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink(missing_ok=True)


@pytest.mark.slow  # a fresh process per moment: ~30-60 s
def test_ctrl_c_of_report_leaves_no_report_and_changes_nothing(interrupt_inputs, tmp_path):
    watched = tmp_path / "inputs"
    import shutil

    shutil.copytree(interrupt_inputs, watched)
    outputs = [watched / "report.html", watched / "csv"]
    argv = ["report", str(watched / "run"), "--plan", str(watched / "plan.json"), "-o", str(outputs[0]),
            "--csv", str(outputs[1])]
    assert _no_trace_of(argv, watched, outputs, (1.0, 2.0, 3.0, 4.0)) > 0


@pytest.mark.slow  # a fresh process per moment: ~1 min
def test_ctrl_c_of_bench_quick_leaves_no_json_and_changes_nothing(tmp_path):
    outputs = [tmp_path / "bench.json", tmp_path / "bench.md"]
    argv = ["bench", "--quick", "--quiet", "--json", str(outputs[0]), "--markdown", str(outputs[1])]
    assert _no_trace_of(argv, tmp_path, outputs, (1.0, 3.0, 6.0, 10.0)) > 0


@pytest.mark.slow  # a fresh process per moment: ~20-40 s
def test_ctrl_c_of_analyze_leaves_no_json_and_changes_nothing(tmp_path):
    existing = tmp_path / "other.json"
    existing.write_text(json.dumps({"kept": True}))
    outputs = [tmp_path / "analysis.json"]
    assert _no_trace_of(["analyze", "tiny-mamba", "--layers", "--json", str(outputs[0])], tmp_path, outputs,
                        (1.0, 2.0, 3.0)) > 0
    # --overwrite of an existing file interrupted: the old file or the new one, whole
    assert _no_trace_of(["analyze", "tiny-mamba", "--json", str(existing), "--overwrite"], tmp_path, [existing],
                        (1.0, 2.0)) > 0


def _killed_then_rerun(argv: list[str], watched: Path, outputs: list[Path], moments) -> int:
    """SIGKILL ``argv`` at ``moments``: nothing that existed changes and an output left is whole (a
    hidden temporary file may stay: nothing can clean up after SIGKILL); the rerun (with --overwrite)
    then succeeds and leaves only its outputs. The number of moments that killed a running command."""
    before, killed = _tree(watched), 0
    for after in moments:
        process = subprocess.Popen([PYTHON, "-c", ENTRY, *argv], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, env=ENV)
        time.sleep(after)
        running = process.poll() is None
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed += running
        now = _tree(watched)
        assert {n: now.get(n) for n in before} == before, after  # no input or earlier file touched
        for out in outputs:
            if out.is_file() and out.suffix == ".json":
                json.loads(out.read_text())  # whole, or absent
    done = _run([*argv, "--overwrite"])
    assert done.returncode in (0, 3), done.stderr.decode()[-2000:]
    left = [n for n in _tree(watched) if n not in before
            and not any(watched / n == out or out in (watched / n).parents for out in outputs)]
    assert left == [], f"left after the rerun: {left}"
    return killed


@pytest.mark.slow  # a fresh process per moment: ~1-2 min
def test_sigkill_of_report_bench_and_analyze_then_rerun_leaves_only_whole_outputs(interrupt_inputs, tmp_path):
    """The writing commands the fault-injection test leaves out (profile, plan, apply, recover and
    validate are in tests/test_faults.py)."""
    import shutil

    watched = tmp_path / "inputs"
    shutil.copytree(interrupt_inputs, watched)
    report = [watched / "report.html", watched / "csv"]
    killed = _killed_then_rerun(["report", str(watched / "run"), "--plan", str(watched / "plan.json"),
                                 "-o", str(report[0]), "--csv", str(report[1])], watched, report, (1.0, 2.5, 4.0))
    bench = [watched / "bench.json", watched / "bench.md"]
    killed += _killed_then_rerun(["bench", "--quick", "--quiet", "--json", str(bench[0]), "--markdown",
                                  str(bench[1])], watched, bench, (1.0, 4.0, 8.0))
    analysis = [watched / "analysis.json"]
    killed += _killed_then_rerun(["analyze", "tiny-mamba", "--layers", "--json", str(analysis[0])], watched,
                                 analysis, (1.0, 2.0))
    assert killed >= 4
