"""Config resolution and validation: one clear line per bad value, before anything compiles."""

import ml_collections

from efficiency.attention import ATTENTION, resolve_kv_heads
from efficiency.model.transformer import REMAT_POLICIES
from efficiency.position import POSITIONS
from efficiency.quant import QUANT_MODES
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


def resolve(config: ml_collections.ConfigDict, num_devices: int, process_count: int = 1):
  """Validates `config` in place and fills derived values (kv heads for mha/mqa).

  Raises ConfigError with a one-line message for the first bad value found.
  """
  m = config.model
  _choice("model.attention", m.attention, ATTENTION)
  _choice("model.position", m.position, POSITIONS)
  _choice("model.remat", m.remat, REMAT_POLICIES)
  _choice("model.dtype", m.dtype, DTYPES)
  _choice("model.param_dtype", m.param_dtype, DTYPES)
  _choice("quant.mode", config.quant.mode, QUANT_MODES)
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

  try:
    sizes = mesh_shape(config.mesh, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  dp = sizes["data"] * sizes["fsdp"]
  if config.batch_size % (dp * config.grad_accum_steps):
    raise ConfigError(
        f"batch_size={config.batch_size} is not divisible by data-parallel size {dp} "
        f"(mesh.data={sizes['data']} x mesh.fsdp={sizes['fsdp']}) x "
        f"grad_accum_steps={config.grad_accum_steps}; use a multiple of "
        f"{dp * config.grad_accum_steps}"
    )
  if config.batch_size % process_count:
    raise ConfigError(
        f"batch_size={config.batch_size} is not divisible by the process count {process_count}"
    )
  return config
