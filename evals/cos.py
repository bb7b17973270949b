"""Benchmarks collaborative decoding against its speculative speed-ups (CoS) on the same prompts.

  python -m evals.cos --models=DIR1,DIR2[,DIR3] --method=we|cd
      [--weights=0.5,0.5 --mu=0.1 --gamma=auto|G|G1,G2[,G3] --temperature=0 --prompts=FILE
       --num_prompts=8 --prompt_tokens=64 --max_new_tokens=64 --seed=0
       --output=cos_report.json --truncate_prompt]

`we` is the weighted ensemble sum_k w_k softmax(l_k) (weights default to uniform); `cd` is
contrastive decoding softmax(l_1 - mu l_2) with DIR1 the expert and DIR2 the amateur. The
methods run side by side in one process, each prompt by all methods in turn (compilation
excluded from the timings):
  standard   token by token, every model called for every token (the baseline);
  cos        the alternate proposal framework (models take turns proposing and verifying).
Both run on device for any number of models (one jitted program per prompt, acceptance on
device; `efficiency.serving.collaborate`). `--gamma` is one proposal length for every
model, or one per model in --models order, the paper's gamma_1 .. gamma_n: a
large model paired with a small one proposes little (`--gamma=1,5`: DIR1 one token, DIR2 five).
`--gamma=auto` (the default) chooses them, or no speculation at all, before decoding: each
model's call costs timed on this device at batch 1 (once per process), acceptance from a short
CoS probe of the first prompts, then the setting with the most expected tokens/s; the report's
`plan` says what was chosen and why (measured call costs, acceptance estimate, predicted and
achieved tokens/s), and the `cos` row runs that choice.
Prompts are lines of --prompts, or the first --prompt_tokens tokens of validation documents;
one longer than the models' context is refused in one line (or, with --truncate_prompt, cut to
its last tokens with a warning), and so is a request whose caches and logits would not fit the
device's memory.
Writes a JSON report and prints tokens/s, speedup over standard, acceptance rate and tokens per
model call.
"""

import json
from pathlib import Path

import numpy as np
from absl import flags

from efficiency import cli
from efficiency.errors import ConfigError, MissingPathError
from efficiency.serving.bench import compare, compare_table
from efficiency.serving.loading import check_same_tokenizer, load_model, validation_prompts
from efficiency.serving.request import fit_prompts, parse_gamma
from efficiency.serving.sampling import Sampling
from efficiency.serving.targets import collaboration
from efficiency.serving.weights import to_decode_form
from efficiency.train.inputs import tokenizer_of

_MODELS = flags.DEFINE_list("models", None, "Workdirs of the models (2 or more).")
_METHOD = flags.DEFINE_enum("method", "we", ["we", "cd"], "Weighted ensemble or contrastive.")
_WEIGHTS = flags.DEFINE_list("weights", None, "Ensemble weights (>= 0, sum 1); uniform if unset.")
_MU = flags.DEFINE_float("mu", 0.1, "Contrastive decoding strength on the amateur's logits.")
_GAMMA = flags.DEFINE_list("gamma", ["auto"], "Draft tokens per proposer turn: auto (chosen "
                          "from measured costs and acceptance), one for all models, or one per "
                          "model.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 is greedy.")
_PROMPTS = flags.DEFINE_string("prompts", None, "A file with one prompt per line.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 8, "Validation prompts when --prompts unset.")
_PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 64, "Tokens per validation prompt.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_OUTPUT = flags.DEFINE_string("output", "cos_report.json", "Where to write the JSON report.")
_TRUNCATE = flags.DEFINE_bool(
    "truncate_prompt", False, "Cut a prompt longer than the models' context to its last tokens "
    "(with a warning) instead of refusing it.")
flags.mark_flag_as_required("models")


def main(argv: list[str]) -> None:
  del argv
  if len(_MODELS.value) < 2:
    raise ConfigError(f"models={_MODELS.value}: collaborative decoding needs 2 or more")
  gamma = parse_gamma(_GAMMA.value, len(_MODELS.value))
  if _PROMPTS.value and not Path(_PROMPTS.value).is_file():
    raise MissingPathError(f"prompts={_PROMPTS.value!r} is not a file")
  loaded = [load_model(d) for d in _MODELS.value]
  configs = [m.config for m in loaded]
  check_same_tokenizer(configs, _MODELS.value)
  sampling = Sampling(_TEMPERATURE.value)
  collab = collaboration(_METHOD.value, len(loaded), _WEIGHTS.value, _MU.value, sampling)
  tokenizer = tokenizer_of(configs[0])
  if _PROMPTS.value:
    lines = [x for x in Path(_PROMPTS.value).read_text().splitlines() if x.strip()]
    prompts = [np.asarray(tokenizer.encode(x), np.int32) for x in lines]
  else:
    prompts = validation_prompts(configs[0], tokenizer, _NUM_PROMPTS.value, _PROMPT_TOKENS.value)
  prompts = fit_prompts(prompts, _MAX_NEW.value, min(c.seq_len for c in configs),
                        _TRUNCATE.value)
  members = [to_decode_form(m.model, m.params) for m in loaded]  # once: requests only read them
  # The first proposer: the amateur for cd, the first model for we.
  proposer = 1 if _METHOD.value == "cd" else 0
  report = compare(collab, members, prompts, _MAX_NEW.value, gamma, proposer, _SEED.value,
                   tokenizer.eos_id)
  report["settings"] = {
      "models": _MODELS.value, "method": _METHOD.value, "weights": list(collab.weights)
      if _METHOD.value == "we" else None, "mu": _MU.value if _METHOD.value == "cd" else None,
      "gamma": list(gamma) if isinstance(gamma, tuple) else gamma,
      "temperature": _TEMPERATURE.value,
      "prompts": len(prompts),
      "max_new_tokens": _MAX_NEW.value,
  }
  Path(_OUTPUT.value).write_text(json.dumps(report, indent=2))
  print(compare_table(report))
  print(f"plan: {report['plan']['plan']}; speedup (CoS over standard): "
        f"{report['cos']['speedup']:.2f}x; report: {_OUTPUT.value}")


if __name__ == "__main__":
  cli.run(main)
