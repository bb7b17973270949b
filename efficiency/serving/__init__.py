"""Serving trained models: KV-cache decoding (plain, speculative, collaborative and CoS),
quantized export, and what decoding costs. It reaches trained models only through the workdir
loader (`efficiency.workdir.restore`).

- `cache`: allocate a model's cache from its attention variant's `kv_cache_spec`.
- `runner`: one model's jitted cached forward pass (prefill and decode steps alike).
- `sampling`: temperature, top-k and top-p as explicit distributions.
- `generate`: batched autoregressive generation with EOS stop.
- `collaborative`: the target distribution r of several models' logits.
- `speculation`: acceptance and residual math, and the engine behind speculative decoding,
  standard collaborative decoding and CoS (naive and alternate proposers).
- `compare`: decoding methods side by side on the same prompts (the CoS benchmark).
- `prompts`: prompts cut from a run's validation documents.
- `export`: int8 (AQT) and packed int4 conversion of a trained model.
- `quant_report`: a conversion's size, quality and decode speed against bf16.
- `timing`: greedy decode latency and tokens/s.
- `measure`: the efficiency study's inference metrics (evals.efficiency --mode=infer).
- `loading`: the one function that loads a workdir's model for decoding.
"""
