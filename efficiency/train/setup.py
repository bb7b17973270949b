"""One config's model, optimizer, shardings and compiled steps on its mesh: `Training`."""

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from data.seq_len_warmup import rows_per_step
from efficiency.evaluation import Evaluator
from efficiency.model.transformer import make_model
from efficiency.peft import make_method
from efficiency.peft.method import Method
from efficiency.sharding.mesh import batch_sharding, logical_shardings, make_mesh, unboxed
from efficiency.sharding.rules import LOGICAL_AXIS_RULES
from efficiency.sharding.target import tracing_for
from efficiency.train.distill import Distillation, distill_config, place_teacher
from efficiency.train.optimizer import make_optimizer
from efficiency.train.state import PeftTrainState, TrainState
from efficiency.train.step import Batch, train_step


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


def _shardings_of(tree):
  return jax.tree.map(lambda x: x.sharding, tree)


def _nbytes(tree) -> int:
  return int(sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


class Training:
  """The model, optimizer, shardings and compiled steps of one config on one mesh (by default
  the mesh `config.mesh` describes over all devices).

  Every method runs inside the mesh and the logical-axis rules (`context()`), so callers need
  neither. With a PEFT method (`config.peft`), `state.params` holds only the trainable
  parameters and `state.frozen` the rest; `effective_params(state)` is what the model applies.
  With `config.distill`, the compiled step takes the teacher's parameters as a third argument:
  call it with `*step_extras`.
  """

  def __init__(
      self, config: ml_collections.ConfigDict, mesh: Mesh | None = None,
      unroll_layers: bool = False, teacher: tuple[nn.Module, dict] | None = None,
  ):
    """`unroll_layers` unrolls the layer scans of the train step (for FLOP counting).
    `teacher`: the (model, host parameters) of `config.distill.teacher` (`load_teacher`);
    without it the step trains on cross-entropy alone (for callers that need only shapes)."""
    self.config = config
    self.mesh = make_mesh(config.mesh) if mesh is None else mesh
    self.teacher = teacher
    self.model = make_model(config)
    with self.context():
      self.method, boxed_base = make_method(config)
      train_model = self.method.train_model(self.model)
      if unroll_layers:
        train_model = train_model.clone(unroll_layers=True)
      self.base_sharding = logical_shardings(boxed_base, self.mesh)
      self._param_count = int(sum(x.size for x in jax.tree.leaves(unboxed(boxed_base))))
      skip = config.get("max_nonfinite_skips") if config.get("on_nonfinite") == "skip" else None
      self.tx, self.schedule = make_optimizer(
          config.optimizer, config.steps, self.method.lr_multipliers, skip
      )
      self.rows_sharding = batch_sharding(self.mesh)
      init = functools.partial(_init_state, self.model, self.method, self.tx, config.seq_len)
      boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
      self.state_sharding = logical_shardings(boxed, self.mesh)
      self.abstract_state = jax.tree.map(
          lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
          unboxed(boxed),
          self.state_sharding,
      )
    self._init = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=self.state_sharding)
    self._init_from = jax.jit(
        lambda r, base: nn.meta.unbox(init(r, base)),
        in_shardings=(None, self.base_sharding),
        out_shardings=self.state_sharding,
    )
    self.step_extras: tuple = ()  # the compiled step's arguments after (state, batch)
    distillation = None
    if teacher is not None:
      distill = distill_config(config)
      distillation = Distillation(teacher[0], distill.weight, distill.temperature)
      self.step_extras = (place_teacher(teacher[1], self.mesh),)
    self._train_step = jax.jit(
        functools.partial(
            train_step, model=train_model, tx=self.tx, schedule=self.schedule,
            grad_accum_steps=config.grad_accum_steps, combine=self.method.apply_params,
            distill=distillation,
        ),
        in_shardings=(self.state_sharding, self.rows_sharding)
        + tuple(_shardings_of(x) for x in self.step_extras),
        out_shardings=(self.state_sharding, None),
        donate_argnums=0,
    )

  @contextlib.contextmanager
  def context(self) -> Iterator[None]:
    """This training's mesh and the logical-to-mesh rules, for tracing and placing arrays.

    (`jax.set_mesh` in place of `with mesh` partitions the 8-device test mesh differently in
    jax 0.10: XLA reports involuntary rematerializations and the losses move in the last bits.)
    """
    with self.mesh, nn.logical_axis_rules(LOGICAL_AXIS_RULES), tracing_for(self.mesh):
      yield

  def init(self, seed: int, base: dict | None = None) -> TrainState:
    """A freshly initialized, sharded TrainState; from `base` params if given (fine-tuning)."""
    with self.context():
      if base is None:
        return self._init(jax.random.PRNGKey(seed))
      return self._init_from(jax.random.PRNGKey(seed), base)

  def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
    """One optimizer update (jitted; `state` is donated)."""
    with self.context():
      return self._train_step(state, batch, *self.step_extras)

  def compile(
      self, example: Batch, seq_len: int | None = None
  ) -> tuple[jax.stages.Compiled, float]:
    """The train step AOT-compiled for global batches with the dtypes of `example` (one local
    batch) in rows of `seq_len` (default `config.seq_len`), and the compile time in seconds."""
    start = time.perf_counter()
    with self.context():
      abstract = self.abstract_batch(example, seq_len)
      lowered = self._train_step.lower(self.abstract_state, abstract, *self.step_extras)
      compiled = lowered.compile()
    return compiled, time.perf_counter() - start

  def evaluator(
      self, token_bytes_V: np.ndarray
  ) -> Callable[[TrainState, Sequence[Batch]], dict[str, float]]:
    """(state, global batches) -> eval_loss, eval_bpb and accuracy of the state's effective
    parameters; `token_bytes_V` holds each token's UTF-8 byte count."""
    evaluator = Evaluator(
        self.model, token_bytes_V, params_of=self.effective_params,
        in_shardings=(self.state_sharding, self.rows_sharding),
    )

    def evaluate(state: TrainState, batches: Sequence[Batch]) -> dict[str, float]:
      with self.context():
        return evaluator(state, batches)

    return evaluate

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

  def abstract_batch(
      self, example: Batch, seq_len: int | None = None
  ) -> dict[str, jax.ShapeDtypeStruct]:
    """Global-batch shapes for AOT compilation, from one local batch's dtypes: `batch_size`
    rows of `config.seq_len` tokens, or rows of `seq_len` (a warmup bucket, which divides
    `config.seq_len`: as many as `rows_per_step` gives)."""
    seq_len = self.config.seq_len if seq_len is None else seq_len
    rows = rows_per_step(self.config, seq_len)
    return {
        k: jax.ShapeDtypeStruct((rows, seq_len), v.dtype, sharding=self.rows_sharding)
        for k, v in example.items()
    }
