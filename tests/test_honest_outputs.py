"""Small truths a user acts on: the right error first, near names, nothing cut, bars off stdout."""

from __future__ import annotations

from ssm_profile.cli.main import main


def test_plan_of_a_run_that_does_not_exist_says_so_first(tmp_path, capsys):
    (tmp_path / "plan.json").write_text("{}")  # an output that exists must not be the first complaint
    assert main(["plan", str(tmp_path / "does-not-exist"), "-o", str(tmp_path / "plan.json")]) == 2
    err = capsys.readouterr().err
    assert "is not a profile run directory" in err and "already" not in err


def test_an_unknown_model_names_the_nearest_known_one(capsys):
    assert main(["analyze", "mamba-1.4c"]) == 2
    assert "did you mean 'mamba-1.4b'?" in capsys.readouterr().err


def test_validate_help_does_not_claim_a_default_model(capsys):
    assert main(["validate", "--help"]) == 0
    assert "default: the embedded tiny-mamba" not in " ".join(capsys.readouterr().out.split())


def test_models_piped_keeps_every_hub_id_whole(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "state-spaces/mamba-130m-hf" in out and "Zyphra/Zamba2-1.2B" in out


def test_progress_bars_go_to_stderr(capsys):
    from ssm_profile.cli.progress import rich_progress

    with rich_progress("working") as update:
        update(1, 2, "half")
    captured = capsys.readouterr()
    assert captured.out == "" and "working" in captured.err


def test_list_criteria_names_the_target_of_every_row(capsys):
    assert main(["profile", "tiny-mamba2", "--list-criteria"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("│") for line in out.splitlines() if line.startswith("│")]
    rows = [cells for cells in rows if cells[1].strip()]  # a row's first line (wrapped reasons continue below)
    assert rows and all(cells[2].strip() for cells in rows), "a blank target"
    assert "unit:head" in out and "unit:state" in out and "None" not in out


def test_analyze_names_what_every_percentage_is_a_share_of(capsys):
    assert main(["analyze", "tiny-mamba"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "of whole-model params" in out and "SSM share" not in out
    assert "% of model params" in out  # the groups table's column


def test_model_size_on_disk_leaves_out_the_tools_own_records_and_logs(tmp_path):
    from ssm_profile.validation.check import dir_bytes

    (tmp_path / "model.safetensors").write_bytes(b"w" * 100)
    (tmp_path / "config.json").write_text("{}")
    before = dir_bytes(tmp_path)
    for name in ("pruning.json", "validation.json", "recovery.json", "lm-eval.log"):
        (tmp_path / name).write_text("x" * 1000)
    assert dir_bytes(tmp_path) == before == {"total": 102, "weights": 100}


def test_listings_and_one_line_errors_import_no_torch():
    """`models`, --help and an unknown name answer in a second: none of them may import torch (5-10 s)."""
    import subprocess
    import sys

    code = ("import sys, contextlib, io\n"
            "from ssm_profile.cli.main import main\n"
            "for argv in (['--help'], ['models'], ['analyze', 'nosuch-model'], ['profile', 'nosuch-model'],\n"
            "             ['validate', 'nosuch-model', 'out'], ['nosuch-model'], ['plann']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "        code = main(argv)\n"
            "    print(argv, code, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert len(lines) == 7 and all(line.endswith("False") for line in lines), out
    assert "['models'] 0" in out and "['analyze', 'nosuch-model'] 2" in out


def test_list_criteria_reads_no_weights(monkeypatch, capsys):
    """The criteria table is a question about the architecture: built from config.json on the meta device."""
    from ssm_profile.model import resolve

    def refuse(*args, **kwargs):
        raise AssertionError("--list-criteria loaded the weights")

    monkeypatch.setattr(resolve, "load_model", refuse)
    assert main(["profile", "tiny-mamba", "--list-criteria"]) == 0
    out = capsys.readouterr().out
    assert "unit:state" in out and "unit:channel" in out
