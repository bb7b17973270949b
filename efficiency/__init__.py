"""A JAX/Flax research framework for efficient large language models."""
