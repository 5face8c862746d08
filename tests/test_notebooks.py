"""The notebooks in notebooks/ run top to bottom in a fresh kernel (their cells assert what they show), and their
stored copies carry the outputs a code host displays. A failing cell fails the test with the cell named."""

import importlib.util
import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def _runner():
    """notebooks/run.py, the same runner that stores the notebooks (a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("notebook_runner", NOTEBOOK_DIR / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _runner()


@pytest.mark.parametrize("name", run.NOTEBOOKS)
def test_notebook_runs(name):
    nb = run.execute(NOTEBOOK_DIR / name)
    assert all(cell.get("outputs") is not None for cell in nb.cells if cell.cell_type == "code")


@pytest.mark.parametrize("name", run.NOTEBOOKS)
def test_stored_notebook_shows_its_outputs(name):
    """Stored executed (by notebooks/run.py): every code cell ran, in order, none failed, and the figures are there."""
    nb = json.loads((NOTEBOOK_DIR / name).read_text(encoding="utf-8"))
    code = [cell for cell in nb["cells"] if cell["cell_type"] == "code"]
    assert [cell["execution_count"] for cell in code] == list(range(1, len(code) + 1)), "re-run notebooks/run.py"
    outputs = [output for cell in code for output in cell["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert any("image/png" in o.get("data", {}) or "text/html" in o.get("data", {}) for o in outputs)
    if name in ("model.ipynb", "probes.ipynb"):
        assert any("image/png" in o.get("data", {}) for o in outputs)


def test_a_failing_cell_is_named(tmp_path):
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("assert x == 2, 'planted'")]
    )
    path = tmp_path / "broken.ipynb"
    nbformat.write(nb, path)
    named = r"broken.ipynb: cell 1 \(\"assert x == 2, 'planted'\"\) failed"
    with pytest.raises(run.NotebookError, match=named) as error:
        run.execute(path)
    assert "AssertionError: planted" in str(error.value) and "\x1b[" not in str(error.value)


def test_the_readme_figure_is_the_probe_notebooks_output():
    notebook, tag, target = run.README_FIGURE
    nb = nbformat.read(NOTEBOOK_DIR / notebook, as_version=4)
    assert run.tagged_png(nb, tag) == target.read_bytes()
