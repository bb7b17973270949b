"""LoRA+: LoRA whose B matrices learn `peft.lora_plus_ratio` times faster than the A matrices."""

import jax

from efficiency.peft.method import Adapter


class LoRAPlus(Adapter):
  """LoRA with a separate learning rate for B: lr_B = ratio * lr_A."""

  def lr_multipliers(self, trainable: dict) -> dict:
    """`peft.lora_plus_ratio` for every B matrix, 1 for the rest."""
    ratio = float(self.cfg.lora_plus_ratio)

    def multiplier(path, _) -> float:
      return ratio if getattr(path[-1], "key", None) == "lora_b" else 1.0

    return jax.tree_util.tree_map_with_path(multiplier, trainable)
