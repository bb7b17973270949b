"""LoRA: W + (alpha / r) * A @ B, A random and B zero, so training starts from the base model."""

from efficiency.peft.method import Adapter


class LoRA(Adapter):
  """Low-rank adapters on the targeted projection kernels; the base stays frozen."""
