"""Metric writing, FLOP/s peaks and memory measurement."""
