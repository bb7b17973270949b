"""Registry of parameter-efficient fine-tuning methods, keyed by the name `peft.method` uses.

Adding a method = one file with a `Method` subclass + one line here.
"""

import ml_collections

from efficiency.peft.dora import DoRA
from efficiency.peft.freeze import Freeze
from efficiency.peft.full import Full
from efficiency.peft.lora import LoRA
from efficiency.peft.lora_plus import LoRAPlus
from efficiency.peft.method import Method
from efficiency.peft.pissa import PiSSA
from efficiency.peft.rslora import RSLoRA
from efficiency.peft.targets import abstract_model

PEFT_METHODS: dict[str, type[Method]] = {
    "full": Full,
    "freeze": Freeze,
    "lora": LoRA,
    "lora_plus": LoRAPlus,
    "rslora": RSLoRA,
    "dora": DoRA,
    "pissa": PiSSA,
}

BASE_QUANT = ("none", "int8", "int4")  # how an adapter method stores the frozen base kernels

FULL = ml_collections.ConfigDict({
    "method": "full", "rank": 8, "alpha": 16.0, "targets": "", "lora_plus_ratio": 16.0,
    "last_layers": 0, "adapter_layers": 0, "base_quant": "none", "base_group_size": 32,
})


def peft_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.peft`, or full training for configs without a peft section (pretraining)."""
  return config.peft if "peft" in config else FULL


def make_method(config: ml_collections.ConfigDict) -> tuple[Method, dict]:
  """The PEFT method of `config` on its model, and the model's boxed abstract base params."""
  _, boxed_base, specs = abstract_model(config)
  cfg = peft_config(config)
  return PEFT_METHODS[cfg.method](cfg, boxed_base, specs), boxed_base
