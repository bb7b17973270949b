"""Makes the frozen Hugging Face fixtures under tests/fixtures/hf/ with `transformers` itself.

  pip install torch==2.14.1 transformers==5.23.0   # not dependencies of the project
  python scripts/make_hf_fixtures.py
  python scripts/make_hf_fixtures.py --check=EXPORTED --against=qwen2|llama

The second form checks an export by `evals.convert --to_hf` of an imported fixture: transformers
loads the folder and its logits must equal the fixture's.

Writes, for a tiny random Qwen2 (tied embeddings, QKV biases, one safetensors file) and a tiny
random Llama (untied, no biases, head_dim != d_model / heads, two shards with an index):
the model folder as `save_pretrained` writes it, a small byte-level BPE tokenizer, and
`expected.npz` with what `transformers` computes in float32 for fixed inputs: `input_ids` [2, 16],
`logits` [2, 16, V], `greedy` [2, 8] (new tokens of greedy `generate`, one row at a time) and
`text_ids` (the tokenizer's ids of `TEXT`). The tests import the folders and must reproduce them.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import tokenizers
import torch
import transformers

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "hf"
VOCAB = 320
TEXT = "def greet(name):\n    return f'Hello, {name}!'  # émoji-free, naïve café\n"
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "Speculative decoding drafts tokens with a small model and verifies them with a large one.",
    "import numpy as np\nx = np.zeros((3, 4))\nprint(x.shape)\n",
    "Grouped-query attention shares each key and value head among several query heads.",
    TEXT,
] * 4


def make_tokenizer(folder: Path) -> transformers.PreTrainedTokenizerFast:
  """A byte-level BPE tokenizer of VOCAB ids, <|endoftext|> last, saved into `folder`."""
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
  bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=VOCAB - 1,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  bpe.train_from_iterator(CORPUS, trainer=trainer)
  bpe.add_special_tokens(["<|endoftext|>"])
  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
  )
  tokenizer.save_pretrained(folder)
  return tokenizer


def randomize(model: torch.nn.Module, seed: int) -> None:
  """Random weights everywhere, norms and biases included (the default init zeroes biases and
  sets norms to one, which would leave their mapping untested)."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      if name.endswith("norm.weight"):
        param.copy_(1.0 + 0.2 * noise)
      elif name.endswith("bias"):
        param.copy_(0.2 * noise)
      else:
        param.copy_(0.15 * noise)


def make(name: str, config: transformers.PretrainedConfig, seed: int, shard_size: str) -> None:
  folder = OUT / name
  folder.mkdir(parents=True, exist_ok=True)
  tokenizer = make_tokenizer(folder)
  assert len(tokenizer) == VOCAB, len(tokenizer)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
  randomize(model, seed)
  model.save_pretrained(folder, max_shard_size=shard_size)
  rows = [tokenizer(t, add_special_tokens=False)["input_ids"][:16] for t in CORPUS[:2]]
  input_ids = torch.tensor(rows)
  with torch.no_grad():
    logits = model(input_ids).logits.numpy()
    greedy = [
        model.generate(
            input_ids[i : i + 1], max_new_tokens=8, do_sample=False, eos_token_id=None,
            pad_token_id=tokenizer.eos_token_id,
        )[0, 16:].numpy()
        for i in range(len(rows))
    ]
  np.savez_compressed(
      folder / "expected.npz",
      input_ids=input_ids.numpy().astype(np.int32),
      logits=logits.astype(np.float32),
      greedy=np.stack(greedy).astype(np.int32),
      text_ids=np.array(tokenizer(TEXT, add_special_tokens=False)["input_ids"], np.int32),
  )
  (folder / "text.json").write_text(json.dumps({"text": TEXT}) + "\n")
  print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters -> {folder}")


def check(folder: str, against: str) -> None:
  """transformers' logits for `folder` (an exported fixture) against the frozen ones."""
  expected = np.load(OUT / against / "expected.npz")
  model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
  with torch.no_grad():
    logits = model(torch.tensor(expected["input_ids"]).long()).logits.numpy()
  diff = float(np.abs(logits - expected["logits"]).max())
  print(f"{type(model).__name__} from {folder}: max |logits - {against}'s| = {diff:.3g}")
  assert diff < 1e-4, diff


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--check", help="An exported folder to load with transformers.")
  parser.add_argument("--against", choices=["qwen2", "llama"], default="qwen2")
  args = parser.parse_args()
  if args.check:
    check(args.check, args.against)
    return
  common = dict(
      vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
      eos_token_id=VOCAB - 1, bos_token_id=VOCAB - 1,
  )
  make(
      "qwen2",
      transformers.Qwen2Config(
          **common, rms_norm_eps=1e-6, tie_word_embeddings=True,
          rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
      ),
      seed=0,
      shard_size="10MB",
  )
  make(
      "llama",
      transformers.LlamaConfig(
          **common, head_dim=24, rms_norm_eps=1e-5, tie_word_embeddings=False,
          attention_bias=False, mlp_bias=False,
          rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
      ),
      seed=1,
      shard_size="150KB",
  )


if __name__ == "__main__":
  main()
