"""Our parameter tree <-> Hugging Face Qwen2 / Llama tensor names and layouts (REFERENCE.md §6).

Each of our kernels is one HF matrix seen as [rows, cols]: `rows` kernels ([D, N, H], [D, F])
split after their first axis and are stored transposed ([N*H, D], [F, D]); `cols` kernels
([N, H, D]) split before their last axis, also transposed ([D, N*H]); `flat` biases ([N, H])
are stored flat; `copy` tensors (norms, the embedding) are the same array.
"""

import dataclasses
import math

import ml_collections
import numpy as np

LAYOUTS = ("copy", "flat", "rows", "cols")

# (path inside one layer, HF name inside `model.layers.{i}.`, layout)
LAYER_TENSORS = (
    (("attn_norm", "scale"), "input_layernorm.weight", "copy"),
    (("attn", "query", "kernel"), "self_attn.q_proj.weight", "rows"),
    (("attn", "key", "kernel"), "self_attn.k_proj.weight", "rows"),
    (("attn", "value", "kernel"), "self_attn.v_proj.weight", "rows"),
    (("attn", "out", "kernel"), "self_attn.o_proj.weight", "cols"),
    (("mlp_norm", "scale"), "post_attention_layernorm.weight", "copy"),
    (("mlp", "gate", "kernel"), "mlp.gate_proj.weight", "rows"),
    (("mlp", "up", "kernel"), "mlp.up_proj.weight", "rows"),
    (("mlp", "down", "kernel"), "mlp.down_proj.weight", "rows"),
)
BIASES = (
    (("attn", "query", "bias"), "self_attn.q_proj.bias", "flat"),
    (("attn", "key", "bias"), "self_attn.k_proj.bias", "flat"),
    (("attn", "value", "bias"), "self_attn.v_proj.bias", "flat"),
)
# Tensors some checkpoints carry that hold nothing our model needs (RoPE's inverse frequencies).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One HF tensor: where it lives in our tree (`path`, and `layer` along the leading axis of a
  scanned stack, else None), its HF `name`, its `layout`, and our shape of it (one layer's)."""

  path: tuple[str, ...]
  layer: int | None
  name: str
  layout: str
  shape: tuple[int, ...]

  @property
  def hf_shape(self) -> tuple[int, ...]:
    return hf_shape(self.shape, self.layout)


def to_hf(x: np.ndarray, layout: str) -> np.ndarray:
  """Our array -> the HF tensor (a contiguous copy where it is transposed)."""
  if layout == "copy":
    return x
  if layout == "flat":
    return x.reshape(-1)
  matrix = x.reshape(x.shape[0], -1) if layout == "rows" else x.reshape(-1, x.shape[-1])
  return np.ascontiguousarray(matrix.T)


def from_hf(y: np.ndarray, shape: tuple[int, ...], layout: str) -> np.ndarray:
  """The HF tensor -> our array of `shape`."""
  if layout in ("copy", "flat"):
    return y.reshape(shape)
  return np.ascontiguousarray(y.T).reshape(shape)


def hf_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
  """The HF tensor's shape for our `shape`."""
  if layout == "copy":
    return shape
  if layout == "flat":
    return (math.prod(shape),)
  if layout == "rows":
    return (math.prod(shape[1:]), shape[0])
  return (shape[-1], math.prod(shape[:-1]))


def entries(model: ml_collections.ConfigDict, shapes: dict[tuple[str, ...], tuple]) -> list[Entry]:
  """Every HF tensor of a model with our config section `model`, in HF's order. `shapes` maps
  our flattened param paths to their shapes (a scanned stack's with its layer axis)."""
  scanned = bool(model.scan_layers)
  layer_tensors = LAYER_TENSORS + (BIASES if model.qkv_bias else ())

  def entry(path, layer, name, layout):
    shape = tuple(shapes[path])
    return Entry(path, layer, name, layout, shape[1:] if layer is not None else shape)

  found = [entry(("embed", "embedding"), None, "model.embed_tokens.weight", "copy")]
  for i in range(model.num_layers):
    for inner, name, layout in layer_tensors:
      path = ("layers", *inner) if scanned else (f"layers_{i}", *inner)
      found.append(entry(path, i if scanned else None, f"model.layers.{i}.{name}", layout))
  found.append(entry(("final_norm", "scale"), None, "model.norm.weight", "copy"))
  if not model.tie_embeddings:
    found.append(entry(("unembed", "kernel"), None, "lm_head.weight", "rows"))
  return found
