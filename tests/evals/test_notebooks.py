"""The analysis notebooks execute against a sweep root of the test's own making."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def _execute(name: str, monkeypatch) -> tuple[str, str]:
  """Runs a notebook from the repository root; returns its printed text and its markdown."""
  monkeypatch.setenv("MPLBACKEND", "Agg")
  notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
  NotebookClient(
      notebook, timeout=300, kernel_name="python3",
      resources={"metadata": {"path": str(NOTEBOOKS.parent)}},
  ).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs)
  markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
  return text, markdown


def test_analyze_runs_executes(sweep_root, monkeypatch):
  monkeypatch.setenv("SWEEP_ROOT", str(sweep_root))
  text, markdown = _execute("analyze_runs.ipynb", monkeypatch)
  assert "runs in" in text and "num_kv_heads-1" in text
  assert "| num_kv_heads-1 |" in markdown


def test_compare_techniques_shows_all_three_dimensions(techniques_root, monkeypatch):
  monkeypatch.setenv("COMPARE_ROOTS", str(techniques_root))
  text, markdown = _execute("compare_techniques.ipynb", monkeypatch)
  assert "architecture 1, fine-tuning 1, quantization 1" in text
  assert "| gqa | gqa | rope |" in markdown
  assert "| lora | lora |" in markdown
  assert "| int8 | int8 |" in markdown and "| int8 | 4 |" in markdown
