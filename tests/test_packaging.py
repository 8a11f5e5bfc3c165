"""The package as released: one version, one repository address, the install cell. (The wheel itself is
built, checked, installed and run by scripts/check_wheel.sh in CI, after the test suite.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

import kitrec_fast
from kitrec_fast.cli import main

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_has_one_source_and_the_cli_prints_it(capsys, monkeypatch):
    project = PYPROJECT["project"]
    assert project["name"] == "kitrec-fast" and "version" not in project and "version" in project["dynamic"]
    source = ROOT / PYPROJECT["tool"]["hatch"]["version"]["path"]
    assert re.search(r'^__version__ = "(.+)"$', source.read_text(), re.M).group(1) == kitrec_fast.__version__
    monkeypatch.setattr(kitrec_fast, "__version__", "9.8.7")  # a new release changes that line only
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == "kitrec-fast 9.8.7"


def test_license_and_repository_address_are_declared_once():
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    repo = project["urls"]["Repository"]
    for path in ("README.md", "notebooks/quickstart_colab.ipynb", "notebooks/build_notebook.py", "mkdocs.yml",
                 *(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))):
        assert repo not in (ROOT / path).read_text(), f"{path} repeats the repository address"


def test_install_cell_has_no_placeholder_and_falls_back_to_the_index():
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "quickstart_colab.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "install" in c.metadata.get("tags", []))
    assert "<owner>" not in cell.source and 'KITREC_FAST_SOURCE = ""' in cell.source
    # the cell's own logic, run without pip: empty -> the index; set -> what the user named
    logic = cell.source.split("print(")[0].replace("import subprocess\nimport sys\n", "")
    for value, target in (("", "kitrec-fast"), ("  /content/kitrec_fast  ", "/content/kitrec_fast")):
        scope: dict = {}
        exec(logic.replace('KITREC_FAST_SOURCE = ""', f"KITREC_FAST_SOURCE = {value!r}"), scope)
        assert scope["target"] == target


def test_ci_builds_and_runs_the_wheel():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("pytest") < ci.index("scripts/check_wheel.sh")
    assert {"build", "twine"} <= {re.split(r"[<>=!]", d)[0] for d in PYPROJECT["project"]["optional-dependencies"]["dev"]}
