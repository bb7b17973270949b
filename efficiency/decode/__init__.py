"""Decoding with a preallocated KV cache: plain generation, speculative decoding, collaborative
decoding of several models (weighted ensemble, contrastive) and its speculative speed-up (CoS).

- `cache`: allocate a model's cache from its attention variant's `kv_cache_spec`.
- `runner`: one model's jitted cached forward pass (prefill and decode steps alike).
- `sampling`: temperature, top-k and top-p as explicit distributions.
- `generate`: batched autoregressive generation with EOS stop.
- `collaborative`: the target distribution r of several models' logits.
- `speculation`: acceptance and residual math, and the engine behind speculative decoding,
  standard collaborative decoding and CoS (naive and alternate proposers).
- `loading`: the one function that loads a workdir's model for decoding.
"""
