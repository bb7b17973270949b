"""The embedding table of a served model in int8 or packed int4, with per-row scales.

A table [V, D] is stored as codes and float32 scales [V, G]: int8 codes [V, D] with one scale
per row (G = 1); int4 codes packed two per byte along D, uint8 [V, D // 2], with one scale per
row (group_size 0) or per `group_size` consecutive entries of a row (G = D // group_size).
Values are round(w / scale), scale = max |w| / (127 or 7) over the row or group.

Both uses of the table read the codes: the lookup of row v dequantizes only the rows it
gathers, codes[v] * scale[v]; the tied logits are (x @ codes^T) * scale[v] when a row has one
scale (a group-scaled int4 table is dequantized first, as int4 kernels are). Given an integer
einsum (a model whose kernels run on int8 activations passes one), the logits of a table with
one scale per row quantize the activations too, as those kernels do: each token's x to int8
with its own scale s_t = max |x_t| / 127, then (q_t @ codes^T) in int32 times s_t * scale[v],
so no float copy of the table is made.
"""

import jax.numpy as jnp
import ml_collections

from efficiency.errors import ConfigError
from efficiency.quant.pack import num_groups, quantize_int4, unpack_int4

EMBEDDING_MODES = ("none", "int8", "int4")  # the choices of `quant.embedding`
BITS = {"int8": 8, "int4": 4}
INT8_MAX = 127
TIED_LOGITS_SPEC = "btd,vd->btv"


def embedding_storage(quant: ml_collections.ConfigDict | None) -> str:
  """How a model keeps its embedding table: `quant.embedding` (none without a quant config)."""
  return "none" if quant is None else quant.get("embedding", "none")


def logits_on_int8_activations(embedding: str, groups: int, int8_kernels: bool) -> bool:
  """Whether a table stored per `embedding` with `groups` scales per row computes its tied
  logits on int8 activations: an int8 table, or an int4 one with one scale per row, in a model
  whose kernels run on int8 activations (`int8_kernels`: served int8, or int4 with
  `quant.int4_activations=int8`), as its kernels do."""
  return embedding in BITS and groups == 1 and int8_kernels


def check_mode(field: str, embedding: str) -> None:
  """That `embedding` (the value of `field`) is one of EMBEDDING_MODES."""
  if embedding not in EMBEDDING_MODES:
    raise ConfigError(
        f"{field}={embedding!r} is invalid; valid choices: {list(EMBEDDING_MODES)}"
    )


def check_table(d_model: int, group_size: int, embedding: str) -> None:
  """That an int4 table packs and groups along d_model (even; group_size divides it)."""
  if embedding != "int4":
    return
  if d_model % 2 or (group_size and d_model % group_size):
    raise ConfigError(
        f"quant.embedding='int4' with quant.group_size={group_size} is unsupported for "
        f"model.d_model={d_model}: int4 rows need an even d_model that the group size divides"
    )


def scale_groups(bits: int, d: int, group_size: int) -> int:
  """Scales per row: 1 for int8; for int4 1 (group_size 0) or D // group_size."""
  return 1 if bits == 8 else num_groups(d, group_size)


def quantize_table(
    table_VD: jnp.ndarray, bits: int, group_size: int = 0
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """A float table -> (codes: int8 [V, D] or packed uint8 [V, D // 2], float32 scales [V, G]).
  int4 is the kernels' packing (`pack.quantize_int4`) of the table as the tied logits' kernel,
  transposed to rows."""
  if bits == 4:
    packed_HV, scale_GV = quantize_int4(table_VD, TIED_LOGITS_SPEC, group_size)
    return packed_HV.T, scale_GV.T
  return int8_rows(table_VD)


def int8_rows(x_ND: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Each row (last axis) as int8 codes with its own float32 scale max |x| / 127 (1 for a zero
  row): (codes [..., D], scales [..., 1])."""
  x_ND = x_ND.astype(jnp.float32)
  scale_N1 = jnp.max(jnp.abs(x_ND), axis=-1, keepdims=True) / INT8_MAX
  scale_N1 = jnp.where(scale_N1 == 0, 1.0, scale_N1)
  q_ND = jnp.clip(jnp.round(x_ND / scale_N1), -INT8_MAX, INT8_MAX)
  return q_ND.astype(jnp.int8), scale_N1


def codes_of(codes: jnp.ndarray, bits: int) -> jnp.ndarray:
  """int8 values [..., D] of stored codes (int4: unpacks [..., D // 2])."""
  if bits == 8:
    return codes
  return unpack_int4(codes, axis=-1)


def dequantize(codes: jnp.ndarray, scale_NG: jnp.ndarray, bits: int, dtype: jnp.dtype):
  """Rows [..., D] in `dtype` from their codes and scales [..., G]."""
  q = codes_of(codes, bits)
  g = scale_NG.shape[-1]
  w = q.reshape(*q.shape[:-1], g, -1).astype(jnp.float32) * scale_NG[..., None]
  return w.reshape(q.shape).astype(dtype)


def lookup(
    codes: jnp.ndarray, scale_VG: jnp.ndarray, tokens_BT: jnp.ndarray, bits: int,
    dtype: jnp.dtype,
) -> jnp.ndarray:
  """Embeddings [B, T, D] of `tokens_BT`: gathers their codes and scales, dequantizes those."""
  rows = jnp.take(codes, tokens_BT, axis=0)
  return dequantize(rows, jnp.take(scale_VG, tokens_BT, axis=0), bits, dtype)


def logits(
    x_BTD: jnp.ndarray, codes: jnp.ndarray, scale_VG: jnp.ndarray, bits: int, dtype: jnp.dtype,
    einsum=jnp.einsum, int_einsum=None,
) -> jnp.ndarray:
  """Tied logits [B, T, V] against the table: (x @ codes^T) * scale[v] when each row has one
  scale, else x @ (the dequantized table)^T. With `int_einsum` (int8 operands, int32 result), a
  table with one scale per row gives (int8(x) @ codes^T) * s_t * scale[v], s_t each token's
  scale."""
  if int_einsum is not None and scale_VG.shape[-1] == 1:
    q_BTD, s_BT1 = int8_rows(x_BTD)
    y_BTV = int_einsum(TIED_LOGITS_SPEC, q_BTD, codes_of(codes, bits))
    return (y_BTV.astype(jnp.float32) * s_BT1 * scale_VG[:, 0]).astype(dtype)
  if scale_VG.shape[-1] > 1:
    return einsum(TIED_LOGITS_SPEC, x_BTD.astype(dtype), dequantize(codes, scale_VG, bits, dtype))
  y_BTV = einsum(TIED_LOGITS_SPEC, x_BTD.astype(dtype), codes_of(codes, bits).astype(dtype))
  return (y_BTV.astype(jnp.float32) * scale_VG[:, 0]).astype(dtype)
