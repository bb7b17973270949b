"""Hugging Face Qwen2 / Llama checkpoints: the config mapping, the tensor mapping, the
safetensors files, and import into / export out of a workdir."""
