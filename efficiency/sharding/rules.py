"""The one table mapping logical axis names to mesh axes.

Parameters: FSDP shards the `embed` dimension over `fsdp`; tensor parallelism shards heads, MLP
hidden and vocab over `tensor`; expert parallelism shards MoE experts over `expert`.
Activations: the batch is split over `data` x `fsdp` x `expert`; inside a capacity-dispatch MoE
layer the dispatched tokens are split over `expert` by expert (XLA inserts the all-to-all), while
dropless dispatch moves them itself under shard_map (efficiency.model.moe).
A dimension that the mesh axis size does not divide is left replicated (see `param_shardings`).
"""

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("expert", "expert"),
    ("latent", None),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
    # activations
    ("activation_batch", ("data", "fsdp", "expert")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_expert", "expert"),
    ("activation_batch_no_expert", ("data", "fsdp")),
)
