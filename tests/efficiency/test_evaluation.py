"""The one evaluator against a plain numpy computation from the model's logits."""

import numpy as np

from configs.default import get_config
from efficiency.evaluation import Evaluator
from efficiency.model.transformer import make_model
from tests.helpers import init_params, packed_batch, tiny_model_config


def numpy_token_stats(logits_BTV: np.ndarray, batch: dict) -> tuple[np.ndarray, np.ndarray]:
  """Per-target cross-entropy (nats, float64) and whether the argmax is the target."""
  logits = logits_BTV.astype(np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  targets = batch["targets"]
  losses = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  return losses, logits.argmax(-1) == targets


def test_loss_accuracy_bpb_and_row_losses_equal_a_plain_computation(rng):
  config = get_config()
  config.model = tiny_model_config()
  config.update(batch_size=3, seq_len=12)
  model = make_model(config)
  params = init_params(model)
  batches = [packed_batch(rng, config) for _ in range(2)]
  token_bytes_V = rng.integers(0, 5, config.model.vocab_size).astype(np.float32)

  losses, correct, weights, target_bytes = [], [], [], []
  for batch in batches:
    logits = np.asarray(model.apply(
        {"params": params}, batch["inputs"], batch["segment_ids"], batch["positions"]
    ))
    loss_BT, correct_BT = numpy_token_stats(logits, batch)
    losses.append(loss_BT)
    correct.append(correct_BT)
    weights.append(batch["weights"])
    target_bytes.append(token_bytes_V[batch["targets"]])
  losses, correct, weights, target_bytes = map(np.stack, (losses, correct, weights, target_bytes))

  result = Evaluator(model, token_bytes_V)(params, batches)
  want_loss = (losses * weights).sum() / weights.sum()
  np.testing.assert_allclose(result["eval_loss"], want_loss, rtol=1e-5)
  np.testing.assert_allclose(result["accuracy"], (correct * weights).sum() / weights.sum(),
                             rtol=1e-6)
  want_bpb = (losses * weights).sum() / np.log(2) / (target_bytes * weights).sum()
  np.testing.assert_allclose(result["eval_bpb"], want_bpb, rtol=1e-5)
  assert 0 <= result["accuracy"] < 0.5 and result["eval_loss"] > 1  # an untrained model

  rows = Evaluator(model).row_losses(params, batches[0])
  want_rows = (losses[0] * weights[0]).sum(-1) / np.maximum(weights[0].sum(-1), 1)
  np.testing.assert_allclose(rows, want_rows, rtol=1e-5)
  # Without byte counts there is no bits per byte; the parameters may be held as anything
  # `params_of` turns into them.
  held = {"wrapped": params}
  unwrapped = Evaluator(model, params_of=lambda h: h["wrapped"])(held, batches)
  assert "eval_bpb" not in unwrapped
  np.testing.assert_allclose(unwrapped["eval_loss"], result["eval_loss"], rtol=1e-6)
