"""Building blocks with logically partitioned parameters: projections, RMSNorm, embedding, MLP."""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from efficiency.backends.cpu import merged_contraction_einsum, on_merged_tokens, two_rows_on_cpu
from efficiency.model import adapter
from efficiency.quant import int8_activations, table
from efficiency.quant.einsum import (
  int32_einsum,
  make_einsum,
  on_int8_activations,
  weight_storage,
)
from efficiency.quant.pack import (
  dequantize_codes,
  dequantize_int4,
  matrix_shape,
  num_groups,
  quantize_int4,
  unpack_int4,
)

Dtype = jnp.dtype
Quant = ml_collections.FrozenConfigDict | None
Einsum = Callable[[str, jnp.ndarray, jnp.ndarray], jnp.ndarray]


def token_major(einsum: Einsum) -> Einsum:
  """`einsum` over one token axis (`on_merged_tokens`)."""
  return lambda spec, x, kernel: on_merged_tokens(spec, x, lambda s, v: einsum(s, v, kernel))


class Projection(nn.Module):
  """An einsum against a kernel of explicit shape and logical axis names, with optional bias.

  `spec` is an einsum equation "inputs,kernel->outputs", for example "btd,dnh->btnh". `quant`
  (the `quant` config) makes it an AQT einsum, or reads int8 / int4 weights of a converted model
  (see efficiency.quant.einsum). `logits` marks the (untied) logits projection, which follows
  `quant.logits` and stays in float by default. Params holding PEFT adapters (`lora_a`, ...) make
  it a frozen base plus adapters computed in the forward pass (efficiency.model.adapter).
  """

  spec: str
  kernel_shape: Sequence[int]
  kernel_axes: Sequence[str]
  init_std: float
  use_bias: bool = False
  bias_axes: Sequence[str] = ()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  quant: Quant = None
  logits: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    params = self.variables.get("params", {})
    storage = weight_storage(self.quant, self.path, self.logits)
    if adapter.is_adapted(params) or (storage == "float" and adapter.holds_codes(params)):
      einsum = make_einsum(self, self.quant, self.logits)
      shape = tuple(self.kernel_shape)
      y = on_merged_tokens(
          self.spec, x.astype(self.dtype),
          lambda spec, v: adapter.adapted(spec, v, params, shape, einsum),
      )
      return self._add_bias(y)
    if storage == "int4" and on_int8_activations(self.quant) and int8_activations.fits(self.spec):
      return self._add_bias(self._on_int8_activations(x))
    if storage == "int4":
      kernel = self._int4_kernel()
    elif storage == "int4_convert":
      kernel = self._convert_int4()
    elif storage == "int8":  # AQT reads the frozen int8 kernel from params .../aqt/...
      kernel = jnp.zeros(self.kernel_shape, self.dtype)
    else:
      kernel = self.param(
          "kernel",
          nn.with_logical_partitioning(
              nn.initializers.normal(self.init_std), tuple(self.kernel_axes)
          ),
          tuple(self.kernel_shape),
          self.param_dtype,
      )
    einsum = make_einsum(self, self.quant, self.logits)
    einsum = token_major(merged_contraction_einsum if einsum is jnp.einsum else einsum)
    return self._add_bias(einsum(self.spec, x.astype(self.dtype), kernel.astype(self.dtype)))

  def _add_bias(self, y: jnp.ndarray) -> jnp.ndarray:
    if not self.use_bias:
      return y
    n_out = len(self.bias_axes)
    bias = self.param(
        "bias",
        nn.with_logical_partitioning(nn.initializers.zeros, tuple(self.bias_axes)),
        tuple(self.kernel_shape[-n_out:]),
        self.param_dtype,
    )
    return y + bias.astype(self.dtype)

  def _convert_int4(self) -> jnp.ndarray:
    """Packs the float kernel into `kernel_int4` / `kernel_scale` (apply with params mutable);
    returns the kernel as the int4 model will see it."""
    kernel = self.get_variable("params", "kernel")
    kernel = kernel.value if isinstance(kernel, nn.Partitioned) else kernel
    packed, scale = quantize_int4(kernel, self.spec, self.quant.group_size)
    self.put_variable("params", "kernel_int4", packed)
    self.put_variable("params", "kernel_scale", scale.astype(self.param_dtype))
    return self._int4_kernel()

  def _int4_scale(self) -> jnp.ndarray:
    """The int4 kernel's scales [groups, M] (`kernel_scale`)."""
    k, m = matrix_shape(self.spec, tuple(self.kernel_shape))
    groups = num_groups(k, self.quant.group_size)
    return self.param("kernel_scale", nn.initializers.ones, (groups, m), self.param_dtype)

  def _on_int8_activations(self, x: jnp.ndarray) -> jnp.ndarray:
    """The int4 kernel's product on int8 activations (`quant.int4_activations=int8`): its codes
    as int8 values, `kernel_s8` in the decode form (serving.weights), else unpacked here."""
    scale = self._int4_scale()
    if self.has_variable("params", "kernel_s8"):
      codes_KM = self.get_variable("params", "kernel_s8")
    else:
      k, m = matrix_shape(self.spec, tuple(self.kernel_shape))
      codes_KM = unpack_int4(self.param("kernel_int4", nn.initializers.zeros, (k // 2, m),
                                        jnp.uint8))
    return int8_activations.product(self.spec, x, codes_KM, scale.astype(jnp.float32),
                                    tuple(self.kernel_shape), self.dtype,
                                    two_rows_on_cpu(int32_einsum))

  def _int4_kernel(self) -> jnp.ndarray:
    """The kernel dequantized from packed int4 values `kernel_int4` and `kernel_scale`, or
    from the jnp.int4 (`kernel_s4`) or int8 (`kernel_s8`) values the decode form holds instead
    (serving.weights)."""
    k, m = matrix_shape(self.spec, tuple(self.kernel_shape))
    scale = self._int4_scale()
    held = [n for n in ("kernel_s4", "kernel_s8") if self.has_variable("params", n)]
    if held:  # jnp.int4 values, or int8 ones for a layer that stays weight-only under W4A8
      codes = self.get_variable("params", held[0])
      return dequantize_codes(codes, scale, self.spec, tuple(self.kernel_shape), self.dtype)
    packed = self.param("kernel_int4", nn.initializers.zeros, (k // 2, m), jnp.uint8)
    return dequantize_int4(packed, scale, self.spec, tuple(self.kernel_shape), self.dtype)


class RMSNorm(nn.Module):
  """Root-mean-square norm with a learned scale, computed in float32."""

  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BTD: jnp.ndarray) -> jnp.ndarray:
    scale_D = self.param(
        "scale",
        nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        (x_BTD.shape[-1],),
        self.param_dtype,
    )
    x32 = x_BTD.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale_D.astype(jnp.float32)).astype(self.dtype)


class Embed(nn.Module):
  """Token embedding table [vocab, d_model]; `attend` gives the tied logits projection, in
  float unless `quant.logits` is set. A served model with `quant.embedding` int8 or int4 holds
  the table as codes `embedding_int8` / `embedding_int4` with per-row (or, int4, per-group)
  float32 scales `embedding_scale` (efficiency.quant.table). Its logits are weight-only
  (activations stay float, `quant.logits` or not), except a table with one scale per row in a
  model whose kernels run on int8 activations (served int8, or int4 with
  `quant.int4_activations=int8`): there the logits quantize each token's activations to int8, as
  those kernels do, and run an int8 product summed in int32."""

  vocab_size: int
  d_model: int
  init_std: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  quant: Quant = None

  def setup(self):
    storage = table.embedding_storage(self.quant)
    if storage == "none":
      self.embedding = self.param(
          "embedding",
          nn.with_logical_partitioning(
              nn.initializers.normal(self.init_std), ("vocab", "embed")
          ),
          (self.vocab_size, self.d_model),
          self.param_dtype,
      )
      return
    bits = table.BITS[storage]
    width, dtype = (self.d_model, jnp.int8) if bits == 8 else (self.d_model // 2, jnp.uint8)
    groups = table.scale_groups(bits, self.d_model, self.quant.get("group_size", 0))
    self.codes = self.param(f"embedding_{storage}", nn.initializers.zeros,
                            (self.vocab_size, width), dtype)
    self.scale_VG = self.param("embedding_scale", nn.initializers.ones,
                               (self.vocab_size, groups), jnp.float32)

  def _bits(self) -> int | None:
    return table.BITS.get(table.embedding_storage(self.quant))

  def __call__(self, tokens_BT: jnp.ndarray) -> jnp.ndarray:
    bits = self._bits()
    if bits is not None:
      return table.lookup(self.codes, self.scale_VG, tokens_BT, bits, self.dtype)
    return jnp.take(self.embedding, tokens_BT, axis=0).astype(self.dtype)

  @nn.compact
  def attend(self, x_BTD: jnp.ndarray) -> jnp.ndarray:
    bits = self._bits()
    if bits is not None:
      on_int8 = table.logits_on_int8_activations(table.embedding_storage(self.quant),
                                                 self.scale_VG.shape[-1],
                                                 on_int8_activations(self.quant))
      int_einsum = token_major(two_rows_on_cpu(int32_einsum)) if on_int8 else None
      return table.logits(x_BTD, self.codes, self.scale_VG, bits, self.dtype,
                          token_major(jnp.einsum), int_einsum)
    einsum = token_major(make_einsum(self, self.quant, logits=True))
    return einsum("btd,vd->btv", x_BTD, self.embedding.astype(self.dtype))


class SwiGLU(nn.Module):
  """MLP: down(silu(x W_gate) * (x W_up))."""

  d_model: int
  d_ff: int
  init_std: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  quant: Quant = None

  @nn.compact
  def __call__(self, x_BTD: jnp.ndarray) -> jnp.ndarray:
    kw = dict(
        init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype, quant=self.quant
    )
    up = lambda name: Projection(
        "btd,df->btf", (self.d_model, self.d_ff), ("embed", "mlp"), name=name, **kw
    )
    h_BTF = nn.silu(up("gate")(x_BTD)) * up("up")(x_BTD)
    h_BTF = nn.with_logical_constraint(h_BTF, ("activation_batch", "activation_length", "mlp"))
    down = Projection(
        "btf,fd->btd", (self.d_ff, self.d_model), ("mlp", "embed"), name="down", **kw
    )
    return down(h_BTF)
