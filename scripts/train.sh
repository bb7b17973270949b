#!/usr/bin/env bash
# Installs what is needed, then trains: bash scripts/train.sh --workdir=runs/default [flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python train.py "$@"
