"""The optimizer: global-norm clipping, then AdamW, Lion or SGD (`optimizer.name`) with a warmup
+ cosine (or constant) schedule and masked decoupled weight decay; with `on_nonfinite=skip`,
updates from non-finite gradients are skipped and counted."""

from collections.abc import Callable

import jax
import ml_collections
import optax


def _warmup_cosine(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=cfg.lr,
      warmup_steps=cfg.warmup_steps,
      decay_steps=max(total_steps, cfg.warmup_steps + 1),
      end_value=cfg.lr * cfg.min_lr_ratio,
  )


def _warmup_constant(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  del total_steps
  return optax.join_schedules(
      [optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps), optax.constant_schedule(cfg.lr)],
      [cfg.warmup_steps],
  )


SCHEDULES: dict[str, Callable[[ml_collections.ConfigDict, int], optax.Schedule]] = {
    "cosine": _warmup_cosine,
    "constant": _warmup_constant,
}

NO_DECAY_NAMES = ("scale", "bias", "magnitude")  # magnitude: DoRA's per-channel norms


def weight_decay_mask(params):
  """True for weights that decay: everything but norm scales, biases and DoRA magnitudes."""

  def decays(path, _) -> bool:
    names = {getattr(k, "key", None) for k in path}
    return not names.intersection(NO_DECAY_NAMES)

  return jax.tree_util.tree_map_with_path(decays, params)


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """The learning-rate schedule named by `optimizer.schedule` (one of SCHEDULES)."""
  return SCHEDULES[cfg.schedule](cfg, total_steps)


def scale_by_tree(multipliers: Callable) -> optax.GradientTransformation:
  """Multiplies each update by its leaf of `multipliers(updates)`: per-parameter learning rates."""

  def update(updates, params=None):
    del params
    return jax.tree.map(lambda u, m: u * m, updates, multipliers(updates))

  return optax.stateless(update)


def _adamw(cfg: ml_collections.ConfigDict, schedule: optax.Schedule):
  return optax.adamw(
      schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
      mask=weight_decay_mask,
  )


def _lion(cfg: ml_collections.ConfigDict, schedule: optax.Schedule):
  return optax.lion(
      schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=weight_decay_mask
  )


def _sgd(cfg: ml_collections.ConfigDict, schedule: optax.Schedule):
  """SGD with momentum b1 (0: none) and masked decoupled weight decay."""
  return optax.chain(
      optax.add_decayed_weights(cfg.weight_decay, mask=weight_decay_mask),
      optax.sgd(schedule, momentum=cfg.b1 or None),
  )


OPTIMIZERS: dict[str, Callable] = {"adamw": _adamw, "lion": _lion, "sgd": _sgd}


def make_optimizer(
    cfg: ml_collections.ConfigDict,
    total_steps: int,
    lr_multipliers: Callable | None = None,
    skip_nonfinite: int | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Clip by global norm, then the optimizer `cfg.name` names; then, if given, scale each update
  by `lr_multipliers(params)` (LoRA+ speeds up its B matrices this way). With `skip_nonfinite`
  (a count), a step whose gradients are not finite changes nothing, up to that many in a row
  (optax.apply_if_finite; the state counts them)."""
  schedule = make_schedule(cfg, total_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip),
      OPTIMIZERS[cfg.name](cfg, schedule),
      *([scale_by_tree(lr_multipliers)] if lr_multipliers is not None else []),
  )
  if skip_nonfinite is not None:
    tx = optax.apply_if_finite(tx, max_consecutive_errors=skip_nonfinite)
  return tx, schedule
