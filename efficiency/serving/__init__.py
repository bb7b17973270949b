"""Serving trained models: KV-cache decoding (plain, speculative, collaborative and CoS),
quantized export, and what decoding costs. It reaches trained models only through the workdir
loader (`efficiency.workdir.restore`).

- `cache`: allocate a model's cache from its attention variant's `kv_cache_spec` (windowed
  entries as ring buffers sized by the decoder's rollback bound), and its size in bytes.
- `runner`: one model's cached forward pass (prefill and decode steps alike), and a host-side
  runner of it (the host engine's).
- `sampling`: temperature, top-k and top-p as explicit float64 distributions (the reference).
- `device_sampling`: the same distributions and draws on device (JAX).
- `generate`: batched generation on device: one jitted program per request (prefill, a while
  loop of cached steps, sampling, per-row EOS), one host read of its tokens.
- `speculative`: batched speculative decoding on device (draft scan, one verification call,
  per-row acceptance and rollback).
- `collaborative`: the target distribution r of several models' logits (float64 reference);
  `device_collaborative` the same on device.
- `collaborate`: collaborative decoding on device, batched: standard, and CoS of two models.
- `speculation`: acceptance and residual math, and the host engine behind standard, naive and
  alternate (CoS) decoding of any number of models, batch 1.
- `compare`: decoding methods side by side on the same prompts (the CoS benchmark).
- `prompts`: prompts cut from a run's validation documents.
- `export`: int8 (AQT) and packed int4 conversion of a trained model (and of its embedding
  table, `quant.embedding`).
- `quant_report`: a conversion's size, quality and decode speed against bf16.
- `timing`: greedy decode latency and tokens/s.
- `measure`: the efficiency study's inference metrics (evals.efficiency --mode=infer).
- `loading`: the one function that loads a workdir's model for decoding.
"""
