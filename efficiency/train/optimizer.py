"""AdamW with warmup + cosine (or constant) schedule, global-norm clipping and a decay mask."""

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


def make_optimizer(
    cfg: ml_collections.ConfigDict, total_steps: int, lr_multipliers: Callable | None = None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Clip by global norm, then AdamW with decoupled, masked weight decay; then, if given, scale
  each update by `lr_multipliers(params)` (LoRA+ speeds up its B matrices this way)."""
  schedule = make_schedule(cfg, total_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip),
      optax.adamw(
          schedule,
          b1=cfg.b1,
          b2=cfg.b2,
          eps=cfg.eps,
          weight_decay=cfg.weight_decay,
          mask=weight_decay_mask,
      ),
      *([scale_by_tree(lr_multipliers)] if lr_multipliers is not None else []),
  )
  return tx, schedule
