#!/usr/bin/env bash
# The whole device check in one call on one H100/H200, about 8 minutes: the training benchmark
# (benchmarks/accelerator.py) and the decoding one (benchmarks/accelerator_decoding.py), their
# JSON, logs and the machine's versions under $OUT.
#
# Prepare here once with `bash scripts/device_wheels.sh` (the dependencies the device image
# lacks, into .whl/), then call the device tool's `run` with command
# "bash benchmarks/accelerator.sh", carry [".whl"] and timeout_s 600. TRAIN_RUNS overrides the
# training runs (SIZE:IMPL ...). The image's own jax is used (jaxlib is too large to carry).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/accelerator}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
{
  nvidia-smi
  python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, jax.devices())"
} > "$OUT/machine.txt" 2>&1
# shellcheck disable=SC2086  # TRAIN_RUNS is a list of words
timeout 330 python3 -m benchmarks.accelerator --out "$OUT" \
  --runs ${TRAIN_RUNS:-0.5b:xla 0.5b:cudnn 0.5b:pallas_gpu 1.5b:cudnn} 2>&1 |
  tee "$OUT/accelerator.log"
timeout 210 python3 -m benchmarks.accelerator_decoding --out "$OUT" 2>&1 |
  tee "$OUT/accelerator_decoding.log"
