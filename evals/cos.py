"""Benchmarks collaborative decoding against its speculative speed-ups (CoS) on the same prompts.

  python -m evals.cos --models=DIR1,DIR2[,DIR3] --method=we|cd
      [--weights=0.5,0.5 --mu=0.1 --gamma=5 --temperature=0 --prompts=FILE --num_prompts=8
       --prompt_tokens=64 --max_new_tokens=64 --seed=0 --output=cos_report.json]

`we` is the weighted ensemble sum_k w_k softmax(l_k) (weights default to uniform); `cd` is
contrastive decoding softmax(l_1 - mu l_2) with DIR1 the expert and DIR2 the amateur. Three
methods run side by side in one process, each prompt by all methods in turn (after one warm-up
prompt that compiles every shape):
  standard   token by token, every model called for every token (the baseline);
  naive      speculation with a fixed proposer (the first model for we, the amateur for cd);
  cos        the alternate proposal framework (models take turns proposing and verifying).
Prompts are lines of --prompts, or the first --prompt_tokens tokens of validation documents.
Writes a JSON report and prints tokens/s, speedup over standard, acceptance rate and tokens per
model call.
"""

import json
import sys
from pathlib import Path

import ml_collections
import numpy as np
from absl import app, flags
from tqdm import tqdm

from data.prepared import Subset, prepare
from data.sources import document_bytes, load_source
from data.tokenizer import Tokenizer, get_tokenizer
from efficiency.config import ConfigError
from efficiency.decode.collaborative import Contrastive, WeightedEnsemble
from efficiency.decode.loading import check_same_tokenizer, load_model
from efficiency.decode.sampling import Sampling
from efficiency.decode.speculation import Engine

METHODS = {"standard": "standard", "naive": "naive", "cos": "alternate"}

_MODELS = flags.DEFINE_list("models", None, "Workdirs of the models (2 or more).")
_METHOD = flags.DEFINE_enum("method", "we", ["we", "cd"], "Weighted ensemble or contrastive.")
_WEIGHTS = flags.DEFINE_list("weights", None, "Ensemble weights (>= 0, sum 1); uniform if unset.")
_MU = flags.DEFINE_float("mu", 0.1, "Contrastive decoding strength on the amateur's logits.")
_GAMMA = flags.DEFINE_integer("gamma", 5, "Draft tokens per proposer turn.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 is greedy.")
_PROMPTS = flags.DEFINE_string("prompts", None, "A file with one prompt per line.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 8, "Validation prompts when --prompts unset.")
_PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 64, "Tokens per validation prompt.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_OUTPUT = flags.DEFINE_string("output", "cos_report.json", "Where to write the JSON report.")
flags.mark_flag_as_required("models")


def validation_prompts(
    config: ml_collections.ConfigDict, tokenizer: Tokenizer, count: int, length: int
) -> list[np.ndarray]:
  """The first `length` tokens of the first `count` validation documents that are that long."""
  records = Subset(load_source(config).validation, prepare(config, tokenizer).validation_M)
  prompts = []
  for i in range(len(records)):
    ids = tokenizer.encode(document_bytes(records[i]).decode("utf-8", errors="replace"))
    if len(ids) >= length:
      prompts.append(np.asarray(ids[:length], np.int32))
    if len(prompts) == count:
      break
  if not prompts:
    raise ConfigError(f"no validation document has prompt_tokens={length} tokens")
  return prompts


def compare(
    engine: Engine,
    prompts: list[np.ndarray],
    max_new_tokens: int,
    gamma: int,
    proposer: int,
    seed: int,
    eos_id: int | None,
    methods: dict[str, str] = METHODS,
) -> dict:
  """Decodes every prompt with every method in turn (prompt 0 twice: the first pass warms up
  and is not counted); returns per-method totals and ratios over `standard`."""
  engine.warmup(max(map(len, prompts)), gamma)
  totals = {name: {"tokens": 0, "decode_s": 0.0, "verified": 0, "accepted": 0, "calls": 0}
            for name in methods}
  outputs = {name: [] for name in methods}
  for i, prompt in enumerate(tqdm([prompts[0], *prompts], desc="prompts", leave=False)):
    for name, method in methods.items():
      rng = np.random.default_rng([seed, i])
      tokens, stats = engine.decode(prompt, max_new_tokens, rng, method, gamma, eos_id, proposer)
      if i == 0:
        continue
      outputs[name].append(tokens.tolist())
      t = totals[name]
      t["tokens"] += stats.tokens
      t["decode_s"] += stats.decode_s
      t["verified"] += stats.verified
      t["accepted"] += stats.accepted
      t["calls"] += sum(stats.calls)
  report = {}
  for name, t in totals.items():
    report[name] = {
        **t,
        "tokens_per_s": t["tokens"] / t["decode_s"],
        "acceptance": t["accepted"] / t["verified"] if t["verified"] else None,
        "tokens_per_call": t["tokens"] / max(t["calls"], 1),
    }
  base = report["standard"]["tokens_per_s"] if "standard" in report else None
  for name in report:
    report[name]["speedup"] = report[name]["tokens_per_s"] / base if base else None
  report["same_tokens_as_standard"] = {
      name: outputs[name] == outputs["standard"] for name in outputs if "standard" in outputs
  }
  return report


def collaboration(method: str, n: int, weights: list[str] | None, mu: float, sampling: Sampling):
  """The target and the naive proposer's index."""
  if method == "we":
    w = tuple(float(x) for x in weights) if weights else (1.0 / n,) * n
    if len(w) != n:
      raise ConfigError(f"weights={list(w)} needs one weight per model ({n} models)")
    return WeightedEnsemble(w, sampling), 0
  if n != 2:
    raise ConfigError(f"method=cd takes 2 models (expert, amateur); got {n}")
  return Contrastive(mu, sampling), 1


def table(report: dict) -> str:
  rows = [f"{'method':<10}{'tokens':>8}{'tokens/s':>10}{'speedup':>9}{'accept':>8}{'tok/call':>10}"]
  for name in METHODS:
    if name in report:
      r = report[name]
      acc = "-" if r["acceptance"] is None else f"{r['acceptance']:.2f}"
      rows.append(f"{name:<10}{r['tokens']:>8}{r['tokens_per_s']:>10.1f}{r['speedup']:>8.2f}x"
                  f"{acc:>8}{r['tokens_per_call']:>10.2f}")
  return "\n".join(rows)


def run() -> None:
  if len(_MODELS.value) < 2:
    raise ConfigError(f"models={_MODELS.value}: collaborative decoding needs 2 or more")
  if _GAMMA.value < 1:
    raise ConfigError(f"gamma={_GAMMA.value} must be >= 1")
  loaded = [load_model(d) for d in _MODELS.value]
  configs = [c for _, _, c in loaded]
  check_same_tokenizer(configs, _MODELS.value)
  sampling = Sampling(_TEMPERATURE.value)
  collab, proposer = collaboration(
      _METHOD.value, len(loaded), _WEIGHTS.value, _MU.value, sampling
  )
  tokenizer = get_tokenizer(configs[0])
  if _PROMPTS.value:
    lines = [x for x in Path(_PROMPTS.value).read_text().splitlines() if x.strip()]
    prompts = [np.asarray(tokenizer.encode(x), np.int32) for x in lines]
  else:
    prompts = validation_prompts(configs[0], tokenizer, _NUM_PROMPTS.value, _PROMPT_TOKENS.value)
  max_len = max(map(len, prompts)) + _MAX_NEW.value + _GAMMA.value + 40
  engine = Engine(collab, [(m, p) for m, p, _ in loaded], max_len)
  report = compare(engine, prompts, _MAX_NEW.value, _GAMMA.value, proposer, _SEED.value,
                   tokenizer.eos_id)
  report["settings"] = {
      "models": _MODELS.value, "method": _METHOD.value, "weights": list(collab.weights)
      if _METHOD.value == "we" else None, "mu": _MU.value if _METHOD.value == "cd" else None,
      "gamma": _GAMMA.value, "temperature": _TEMPERATURE.value, "prompts": len(prompts),
      "max_new_tokens": _MAX_NEW.value,
  }
  Path(_OUTPUT.value).write_text(json.dumps(report, indent=2))
  print(table(report))
  print(f"speedup (CoS over standard): {report['cos']['speedup']:.2f}x; report: {_OUTPUT.value}")


def main(argv: list[str]) -> None:
  del argv
  try:
    run()
  except ConfigError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
