"""Full fine-tuning: every parameter trains; nothing is frozen."""

from efficiency.peft.method import Method


class Full(Method):
  """The identity split: all base parameters are trainable."""

  def split(self, boxed_base, rng):
    del rng
    return boxed_base, None

  def combine(self, trainable, frozen):
    del frozen
    return trainable
