"""Runs a fused kernel's call under `kernels.shard.on_mesh` on 8 simulated CPU devices against
the same call on whole arrays; prints the largest differences as one JSON line.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python -m tests.efficiency.attention.sharded_kernel
"""

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from efficiency.attention.kernels import cudnn
from efficiency.attention.kernels.shard import layout, on_mesh
from efficiency.sharding.mesh import make_mesh
from tests.helpers import random_packed_batch


def main() -> None:
  rng = np.random.default_rng(0)
  b, t, n, h = 8, 32, 4, 16
  _, seg, pos = map(jnp.asarray, random_packed_batch(rng, b, t, 11))
  # cuDNN's call through XLA's own attention (`implementation="xla"`): runs on the CPU.
  attend = functools.partial(cudnn.attend, implementation="xla", window=5)
  result = {}
  for kv_heads, mesh_sizes in ((2, dict(data=2, fsdp=2, tensor=2)), (1, dict(data=4, tensor=2)),
                               (2, dict(fsdp=2, expert=4))):
    mesh = make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1, "expert": 1,
                                                **mesh_sizes}))
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, heads, h)), jnp.float32)
               for heads in (n, kv_heads, kv_heads))
    want = attend(q, k, v, seg, pos)
    sharded = jax.jit(lambda *a, mesh=mesh: on_mesh(attend, mesh, *a))
    got = sharded(q, k, v, seg, pos)
    grads = [jax.grad(lambda q, f=f, k=k, v=v: (f(q, k, v, seg, pos) ** 2).sum())(q)
             for f in (attend, sharded)]
    rows, heads = layout(mesh, b, kv_heads)
    result[f"kv{kv_heads}_" + "_".join(f"{a}{s}" for a, s in mesh_sizes.items())] = {
        "rows": list(rows), "heads": heads,
        "out": float(jnp.abs(got - want).max()),
        "grad": float(jnp.abs(grads[1] - grads[0]).max()),
    }
  print(json.dumps(result))


if __name__ == "__main__":
  main()
