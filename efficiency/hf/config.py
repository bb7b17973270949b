"""Hugging Face `config.json` <-> our `model` section, for the two architectures our Transformer
is exactly: Qwen2 (QKV biases) and Llama (no biases). A field value we do not implement is one
ConfigError line, never a silently different model."""

import math
from typing import Any

import ml_collections

from efficiency.attention import resolve_kv_heads
from efficiency.attention.base import head_dim
from efficiency.errors import ConfigError

MODEL_TYPES = ("llama", "qwen2")
EXPORTABLE_ATTENTION = ("gqa", "mha", "mqa")
MIN_CONTEXT = 2048  # the smallest max_position_embeddings (and model_max_length) written


ROPE_TYPES = ("default", "linear", "llama3", "yarn")
# Our model.rope.scaling field <- transformers' rope_parameters key, for the types that use it.
ROPE_FIELDS = {
    "linear": {"factor": "factor"},
    "llama3": {"factor": "factor", "original_max_position": "original_max_position_embeddings",
               "low_freq_factor": "low_freq_factor", "high_freq_factor": "high_freq_factor"},
    "yarn": {"factor": "factor", "original_max_position": "original_max_position_embeddings",
             "beta_fast": "beta_fast", "beta_slow": "beta_slow",
             "attention_factor": "attention_factor", "truncate": "truncate"},
}


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
  return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _rope(hf: dict[str, Any]) -> tuple[float, dict[str, Any]]:
  """(rope base, our model.rope.scaling fields) from either spelling: `rope_parameters`
  (transformers 5) or `rope_theta` + `rope_scaling` (earlier); raises ConfigError for a type or
  field we do not implement."""
  params = dict(hf.get("rope_scaling") or {})
  params.update(hf.get("rope_parameters") or {})
  base = float(params.get("rope_theta", hf.get("rope_theta", 10_000.0)))
  kind = params.get("rope_type") or params.get("type") or "default"
  if kind not in ROPE_TYPES:
    raise _unsupported("rope_type", kind, f"valid choices: {', '.join(ROPE_TYPES)}")
  partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
  if partial not in (None, 1, 1.0):
    raise _unsupported("partial_rotary_factor", partial, "only rotating whole heads (1.0) is "
                       "implemented")
  if kind == "default":
    return base, {"type": "none"}
  if "original_max_position_embeddings" in hf:  # a top-level value wins, as in transformers
    params["original_max_position_embeddings"] = hf["original_max_position_embeddings"]
  params.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings"))
  if kind == "yarn":
    if params.get("factor") is None:
      params["factor"] = hf["max_position_embeddings"] / params["original_max_position_embeddings"]
    if params.get("attention_factor") is None and params.get("mscale") and params.get(
        "mscale_all_dim"):
      params["attention_factor"] = (_yarn_mscale(params["factor"], params["mscale"])
                                    / _yarn_mscale(params["factor"], params["mscale_all_dim"]))
  scaling = {"type": kind}
  for ours, theirs in ROPE_FIELDS[kind].items():
    if params.get(theirs) is not None:
      value = params[theirs]
      scaling[ours] = bool(value) if ours == "truncate" else (
          int(value) if ours == "original_max_position" else float(value))
  if "factor" not in scaling:
    raise ConfigError(f"the checkpoint's rope_type={kind!r} has no factor; add its factor")
  return base, scaling


def _hf_rope(scaling: ml_collections.ConfigDict | None) -> dict[str, Any]:
  """transformers' rope_parameters fields (less rope_theta) of our model.rope.scaling."""
  if scaling is None or scaling.type == "none":
    return {"rope_type": "default"}
  fields = {theirs: scaling[ours] for ours, theirs in ROPE_FIELDS[scaling.type].items()}
  if fields.get("attention_factor") == 0:  # ours: 0 means yarn's default
    del fields["attention_factor"]
  return {"rope_type": scaling.type, **fields}


def _unsupported(field: str, value: Any, supported: str) -> ConfigError:
  return ConfigError(f"the checkpoint's {field}={value!r} is not supported; {supported}")


def model_section(hf: dict[str, Any]) -> dict[str, Any]:
  """Our model fields for the HF config `hf`; raises ConfigError naming the first field whose
  value our Transformer does not implement."""
  model_type = hf.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ConfigError(
        f"the checkpoint's model_type={model_type!r} is not supported; valid choices: "
        f"{', '.join(MODEL_TYPES)}"
    )
  act = hf.get("hidden_act", "silu")
  if act != "silu":
    raise _unsupported("hidden_act", act, "only silu (SwiGLU) is implemented")
  base, scaling = _rope(hf)
  if hf.get("use_sliding_window") or any(
      kind != "full_attention" for kind in hf.get("layer_types") or ()
  ):
    raise _unsupported(
        "use_sliding_window/layer_types", hf.get("layer_types"),
        "only full attention in every layer is implemented",
    )
  for field in ("attention_bias", "mlp_bias"):
    if model_type == "llama" and hf.get(field):
      raise _unsupported(field, True, "Llama's o_proj and MLP biases are not implemented")
  heads = int(hf["num_attention_heads"])
  d_model = int(hf["hidden_size"])
  return {
      "num_layers": int(hf["num_hidden_layers"]),
      "d_model": d_model,
      "num_heads": heads,
      "num_kv_heads": int(hf.get("num_key_value_heads") or heads),
      "head_dim": int(hf.get("head_dim") or d_model // heads),
      "d_ff": int(hf["intermediate_size"]),
      "vocab_size": int(hf["vocab_size"]),
      "attention": "gqa",
      "position": "rope",
      "rope": {"base": base, "scaling": scaling},
      "qkv_bias": model_type == "qwen2",
      "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
      "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
  }


def check_exportable(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError unless `config`'s model is one Qwen2 or Llama can hold."""
  m = config.model
  reasons = []
  if m.attention not in EXPORTABLE_ATTENTION:
    exportable = ", ".join(EXPORTABLE_ATTENTION)
    reasons.append(f"model.attention={m.attention!r} (exportable: {exportable})")
  if m.position != "rope":
    reasons.append(f"model.position={m.position!r} (exportable: rope)")
  if m.moe.num_experts:
    reasons.append(f"model.moe.num_experts={m.moe.num_experts} (exportable: 0)")
  if config.get("quant", {}).get("serve", "none") != "none":
    reasons.append(f"quant.serve={config.quant.serve!r} (exportable: float weights)")
  if reasons:
    raise ConfigError(f"cannot export to Hugging Face: {'; '.join(reasons)}")


def _context(config: ml_collections.ConfigDict) -> int:
  """max_position_embeddings: the context a llama3 / yarn scaling extends to (transformers checks
  yarn's factor against it), else the run's sequence length (at least MIN_CONTEXT)."""
  scaling = config.model.rope.get("scaling")
  if scaling is not None and scaling.type in ("llama3", "yarn"):
    return max(int(config.seq_len), int(scaling.original_max_position * scaling.factor))
  return max(int(config.seq_len), MIN_CONTEXT)


def hf_config(
    config: ml_collections.ConfigDict, bos_id: int | None, eos_id: int | None, dtype: str
) -> dict[str, Any]:
  """The `config.json` transformers loads as Qwen2 (with QKV biases) or Llama (without)."""
  m = config.model
  model_type = "qwen2" if m.qkv_bias else "llama"
  rope = _hf_rope(m.rope.get("scaling"))
  hf = {
      "architectures": ["Qwen2ForCausalLM" if m.qkv_bias else "LlamaForCausalLM"],
      "model_type": model_type,
      "hidden_act": "silu",
      "hidden_size": m.d_model,
      "intermediate_size": m.d_ff,
      "num_hidden_layers": m.num_layers,
      "num_attention_heads": m.num_heads,
      "num_key_value_heads": resolve_kv_heads(m),
      "head_dim": head_dim(m),
      "vocab_size": m.vocab_size,
      "rms_norm_eps": m.norm_eps,
      "rope_parameters": {**rope, "rope_theta": m.rope.base},
      "rope_theta": m.rope.base,
      "tie_word_embeddings": bool(m.tie_embeddings),
      "max_position_embeddings": _context(config),
      "attention_dropout": 0.0,
      "bos_token_id": bos_id,
      "eos_token_id": eos_id,
      "dtype": dtype,
      "torch_dtype": dtype,
      "use_cache": True,
  }
  if model_type == "llama":
    hf.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
  else:
    hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=m.num_layers)
  return hf
