"""Every notebook in examples/ executed headless with nbclient, asserting on its outputs."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def _execute(path: pathlib.Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    return notebook


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output["text"])
        for mime in ("text/html", "text/plain"):
            if mime in output.get("data", {}):
                parts.append(output["data"][mime])
    return "\n".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path):
    notebook = _execute(path)
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", f"{path.name}: {output.get('ename')}: {output.get('evalue')}"
    if path.name == "quickstart.ipynb":
        _check_quickstart(notebook)


def _check_quickstart(notebook):
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    training = [c for c in cells if c.source.startswith("%%terra")]
    assert len(training) == 2
    first_table = _text(training[0])
    assert "speedup" in first_table and "coexec" in first_table and "x eager over" in first_table
    checks = _text(cells[-1])
    lines = {line.split(":")[0]: line for line in checks.splitlines() if line.startswith("cell ")}
    first, second = lines["cell 1"], lines["cell 2"]
    assert "coexec" in first and "eager" in first, first
    assert "traced ops 0" in second and "modes ['coexec']" in second, "the second training cell did not trace again"
