"""The demo notebooks run top to bottom on the tiny model."""

import os

import nbclient  # dev extra
import nbformat  # dev extra
import pytest

NOTEBOOKS = ["quickstart", "multi_turn", "guidance_sweep"]
DEMOS = os.path.join(os.path.dirname(__file__), "..", "demos")


# The per-cell timeout only guards against hangs: alone a sweep cell takes ~20 s, but with training running
# beside it on 2 cores one took ~400 s.
@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, tmp_path):
    notebook = nbformat.read(os.path.join(DEMOS, f"{name}.ipynb"), as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": DEMOS}})
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
