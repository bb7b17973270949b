"""Config resolution and validation: one clear line per bad value, before anything compiles."""

import json
from pathlib import Path

import jax
import ml_collections

from efficiency.attention import ATTENTION, resolve_kv_heads
from efficiency.model.transformer import REMAT_POLICIES
from efficiency.position import POSITIONS
from efficiency.quant import MODE_BACKENDS, QUANT_MODES
from efficiency.quant.einsum import SERVE_MODES
from efficiency.sharding.mesh import mesh_shape
from efficiency.train.optimizer import SCHEDULES

DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field, the value and the choices."""


def _choice(field: str, value, choices) -> None:
  if value not in choices:
    raise ConfigError(f"{field}={value!r} is invalid; valid choices: {sorted(choices)}")


def _positive(config: ml_collections.ConfigDict, *fields: str) -> None:
  for field in fields:
    value = config
    for part in field.split("."):
      value = value[part]
    if not isinstance(value, int) or value <= 0:
      raise ConfigError(f"{field}={value!r} is invalid; it must be a positive integer")


def _check_variants(config: ml_collections.ConfigDict) -> None:
  """Sizes of the attention variant, position encoding and MoE in use."""
  m = config.model
  if m.position == "learned":
    _positive(config, "model.max_positions")
    if m.max_positions < config.seq_len:
      raise ConfigError(
          f"model.max_positions={m.max_positions} is shorter than seq_len={config.seq_len}; "
          f"use at least {config.seq_len}"
      )
  if m.position == "relative":
    _positive(config, "model.relative_buckets", "model.relative_max_distance")
    if m.relative_max_distance <= m.relative_buckets // 2:
      raise ConfigError(
          f"model.relative_max_distance={m.relative_max_distance} must exceed "
          f"model.relative_buckets // 2 = {m.relative_buckets // 2}"
      )
  if m.attention == "sliding":
    _positive(config, "model.window")
  if m.attention == "mla":
    _positive(
        config, "model.mla.kv_latent_dim", "model.mla.q_latent_dim", "model.mla.rope_dim",
        "model.mla.qk_head_dim", "model.mla.v_head_dim",
    )
    if m.position == "rope" and m.mla.rope_dim % 2:
      raise ConfigError(f"model.mla.rope_dim={m.mla.rope_dim} must be even for rope")
  if m.attention == "nsa":
    _positive(
        config, "model.nsa.block_size", "model.nsa.stride", "model.nsa.select_size",
        "model.nsa.top_n", "model.nsa.window",
    )
    if m.nsa.block_size > config.seq_len:
      raise ConfigError(
          f"model.nsa.block_size={m.nsa.block_size} is longer than seq_len={config.seq_len}; "
          "use at most seq_len"
      )
  moe = m.moe
  if not isinstance(moe.num_experts, int) or moe.num_experts < 0:
    raise ConfigError(f"model.moe.num_experts={moe.num_experts!r} is invalid; 0 (dense) or more")
  if moe.num_experts:
    if not isinstance(moe.top_k, int) or not 1 <= moe.top_k <= moe.num_experts:
      raise ConfigError(
          f"model.moe.top_k={moe.top_k!r} is invalid; valid choices: 1..{moe.num_experts}"
      )
    if moe.capacity_factor <= 0 or moe.aux_loss_weight < 0:
      raise ConfigError(
          f"model.moe.capacity_factor={moe.capacity_factor} must be > 0 and "
          f"model.moe.aux_loss_weight={moe.aux_loss_weight} >= 0"
      )


def _check_quant(config: ml_collections.ConfigDict, backend: str) -> None:
  """quant.* values; copies them into model.quant, where the layers read them."""
  q = config.quant
  _choice("quant.mode", q.mode, QUANT_MODES)
  _choice("quant.serve", q.get("serve", "none"), SERVE_MODES)
  supported = MODE_BACKENDS.get(q.mode)
  if supported and backend not in supported:
    raise ConfigError(
        f"quant.mode={q.mode!r} is not supported by aqtp on backend {backend!r}; "
        f"supported backends: {list(supported)}"
    )
  if not isinstance(q.get("exclude", ""), str):
    raise ConfigError(f"quant.exclude={q.exclude!r} is invalid; use comma-separated globs")
  if not isinstance(q.get("group_size", 0), int) or q.get("group_size", 0) < 0:
    raise ConfigError(f"quant.group_size={q.group_size!r} is invalid; 0 (per channel) or more")
  config.model.quant = ml_collections.ConfigDict(q.to_dict())
def _take_pretrained(config: ml_collections.ConfigDict) -> None:
  """With `init_from`, the model (and by default the tokenizer) are the pretrained run's."""
  workdir = config.get("init_from", "")
  if not workdir:
    return
  path = Path(workdir) / "config.json"
  if not path.is_file():
    raise ConfigError(f"init_from={workdir!r} has no config.json; give a finished train.py workdir")
  config.model = ml_collections.ConfigDict(json.loads(path.read_text())["model"])
  if not config.data.get("tokenizer_from"):
    config.data.tokenizer_from = workdir


def _check_peft(config: ml_collections.ConfigDict) -> None:
  """The PEFT method, its sizes and its target patterns (which must each match a layer)."""
  from efficiency.peft import BASE_QUANT, PEFT_METHODS, make_method  # imports this module

  if "peft" not in config:
    return
  p = config.peft
  _choice("peft.method", p.method, PEFT_METHODS)
  _choice("peft.base_quant", p.base_quant, BASE_QUANT)
  if p.method not in ("full", "freeze"):
    _positive(config, "peft.rank")
    if p.alpha <= 0 or p.lora_plus_ratio <= 0:
      raise ConfigError(
          f"peft.alpha={p.alpha} and peft.lora_plus_ratio={p.lora_plus_ratio} must be > 0"
      )
  elif p.base_quant != "none":
    raise ConfigError(
        f"peft.base_quant={p.base_quant!r} needs an adapter method (peft.method={p.method!r} "
        f"trains base weights); valid choices: {sorted(set(PEFT_METHODS) - {'full', 'freeze'})}"
    )
  make_method(config)  # raises on target patterns that match nothing


def resolve(config: ml_collections.ConfigDict, num_devices: int, process_count: int = 1):
  """Validates `config` in place and fills derived values (kv heads for mha/mqa; the model of
  `init_from`).

  Raises ConfigError with a one-line message for the first bad value found.
  """
  _take_pretrained(config)
  m = config.model
  _choice("model.attention", m.attention, ATTENTION)
  _choice("model.position", m.position, POSITIONS)
  _choice("model.remat", m.remat, REMAT_POLICIES)
  _choice("model.dtype", m.dtype, DTYPES)
  _choice("model.param_dtype", m.param_dtype, DTYPES)
  _check_quant(config, jax.default_backend())
  _choice("optimizer.schedule", config.optimizer.schedule, SCHEDULES)
  _positive(
      config, "steps", "batch_size", "seq_len", "grad_accum_steps", "eval_every", "eval_batches",
      "log_every", "checkpoint_every", "keep_checkpoints", "model.num_layers", "model.d_model",
      "model.num_heads", "model.d_ff", "model.vocab_size",
  )

  m.num_kv_heads = resolve_kv_heads(m)
  if not isinstance(m.num_kv_heads, int) or m.num_kv_heads <= 0:
    raise ConfigError(f"model.num_kv_heads={m.num_kv_heads!r} is invalid; it must be positive")
  if m.num_heads % m.num_kv_heads:
    divisors = [d for d in range(1, m.num_heads + 1) if m.num_heads % d == 0]
    raise ConfigError(
        f"model.num_kv_heads={m.num_kv_heads} does not divide model.num_heads={m.num_heads}; "
        f"valid choices: {divisors}"
    )
  if m.head_dim <= 0 and m.d_model % m.num_heads:
    raise ConfigError(
        f"model.d_model={m.d_model} is not divisible by model.num_heads={m.num_heads}; "
        "change one or set model.head_dim"
    )
  head_dim = m.head_dim if m.head_dim > 0 else m.d_model // m.num_heads
  if m.position == "rope" and head_dim % 2:
    raise ConfigError(f"model.head_dim={head_dim} must be even for model.position='rope'")
  _check_variants(config)
  _check_peft(config)

  try:
    sizes = mesh_shape(config.mesh, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  dp = sizes["data"] * sizes["fsdp"] * sizes["expert"]
  if config.batch_size % (dp * config.grad_accum_steps):
    raise ConfigError(
        f"batch_size={config.batch_size} is not divisible by data-parallel size {dp} "
        f"(mesh.data={sizes['data']} x mesh.fsdp={sizes['fsdp']} x "
        f"mesh.expert={sizes['expert']}) x "
        f"grad_accum_steps={config.grad_accum_steps}; use a multiple of "
        f"{dp * config.grad_accum_steps}"
    )
  if config.batch_size % process_count:
    raise ConfigError(
        f"batch_size={config.batch_size} is not divisible by the process count {process_count}"
    )
  return config
