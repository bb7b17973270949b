"""Default config: a 0.92M-parameter model on the stdlib corpus, sized for any 2-core CPU.

The shape and steps come from `benchmarks/default_job.py` (BENCHMARKS.md, "Sizing the default
job"): trained for equal time (210 s at each shape's measured step time) on a 2-core AVX2-only
machine, the slower class, 2 layers x d_model 128 ended lower than 2 x 96, 4 x 128 and 3 x 192,
as it did at equal FLOPs on an AVX-512 one; 600 steps keep the whole job within 5 minutes there.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the default training config."""
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0  # seeds the initialization and the data order
  c.steps = 600  # optimizer steps in the run (the default job: a few minutes on a 2-core CPU)
  c.batch_size = 16  # sequences per optimizer step, over all devices
  c.seq_len = 128  # tokens per training row
  c.grad_accum_steps = 1  # micro-batches per optimizer step; batch_size is split across them
  c.target_loss = 4.32  # the eval loss that defines tokens_to_target (2/3 into the default run)
  c.eval_every = 50  # steps between evaluations
  c.eval_batches = 8  # validation batches per evaluation
  c.log_every = 10  # steps between metrics.jsonl / TensorBoard records
  c.checkpoint_every = 200  # steps between checkpoints (also saved at the end and on a signal)
  c.keep_checkpoints = 2  # newest checkpoints kept on disk
  c.on_nonfinite = "stop"  # stop | skip: a non-finite loss or gradient ends the run as diverged
  c.max_nonfinite_skips = 10  # on_nonfinite=skip: steps in a row skipped before the run stops

  c.model = ml_collections.ConfigDict()
  c.model.num_layers = 2  # transformer blocks
  c.model.d_model = 128  # residual stream width
  c.model.num_heads = 2  # query heads
  c.model.num_kv_heads = 1  # key/value heads (gqa); mha and mqa set it themselves
  c.model.head_dim = -1  # -1: d_model // num_heads
  c.model.d_ff = 384  # SwiGLU hidden width
  c.model.vocab_size = 4096  # embedding rows; the tokenizer is trained to at most this size
  c.model.attention = "gqa"  # attention variant (efficiency.attention registry)
  c.model.position = "rope"  # position encoding (efficiency.position registry)
  # auto | xla | chunked | cudnn | pallas_gpu | splash_tpu (efficiency.attention.kernels);
  # auto takes the best the device and the case allow, and summary.json says which
  c.model.attention_impl = "auto"
  c.model.rope = ml_collections.ConfigDict()  # position=rope
  c.model.rope.base = 10_000.0  # rotary frequency base (theta)
  # Context extension (efficiency.position.rope.SCALINGS): none | linear | llama3 | yarn, with
  # transformers' fields; Hugging Face imports set it from the checkpoint's rope_scaling.
  c.model.rope.scaling = ml_collections.ConfigDict()
  c.model.rope.scaling.type = "none"  # how rotary frequencies are stretched for a longer context
  c.model.rope.scaling.factor = 1.0  # linear, llama3, yarn
  c.model.rope.scaling.original_max_position = 0  # llama3, yarn: the pretraining context
  c.model.rope.scaling.low_freq_factor = 1.0  # llama3
  c.model.rope.scaling.high_freq_factor = 4.0  # llama3
  c.model.rope.scaling.beta_fast = 32.0  # yarn
  c.model.rope.scaling.beta_slow = 1.0  # yarn
  c.model.rope.scaling.attention_factor = 0.0  # yarn; 0: 0.1 ln(factor) + 1
  c.model.rope.scaling.truncate = True  # yarn: integer correction range
  c.model.learned = ml_collections.ConfigDict()  # position=learned
  c.model.learned.max_positions = 2048  # rows of the table
  c.model.relative = ml_collections.ConfigDict()  # position=relative (T5)
  c.model.relative.buckets = 32  # distance buckets per head
  c.model.relative.max_distance = 128  # ... log-spaced up to this distance
  c.model.sliding = ml_collections.ConfigDict()  # attention=sliding
  c.model.sliding.window = 32  # each query sees its last `window` tokens
  c.model.mla = ml_collections.ConfigDict()  # attention=mla (DeepSeek-V2)
  c.model.mla.kv_latent_dim = 32  # cached latent c_kv (study: d_model / 8)
  c.model.mla.q_latent_dim = 96  # queries' low-rank latent
  c.model.mla.rope_dim = 32  # the decoupled rotary part; one shared rope key per token
  c.model.mla.qk_head_dim = 64  # non-rotary query/key dims per head
  c.model.mla.v_head_dim = 64  # value dims per head
  c.model.nsa = ml_collections.ConfigDict()  # attention=nsa (Native Sparse Attention)
  c.model.nsa.block_size = 16  # l: compression block
  c.model.nsa.stride = 8  # d: compression stride
  c.model.nsa.select_size = 16  # l': selection block
  c.model.nsa.top_n = 4  # selected blocks per query (own and document-first always included)
  c.model.nsa.window = 32  # w: sliding-window branch
  c.model.moe = ml_collections.ConfigDict()  # mixture of experts in place of the MLP
  c.model.moe.num_experts = 0  # 0: dense SwiGLU
  c.model.moe.top_k = 2  # experts each token is routed to
  c.model.moe.capacity_factor = 1.25  # capacity: expert slots per row over T k / E
  c.model.moe.aux_loss_weight = 0.01  # weight of the load-balancing loss
  c.model.moe.dispatch = "dropless"  # dropless (sorted, grouped matmuls) | capacity (GShard)
  c.model.moe.grouped_matmul = "auto"  # dropless: auto (tiles on CPU) | ragged_dot | tiles
  c.model.moe.router = "softmax_topk"  # softmax_topk | topk_softmax
  c.model.moe.renormalize = True  # softmax_topk: gates are the top-k probabilities summing to 1
  c.model.moe.shared_experts = 0  # always-on SwiGLU of shared_experts x d_ff (DeepSeekMoE)
  c.model.moe.bias_rate = 0.0  # > 0: auxiliary-loss-free balancing bias step (DeepSeek-V3)
  c.model.qkv_bias = False  # bias on the query/key/value projections (Qwen2 style)
  c.model.tie_embeddings = True  # the output projection reuses the token table
  c.model.norm_eps = 1e-6  # RMSNorm epsilon
  c.model.init_std = 0.02  # std of the normal initializer of every kernel and table
  c.model.scan_layers = True  # stack the layers under nn.scan (flat compile time with depth)
  # Layers per iteration of the layer scan's loop (lax.scan's unroll; num_layers: no loop). Same
  # parameters and math; more compiles longer and saves the loop's stacked-residual copies.
  c.model.scan_unroll = 1
  c.model.remat = "none"  # none | full | dots
  # The loss over chunks of this many positions per row, never holding the float32 logits
  # [B, T, V] (efficiency.train.loss); 0: the plain loss over full logits.
  c.model.loss_chunk = 0
  c.model.param_dtype = "float32"  # dtype parameters are stored and updated in
  c.model.dtype = "float32"  # compute dtype

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # data-parallel axis size (-1: the devices left over)
  c.mesh.fsdp = 1  # fully sharded data-parallel axis: batch and parameters sharded
  c.mesh.tensor = 1  # tensor-parallel axis: heads and MLP width sharded
  c.mesh.expert = 1  # shards the experts of model.moe; also splits the batch

  c.quant = ml_collections.ConfigDict()
  c.quant.mode = "none"  # none | int8 | int8_fwd | int4 | fp8: AQT in every projection
  c.quant.exclude = ""  # comma-separated globs over layer names kept in float: "*/mlp/*,*/out"
  c.quant.logits = False  # also quantize the logits projection (tied: Embed.attend)
  c.quant.attention = False  # also quantize attention score/value products (gqa, mla; forward)
  c.quant.serve = "none"  # set by evals.quantize: none | int8 | int4 (weights of a converted model)
  c.quant.group_size = 0  # serve=int4: rows per scale along the contracted dims; 0 = per channel
  # set by evals.quantize --embedding: none | int8 | int4, the token table of a converted model
  # (per-row scales; int4 per quant.group_size entries of a row when > 0)
  c.quant.embedding = "none"
  # how packed int4 kernels decode (efficiency.serving.weights): s4 (jnp.int4, dequantized in every
  # step) | float (unpacked once per request) | auto (float on CPU, s4 on GPU and TPU)
  c.quant.int4_decode = "auto"
  # set by evals.quantize --int4_activations: float (int4 weight-only) | int8 (W4A8: int8
  # activations against the int4 codes, int32 sums, as served int8 runs; decodes at int8's speed)
  c.quant.int4_activations = "float"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"  # adamw | lion | sgd (momentum b1)
  c.optimizer.lr = 3e-3  # peak learning rate
  c.optimizer.min_lr_ratio = 0.1  # the schedule's final learning rate over the peak
  c.optimizer.warmup_steps = 50  # steps of linear warmup to the peak learning rate
  c.optimizer.schedule = "cosine"  # decay after warmup
  c.optimizer.b1 = 0.9  # first-moment decay (adamw, lion; sgd's momentum)
  c.optimizer.b2 = 0.95  # second-moment decay (adamw, lion)
  c.optimizer.eps = 1e-8  # adamw's denominator epsilon
  c.optimizer.weight_decay = 0.1  # decoupled weight decay on matrices
  c.optimizer.grad_clip = 1.0  # global gradient-norm clip

  # Knowledge distillation (efficiency.train.distill), e.g. a speculative draft from its target.
  c.distill = ml_collections.ConfigDict()
  c.distill.teacher = ""  # a finished train.py workdir with the same tokenizer; "" = off
  c.distill.weight = 0.5  # the KL term's share of the objective; 1 = the teacher's alone
  c.distill.temperature = 1.0  # softmax temperature of both sides (the KL is scaled by its square)

  c.data = ml_collections.ConfigDict()
  c.data.name = "stdlib"  # the default corpus: the running interpreter's standard library
  c.data.data_dir = ""  # "": $EFFICIENCY_DATA_DIR or ~/.cache/efficiency/data
  c.data.corpus_root = ""  # stdlib only: "" = this interpreter's stdlib directory
  c.data.validation_percent = 5  # share of documents held out for evaluation, by hash
  c.data.tokenizer = "sentencepiece"  # sentencepiece | bytes | hf
  c.data.tokenizer_dir = ""  # tokenizer=hf: a folder with tokenizer.json and tokenizer_config.json
  # Independent streams the batch is drawn from, so the data position survives a change of
  # process count that divides it. 0: the process count of the run's first launch (kept after).
  c.data.shards = 0
  c.data.shuffle = True  # shuffle rows within shuffle_window
  c.data.shuffle_window = 1024  # rows; decorrelates rows cut from one long document
  c.data.worker_threads = 2  # Grain worker threads preparing batches
  c.data.prefetch = 4  # batches prepared ahead of the train step
  c.data.tfds_data_dir = ""  # TFDS names (lm1b, c4/en, ...): "" = TFDS's default data dir
  c.data.text_glob = ""  # text: a folder or glob of text files, built once into ArrayRecord
  c.data.files = ""  # jsonl | parquet: a glob of shards (.jsonl, .jsonl.gz, .jsonl.zst, .parquet)
  c.data.text_field = "text"  # jsonl | parquet: the field holding the text; scalar fields are kept
  c.data.max_doc_bytes = 4 * 2**20  # longer documents are dropped (and counted) as absurd
  # Filters, applied in order when data is prepared (python -m data.prepare): comma-separated
  # names from data.filters registry: length, exact_dedup, near_dup, quality, perplexity.
  c.data.filters = ""
  c.data.filter = ml_collections.ConfigDict()
  c.data.filter.min_tokens = 16  # length
  c.data.filter.max_tokens = 100_000  # length
  c.data.filter.near_dup_threshold = 0.8  # near_dup: estimated Jaccard of 5-gram word shingles
  c.data.filter.near_dup_perms = 128  # near_dup: MinHash permutations (bands x rows)
  c.data.filter.near_dup_bands = 32  # near_dup: LSH bands
  c.data.filter.max_symbol_ratio = 0.25  # quality: chars not alnum, space or ASCII punctuation
  c.data.filter.min_alnum_ratio = 0.4  # quality: alphanumeric share of non-space chars
  c.data.filter.max_line_chars = 1000  # quality: longest line
  c.data.filter.max_repeated_line_ratio = 0.5  # quality: share of lines that repeat another
  c.data.filter.keep_fraction = 0.5  # perplexity: keep this share, lowest reference loss first
  c.data.filter.field = ""  # metadata: a numeric field of the records (jsonl, parquet)
  c.data.filter.field_min = float("-inf")  # metadata: keep field >= field_min
  c.data.filter.field_max = float("inf")  # metadata: keep field <= field_max
  # A weighted mixture of sources: {label: {"weight": w, and the data.* settings of that source,
  # e.g. "name": "text", "text_glob": ...}}; empty: the single source above (configs/mixture.py).
  c.data.mixture = ml_collections.ConfigDict()
  c.data.reference_workdir = ""  # perplexity / reference_loss: a finished train.py workdir
  c.data.curriculum = ml_collections.ConfigDict()
  c.data.curriculum.difficulty = "none"  # none | length | compression | reference_loss | field
  c.data.curriculum.field = ""  # difficulty=field: a numeric field of the records
  c.data.curriculum.pacing = "root"  # linear | root | step
  c.data.curriculum.start = 0.2  # competence (share of easiest documents) at step 0
  c.data.curriculum.fraction = 0.5  # share of training tokens until all documents are in play
  c.data.curriculum.stages = 4  # pacing=step: competence rises in this many equal steps
  c.data.seq_len_warmup = ml_collections.ConfigDict()
  c.data.seq_len_warmup.start = 0  # 0: off; else the first steps' longest segment, in tokens
  c.data.seq_len_warmup.steps = 100  # steps until segments reach seq_len
  # True: warmup batches in short rows (one compile per bucket, cheaper steps); False: rows kept
  # seq_len long, pieces masked apart (one compile, full-length cost). Same tokens either way.
  c.data.seq_len_warmup.buckets = True
  # tokens: every token trained on, in short pieces; sequences (Li et al. 2022): batch_size rows
  # of the piece length each (the rest of every row skipped), so warmup steps train on fewer tokens.
  c.data.seq_len_warmup.fixed = "tokens"

  # A jax.profiler trace of steps start_step..start_step+steps-1 into WORKDIR/tensorboard
  # (TensorBoard's profile plugin and XProf open it), summarized in profile_summary.json.
  c.profile = ml_collections.ConfigDict()
  c.profile.steps = 0  # steps traced with jax.profiler into the workdir; 0: no trace
  c.profile.start_step = 5  # first traced step (after compilation and the first warm steps)

  # Experiment tracking besides metrics.jsonl and TensorBoard (efficiency.workdir.wandb_writer).
  c.log = ml_collections.ConfigDict()
  c.log.wandb = False  # Weights & Biases (the `wandb` extra); WANDB_MODE=offline writes locally
  c.log.wandb_project = "efficiency"  # the W&B project runs are logged to
  c.log.wandb_name = ""  # "": the workdir's name
  c.log.wandb_tags = ""  # comma-separated
  return c
