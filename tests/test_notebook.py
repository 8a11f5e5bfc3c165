"""The Colab quickstart notebook and the recipe commands of the README.

The CPU cells of the notebook run here, as a user would run them, in a fresh kernel of this venv;
cells tagged ``gpu`` or ``install`` are skipped (they need a card, the network or a Hub login).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from kitrec_fast import profiles

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart_colab.ipynb"
RECIPES_README = ROOT / "recipes" / "README.md"
SKIP_TAGS = {"gpu", "install"}
CARDS = ("T4 16 GB", "L4 24 GB", "A100 40 GB", "A100 80 GB")


def load() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def tags(cell) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def shell_lines(cell) -> list[str]:
    return [line.strip()[1:] for line in cell.source.splitlines() if line.strip().startswith("!")]


def test_notebook_matches_its_generator() -> None:
    spec = importlib.util.spec_from_file_location("build_notebook", ROOT / "notebooks" / "build_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert NOTEBOOK.read_text() == module.render(), "run: python notebooks/build_notebook.py"


def test_notebook_is_stored_clean_and_explained() -> None:
    nb = load()
    nbformat.validate(nb)
    previous = None
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            # no hidden state: nothing executed is stored
            assert cell.execution_count is None and cell.outputs == [], f"cell {i} has stored outputs"
            # clear markdown between cells: every code cell is introduced by its own explanation
            assert previous is not None and previous.cell_type == "markdown", f"code cell {i} has no markdown above it"
        if cell.cell_type == "code" and "heavy" in tags(cell):
            # the markdown right before a heavy cell gives its time on every card
            explanation = previous.source
            assert "**Time:**" in explanation, f"heavy cell {i} has no time estimate above it"
            for card in CARDS:
                assert card in explanation, f"heavy cell {i}: no estimate for {card}"
        previous = cell


def test_cells_that_need_a_gpu_network_or_login_are_tagged() -> None:
    for cell in load().cells:
        if cell.cell_type != "code":
            continue
        src = cell.source
        if "pip install" in src:
            assert "install" in tags(cell)
        # training for real, generation, the Hub, or reading what those produce
        needs_gpu = (any(line == "{TRAIN_CMD}" for line in shell_lines(cell))
                     or any(marker in src for marker in ("eval generate", "kitrec-fast push", "notebook_login",
                                                         "Path(RUN_DIR", "Path(EVAL_DIR", "make_archive")))
        if needs_gpu:
            assert "gpu" in tags(cell), f"untagged GPU cell:\n{src}"


def test_notebook_covers_the_issue_steps() -> None:
    text = "\n".join(c.source for c in load().cells)
    for needle in ("--smoke", "--profile {CARD}", "--dry-run", "kitrec-fast eval generate --run {RUN_DIR} "
                   "--dataset Younggooo/kitrec-test-seta --limit", "kitrec-fast eval score --predictions "
                   "{EVAL_DIR}/predictions.jsonl --output {EVAL_DIR}/score", "kitrec-fast push {RUN_DIR} --repo"):
        assert needle in text, needle


def _kitrec_commands() -> list[str]:
    """The notebook's `kitrec-fast ...` lines with its variables filled in."""
    values = {"RUN_DIR": "runs/x", "EVAL_DIR": "runs/x/eval", "EVAL_ROWS": "10", "HUB_REPO": "me/adapter"}
    out = []
    for cell in load().cells:
        for line in shell_lines(cell):
            if line.startswith("kitrec-fast "):
                out.append(re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], line))
    return out


@pytest.mark.parametrize("command", _kitrec_commands())
def test_notebook_cli_commands_parse(command: str) -> None:
    from kitrec_fast.cli import build_parser

    argv = shlex.split(command)[1:]
    parser = build_parser(argv[0])
    if argv[:2] == ["eval", "generate"]:
        sub = next(a for a in parser._subparsers._group_actions[0].choices["eval"]._actions
                   if a.__class__.__name__ == "_SubParsersAction")
        if "generate" not in sub.choices:
            pytest.skip("`kitrec-fast eval generate` is not registered in this checkout yet")
    args = parser.parse_args(argv)
    assert callable(args.func)


def readme_commands() -> list[str]:
    return re.findall(r"`(python -m kitrec_fast\.recipes\.[^`]+)`", RECIPES_README.read_text())


def test_recipes_readme_lists_every_recipe() -> None:
    from kitrec_fast.recipes import list_recipes

    text = RECIPES_README.read_text()
    for name in list_recipes():
        assert f"| {name} |" in text, name
    assert len(readme_commands()) == len(list_recipes())


@pytest.mark.parametrize("command", readme_commands())
def test_recipes_readme_commands_resolve(command: str, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    """Each README command, run with --dry-run, resolves to its recipe (no GPU here: auto = unchanged)."""
    from kitrec_fast.recipes._main import main

    monkeypatch.setattr(profiles, "detect_gpu", lambda: None)
    argv = shlex.split(command)
    family = argv[2].rsplit(".", 1)[1]
    assert main(family, argv[3:] + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    set_name = "setb" if "--set B" in command else "seta"
    assert f"{family}_{set_name}" in out


@pytest.mark.slow
def test_notebook_cpu_cells_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = load()
    nb.cells = [c for c in nb.cells if c.cell_type == "markdown" or not (tags(c) & SKIP_TAGS)]

    # A kernelspec of this very interpreter (the venv), in a temp dir: no user-level Jupyter setup
    # is read or written, and `!python` / `!kitrec-fast` in the cells resolve to the venv as on Colab.
    kernels = tmp_path / "kernels"
    (kernels / "kitrec-venv").mkdir(parents=True)
    (kernels / "kitrec-venv" / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "kitrec_fast venv", "language": "python"}))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # CI must not reach the Hub
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("COLUMNS", "200")  # rich tables in `!` output stay greppable
    workdir = tmp_path / "work"
    workdir.mkdir()
    km = KernelManager(kernel_name="kitrec-venv", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    client = NotebookClient(nb, km=km, timeout=900, allow_errors=False,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()

    def output_text(cell) -> str:
        parts = []
        for out in cell.outputs:
            parts.append(out.get("text", ""))
            parts.append(str(out.get("data", {}).get("text/plain", "")))
        return "".join(parts)

    code = [c for c in nb.cells if c.cell_type == "code"]
    smoke = next(c for c in code if "--smoke" in c.source)
    assert "run summary" in output_text(smoke), output_text(smoke)[-3000:]
    assert (workdir / "runs" / "smoke" / "adapter" / "adapter_config.json").is_file()
    listing = next(c for c in code if "loss_curves.png" in c.source)
    assert any("image/png" in out.get("data", {}) for out in listing.outputs)
    dry = next(c for c in code if "--dry-run" in c.source)
    text = output_text(dry)
    assert "memory profile 16gb" in text and "3072" in text, text[-3000:]
    assert "dry run" in text


def _install_cell() -> str:
    return next(c for c in load().cells if c.cell_type == "code" and "install" in tags(c)).source


def _wheel(tmp_path: Path) -> Path:
    """A wheel of this checkout, built as the install cell's markdown says (`python -m build --wheel`
    needs its build backend from the index; uv's offline build uses the one setup.sh's install cached)."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (scripts/setup.sh installs it)")
    proc = subprocess.run([uv, "build", "--wheel", "--offline", "-o", str(tmp_path / "dist"), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"no wheel built offline (the build backend is not in uv's cache): {proc.stderr[-300:]}")
    (wheel,) = (tmp_path / "dist").glob("kitrec_fast-*.whl")
    return wheel


def _venv_beside_the_deps(path: Path) -> Path:
    """A venv without kitrec_fast whose interpreter sees this venv's installed packages (pip among
    them) through a .pth line, as Colab's Python has its preinstalled stack."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    import sysconfig

    (Path(site) / "_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python


@pytest.mark.slow
def test_install_cell_installs_a_wheel_uploaded_or_from_drive(tmp_path: Path) -> None:
    # The route before a release: a wheel built from the checkout gets onto the Colab VM by the upload
    # dialog or from Google Drive, and the cell installs it. Colab's dialog (google.colab.files.upload)
    # is stood in for by a module that does what it does: the picked file lands in the current folder
    # and the call returns {name: bytes}. --no-deps and no index: the dependencies are those present.
    wheel = _wheel(tmp_path)
    colab = tmp_path / "colab" / "google" / "colab"
    colab.mkdir(parents=True)
    (colab / "__init__.py").write_text("")
    (colab / "files.py").write_text(
        "import os, shutil\n"
        "def upload():\n"
        f"    src = {str(wheel)!r}\n"
        "    shutil.copy(src, os.path.basename(src))\n"
        "    return {os.path.basename(src): open(src, 'rb').read()}\n")
    drive = tmp_path / "drive" / "MyDrive"
    drive.mkdir(parents=True)
    shutil.copy(wheel, drive / wheel.name)
    cell = _install_cell()
    for route, value in (("upload", "upload"), ("drive", str(drive / wheel.name))):
        python = _venv_beside_the_deps(tmp_path / f"venv-{route}")
        work = tmp_path / f"content-{route}"
        work.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(PIP_NO_DEPS="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
                   PYTHONPATH=str(tmp_path / "colab"))
        source = cell.replace('KITREC_FAST_SOURCE = ""', f"KITREC_FAST_SOURCE = {value!r}")
        assert source != cell
        proc = subprocess.run([str(python), "-c", source], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{route}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        assert f"pip install {work / wheel.name if route == 'upload' else value}" in proc.stdout
        # the installed wheel, not the checkout, answers
        env.pop("PYTHONPATH")
        out = subprocess.run([str(python), "-c", "import kitrec_fast; print(kitrec_fast.__file__)"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, check=True).stdout
        assert out.startswith(str(tmp_path / f"venv-{route}")), out
        version = subprocess.run([str(python.with_name("kitrec-fast")), "--version"], cwd=tmp_path, env=env,
                                 capture_output=True, text=True)
        assert version.stdout.strip() == f"kitrec-fast {wheel.name.split('-')[1]}", version.stdout + version.stderr


def test_the_install_page_and_the_notebook_give_the_same_install():
    """The docs' install page and the notebook's install cell are written apart; they must not drift:
    the page links the notebook, the wheel is built by the same command, and every value of
    KITREC_FAST_SOURCE the page tells a Colab user to set is one the cell itself documents."""
    import nbformat

    page = (ROOT / "docs" / "install.md").read_text()
    nb = nbformat.read(ROOT / "notebooks" / "quickstart_colab.ipynb", as_version=4)
    install_md = next(c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## 1. Install"))
    cell = next(c.source for c in nb.cells if c.cell_type == "code" and "install" in c.metadata.get("tags", []))
    assert "notebooks/quickstart_colab.ipynb" in page
    builds = set(re.findall(r"python -m build --wheel", page))
    assert builds and builds <= set(re.findall(r"python -m build --wheel", install_md))
    wheel = "kitrec_fast-<version>-py3-none-any.whl"
    assert wheel in page and wheel in install_md
    told = set(re.findall(r'KITREC_FAST_SOURCE = "([^"]*)"', page))
    assert "upload" in told
    for value in told:
        assert f'"{value}"' in cell or value in install_md, f"the install page says {value!r}; the cell does not"
    assert "/content/drive/" in page and "/content/drive/" in cell
