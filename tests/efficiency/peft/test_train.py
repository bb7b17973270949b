"""PEFT train steps: only the trainable tree moves, optimizer state covers only it, LoRA+ ratio."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from tests.helpers import run_peft, tiny_peft_config


def _flat(tree) -> dict:
  return traverse_util.flatten_dict(tree)


@pytest.mark.parametrize("method,peft", [
    ("lora", {"targets": "mlp/*"}),
    ("dora", {"base_quant": "int8"}),
    ("freeze", {"last_layers": 1}),
])
def test_only_trainable_parameters_change(method, peft):
  config = tiny_peft_config(method, **peft)
  initial, final, losses, training = run_peft(config, steps=3)
  final = jax.device_get(final)
  for path, before in _flat(initial.frozen).items():  # frozen: bitwise equal
    np.testing.assert_array_equal(_flat(final.frozen)[path], before, err_msg=str(path))
  after = _flat(final.params)
  moved = {p: not np.array_equal(after[p], v) for p, v in _flat(initial.params).items()}
  assert all(moved[p] for p in moved if p[-1] in ("lora_b", "magnitude", "kernel")), moved
  # The optimizer holds Adam moments for the trainable tree alone.
  mu = training.abstract_state.opt_state[1][0].mu
  assert jax.tree.structure(mu) == jax.tree.structure(training.abstract_state.params)
  floats = 4 * training.trainable_param_count()
  assert 2 * floats <= training.optimizer_state_bytes() <= 2 * floats + 64
  assert training.trainable_param_count() < training.param_count()
  if method == "lora":  # untargeted projections of the effective model are the base's, bitwise
    base_q = initial.frozen["layers"]["attn"]["query"]["kernel"]
    q = training.effective_params(final)["layers"]["attn"]["query"]["kernel"]
    np.testing.assert_array_equal(q, base_q)
    assert set(final.params["layers"]) == {"mlp"}
  if method == "freeze":  # only the last layer of the stacked layers trains
    assert final.params["layers"]["mlp"]["up"]["kernel"].shape[0] == 1
  assert np.isfinite(losses).all()


def test_lora_plus_moves_b_ratio_times_faster_than_lora():
  """Step 1 has lr 0 (warmup), so step 2 sees equal gradients in both; B's update is 4x."""
  init_l, final_l, *_ = run_peft(tiny_peft_config("lora"), steps=2)
  init_p, final_p, *_ = run_peft(tiny_peft_config("lora_plus", lora_plus_ratio=4.0), steps=2)
  final_l, final_p = _flat(jax.device_get(final_l.params)), _flat(jax.device_get(final_p.params))
  for path, b0 in _flat(init_l.params).items():
    if path[-1] != "lora_b":
      continue
    np.testing.assert_array_equal(_flat(init_p.params)[path], b0)  # same start
    step_l, step_p = final_l[path] - b0, final_p[path] - b0
    assert np.abs(step_l).max() > 0
    np.testing.assert_allclose(step_p, 4.0 * step_l, rtol=1e-4, atol=1e-7)
