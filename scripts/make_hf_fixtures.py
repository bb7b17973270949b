"""Makes the frozen Hugging Face fixtures under tests/fixtures/hf/ with `transformers` itself.

  pip install torch==2.13.0 transformers==5.25.0   # not dependencies of the project
  python scripts/make_hf_fixtures.py [--sentencepiece=EXPORTED] [NAME ...]
  python scripts/make_hf_fixtures.py --check=EXPORTED --against=NAME
  python scripts/make_hf_fixtures.py --generate=EXPORTED --prompt=TEXT

(qwen2 and llama were made with torch 2.14.1 and transformers 5.23.0; the others with the
versions above.) The second form checks an export by `evals.convert --to_hf` of an imported
fixture: transformers loads the folder and its logits must equal the fixture's. The third prints
the greedy continuation transformers generates from an exported folder (docs/hf.md).

Writes, for tiny random models (each folder as `save_pretrained` writes it, with a small
byte-level BPE tokenizer): qwen2 (tied embeddings, QKV biases, one safetensors file), llama
(untied, no biases, head_dim != d_model / heads, two shards with an index), llama3 (Llama with
`llama3` rope scaling), qwen2_yarn (Qwen2 with `yarn`) and qwen2_head_dim (Qwen2 with head_dim !=
d_model / heads); and `expected.npz` with what `transformers` computes in float32 for fixed
inputs: `input_ids` [2, 16], `logits` [2, 16, V], `greedy` [2, 8] (new tokens of greedy
`generate`, one row at a time) and `text_ids` (the tokenizer's ids of `TEXT`). The tests import
the folders and must reproduce them.

With --sentencepiece=EXPORTED (a folder `evals.convert --to_hf` wrote from a small run with the
`sentencepiece` tokenizer), `sentencepiece` is that folder as exported plus `expected.npz`:
AutoTokenizer's ids of each of TOKENIZER_TEXTS (`ids`, cut at `offsets`; `bos_ids` with special
tokens added; `decoded` the texts they decode to), and the model's `input_ids`, `logits` and
`greedy` as above, `greedy_text` the decoded continuations.
"""

import argparse
import json
import shutil
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


TOKENIZER_TEXTS = [
    "Hello, world! The quick brown fox.",
    "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
    "naïve café, Straße, 日本語のテキスト, Ελληνικά, emoji 😀🚀, math ∑∫√",
    "    leading and    inner   runs   of spaces, trailing   ",
    "\t\ttabs\r\nwindows\r\n\n\n\n blank lines\u00a0nbsp\u2028sep\x00nul\x7f",
    "<s> </s> <pad> <unk> spelled in text, and \u2581 the space marker",
    "",
    " ",
    "x",
]


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


def make_sentencepiece(exported: str) -> None:
  """The fixture `sentencepiece`: an exported sentencepiece run as transformers reads it."""
  folder = OUT / "sentencepiece"
  shutil.copytree(exported, folder, dirs_exist_ok=True)
  tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
  rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TOKENIZER_TEXTS]
  bos_ids = tokenizer(TOKENIZER_TEXTS[0])["input_ids"]
  model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
  prompts = [tokenizer(t)["input_ids"][:16] for t in TOKENIZER_TEXTS[:2]]
  input_ids = torch.tensor(prompts)
  with torch.no_grad():
    logits = model(input_ids).logits.numpy()
    greedy = [
        model.generate(input_ids[i : i + 1], max_new_tokens=8, do_sample=False,
                       eos_token_id=None, pad_token_id=tokenizer.pad_token_id)[0, 16:].numpy()
        for i in range(len(prompts))
    ]
  np.savez_compressed(
      folder / "expected.npz",
      ids=np.array([i for row in rows for i in row], np.int32),
      offsets=np.cumsum([0] + [len(row) for row in rows]).astype(np.int32),
      bos_ids=np.array(bos_ids, np.int32),
      decoded=np.array([tokenizer.decode(row) for row in rows]),
      input_ids=input_ids.numpy().astype(np.int32),
      logits=logits.astype(np.float32),
      greedy=np.stack(greedy).astype(np.int32),
      greedy_text=np.array([tokenizer.decode(g) for g in greedy]),
  )
  (folder / "texts.json").write_text(json.dumps({"texts": TOKENIZER_TEXTS}) + "\n")
  print(f"sentencepiece: {type(tokenizer).__name__}, {len(tokenizer)} ids -> {folder}")


def generate(folder: str, prompt: str) -> None:
  """Prints transformers' greedy continuation of `prompt` by the exported model in `folder`;
  the prompt is encoded without BOS, as `evals.generate` encodes it."""
  tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
  model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
  input_ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
  with torch.no_grad():
    out = model.generate(input_ids, max_new_tokens=32, do_sample=False, eos_token_id=None,
                         pad_token_id=tokenizer.pad_token_id)
  print(json.dumps({"ids": out[0, input_ids.shape[1]:].tolist(),
                    "text": tokenizer.decode(out[0, input_ids.shape[1]:])}))


def check(folder: str, against: str) -> None:
  """transformers' logits for `folder` (an exported fixture) against the frozen ones."""
  expected = np.load(OUT / against / "expected.npz")
  model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
  with torch.no_grad():
    logits = model(torch.tensor(expected["input_ids"]).long()).logits.numpy()
  diff = float(np.abs(logits - expected["logits"]).max())
  print(f"{type(model).__name__} from {folder}: max |logits - {against}'s| = {diff:.3g}")
  assert diff < 1e-4, diff


def configs() -> dict[str, tuple[transformers.PretrainedConfig, int, str]]:
  """Each model fixture's config, seed and shard size."""
  common = dict(
      vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
      eos_token_id=VOCAB - 1, bos_token_id=VOCAB - 1,
  )
  small = {**common, "hidden_size": 32, "intermediate_size": 48}
  return {
      "qwen2": (transformers.Qwen2Config(
          **common, rms_norm_eps=1e-6, tie_word_embeddings=True,
          rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
      ), 0, "10MB"),
      "llama": (transformers.LlamaConfig(
          **common, head_dim=24, rms_norm_eps=1e-5, tie_word_embeddings=False,
          attention_bias=False, mlp_bias=False,
          rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
      ), 1, "150KB"),
      # original_max_position_embeddings of 16 puts the 4 frequencies of a head of 8 in both
      # changed llama3 bands (blended, divided) and the yarn ramp inside the head.
      "llama3": (transformers.LlamaConfig(
          **small, rms_norm_eps=1e-5, tie_word_embeddings=True,
          rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 16},
      ), 2, "10MB"),
      "qwen2_yarn": (transformers.Qwen2Config(
          **small, rms_norm_eps=1e-6, tie_word_embeddings=True,
          rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                           "original_max_position_embeddings": 16},
      ), 3, "10MB"),
      "qwen2_head_dim": (transformers.Qwen2Config(
          **small, head_dim=12, rms_norm_eps=1e-6, tie_word_embeddings=False,
          rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
      ), 4, "10MB"),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("names", nargs="*", help="Fixtures to make; default all.")
  parser.add_argument("--check", help="An exported folder to load with transformers.")
  parser.add_argument("--against", default="qwen2", help="The fixture --check compares with.")
  parser.add_argument("--sentencepiece", help="An exported sentencepiece run's folder.")
  parser.add_argument("--generate", help="An exported folder to generate from.")
  parser.add_argument("--prompt", default="def ", help="The prompt --generate continues.")
  args = parser.parse_args()
  if args.check:
    check(args.check, args.against)
    return
  if args.generate:
    generate(args.generate, args.prompt)
    return
  models = configs()
  for name in args.names or [*models, "sentencepiece"]:
    if name == "sentencepiece":
      if not args.sentencepiece:
        parser.error("the sentencepiece fixture needs --sentencepiece=EXPORTED")
      make_sentencepiece(args.sentencepiece)
    else:
      make(name, *models[name])


if __name__ == "__main__":
  main()
