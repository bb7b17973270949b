"""Runs a few train steps of a tiny model on a given mesh and prints the losses as JSON.

Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=N set beforehand:
  python -m tests.efficiency.train.sharded_steps DATA FSDP TENSOR [EXPERT NUM_EXPERTS] \\
      [--quant=MODE] [--attention_impl=IMPL] [--block=N] [--loss_chunk=N]
      [--dispatch=dropless|capacity]

`--block` sets the chunked attention's block size (so 16-token rows span several blocks).
"""

import json
import sys

import jax
import numpy as np

from configs.default import get_config
from efficiency.attention.kernels import chunked
from efficiency.config import resolve
from efficiency.sharding.mesh import to_global
from efficiency.train.setup import Training
from tests.helpers import packed_batch, tiny_model_config

STEPS = 4


def main(
    data: int, fsdp: int, tensor: int, expert: int = 1, num_experts: int = 0, quant: str = "none",
    attention_impl: str = "auto", loss_chunk: str = "0",
    dispatch: str = "dropless",
) -> None:
  config = get_config()
  config.model = tiny_model_config(num_heads=4, num_kv_heads=2, d_model=32, d_ff=64)
  config.update(batch_size=8, seq_len=16, steps=STEPS)
  config.optimizer.update(warmup_steps=1, lr=1e-2)
  config.model.moe.update(num_experts=num_experts, dispatch=dispatch)
  config.mesh.update(data=data, fsdp=fsdp, tensor=tensor, expert=expert)
  config.quant.mode = quant
  config.model.attention_impl = attention_impl
  config.model.loss_chunk = int(loss_chunk)
  config = resolve(config, jax.device_count())
  rng = np.random.default_rng(0)
  training = Training(config)
  state = training.init(seed=0)
  losses, shardings = [], {}
  for _ in range(STEPS):
    batch = to_global(packed_batch(rng, config), training.rows_sharding)
    state, metrics = training.train_step(state, batch)
    losses.append(float(metrics["loss"]))
  mlp = "moe" if num_experts else "mlp"
  kernel = state.params["layers"][mlp]["gate"]["kernel"]
  shardings["mlp_gate"] = list(kernel.sharding.spec)
  shardings["mlp_gate_shards"] = len(kernel.addressable_shards)
  shardings["adam_mu_gate"] = list(
      state.opt_state[1][0].mu["layers"][mlp]["gate"]["kernel"].sharding.spec
  )
  print(json.dumps({"losses": losses, "devices": jax.device_count(), **shardings}))


if __name__ == "__main__":
  flags = dict(a.removeprefix("--").split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
  sizes = [int(a) for a in sys.argv[1:] if not a.startswith("--")]
  if "block" in flags:
    chunked.BLOCK = int(flags.pop("block"))
  main(*sizes, **flags)
