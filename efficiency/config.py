"""Config resolution: `resolve` returns a checked, resolved copy of a config, or raises one
ConfigError line naming the first bad value, before anything compiles.

Every check of a config's values lives here; the registries (attention variants, position
encodings, quantization modes, PEFT methods, schedules, tokenizers, sources, filters,
difficulties, pacings) supply the valid choices. Resolving fills what follows from the config:
the key/value heads of mha and mqa, and with `init_from` the pretrained run's model (and
tokenizer). Checks that need the data itself (a corpus with no files, a tokenizer larger than
the model's vocabulary) happen where the data is read.
"""

import importlib.util
import os

import jax
import ml_collections

from data.curriculum.difficulty import DIFFICULTIES
from data.curriculum.pacing import PACINGS
from data.filters import FILTERS, parse_chain
from data.mixture import is_mixture, source_configs, weights
from data.prepared import uses_reference
from data.seq_len_warmup import WARMUP_FIXED, bucket_lengths
from data.sources import SOURCES
from data.tokenizer import TOKENIZERS, ByteTokenizer, HFTokenizer
from efficiency.attention import ATTENTION, resolve_kv_heads
from efficiency.attention.kernels import CHOICES as ATTENTION_IMPLS
from efficiency.errors import ConfigError, MissingPathError
from efficiency.model.moe import DISPATCHES, GROUPED_MATMULS, ROUTERS
from efficiency.model.transformer import REMAT_POLICIES
from efficiency.peft import BASE_QUANT, PEFT_METHODS, make_method
from efficiency.position import POSITIONS
from efficiency.position.rope import SCALINGS as ROPE_SCALINGS
from efficiency.quant import MODE_BACKENDS, QUANT_MODES
from efficiency.quant.einsum import INT4_ACTIVATIONS, SERVE_MODES
from efficiency.quant.table import check_mode, check_table
from efficiency.serving.loading import check_same_tokenizer
from efficiency.serving.weights import INT4_FORMS
from efficiency.sharding.mesh import mesh_shape
from efficiency.train.distill import distill_config
from efficiency.train.optimizer import OPTIMIZERS, SCHEDULES
from efficiency.workdir.files import load_config

DTYPES = ("float32", "bfloat16")
NONFINITE_POLICIES = ("stop", "skip")

# Range of every numeric field not checked with its feature: (field, low, high, kind) with
# bounds inclusive unless the kind says otherwise; "int" fields must be integers.
RANGES = (
    ("seed", 0, None, "int"),
    ("target_loss", 0, None, "low open"),
    ("max_nonfinite_skips", 0, None, "int"),
    ("model.norm_eps", 0, None, "low open"),
    ("model.init_std", 0, None, "low open"),
    ("model.rope.base", 1, None, "low open"),
    ("model.scan_unroll", 1, None, "int"),
    ("model.loss_chunk", 0, None, "int"),
    ("optimizer.lr", 0, None, "low open"),
    ("optimizer.min_lr_ratio", 0, 1, ""),
    ("optimizer.warmup_steps", 0, None, "int"),
    ("optimizer.b1", 0, 1, "high open"),
    ("optimizer.b2", 0, 1, "high open"),
    ("optimizer.eps", 0, None, "low open"),
    ("optimizer.weight_decay", 0, None, ""),
    ("optimizer.grad_clip", 0, None, "low open"),
    ("data.shards", 0, None, "int"),
    ("data.shuffle_window", 1, None, "int"),
    ("data.worker_threads", 0, None, "int"),
    ("data.prefetch", 0, None, "int"),
    ("data.max_doc_bytes", 1, None, "int"),
    ("data.filter.min_tokens", 0, None, "int"),
    ("data.filter.max_tokens", 1, None, "int"),
    ("data.filter.near_dup_threshold", 0, 1, "low open"),
    ("data.filter.near_dup_perms", 1, None, "int"),
    ("data.filter.near_dup_bands", 1, None, "int"),
    ("data.filter.max_symbol_ratio", 0, 1, ""),
    ("data.filter.min_alnum_ratio", 0, 1, ""),
    ("data.filter.max_line_chars", 1, None, "int"),
    ("data.filter.max_repeated_line_ratio", 0, 1, ""),
    ("peft.last_layers", 0, None, "int"),
    ("peft.adapter_layers", 0, None, "int"),
)


def resolve(
    config: ml_collections.ConfigDict,
    num_devices: int,
    process_count: int = 1,
    backend: str | None = None,
) -> ml_collections.ConfigDict:
  """A resolved copy of `config` for `num_devices` devices in `process_count` processes on
  `backend` (default: jax's); `config` itself is left as it is.

  Raises ConfigError with a one-line message for the first bad value found.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  _take_pretrained(config)
  _check_distill(config)
  _check_run(config)
  _check_model(config)
  _check_variants(config)
  _check_quant(config, backend or jax.default_backend())
  _choice("optimizer.name", config.optimizer.name, OPTIMIZERS)
  _choice("optimizer.schedule", config.optimizer.schedule, SCHEDULES)
  _check_ranges(config)
  _check_data(config)
  _check_peft(config)
  _check_mesh(config, num_devices, process_count)
  return config


def override(config: ml_collections.ConfigDict, field: str, value) -> None:
  """Sets the dotted `field` of `config` to `value`, converted to the field's type as
  `--config.FIELD=VALUE` would; ConfigError for a field the config lacks or a value of the wrong
  kind."""
  *parents, name = field.split(".")
  node = config
  for depth, part in enumerate([*parents, name]):
    if not hasattr(node, "keys") or part not in node:
      parent = ".".join([*parents, name][:depth]) or "config"
      valid = sorted(node.keys()) if hasattr(node, "keys") else []
      raise ConfigError(f"{field}: {parent} has no field {part!r}; valid fields: {valid}")
    if depth < len(parents):
      node = node[part]
  old = node[name]
  if isinstance(old, bool) and isinstance(value, str):
    if value.lower() not in ("true", "false"):
      raise ConfigError(f"{field}={value!r} is invalid; valid choices: true, false")
    value = value.lower() == "true"
  elif old is not None and not isinstance(old, bool) and type(value) is not type(old):
    try:
      value = type(old)(value)
    except (TypeError, ValueError):
      raise ConfigError(
          f"{field}={value!r} is invalid; it must be a {type(old).__name__}"
      ) from None
  node[name] = value


def _choice(field: str, value, choices) -> None:
  if value not in choices:
    raise ConfigError(f"{field}={value!r} is invalid; valid choices: {sorted(choices)}")


def _known(field: str, value, choices) -> None:
  """Registry names (data's): `{field}={value!r} is unknown; valid choices: a, b, c`."""
  if value not in choices:
    raise ConfigError(f"{field}={value!r} is unknown; valid choices: {', '.join(choices)}")


def _positive(config: ml_collections.ConfigDict, *fields: str) -> None:
  for field in fields:
    value = config
    for part in field.split("."):
      value = value[part]
    if not isinstance(value, int) or value <= 0:
      raise ConfigError(f"{field}={value!r} is invalid; it must be a positive integer")


def _check_ranges(config: ml_collections.ConfigDict) -> None:
  """Every field of RANGES the config has lies in its range."""
  for field, low, high, kind in RANGES:
    node = config
    for part in field.split("."):
      node = node.get(part) if hasattr(node, "get") else None
    if node is None:  # a section this config does not have (peft of a pretraining run)
      continue
    integer = kind == "int"
    number = isinstance(node, int) if integer else isinstance(node, int | float)
    low_ok = low is None or (node > low if "low open" in kind else node >= low)
    high_ok = high is None or (node < high if "high open" in kind else node <= high)
    if isinstance(node, bool) or not number or not (low_ok and high_ok):
      left = "(" if "low open" in kind else "["
      right = ")" if "high open" in kind or high is None else "]"
      span = f"{left}{low}, {'inf' if high is None else high}{right}"
      what = "an integer in" if integer else "in"
      raise ConfigError(f"{field}={node!r} is out of range; it must be {what} {span}")
  f = config.data.filter
  if f.max_tokens <= f.min_tokens:
    raise ConfigError(
        f"data.filter.max_tokens={f.max_tokens} must exceed data.filter.min_tokens={f.min_tokens}"
    )


def _fraction(field: str, value: float) -> None:
  """A share in (0, 1]."""
  if not 0 < value <= 1:
    raise ConfigError(f"{field}={value} must be in (0, 1]")


def _take_pretrained(config: ml_collections.ConfigDict) -> None:
  """With `init_from`, the model (and by default the tokenizer) are the pretrained run's."""
  workdir = config.get("init_from", "")
  if not workdir:
    return
  pretrained = load_config(workdir, "init_from", "give a finished train.py workdir")
  config.model = pretrained.model
  if not config.data.get("tokenizer_from"):
    config.data.tokenizer_from = workdir


def _check_distill(config: ml_collections.ConfigDict) -> None:
  """A teacher for distillation: a workdir whose vocabulary and tokenizer the run shares (by
  default the run takes the teacher's tokenizer)."""
  distill = distill_config(config)
  if distill is None:
    return
  if config.model.get("loss_chunk", 0):
    raise ConfigError(
        f"model.loss_chunk={config.model.loss_chunk} does not combine with distill.teacher "
        "(the KL term needs the full logits); set model.loss_chunk=0"
    )
  teacher = load_config(distill.teacher, "distill.teacher", "give a finished train.py workdir")
  _fraction("distill.weight", distill.weight)
  if not distill.temperature > 0:
    raise ConfigError(f"distill.temperature={distill.temperature} must be > 0")
  if teacher.model.vocab_size != config.model.vocab_size:
    raise ConfigError(
        f"distill.teacher={distill.teacher!r} has model.vocab_size={teacher.model.vocab_size}, "
        f"this run {config.model.vocab_size}; a student must share its teacher's vocabulary"
    )
  if not config.data.get("tokenizer_from"):
    config.data.tokenizer_from = distill.teacher
  check_same_tokenizer([config, teacher], ["this run", "distill.teacher"])


def _check_run(config: ml_collections.ConfigDict) -> None:
  _positive(
      config, "steps", "batch_size", "seq_len", "grad_accum_steps", "eval_every", "eval_batches",
      "log_every", "checkpoint_every", "keep_checkpoints",
  )
  _choice("on_nonfinite", config.get("on_nonfinite", "stop"), NONFINITE_POLICIES)
  _check_profile(config)
  _check_tracking(config)


def _check_profile(config: ml_collections.ConfigDict) -> None:
  """The profile window lies within the run's steps."""
  profile = config.get("profile")
  if profile is None:
    return
  for field in ("start_step", "steps"):
    value = profile[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ConfigError(
          f"profile.{field}={value!r} is invalid; it must be an integer >= 0"
          + (" (the first traced step, e.g. 5)" if field == "start_step" else " (0: no trace)")
      )
  if profile.steps and profile.start_step < 1:
    raise ConfigError(
        f"profile.start_step={profile.start_step} is invalid; steps count from 1 (the first "
        "steps compile: 5 or later profiles warm steps)"
    )
  last = profile.start_step + profile.steps - 1
  if profile.steps and last > config.steps:
    raise ConfigError(
        f"profile.start_step={profile.start_step} with profile.steps={profile.steps} ends at step "
        f"{last}, past steps={config.steps}; start at most at "
        f"{max(config.steps - profile.steps + 1, 1)} or trace fewer steps"
    )


def _check_tracking(config: ml_collections.ConfigDict) -> None:
  """`log.wandb` needs the wandb package (the `wandb` extra)."""
  log = config.get("log")
  if log is None or not log.get("wandb", False):
    return
  if importlib.util.find_spec("wandb") is None:
    raise ConfigError(
        "log.wandb=True needs the wandb package, which is not installed; install the extra "
        "(pip install -e '.[wandb]') or set log.wandb=False"
    )


def _check_model(config: ml_collections.ConfigDict) -> None:
  """Choices and sizes of the model; fills the key/value heads mha and mqa fix."""
  m = config.model
  _choice("model.attention", m.attention, ATTENTION)
  _choice("model.position", m.position, POSITIONS)
  _known("model.attention_impl", m.get("attention_impl", "auto"), ATTENTION_IMPLS)
  _choice("model.remat", m.remat, REMAT_POLICIES)
  _choice("model.dtype", m.dtype, DTYPES)
  _choice("model.param_dtype", m.param_dtype, DTYPES)
  _positive(
      config, "model.num_layers", "model.d_model", "model.num_heads", "model.d_ff",
      "model.vocab_size",
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
  if m.position == "rope" and "scaling" in m.rope:
    _check_rope_scaling(m.rope.scaling)


def _check_rope_scaling(s: ml_collections.ConfigDict) -> None:
  """model.rope.scaling: a known type and the fields it uses."""
  if s.type not in ROPE_SCALINGS:
    raise ConfigError(f"model.rope.scaling.type={s.type!r} is invalid; valid choices: "
                      f"{', '.join(ROPE_SCALINGS)}")
  if s.type == "none":
    return
  if not s.factor >= 1:
    raise ConfigError(f"model.rope.scaling.factor={s.factor} must be at least 1")
  if s.type in ("llama3", "yarn") and not s.original_max_position > 0:
    raise ConfigError(f"model.rope.scaling.original_max_position={s.original_max_position} must "
                      f"be positive for model.rope.scaling.type={s.type!r}")
  if s.type == "llama3" and not s.high_freq_factor > s.low_freq_factor > 0:
    raise ConfigError(f"model.rope.scaling.high_freq_factor={s.high_freq_factor} must exceed "
                      f"model.rope.scaling.low_freq_factor={s.low_freq_factor} > 0")
  if s.type == "yarn" and not (s.beta_fast > 0 and s.beta_slow > 0 and s.attention_factor >= 0):
    raise ConfigError(f"model.rope.scaling: beta_fast={s.beta_fast} and beta_slow={s.beta_slow} "
                      f"must be positive and attention_factor={s.attention_factor} not negative")


def _check_variants(config: ml_collections.ConfigDict) -> None:
  """Sizes of the attention variant, position encoding and MoE in use."""
  m = config.model
  if m.position == "learned":
    _positive(config, "model.learned.max_positions")
    if m.learned.max_positions < config.seq_len:
      raise ConfigError(
          f"model.learned.max_positions={m.learned.max_positions} is shorter than "
          f"seq_len={config.seq_len}; use at least {config.seq_len}"
      )
  if m.position == "relative":
    _positive(config, "model.relative.buckets", "model.relative.max_distance")
    if m.relative.max_distance <= m.relative.buckets // 2:
      raise ConfigError(
          f"model.relative.max_distance={m.relative.max_distance} must exceed "
          f"model.relative.buckets // 2 = {m.relative.buckets // 2}"
      )
  if m.attention == "sliding":
    _positive(config, "model.sliding.window")
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
    matmuls = ("auto", *GROUPED_MATMULS)
    for field, choices in (("dispatch", DISPATCHES), ("router", ROUTERS),
                           ("grouped_matmul", matmuls)):
      if moe[field] not in choices:
        raise ConfigError(
            f"model.moe.{field}={moe[field]!r} is invalid; valid choices: {', '.join(choices)}"
        )
    if not isinstance(moe.shared_experts, int) or moe.shared_experts < 0:
      raise ConfigError(f"model.moe.shared_experts={moe.shared_experts!r} must be an int >= 0")
    if moe.bias_rate < 0:
      raise ConfigError(f"model.moe.bias_rate={moe.bias_rate} must be >= 0 (0: off)")
    q = config.quant
    peft = config.peft.method if "peft" in config else "none"
    if moe.dispatch == "dropless" and (
        q.mode != "none" or q.serve != "none" or peft not in ("none", "full", "freeze")
    ):
      raise ConfigError(
          f"model.moe.dispatch='dropless' runs float expert weights only (quant.mode={q.mode!r}, "
          f"quant.serve={q.serve!r}, peft.method={peft!r}); set model.moe.dispatch=capacity"
      )


def _check_quant(config: ml_collections.ConfigDict, backend: str) -> None:
  """quant.* values, and that aqtp runs the mode on `backend`."""
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
  _choice("quant.int4_decode", q.get("int4_decode", "auto"), INT4_FORMS)
  _choice("quant.int4_activations", q.get("int4_activations", "float"), INT4_ACTIVATIONS)
  embedding = q.get("embedding", "none")
  check_mode("quant.embedding", embedding)
  if embedding != "none" and q.get("serve", "none") == "none":
    raise ConfigError(
        f"quant.embedding={embedding!r} is unsupported with quant.serve='none': it is the table "
        "storage of a converted model (python -m evals.quantize --embedding=...)"
    )
  check_table(config.model.d_model, q.get("group_size", 0), embedding)


def _check_mixture(config: ml_collections.ConfigDict) -> None:
  """A mixture's weights, and each of its sources' settings as a config of its own."""
  weights(config)
  if config.data.curriculum.difficulty != "none":
    raise ConfigError(
        f"data.curriculum.difficulty={config.data.curriculum.difficulty!r} does not work with "
        "data.mixture (the mixture decides the order); valid choices: none"
    )
  if config.data.seq_len_warmup.start:
    raise ConfigError(
        f"data.seq_len_warmup.start={config.data.seq_len_warmup.start} does not work with "
        "data.mixture yet; set it to 0"
    )
  for label, sub in source_configs(config).items():
    try:
      _check_data(sub)
    except ConfigError as e:
      raise type(e)(f"data.mixture.{label}: {e}") from None


def _check_data(config: ml_collections.ConfigDict) -> None:
  """The corpus (or mixture), tokenizer, filters, curriculum and sequence-length warmup."""
  d = config.data
  if is_mixture(config):
    _check_mixture(config)
  if not d.name:
    raise ConfigError(
        f"data.name is empty; valid choices: {', '.join(sorted(SOURCES))} or a TFDS dataset"
    )
  if d.name in SOURCES and not 0 < d.validation_percent < 100:
    raise ConfigError(
        f"data.validation_percent={d.validation_percent} must be between 1 and 99 (inclusive)"
    )
  if d.name == "text" and not d.text_glob:
    raise ConfigError("data.name='text' needs data.text_glob: a folder or a glob of text files")
  if d.name in ("jsonl", "parquet") and not d.get("files"):
    raise ConfigError(f"data.name={d.name!r} needs data.files: a glob of {d.name} shards")
  if d.name in ("jsonl", "parquet") and not d.text_field:
    raise ConfigError(f"data.text_field is empty; data.name={d.name!r} needs the text's field")
  if not d.get("tokenizer_from"):
    _known("data.tokenizer", d.tokenizer, sorted(TOKENIZERS))
    if d.tokenizer == "bytes" and config.model.vocab_size < ByteTokenizer.vocab_size:
      raise ConfigError(
          f"model.vocab_size={config.model.vocab_size} is too small for the bytes tokenizer; "
          f"the minimum is {ByteTokenizer.vocab_size}"
      )
    if d.tokenizer == "hf":
      folder = d.get("tokenizer_dir", "")
      if not folder or not os.path.isfile(os.path.join(folder, HFTokenizer.FILE)):
        raise MissingPathError(
            f"data.tokenizer='hf' needs data.tokenizer_dir: a folder with {HFTokenizer.FILE}; "
            f"got {folder!r}"
        )
  chain = parse_chain(d.filters)
  for name in chain:
    if name not in FILTERS:
      raise ConfigError(
          f"data.filters: {name!r} is unknown; valid choices: {', '.join(sorted(FILTERS))}"
      )
  f = d.filter
  if "near_dup" in chain and f.near_dup_perms % f.near_dup_bands:
    raise ConfigError(
        f"data.filter.near_dup_bands={f.near_dup_bands} must divide "
        f"data.filter.near_dup_perms={f.near_dup_perms}"
    )
  if "perplexity" in chain:
    _fraction("data.filter.keep_fraction", f.keep_fraction)
  if "metadata" in chain and not f.get("field"):
    raise ConfigError("data.filters=metadata needs data.filter.field: a numeric record field")
  c = d.curriculum
  _known("data.curriculum.difficulty", c.difficulty, ["none", *sorted(DIFFICULTIES)])
  if c.difficulty != "none":
    _known("data.curriculum.pacing", c.pacing, sorted(PACINGS))
    _fraction("data.curriculum.start", c.start)
    _fraction("data.curriculum.fraction", c.fraction)
    if c.stages < 1:
      raise ConfigError(f"data.curriculum.stages={c.stages} must be at least 1")
  if uses_reference(config) and not d.reference_workdir:
    raise ConfigError("perplexity filtering and reference_loss need data.reference_workdir")
  w = d.seq_len_warmup
  if w.start:
    if not 0 < w.start <= config.seq_len:
      raise ConfigError(
          f"data.seq_len_warmup.start={w.start} must be 0 (off) or in [1, seq_len={config.seq_len}]"
      )
    if w.steps < 1:
      raise ConfigError(f"data.seq_len_warmup.steps={w.steps} must be at least 1")
    if not bucket_lengths(config.seq_len, w.start):
      shortest = config.seq_len // (config.seq_len & -config.seq_len)  # its odd part
      raise ConfigError(
          f"data.seq_len_warmup.start={w.start} is below the shortest piece length {shortest} "
          f"(seq_len={config.seq_len} halved while even); use a start of at least {shortest}"
      )
  buckets = w.get("buckets", True)
  if not isinstance(buckets, bool):
    raise ConfigError(
        f"data.seq_len_warmup.buckets={buckets!r} is invalid; valid choices: True, False"
    )
  fixed = w.get("fixed", "tokens")
  _choice("data.seq_len_warmup.fixed", fixed, WARMUP_FIXED)
  if fixed == "sequences" and not buckets:
    raise ConfigError(
        "data.seq_len_warmup.fixed='sequences' trains on short rows; set "
        "data.seq_len_warmup.buckets=True"
    )
  if w.start and buckets and fixed == "tokens" and (
      config.model.attention == "nsa" or config.model.moe.num_experts):
    what = "model.attention='nsa'" if config.model.attention == "nsa" else "model.moe.num_experts>0"
    raise ConfigError(
        f"data.seq_len_warmup.buckets=True needs a model that mixes tokens only within a segment; "
        f"{what} works on whole rows, so set data.seq_len_warmup.buckets=False"
    )


def _check_peft(config: ml_collections.ConfigDict) -> None:
  """The PEFT method, its sizes and its target patterns (which must each match a layer)."""
  if "peft" not in config:
    return
  p = config.peft
  _choice("peft.method", p.method, PEFT_METHODS)
  _choice("peft.base_quant", p.base_quant, BASE_QUANT)
  group_size = p.get("base_group_size", 0)
  if not isinstance(group_size, int) or group_size < 0:
    raise ConfigError(
        f"peft.base_group_size={group_size!r} is invalid; 0 (per channel) or a positive integer"
    )
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
  make_method(config)  # the method checks its targets (and sizes) against the model's layers


def _check_mesh(config: ml_collections.ConfigDict, num_devices: int, process_count: int) -> None:
  """The mesh fits the devices, and the batch splits over data parallelism and processes."""
  sizes = mesh_shape(config.mesh, num_devices)
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
        f"batch_size={config.batch_size} is not divisible by process_count={process_count}"
    )
  shards = config.data.get("shards", 0)
  if shards and (shards % process_count or config.batch_size % shards):
    raise ConfigError(
        f"data.shards={shards} must be a multiple of process_count={process_count} and divide "
        f"batch_size={config.batch_size}"
    )
