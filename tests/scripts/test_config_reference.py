"""docs/config.md is the generated reference of every config field, and current."""

import importlib.util

from efficiency.config import RANGES
from tests.helpers import ROOT

_spec = importlib.util.spec_from_file_location(
    "config_reference", ROOT / "scripts" / "config_reference.py"
)
config_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(config_reference)


def test_reference_is_current():
  text = config_reference.render()
  assert (ROOT / "docs" / "config.md").read_text() == text, (
      "docs/config.md is stale: run python scripts/config_reference.py"
  )


def test_every_field_has_its_default_range_and_choices():
  training = config_reference.render().split("## Fine-tuning")[0]
  lines = [line for line in training.splitlines() if "| `" in line]
  rows = {line.split(" | ")[0].strip("| `"): line for line in lines}
  for field, *_ in RANGES:
    assert field in rows or field.startswith("peft."), field
  assert "`sentencepiece`" in rows["data.tokenizer"]
  assert "`gqa`" in rows["model.attention"] and "`mla`" in rows["model.attention"]
  assert "integer in [1, inf)" in rows["model.scan_unroll"]
  assert "| `600` |" in rows["steps"]
