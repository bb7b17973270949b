"""Command-line evaluations: perplexity, generation, decoding and efficiency benchmarks, sweeps."""
