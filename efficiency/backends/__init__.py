"""Backend-specific workarounds, each behind one switch (`cpu`: XLA:CPU)."""
