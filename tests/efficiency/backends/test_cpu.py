"""The XLA:CPU tweaks behind one switch: each computes what the plain XLA form computes (random
inputs, stated tolerances), and `EFFICIENCY_CPU_TWEAKS=0` turns every one off (the traced
program changes back to the plain form)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficiency.backends import cpu


@pytest.fixture
def rng():
  return np.random.default_rng(0)


def test_the_switch_reads_the_environment(monkeypatch):
  monkeypatch.delenv(cpu.SWITCH, raising=False)
  assert cpu.enabled() and cpu.reduce_queries(8) and not cpu.reduce_queries(9)
  assert cpu.int4_decode_form("cpu") == "float" and cpu.int4_decode_form("gpu") == "s4"
  with cpu.switched(False):
    assert not cpu.enabled() and not cpu.reduce_queries(1)
    assert cpu.int4_decode_form("cpu") == "s4"
  assert cpu.enabled()
  monkeypatch.setenv(cpu.SWITCH, "0")
  assert not cpu.enabled()


@pytest.mark.parametrize("on", [True, False])
def test_each_tweak_computes_the_plain_form(rng, on):
  x_BTNH = jnp.asarray(rng.normal(size=(2, 3, 4, 8)), jnp.float32)
  kernel_NHD = jnp.asarray(rng.normal(size=(4, 8, 16)), jnp.float32)
  x_BV = jnp.asarray(rng.normal(size=(5, 97)), jnp.float32).at[1, 7].set(jnp.nan)
  one_row = jnp.asarray(rng.normal(size=(1, 8)), jnp.float32)
  with cpu.switched(on):
    expected = jnp.einsum("btnh,nhd->btd", x_BTNH, kernel_NHD)
    np.testing.assert_allclose(
        cpu.merged_contraction_einsum("btnh,nhd->btd", x_BTNH, kernel_NHD), expected,
        rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        cpu.on_merged_tokens("btnh,nhd->btd", x_BTNH, lambda s, v: jnp.einsum(s, v, kernel_NHD)),
        expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cpu.argmax(x_BV), jnp.argmax(x_BV, axis=-1))
    np.testing.assert_allclose(cpu.two_rows_on_cpu(jnp.einsum)("td,df->tf", one_row,
                                                                kernel_NHD[0]),
                               one_row @ kernel_NHD[0], rtol=1e-5, atol=1e-5)
    hlo = jax.jit(lambda x: cpu.argmax(x)).lower(x_BV).as_text()  # traced under the switch
  # jnp.argmax is one variadic (value, index) reduction; the tweak is two plain ones.
  assert (hlo.count("stablehlo.reduce") == 2) == on, hlo
