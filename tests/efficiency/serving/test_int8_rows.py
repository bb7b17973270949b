"""Served int8 products of one row run as two rows on CPU (efficiency.quant.einsum): the same
result, and no one-row int8 product left for XLA to compute through an int32 copy of the kernel."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficiency.quant import einsum
from efficiency.serving import export
from tests.helpers import quant_config, trained_model

ONE_ROW_INT8_DOT = re.compile(r"= s32\[1,\d+\]\S* dot\(")


@pytest.fixture(scope="module")
def served():
  return export.convert(trained_model(quant_config(mode="int8")), 8, "float32")


def forward(served, tokens_BT: np.ndarray):
  """The served model's jitted forward pass over tokens_BT (one document per row)."""
  tokens = jnp.asarray(tokens_BT, jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  fn = jax.jit(lambda p, t: served.model.apply({"params": p}, t, jnp.ones_like(t), positions))
  return fn, (served.params, tokens)


def test_one_row_logits_equal_the_plain_one_row_product(served, monkeypatch):
  monkeypatch.setattr(einsum, "two_rows_on_cpu", lambda e: e)  # the one-row form, as before
  fn, args = forward(served, np.array([[5]]))
  plain = np.asarray(fn(*args))
  assert ONE_ROW_INT8_DOT.search(fn.lower(*args).compile().as_text())  # what the change removes
  monkeypatch.undo()
  fn, args = forward(served, np.array([[5]]))
  np.testing.assert_allclose(np.asarray(fn(*args)), plain, rtol=1e-6, atol=1e-6)
  assert not ONE_ROW_INT8_DOT.search(fn.lower(*args).compile().as_text())


def test_a_row_quantizes_alone(served):
  """Row 0 of a two-row call equals the one-row call however large the other row is, which
  the two-row form relies on (per-row activation scales)."""
  one, args = forward(served, np.array([[5]]))
  alone = np.asarray(one(*args))[0]
  two, args = forward(served, np.array([[5], [90]]))
  beside = np.asarray(two(*args))
  np.testing.assert_allclose(beside[0], alone, rtol=1e-6, atol=1e-6)
  assert not np.allclose(beside[1], alone, atol=1e-3)
