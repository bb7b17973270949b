"""Knowledge distillation: the KL term against a plain reference, the distilled step's gradient,
and the config's checks on the teacher."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from efficiency.config import resolve
from efficiency.errors import ConfigError, MissingPathError
from efficiency.model.transformer import make_model
from efficiency.sharding.mesh import to_global
from efficiency.train.distill import kl_sum
from efficiency.train.setup import Training
from efficiency.workdir import files
from tests.helpers import init_params, packed_batch, tiny_config, tiny_model_config


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _reference_kl(logits, teacher, weights, temperature) -> float:
  """sum_t w_t * T^2 * KL(softmax(teacher_t / T) || softmax(logits_t / T)), in float64."""
  log_s = _log_softmax(np.float64(logits) / temperature)
  log_t = _log_softmax(np.float64(teacher) / temperature)
  kl = (np.exp(log_t) * (log_t - log_s)).sum(-1)
  return float(temperature**2 * (kl * weights).sum())


def test_kl_sum_matches_the_reference_and_passes_no_gradient_to_the_teacher(rng):
  logits, teacher = (rng.normal(size=(2, 5, 11)).astype(np.float32) * 3 for _ in range(2))
  weights = (rng.random((2, 5)) > 0.3).astype(np.float32)
  for temperature in (1.0, 2.5):
    np.testing.assert_allclose(
        float(kl_sum(logits, teacher, weights, temperature)),
        _reference_kl(logits, teacher, weights, temperature), rtol=1e-5,
    )
  assert abs(float(kl_sum(teacher, teacher, weights, 2.0))) < 1e-5
  teacher_grad = jax.grad(lambda t: kl_sum(jnp.asarray(logits), t, weights, 2.0))(teacher)
  assert not np.any(np.asarray(teacher_grad))


def _teacher_config():
  config = tiny_config()
  config.model = tiny_model_config(num_layers=1, d_model=16, num_heads=2, num_kv_heads=1, d_ff=32)
  return config


def test_distilled_step_descends_the_mixed_objective(rng):
  """With plain SGD at learning rate 1, the step's update is the gradient of
  ((1 - w) * cross-entropy + w * T^2 * KL) / real targets, computed here from the two models'
  logits directly; its `distill_kl` metric is the KL term per target."""
  weight, temperature = 0.7, 2.0
  config = tiny_config()
  config.optimizer.update(
      name="sgd", lr=1.0, b1=0.0, weight_decay=0.0, warmup_steps=0, schedule="constant",
      grad_clip=1e9,
  )
  config.distill.update(teacher="a teacher run", weight=weight, temperature=temperature)
  teacher_model = make_model(_teacher_config())
  teacher_params = init_params(teacher_model, seed=3)
  training = Training(config, teacher=(teacher_model, teacher_params))
  state = training.init(seed=0)
  before = jax.device_get(state.params)
  batch = packed_batch(rng, config)
  after, metrics = training.train_step(state, to_global(batch, training.rows_sharding))

  inputs = (batch["inputs"], batch["segment_ids"], batch["positions"])
  teacher_logits = jax.jit(teacher_model.apply)({"params": teacher_params}, *inputs)
  weights = batch["weights"]

  def objective(params):
    logits = training.model.apply({"params": params}, *inputs)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    log_s = jax.nn.log_softmax(logits / temperature)
    log_t = jax.nn.log_softmax(teacher_logits / temperature)
    kl = temperature**2 * jnp.sum(jnp.exp(log_t) * (log_t - log_s), -1)
    return jnp.sum(((1 - weight) * ce + weight * kl) * weights) / weights.sum()

  grads = jax.jit(jax.grad(objective))(before)
  jax.tree.map(
      lambda b, a, g: np.testing.assert_allclose(b - a, g, atol=2e-6),
      before, jax.device_get(after.params), grads,
  )
  logits = jax.jit(training.model.apply)({"params": before}, *inputs)
  np.testing.assert_allclose(
      float(metrics["distill_kl"]),
      _reference_kl(logits, teacher_logits, weights, temperature) / weights.sum(), rtol=1e-4,
  )


def test_without_a_teacher_the_step_is_plain_cross_entropy(rng):
  config = tiny_config()
  training = Training(config)
  assert training.step_extras == ()
  _, metrics = training.train_step(
      training.init(seed=0), to_global(packed_batch(rng, config), training.rows_sharding)
  )
  assert "distill_kl" not in metrics


@pytest.fixture
def teacher_dir(tmp_path):
  """A workdir holding only a config.json (what resolve reads of a teacher)."""
  files.write_json_atomic(tmp_path / files.CONFIG, _teacher_config().to_dict())
  return tmp_path


def _distilled(teacher, **distill):
  config = tiny_config()
  config.distill.update(teacher=str(teacher), **distill)
  return config


def test_resolve_takes_the_teachers_tokenizer(teacher_dir):
  resolved = resolve(_distilled(teacher_dir), num_devices=1)
  assert resolved.data.tokenizer_from == str(teacher_dir)


@pytest.mark.parametrize(
    "distill, model, expected",
    [
        ({"weight": 0.0}, {}, "distill.weight=0.0 must be in (0, 1]"),
        ({"weight": 1.5}, {}, "distill.weight=1.5 must be in (0, 1]"),
        ({"temperature": 0.0}, {}, "distill.temperature=0.0 must be > 0"),
        ({}, {"vocab_size": 101}, "has model.vocab_size=97, this run 101; a student must share"),
    ],
)
def test_bad_distillation_is_one_line(teacher_dir, distill, model, expected):
  config = _distilled(teacher_dir, **distill)
  config.model.update(model)
  with pytest.raises(ConfigError) as err:
    resolve(config, num_devices=1)
  assert expected in str(err.value) and "\n" not in str(err.value)


def test_a_teacher_with_another_tokenizer_is_refused(teacher_dir, tmp_path_factory):
  other = tmp_path_factory.mktemp("bytes_run")
  bytes_config = tiny_config()
  bytes_config.data.tokenizer = "bytes"
  files.write_json_atomic(other / files.CONFIG, bytes_config.to_dict())
  config = _distilled(teacher_dir)
  config.data.tokenizer_from = str(other)
  with pytest.raises(ConfigError, match="models have different vocabularies"):
    resolve(config, num_devices=1)


def test_a_missing_teacher_is_one_line(tmp_path):
  with pytest.raises(MissingPathError) as err:
    resolve(_distilled(tmp_path / "nowhere"), num_devices=1)
  assert "distill.teacher=" in str(err.value) and "\n" not in str(err.value)
