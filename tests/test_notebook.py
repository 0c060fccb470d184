"""The defense-comparison notebook runs headless (no results folder: it runs the quick study) and shows the tables."""

import sys
from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")

NOTEBOOK = Path(__file__).resolve().parents[1] / "evaluations" / "notebooks" / "defense_comparison.ipynb"


def _text(output) -> str:
    if output.output_type == "stream":
        return output.text
    data = output.get("data", {})
    return data.get("text/markdown", "") + data.get("text/plain", "")


def test_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    assert all(not cell.outputs and cell.execution_count is None for cell in notebook.cells if cell.cell_type == "code")


def test_notebook_runs_the_quick_study_and_shows_the_comparison(tmp_path, monkeypatch):
    # A private "python3" kernelspec pointing at this interpreter (JUPYTER_PATH has the highest priority).
    kernelspec.install(prefix=str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter" / "share" / "jupyter"))
    monkeypatch.setenv("ARTMED_RESULTS", str(tmp_path / "no-results-here"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    for name, value in [("OMP_NUM_THREADS", "1"), ("TQDM_DISABLE", "1"), ("MPLBACKEND", "Agg")]:
        monkeypatch.setenv(name, value)

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(_text(o) for o in outputs)
    assert f"results from {tmp_path}" in text
    assert Path(sys.executable).samefile(notebook.cells[-1].outputs[0].text.strip())
    tables = [o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    defense_table = next(t for t in tables if "| defense" in t and "status" in t)
    for name in ("spectral_signatures", "activation_clustering"):
        assert name in defense_table
    assert "baddist_badmatch" in next(t for t in tables if "asr_all" in t)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5
