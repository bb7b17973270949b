"""Fine-tuning config: a pretrained default model adapted to the standard library's test suite.

  python train.py --config=configs/finetune.py --workdir=DIR --config.init_from=PRETRAINED_DIR \\
      --config.peft.method=lora [--config.peft.rank=8 --config.peft.alpha=16 \\
      --config.peft.targets=attn/*,mlp/*]

The model section and the tokenizer come from `init_from`; the data is `stdlib_tests`, files the
pretraining corpus never holds (it skips test directories).
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the fine-tuning config."""
  del arg
  c = default.get_config()
  c.init_from = ""  # required: a finished train.py workdir to start from
  c.steps = 200
  c.target_loss = 3.0
  c.eval_every = 50
  c.checkpoint_every = 100

  c.peft = ml_collections.ConfigDict()
  c.peft.method = "lora"  # full | freeze | lora | lora_plus | rslora | dora | pissa
  c.peft.rank = 8  # adapter rank r
  c.peft.alpha = 16.0  # adapters scale A @ B by alpha / rank (rslora: alpha / sqrt(rank))
  # Comma-separated name patterns over parameter paths; "" = the method's default: every
  # projection for adapters ("*"), the transformer layers for freeze ("layers/*").
  c.peft.targets = ""
  c.peft.lora_plus_ratio = 16.0  # lora_plus: B's learning rate over A's
  c.peft.last_layers = 1  # freeze: of the targets stacked over layers, train the last N (0: all)
  # Adapter methods: adapters on the last N stacked layers only, the rest a frozen prefix with
  # no backward pass (0: every layer).
  c.peft.adapter_layers = 0
  # Adapter methods: how the frozen base kernels are stored: none (float) | int8 (per-channel
  # scales) | int4 (QLoRA: packed int4 with one scale per base_group_size contracted rows).
  c.peft.base_quant = "none"
  c.peft.base_group_size = 32  # int4: divides every targeted contracted size; 0: per channel

  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 20
  c.optimizer.weight_decay = 0.0

  c.data.name = "stdlib_tests"  # the standard library's test files (never in pretraining)
  c.data.tokenizer_from = ""  # "" = init_from's tokenizer
  return c
