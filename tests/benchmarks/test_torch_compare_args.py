"""`benchmarks/torch_compare.py`: the configs its shapes and layer arms compare."""

import pytest

from benchmarks.torch_compare import LAYERS, SHAPES, shape_config
from efficiency.config import resolve


@pytest.mark.parametrize("shape", list(SHAPES))
def test_layer_arms_differ_only_in_how_the_stack_compiles(shape):
  arms = {arm: resolve(shape_config(shape, arm), num_devices=1).model for arm in LAYERS}
  layers, d_model, heads, kv_heads, d_ff = SHAPES[shape]
  scan = arms["scan"]
  assert (scan.num_layers, scan.d_model, scan.num_heads, scan.num_kv_heads, scan.d_ff) == (
      layers, d_model, heads, kv_heads, d_ff)
  assert [(m.scan_layers, m.scan_unroll) for m in arms.values()] == [
      (True, 1), (True, layers), (False, 1)]
  for model in arms.values():
    model.update(scan_layers=True, scan_unroll=1)
    assert model.to_dict() == scan.to_dict()
