"""Input pipeline tokens/s next to training tokens/s: is training ever input-bound?

  python benchmarks/data_pipeline.py [--batches=320] [--big_batches=16] [--train_steps=10]

For the default config: the train iterator's real tokens/s alone (one process, its default
`data.worker_threads`), and the compiled train step's tokens/s on batches already in memory,
measured side by side. For the 0.5B shape (configs/efficientllm.py:0.5b, seq 2048, batch 256):
the pipeline alone; training it on a CPU is not feasible.

Rows are shuffled in windows of `data.shuffle_window` rows, so the first batch waits for a whole
window; it is left out, and enough batches are timed to refill the window several times.
"""

import argparse
import time

import jax

from configs import default, efficientllm
from efficiency.config import resolve
from efficiency.sharding.mesh import to_global
from efficiency.train.inputs import load_inputs
from efficiency.train.setup import Training


def pipeline_rate(config, batches: int) -> tuple[float, list]:
  """Real tokens/s of the train iterator over `batches` batches (after the first), and them."""
  iterator = load_inputs(config, evaluation=False).train
  kept = [next(iterator)]
  start = time.perf_counter()
  tokens = 0
  for _ in range(batches):
    batch = next(iterator)
    tokens += int(batch["weights"].sum())
    kept.append(batch)
  rate = tokens / (time.perf_counter() - start)
  iterator.close()
  return rate, kept


def train_rate(config, batches: list, steps: int) -> float:
  """Real tokens/s of the compiled train step on in-memory batches."""
  training = Training(config)
  step_fn, _ = training.compile(batches[0])
  state = training.init(config.seed)
  global_batches = [to_global(b, training.rows_sharding) for b in batches]
  state, _ = step_fn(state, global_batches[0])
  jax.block_until_ready(state)
  start = time.perf_counter()
  tokens = 0
  for i in range(steps):
    batch = global_batches[1 + i % (len(global_batches) - 1)]
    state, _ = step_fn(state, batch)
    tokens += int(batches[1 + i % (len(batches) - 1)]["weights"].sum())
  jax.block_until_ready(state)
  return tokens / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", type=int, default=320)
  parser.add_argument("--big_batches", type=int, default=16)
  parser.add_argument("--train_steps", type=int, default=10)
  args = parser.parse_args()
  config = resolve(default.get_config(), jax.device_count())
  pipe, batches = pipeline_rate(config, args.batches)
  train = train_rate(config, batches, args.train_steps)
  print(f"default (batch {config.batch_size} x seq {config.seq_len}, "
        f"{config.data.worker_threads} worker threads):")
  print(f"  pipeline {pipe:12,.0f} tokens/s")
  print(f"  training {train:12,.0f} tokens/s   pipeline/training = {pipe / train:.1f}x")
  big = resolve(efficientllm.get_config("0.5b"), jax.device_count())
  pipe, _ = pipeline_rate(big, args.big_batches)
  print(f"0.5b shape (batch {big.batch_size} x seq {big.seq_len}, {big.data.tokenizer} tokens, "
        f"{big.data.worker_threads} worker threads):")
  print(f"  pipeline {pipe:12,.0f} tokens/s   (training: not feasible on CPU)")


if __name__ == "__main__":
  main()
