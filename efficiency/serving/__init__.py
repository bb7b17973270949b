"""Serving trained models on device: KV-cache decoding (plain, speculative, collaborative and
CoS), quantized export, and what decoding costs. It reaches trained models only through the
workdir loader (`efficiency.workdir.restore`). One module per role:

- `cache`: allocate a model's cache from its attention variant's `kv_cache_spec` (windowed
  entries as ring buffers sized by the decoder's rollback bound), and its size in bytes.
- `forward`: one model's cached forward pass (prefill and decode steps alike).
- `request`: what every request shares: its checks, padded prompts, row keys, the executable
  compiled once per shape, the one timing path (`timed`), and the call costs the speculation
  planner reads (`call_costs`, measured once per model, shape and device).
- `sampling`: sampling settings and the next-token distributions and draws on device.
- `targets`: the decoding targets r (one model, weighted ensemble, contrastive) and each
  model's proposal q, on device.
- `acceptance`: speculative acceptance and residual draws on device, and the planner behind
  gamma="auto" (expected tokens per round and per second; the proposal lengths or standard).
- `generate`: plain generation (`run`, `generate`, `stream`): one jitted program per request.
- `speculative`: speculative decoding with a draft model (`speculate`), batched, on device.
- `collaborate`: collaborative decoding (`collaborate`): standard, and CoS of any number of
  models, batched, on device.
- `weights`: a model's decode form (scanned layers split, int4 kernels unpacked).
- `export`: int8 (AQT) and packed int4 conversion of a trained model (and of its embedding).
- `loading`: the one function that loads a workdir's model for decoding, and prompts cut from
  its validation documents.
- `bench`: what decoding costs: decode speed, quant_report.json, the efficiency study's
  inference metrics and standard against CoS side by side.

The float64 numpy references and the host engine the tests check against live in
`tests/efficiency/serving/reference.py`.
"""
