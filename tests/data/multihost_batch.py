"""One process of a two-process job: assembles the first global train batch and saves it.

  python -m tests.data.multihost_batch ADDRESS PROCESS_ID CORPUS_ROOT DATA_DIR OUT.npz
"""

import sys

import jax
import numpy as np
from jax.experimental import multihost_utils


def main(address: str, process_id: int, root: str, data_dir: str, out: str) -> None:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=address, num_processes=2, process_id=process_id)
  from data import pipeline
  from data import tokenizer as tokenizer_lib
  from efficiency.sharding.mesh import batch_sharding, make_mesh, to_global
  from tests.helpers import data_config

  config = data_config(root, data_dir, tokenizer="bytes")
  tokenizer = tokenizer_lib.get_tokenizer(config)
  local = next(pipeline.make_train_iterator(
      config, tokenizer, process_index=jax.process_index(), process_count=jax.process_count()
  ))
  batch = to_global(local, batch_sharding(make_mesh(config.mesh)))
  gathered = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True))
              for k, v in batch.items()}
  if jax.process_index() == 0:
    np.savez(out, **gathered)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
