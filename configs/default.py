"""Default config: a few-million-parameter model on the stdlib corpus, sized for a 2-core CPU."""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the default training config."""
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.steps = 600
  c.batch_size = 16  # global, in sequences
  c.seq_len = 128
  c.grad_accum_steps = 1
  c.target_loss = 4.5  # reached at about 2/3 of the run (eval loss 4.2 at the end)
  c.eval_every = 50
  c.eval_batches = 8
  c.log_every = 10
  c.checkpoint_every = 200
  c.keep_checkpoints = 2

  c.model = ml_collections.ConfigDict()
  c.model.num_layers = 4
  c.model.d_model = 256
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.head_dim = -1  # -1: d_model // num_heads
  c.model.d_ff = 768
  c.model.vocab_size = 4096
  c.model.attention = "gqa"
  c.model.position = "rope"
  c.model.rope_base = 10_000.0
  c.model.qkv_bias = False
  c.model.tie_embeddings = True
  c.model.norm_eps = 1e-6
  c.model.init_std = 0.02
  c.model.scan_layers = True
  c.model.remat = "none"  # none | full | dots
  c.model.param_dtype = "float32"
  c.model.dtype = "float32"  # compute dtype

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  c.quant = ml_collections.ConfigDict()
  c.quant.mode = "none"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"
  c.optimizer.lr = 3e-3
  c.optimizer.min_lr_ratio = 0.1
  c.optimizer.warmup_steps = 50
  c.optimizer.schedule = "cosine"
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.1
  c.optimizer.grad_clip = 1.0

  c.data = ml_collections.ConfigDict()
  c.data.name = "stdlib"  # the default corpus: the running interpreter's standard library
  c.data.data_dir = ""  # "": $EFFICIENCY_DATA_DIR or ~/.cache/efficiency/data
  c.data.corpus_root = ""  # stdlib only: "" = this interpreter's stdlib directory
  c.data.validation_percent = 5
  c.data.tokenizer = "sentencepiece"  # sentencepiece | bytes
  c.data.shuffle = True
  c.data.shuffle_window = 1024  # rows; decorrelates rows cut from one long document
  c.data.worker_threads = 2
  c.data.prefetch = 4
  return c
