"""The defense-comparison notebook runs headless on a finished study folder and shows the comparison (mean ± std
tables, heatmaps, ROC curves averaged over seeds, the mitigation trade-off); a results path that is no study folder
stops it with an error naming the path."""

import sys
from pathlib import Path

import nbformat
import pytest

from artmed.evaluations.config import DefenseSpec
from artmed.evaluations.study import quick_config, run_study

nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")

NOTEBOOK = Path(__file__).resolve().parents[1] / "evaluations" / "notebooks" / "defense_comparison.ipynb"

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*label group:UserWarning"),
    pytest.mark.filterwarnings("ignore:poison_rate_sweep.png not drawn"),
]  # the quick study has one rate


def _text(output) -> str:
    if output.output_type == "stream":
        return output.text
    if output.output_type == "error":
        return f"{output.ename}: {output.evalue}"
    data = output.get("data", {})
    return data.get("text/markdown", "") + data.get("text/plain", "")


@pytest.fixture(scope="module")
def two_seed_study(tmp_path_factory):
    """The quick study over two seeds, with fine-pruning (a few steps) beside its two detectors."""
    out = tmp_path_factory.mktemp("notebook") / "study"
    config = quick_config(str(out), n_seeds=2)
    config.defenses.append(DefenseSpec("fine_pruning", {"finetune_steps": 2, "batch_size": 16}))
    run_study(config, verbose=False)
    return out


def _execute(tmp_path, monkeypatch, results: str, allow_errors: bool = False):
    """The notebook executed with ``ARTMED_RESULTS=results`` on a private "python3" kernel (this interpreter)."""
    kernelspec.install(prefix=str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter" / "share" / "jupyter"))  # the highest priority
    monkeypatch.setenv("ARTMED_RESULTS", results)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    for name, value in [("OMP_NUM_THREADS", "1"), ("TQDM_DISABLE", "1"), ("MPLBACKEND", "Agg")]:
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        allow_errors=allow_errors,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    return notebook


def _cell(notebook, snippet: str):
    """The code cell whose source holds ``snippet``."""
    return next(cell for cell in notebook.cells if cell.cell_type == "code" and snippet in cell.source)


def _images(cell) -> int:
    return sum("image/png" in output.get("data", {}) for output in cell.outputs)


def test_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    assert all(not cell.outputs and cell.execution_count is None for cell in notebook.cells if cell.cell_type == "code")


def test_notebook_compares_the_defenses_of_a_study(two_seed_study, tmp_path, monkeypatch):
    notebook = _execute(tmp_path, monkeypatch, str(two_seed_study))
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert f"results from {two_seed_study}" in "\n".join(_text(o) for o in outputs)
    assert Path(sys.executable).samefile(notebook.cells[-1].outputs[0].text.strip())

    models = _text(_cell(notebook, "table(models").outputs[0])
    assert "| setting | n | ca | asr |" in models and "baddist_badmatch/patch 5%" in models
    assert "| 2 |" in models and " ± " in models  # mean ± std over the two seeds
    detectors = _text(_cell(notebook, "table(detections").outputs[0])
    assert "tpr_at_fpr5" in detectors and "spectral_signatures" in detectors and "activation_clustering" in detectors
    assert _images(_cell(notebook, 'show(plot_heatmap, "auroc"')) == 2  # AUROC and TPR at 5 % FPR
    assert _images(_cell(notebook, "show(plot_mean_roc")) == 1  # one attacked setting, its seeds averaged
    assert _images(_cell(notebook, "show(plot_baddist_separation")) == 1
    assert _images(_cell(notebook, "show(plot_trigger_examples")) == 1
    assert "fine_pruning" in _text(_cell(notebook, "table(repaired").outputs[0])
    assert _images(_cell(notebook, "show(plot_ca_asr_bars")) == 2  # before/after bars and the DER heatmap
    assert _images(_cell(notebook, "show(plot_tradeoff")) == 1
    assert "this study ran no input screen" in _text(_cell(notebook, 'rows("input")').outputs[0])
    assert "fine_pruning" in _text(_cell(notebook, '("seconds", "peak_mb")').outputs[0])
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 8  # what the sections draw, not figures/*


def test_notebook_stops_on_a_results_path_that_is_no_study(tmp_path, monkeypatch):
    missing = tmp_path / "artmed-outptu"
    notebook = _execute(tmp_path, monkeypatch, str(missing), allow_errors=True)
    errors = [
        o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"
    ]
    assert errors[0].ename == "StudyFolderError" and str(missing) in errors[0].evalue
    assert "does not exist" in errors[0].evalue
    assert not list(tmp_path.glob("artmed-quick-*"))  # no study ran in its place
