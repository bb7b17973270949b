"""A reference model from an earlier run (`data.reference_workdir`): per-document mean losses.

Loads the run's `config.json` and newest Orbax checkpoint through `efficiency.train.setup`, on
this process's devices, and scores each document's first `seq_len` tokens (the reference run's
own tokenizer and sequence length).
"""

import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from data.packing import document_example


def _load(workdir: str):
  """The reference run's config, tokenizer, Training and restored params."""
  from data.tokenizer import get_tokenizer
  from efficiency.sharding.mesh import make_mesh
  from efficiency.sharding.rules import LOGICAL_AXIS_RULES
  from efficiency.train import checkpoint
  from efficiency.train.setup import Training

  hint = f"train one first: python train.py --workdir={workdir}"
  config_path = Path(workdir) / "config.json"
  if not config_path.is_file():
    raise FileNotFoundError(f"data.reference_workdir={workdir!r} has no config.json; {hint}")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  tokenizer = get_tokenizer(config)
  mesh = make_mesh(config.mesh)
  with mesh, nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    training = Training(config, mesh)
    manager = checkpoint.make_manager(workdir, config.keep_checkpoints)
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"data.reference_workdir={workdir!r} has no checkpoint; {hint}")
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(training.abstract_state))
    )
    manager.close()
  return config, tokenizer, training, restored["state"].params


def document_losses(texts: list[str], config: ml_collections.ConfigDict) -> np.ndarray:
  """float64[N]: each text's mean next-token loss (nats) under the reference model."""
  workdir = config.data.reference_workdir
  if not workdir:
    raise ValueError("perplexity filtering and reference_loss need data.reference_workdir")
  ref_config, tokenizer, training, params = _load(workdir)
  seq_len, batch_size = ref_config.seq_len, ref_config.batch_size

  @jax.jit
  def row_losses(params, inputs_BT, targets_BT, weights_BT):
    positions_BT = jnp.broadcast_to(jnp.arange(seq_len), inputs_BT.shape)
    logits_BTV = training.model.apply(
        {"params": params}, inputs_BT, weights_BT.astype(jnp.int32), positions_BT,
        rngs={"dropout": jax.random.PRNGKey(0)},
    )
    losses_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT)
    return jnp.sum(losses_BT * weights_BT, -1) / jnp.maximum(jnp.sum(weights_BT, -1), 1)

  losses = np.zeros(len(texts))
  for start in tqdm(range(0, len(texts), batch_size), desc="Reference losses", unit="batch"):
    rows = {k: np.zeros((batch_size, seq_len), np.int32) for k in ("inputs", "targets")}
    weights = np.zeros((batch_size, seq_len), np.float32)
    chunk = texts[start : start + batch_size]
    for r, text in enumerate(chunk):
      example = document_example(tokenizer.encode(text), bos_id=tokenizer.bos_id,
                                 eos_id=tokenizer.eos_id)
      n = min(len(example["inputs"]), seq_len)
      rows["inputs"][r, :n] = example["inputs"][:n]
      rows["targets"][r, :n] = example["targets"][:n]
      weights[r, :n] = 1
    out = row_losses(params, rows["inputs"], rows["targets"], weights)
    losses[start : start + len(chunk)] = np.asarray(out)[: len(chunk)]
  return losses
