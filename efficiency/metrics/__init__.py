"""FLOP/s peaks and MFU, memory measurement, and the efficiency study's metrics and sampler."""
