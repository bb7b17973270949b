"""The analysis notebooks execute against a sweep root of the test's own making."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.mark.parametrize("name", ["analyze_runs.ipynb"])
def test_notebook_executes(name, sweep_root, monkeypatch):
  monkeypatch.setenv("SWEEP_ROOT", str(sweep_root))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
  NotebookClient(
      notebook, timeout=300, kernel_name="python3",
      resources={"metadata": {"path": str(NOTEBOOKS.parent)}},
  ).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs)
  assert "runs in" in text and "num_kv_heads-1" in text
  markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
  assert "| num_kv_heads-1 |" in markdown
