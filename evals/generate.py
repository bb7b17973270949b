"""Generates text from a trained model with the KV cache; with --draft, by speculative decoding.

  python -m evals.generate --workdir=DIR --prompt=TEXT [--prompt=TEXT ...]
      [--max_new_tokens=64 --temperature=1 --top_k=0 --top_p=1 --seed=0 --batch=8]
      [--draft=DIR2 --gamma=5] [--quant=8|4]

Prompts are decoded in batches of --batch rows (right-padded; each row at its own positions) and
stop at EOS. With --draft, each prompt is decoded on its own: the draft model proposes --gamma
tokens and the target verifies them in one pass; the output distribution is the target's.
With --quant, the target is converted to int8 (AQT serving) or packed int4 weights first and
decodes through the same path.
"""

import sys

import numpy as np
from absl import flags

from efficiency import cli
from efficiency.errors import ConfigError
from efficiency.serving.collaborative import Single
from efficiency.serving.generate import generate
from efficiency.serving.loading import check_same_tokenizer, load_model
from efficiency.serving.sampling import Sampling
from efficiency.serving.speculation import Engine, check_gamma
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
_GAMMA = flags.DEFINE_integer("gamma", 5, "Draft tokens per verification (with --draft).")
_QUANT = flags.DEFINE_enum("quant", "none", ["none", "8", "4"], "Weight bits of the target.")
flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
  del argv
  if not _PROMPT.value:
    raise ConfigError("give at least one --prompt")
  if _BATCH.value < 1:
    raise ConfigError(f"batch={_BATCH.value} must be >= 1")
  check_gamma(_GAMMA.value)
  quant_bits = None if _QUANT.value == "none" else int(_QUANT.value)
  target = load_model(_WORKDIR.value, quant_bits)
  tokenizer = tokenizer_of(target.config)
  sampling = Sampling(_TEMPERATURE.value, _TOP_K.value, _TOP_P.value)
  prompts = [tokenizer.encode(p) for p in _PROMPT.value]
  if any(len(p) == 0 for p in prompts):
    raise ConfigError("a --prompt encodes to no tokens")
  if _DRAFT.value:
    draft = load_model(_DRAFT.value)
    check_same_tokenizer([target.config, draft.config], [_WORKDIR.value, _DRAFT.value])
    max_len = max(map(len, prompts)) + _MAX_NEW.value + _GAMMA.value + 40
    engine = Engine(Single(sampling), [(target.model, target.params)], max_len,
                    (draft.model, draft.params), sampling)
    rng = np.random.default_rng(_SEED.value)
    outputs = []
    for prompt in prompts:
      tokens, stats = engine.decode(
          prompt, _MAX_NEW.value, rng, "naive", _GAMMA.value, tokenizer.eos_id
      )
      outputs.append(tokens)
      print(f"[acceptance {stats.acceptance or 0:.2f}, target calls {stats.calls[0]}, "
            f"draft calls {stats.calls[1]}, tokens {stats.tokens}]", file=sys.stderr)
  else:
    outputs = []
    for start in range(0, len(prompts), _BATCH.value):
      outputs += generate(
          target.model, target.params, prompts[start : start + _BATCH.value], _MAX_NEW.value,
          sampling, tokenizer.eos_id, seed=_SEED.value + start, progress=True,
      )
  for text, tokens in zip(_PROMPT.value, outputs, strict=True):
    print(text + tokenizer.decode([t for t in tokens if t != tokenizer.eos_id]))
    print("---")


if __name__ == "__main__":
  cli.run(main)
