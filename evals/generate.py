"""Generates text from a trained model with the KV cache; with --draft, by speculative decoding.

  python -m evals.generate --workdir=DIR --prompt=TEXT [--prompt=TEXT ...]
      [--max_new_tokens=64 --temperature=1 --top_k=0 --top_p=1 --seed=0 --batch=8]
      [--draft=DIR2 --gamma=auto|G] [--quant=8|4|4a8] [--report=FILE] [--stream=N]
      [--truncate_prompt]

Prompts are decoded in batches of --batch rows (right-padded; each row at its own positions),
each batch one jitted program on device (prefill, generation and sampling; rows stop at EOS) and
one read of its tokens. With --draft, the draft model proposes --gamma tokens per round and the
target verifies them in one pass, every row accepting its own number; the output distribution is
the target's. --gamma=auto (the default) plans each batch first: both models' call costs timed
on this device and batch (once per process), acceptance from a short probe of the batch, then
the gamma, or plain decoding of the target, with the most expected tokens/s.
With --quant, the target is converted to int8 (AQT serving) or packed int4 weights
(`4a8`: int4 weights on int8 activations, W4A8) first and decodes through the same path.
--report writes tokens/s (decoding only, compilation excluded), the batch and, with --draft, the
acceptance, the calls per model and each batch's plan (its choice, measured call costs,
acceptance estimate, predicted and achieved tokens/s) as JSON.
--stream=N prints each batch's text as it decodes, N tokens at a time (one read of the device
per N tokens; rows of a batch as `[i] text` lines); it takes neither --draft nor --report.
A prompt longer than the model's context (its training seq_len) is refused in one line, or with
--truncate_prompt cut to its last tokens with a warning; a request whose KV cache and logits
would not fit the device's memory is refused in one line naming the bytes.
"""

import json
import sys
from pathlib import Path

from absl import flags

from efficiency import cli
from efficiency.errors import ConfigError
from efficiency.serving.generate import run, stream
from efficiency.serving.loading import (
  QUANT_CHOICES,
  check_same_tokenizer,
  load_model,
  quant_setting,
)
from efficiency.serving.request import fit_prompts, parse_gamma
from efficiency.serving.sampling import Sampling
from efficiency.serving.speculative import speculate
from efficiency.serving.weights import to_decode_form
from efficiency.train.inputs import tokenizer_of

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir with a checkpoint.")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "Prompt text; repeat for several prompts.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt at most.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature; 0 is greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens; 0 keeps all.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass; 1 keeps all.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_BATCH = flags.DEFINE_integer("batch", 8, "Prompts decoded together.")
_DRAFT = flags.DEFINE_string("draft", None, "A draft model's workdir: speculative decoding.")
_GAMMA = flags.DEFINE_string("gamma", "auto", "Draft tokens per verification (with --draft), or "
                             "auto: chosen from measured costs and acceptance.")
_QUANT = flags.DEFINE_enum("quant", "none", list(QUANT_CHOICES),
                           "Weight bits of the target; 4a8: int4 on int8 activations.")
_QUANT_EMBEDDING = flags.DEFINE_string(
    "quant_embedding", "none", "With --quant: the target's embedding table as none, int8, int4.")
_REPORT = flags.DEFINE_string("report", None, "Write tokens/s (and acceptance) as JSON here.")
_STREAM = flags.DEFINE_integer("stream", 0, "Print text every N new tokens as it decodes; 0: off.")
_TRUNCATE = flags.DEFINE_bool(
    "truncate_prompt", False, "Cut a prompt longer than the model's context to its last tokens "
    "(with a warning) instead of refusing it.")
flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
  del argv
  if not _PROMPT.value:
    raise ConfigError("give at least one --prompt")
  if _BATCH.value < 1:
    raise ConfigError(f"batch={_BATCH.value} must be >= 1")
  gamma = parse_gamma(_GAMMA.value.split(","), 1)
  if _STREAM.value < 0:
    raise ConfigError(f"stream={_STREAM.value} must be >= 0 (0: off)")
  if _STREAM.value and (_DRAFT.value or _REPORT.value):
    raise ConfigError("--stream takes neither --draft nor --report; run without it for those")
  quant_bits, int4_activations = quant_setting(_QUANT.value)
  target = load_model(_WORKDIR.value, quant_bits, _QUANT_EMBEDDING.value, int4_activations)
  target_mp = to_decode_form(target.model, target.params)  # once: requests only read it
  tokenizer = tokenizer_of(target.config)
  sampling = Sampling(_TEMPERATURE.value, _TOP_K.value, _TOP_P.value)
  prompts = [tokenizer.encode(p) for p in _PROMPT.value]
  if any(len(p) == 0 for p in prompts):
    raise ConfigError("a --prompt encodes to no tokens")
  prompts = fit_prompts(prompts, _MAX_NEW.value, target.config.seq_len, _TRUNCATE.value)
  draft = None
  if _DRAFT.value:
    draft = load_model(_DRAFT.value)
    check_same_tokenizer([target.config, draft.config], [_WORKDIR.value, _DRAFT.value])
    draft = to_decode_form(draft.model, draft.params)
  if _STREAM.value:
    _print_streamed(target_mp, tokenizer, prompts, sampling)
    return
  outputs, tokens, seconds, verified, accepted = [], 0, 0.0, 0, 0
  calls, plans = {"target": 0, "draft": 0}, []
  for start in range(0, len(prompts), _BATCH.value):
    chunk = prompts[start : start + _BATCH.value]
    if draft is None:
      result = run(*target_mp, chunk, _MAX_NEW.value, sampling,
                   tokenizer.eos_id, seed=_SEED.value, first_row=start)
    else:
      result = speculate(target_mp, draft, chunk,
                         _MAX_NEW.value, sampling, gamma, tokenizer.eos_id,
                         seed=_SEED.value, first_row=start)
      verified, accepted = verified + result.verified, accepted + result.accepted
      calls = {k: calls[k] + v for k, v in result.calls.items()}
      plans.append(result.report())
    outputs += result.tokens
    tokens, seconds = tokens + sum(map(len, result.tokens)), seconds + result.decode_s
  report = {"tokens": tokens, "tokens_per_s": tokens / seconds, "batch": _BATCH.value}
  if draft is not None:
    report.update(acceptance=accepted / verified if verified else None, gamma=_GAMMA.value,
                  calls=calls, plans=plans)
    print(f"[plan {', '.join(str(p['plan']) for p in plans)}, acceptance "
          f"{report['acceptance'] or 0:.2f}, target calls {calls['target']}, draft calls "
          f"{calls['draft']}, tokens {tokens}]", file=sys.stderr)
  if _REPORT.value:
    Path(_REPORT.value).write_text(json.dumps(report, indent=2))
  for text, new in zip(_PROMPT.value, outputs, strict=True):
    print(text + tokenizer.decode([t for t in new if t != tokenizer.eos_id]))
    print("---")


def _print_streamed(target, tokenizer, prompts: list, sampling: Sampling) -> None:
  """Each batch's text as it decodes: a single prompt continues on its line, rows of a larger
  batch print `[i] new text` per chunk."""
  for start in range(0, len(prompts), _BATCH.value):
    chunk = prompts[start : start + _BATCH.value]
    texts = _PROMPT.value[start : start + len(chunk)]
    new = [[] for _ in chunk]
    shown = ["" for _ in chunk]
    if len(chunk) == 1:
      print(texts[0], end="", flush=True)
    for pieces in stream(*target, chunk, _MAX_NEW.value, sampling,
                         tokenizer.eos_id, _STREAM.value, seed=_SEED.value, first_row=start):
      for b, piece in enumerate(pieces):
        new[b] += [int(t) for t in piece if t != tokenizer.eos_id]
        text = tokenizer.decode(new[b]).rstrip("\ufffd")  # a character still incomplete
        if text != shown[b] and text.startswith(shown[b]):
          delta, shown[b] = text[len(shown[b]):], text
          if len(chunk) == 1:
            print(delta, end="", flush=True)
          else:
            print(f"[{start + b}] {delta!r}", flush=True)
    final = [tokenizer.decode(row) for row in new]
    if len(chunk) > 1:
      for text, row in zip(texts, final, strict=True):
        print(text + row)
        print("---")
    else:
      rest = final[0][len(shown[0]):] if final[0].startswith(shown[0]) else "\n" + final[0]
      print(rest)
      print("---")


if __name__ == "__main__":
  cli.run(main)
