"""Data: TFDS corpora, tokenizers, packing and the Grain input pipeline."""
