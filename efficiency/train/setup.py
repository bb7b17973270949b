"""Sharded train-state creation and the jit-compiled train/eval steps, shared by loop and tests."""

import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from efficiency.model.transformer import Transformer
from efficiency.sharding.mesh import batch_sharding, logical_shardings
from efficiency.train.optimizer import make_optimizer
from efficiency.train.state import TrainState
from efficiency.train.step import eval_step, train_step


def _init_state(model: nn.Module, tx, seq_len: int, rng: jax.Array) -> TrainState:
  """Initial TrainState with boxed (logically partitioned) params and optimizer state."""
  params_rng, train_rng = jax.random.split(rng)
  tokens = jnp.zeros((1, seq_len), jnp.int32)
  params = model.init(params_rng, tokens, tokens + 1, tokens)["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=train_rng
  )


class Training:
  """The model, optimizer, shardings and compiled steps of one config on one mesh.

  Call inside `with mesh, nn.logical_axis_rules(LOGICAL_AXIS_RULES)`.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh):
    self.config = config
    self.mesh = mesh
    self.model = Transformer(ml_collections.FrozenConfigDict(config.model))
    self.tx, self.schedule = make_optimizer(config.optimizer, config.steps)
    self.rows_sharding = batch_sharding(mesh)
    init = functools.partial(_init_state, self.model, self.tx, config.seq_len)
    boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
    self.state_sharding = logical_shardings(boxed, mesh)
    self.abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.meta.unbox(boxed),
        self.state_sharding,
    )
    self._init = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=self.state_sharding)
    self.train_step = jax.jit(
        functools.partial(
            train_step, model=self.model, tx=self.tx, schedule=self.schedule,
            grad_accum_steps=config.grad_accum_steps,
        ),
        in_shardings=(self.state_sharding, self.rows_sharding),
        out_shardings=(self.state_sharding, None),
        donate_argnums=0,
    )

  def init(self, seed: int) -> TrainState:
    """A freshly initialized, sharded TrainState."""
    return self._init(jax.random.PRNGKey(seed))

  def param_count(self) -> int:
    return int(sum(x.size for x in jax.tree.leaves(self.abstract_state.params)))

  def abstract_batch(self, example: dict) -> dict[str, jax.ShapeDtypeStruct]:
    """Global-batch shapes for AOT compilation, from one local batch's dtypes."""
    return {
        k: jax.ShapeDtypeStruct(
            (self.config.batch_size, self.config.seq_len), v.dtype, sharding=self.rows_sharding
        )
        for k, v in example.items()
    }

  def eval_step(self, token_bytes: jax.Array):
    """Jitted eval step summing loss, target count and target bytes."""
    return jax.jit(
        functools.partial(eval_step, model=self.model, token_bytes=token_bytes),
        in_shardings=(self.state_sharding.params, self.rows_sharding),
    )


def lower_and_compile(training: Training, batch_abstract) -> tuple[jax.stages.Compiled, float]:
  """AOT-compiles the train step; returns it and the compile time in seconds."""
  start = time.perf_counter()
  compiled = training.train_step.lower(training.abstract_state, batch_abstract).compile()
  return compiled, time.perf_counter() - start
