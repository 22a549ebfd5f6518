"""The package installs under one import name and its source folders map onto it completely."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"ssm_profile": "profiler", "ssm_profile.reports": "reports", "ssm_profile.tui": "tui"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_source_package_is_listed():
    """A new sub-package that is not listed would be missing from a non-editable install."""
    setuptools = _pyproject()["tool"]["setuptools"]
    assert setuptools["package-dir"] == FOLDERS
    found = set()
    for name, folder in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert set(setuptools["packages"]) == found


def test_only_the_one_import_name_is_installed(tmp_path):
    """Run from outside the checkout: `ssm_profile.*` imports, the folder names do not."""
    code = ("import importlib.util as u, ssm_profile, ssm_profile.reports, ssm_profile.tui, ssm_profile.cli.main;"
            "print([n for n in ('profiler', 'reports', 'tui') if u.find_spec(n) is not None])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_source_file_imports_the_folder_names():
    bad = []
    for folder in FOLDERS.values():
        for path in (ROOT / folder).rglob("*.py"):
            for line in path.read_text(encoding="utf-8").splitlines():
                stripped = line.strip()
                if stripped.startswith(("from profiler", "import profiler", "from reports", "import reports",
                                        "from tui", "import tui")):
                    bad.append(f"{path.relative_to(ROOT)}: {stripped}")
    assert bad == []
