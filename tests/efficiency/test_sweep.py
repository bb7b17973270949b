"""Sweeps: grid expansion, point names, bad sweep files, and the shipped sweeps' fields."""

import runpy

import pytest

from efficiency import sweep as sweep_lib
from tests.helpers import ROOT


def test_grid_expands_to_cartesian_product_plus_points():
  points = sweep_lib.expand(dict(
      base="configs/default.py",
      grid={"model.attention": ["gqa", "mqa"], "seed": [0, 1]},
      points=[{"model.attention": "mha", "seed": 7}],
      overrides={"steps": 5},
  ))
  assert [p.name for p in points] == [
      "attention-gqa__seed-0", "attention-gqa__seed-1", "attention-mqa__seed-0",
      "attention-mqa__seed-1", "attention-mha__seed-7",
  ]
  assert points[1].overrides == {"steps": 5, "model.attention": "gqa", "seed": 1}


def test_point_names_are_filesystem_safe():
  assert sweep_lib.point_name({"data.corpus_root": "/a b/c", "model.qkv_bias": True}) == (
      "corpus_root-_a_b_c__qkv_bias-true"
  )
  assert sweep_lib.point_name({}) == "base"


def test_bad_sweeps_are_clear_errors():
  with pytest.raises(ValueError, match=r"sweep keys \['grid'\] are invalid; it needs 'base'"):
    sweep_lib.expand({"grid": {}})
  with pytest.raises(ValueError, match=r"share names \['seed-1'\]"):
    sweep_lib.expand({"base": "b", "points": [{"seed": 1}, {"seed": 1}]})


@pytest.mark.parametrize(
    "path", sorted((ROOT / "configs" / "sweeps").glob("*.py")), ids=lambda p: p.stem
)
def test_shipped_sweeps_name_real_config_fields(path):
  sweep = sweep_lib.load_sweep_file(str(path))
  base_path, _, arg = sweep["base"].partition(":")
  config = runpy.run_path(str(ROOT / base_path))["get_config"](arg or None)
  for point in sweep_lib.expand(sweep):
    for field_name in point.overrides:
      node = config
      for part in field_name.split("."):
        assert part in node, f"{path.name}: point {point.name} sets unknown field {field_name}"
        node = node[part]
