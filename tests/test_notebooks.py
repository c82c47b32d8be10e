"""The notebooks run top to bottom (in a real kernel, CPU only, no network) on fake run folders, and are committed
with their outputs cleared."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers.fake_run import BASE_ONLY, build_fake_run

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("explore_run", "paper_figures")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"full": build_fake_run(root / "full"),
            "base_only": build_fake_run(root / "base_only", rounds=0, eval_specs=BASE_ONLY)}


def _execute(name: str, run_dir: pathlib.Path, monkeypatch, **env: str) -> nbformat.NotebookNode:
    monkeypatch.setenv("LSI_RUN_DIR", str(run_dir))  # the kernel inherits this process's environment
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return notebook


def _outputs(notebook: nbformat.NotebookNode) -> tuple[int, str]:
    """(number of PNG images, all text output) of an executed notebook."""
    images, text = 0, []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            images += "image/png" in output.get("data", {})
            text.append(output.get("text", "") + output.get("data", {}).get("text/plain", ""))
    return images, "\n".join(text)


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebooks_have_no_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert "LSI_RUN_DIR" in code[0].source
    assert all(not c.outputs and c.execution_count is None for c in code)


def test_explore_run_notebook(runs, monkeypatch):
    images, text = _outputs(_execute("explore_run", runs["full"], monkeypatch))
    # vote histograms, pseudo-label shares, calibration, right/wrong shares
    assert images == 4
    assert "6 questions, 48 paths" in text and "manifest counts" in text


def test_paper_figures_notebook_saves_figures(runs, monkeypatch, tmp_path):
    images, text = _outputs(_execute("paper_figures", runs["full"], monkeypatch, LSI_FIGURES_DIR=str(tmp_path)))
    assert images == 4  # Figures 2, 5, 4 and the loss
    saved = sorted(p.name for p in tmp_path.glob("*.png"))
    assert saved == ["figure2_calibration.png", "figure4_temperature.png", "figure5_accuracy_vs_m.png",
                     "training_loss_full.png"]
    assert "30.0% [10.8, 60.3] (n=10)" in text


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_on_a_run_before_self_improvement(name, runs, monkeypatch):
    images, text = _outputs(_execute(name, runs["base_only"], monkeypatch))
    assert images == 2  # calibration, and accuracy vs m (paper_figures) or right/wrong vote shares (explore_run)
    expected = "No temperature sweep" if name == "paper_figures" else "No sample stage in this run yet."
    assert expected in text
