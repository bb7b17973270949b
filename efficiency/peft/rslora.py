"""RSLoRA: LoRA scaled by alpha / sqrt(r), so the update's size does not shrink as rank grows."""

import math

from efficiency.peft.method import Adapter


class RSLoRA(Adapter):
  """LoRA with rank-stabilized scaling."""

  @property
  def scale(self) -> float:
    return self.cfg.alpha / math.sqrt(self.cfg.rank)
