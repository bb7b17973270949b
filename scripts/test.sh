#!/usr/bin/env bash
# Installs what is needed, then runs the lint and the test suite: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
# CPU only, quietly: libtpu and the CUDA plugin (dev dependencies) compile for targets on demand.
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
