"""Served int8 products of one row run as two rows on CPU (efficiency.quant.einsum): the same
result, and no one-row int8 product left for XLA to compute through an int32 copy of the kernel."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficiency.backends import cpu
from efficiency.serving import export
from tests.helpers import quant_config, trained_model

ONE_ROW_INT8_DOT = re.compile(r"= s32\[1,\d+\]\S* dot\(")


@pytest.fixture(scope="module")
def served():
  return export.convert(trained_model(quant_config(mode="int8")), 8, "float32")


def forward(served, tokens_BT: np.ndarray) -> tuple[np.ndarray, str]:
  """The served model's logits over tokens_BT (one document per row) and the compiled HLO of
  its forward pass, from one compilation."""
  tokens = jnp.asarray(tokens_BT, jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  fn = jax.jit(lambda p, t: served.model.apply({"params": p}, t, jnp.ones_like(t), positions))
  compiled = fn.lower(served.params, tokens).compile()
  return np.asarray(compiled(served.params, tokens)), compiled.as_text()


def test_one_row_logits_equal_the_plain_one_row_product(served, monkeypatch):
  monkeypatch.setattr(cpu, "two_rows_on_cpu", lambda e: e)  # the one-row form, as before
  plain, hlo = forward(served, np.array([[5]]))
  assert ONE_ROW_INT8_DOT.search(hlo)  # what the change removes
  monkeypatch.undo()
  logits, hlo = forward(served, np.array([[5]]))
  np.testing.assert_allclose(logits, plain, rtol=1e-6, atol=1e-6)
  assert not ONE_ROW_INT8_DOT.search(hlo)


def test_a_row_quantizes_alone(served):
  """Row 0 of a two-row call equals the one-row call however large the other row is, which
  the two-row form relies on (per-row activation scales)."""
  alone = forward(served, np.array([[5]]))[0][0]
  beside, _ = forward(served, np.array([[5], [90]]))
  np.testing.assert_allclose(beside[0], alone, rtol=1e-6, atol=1e-6)
  assert not np.allclose(beside[1], alone, atol=1e-3)
