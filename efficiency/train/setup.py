"""Sharded train-state creation and the jit-compiled train/eval steps, shared by loop and tests."""

import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from efficiency.model.transformer import Transformer
from efficiency.peft import make_method
from efficiency.peft.method import Method
from efficiency.sharding.mesh import batch_sharding, logical_shardings
from efficiency.train.optimizer import make_optimizer
from efficiency.train.state import PeftTrainState, TrainState
from efficiency.train.step import eval_step, train_step


def _init_state(
    model: nn.Module, method: Method, tx, seq_len: int, rng: jax.Array, base=None
) -> TrainState:
  """Initial TrainState with boxed (logically partitioned) params and optimizer state.

  `base`: pretrained parameters (unboxed) to start from instead of a random init.
  """
  params_rng, train_rng = jax.random.split(rng)
  tokens = jnp.zeros((1, seq_len), jnp.int32)
  boxed = model.init(params_rng, tokens, tokens + 1, tokens)["params"]
  if base is not None:
    is_box = lambda x: isinstance(x, nn.Partitioned)
    boxed = jax.tree.map(lambda box, value: box.replace_boxed(value), boxed, base, is_leaf=is_box)
  trainable, frozen = method.split(boxed, jax.random.fold_in(params_rng, 1))
  fields = dict(
      step=jnp.zeros((), jnp.int32), params=trainable, opt_state=tx.init(trainable), rng=train_rng
  )
  return TrainState(**fields) if frozen is None else PeftTrainState(**fields, frozen=frozen)


def _nbytes(tree) -> int:
  return int(sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


class Training:
  """The model, optimizer, shardings and compiled steps of one config on one mesh.

  With a PEFT method (`config.peft`), `state.params` holds only the trainable parameters and
  `state.frozen` the rest; `effective_params(state)` is what the model applies. Call inside
  `with mesh, nn.logical_axis_rules(LOGICAL_AXIS_RULES)`.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh):
    self.config = config
    self.mesh = mesh
    self.model = Transformer(ml_collections.FrozenConfigDict(config.model))
    self.method, boxed_base = make_method(config)
    self.base_sharding = logical_shardings(boxed_base, mesh)
    self._param_count = int(sum(x.size for x in jax.tree.leaves(nn.meta.unbox(boxed_base))))
    self.tx, self.schedule = make_optimizer(
        config.optimizer, config.steps, self.method.lr_multipliers
    )
    self.rows_sharding = batch_sharding(mesh)
    init = functools.partial(_init_state, self.model, self.method, self.tx, config.seq_len)
    boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
    self.state_sharding = logical_shardings(boxed, mesh)
    self.abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.meta.unbox(boxed),
        self.state_sharding,
    )
    self._init = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=self.state_sharding)
    self._init_from = jax.jit(
        lambda r, base: nn.meta.unbox(init(r, base)),
        in_shardings=(None, self.base_sharding),
        out_shardings=self.state_sharding,
    )
    self.train_step = jax.jit(
        functools.partial(
            train_step, model=self.model, tx=self.tx, schedule=self.schedule,
            grad_accum_steps=config.grad_accum_steps, combine=self.method.combine,
        ),
        in_shardings=(self.state_sharding, self.rows_sharding),
        out_shardings=(self.state_sharding, None),
        donate_argnums=0,
    )

  def init(self, seed: int, base: dict | None = None) -> TrainState:
    """A freshly initialized, sharded TrainState; from `base` params if given (fine-tuning)."""
    if base is None:
      return self._init(jax.random.PRNGKey(seed))
    return self._init_from(jax.random.PRNGKey(seed), base)

  def effective_params(self, state: TrainState) -> dict:
    """The parameters the model applies: trainable and frozen trees combined (adapters merged)."""
    return self.method.combine(state.params, getattr(state, "frozen", None))

  def param_count(self) -> int:
    """Parameters of the model (the base, whatever part of it trains)."""
    return self._param_count

  def trainable_param_count(self) -> int:
    return int(sum(x.size for x in jax.tree.leaves(self.abstract_state.params)))

  def optimizer_state_bytes(self) -> int:
    return _nbytes(self.abstract_state.opt_state)

  def abstract_batch(self, example: dict) -> dict[str, jax.ShapeDtypeStruct]:
    """Global-batch shapes for AOT compilation, from one local batch's dtypes."""
    return {
        k: jax.ShapeDtypeStruct(
            (self.config.batch_size, self.config.seq_len), v.dtype, sharding=self.rows_sharding
        )
        for k, v in example.items()
    }

  def eval_step(self, token_bytes: jax.Array):
    """Jitted eval step on a TrainState, summing loss, target count and target bytes."""
    step = functools.partial(eval_step, model=self.model, token_bytes=token_bytes)
    return jax.jit(
        lambda state, batch: step(self.effective_params(state), batch),
        in_shardings=(self.state_sharding, self.rows_sharding),
    )


def lower_and_compile(training: Training, batch_abstract) -> tuple[jax.stages.Compiled, float]:
  """AOT-compiles the train step; returns it and the compile time in seconds."""
  start = time.perf_counter()
  compiled = training.train_step.lower(training.abstract_state, batch_abstract).compile()
  return compiled, time.perf_counter() - start
