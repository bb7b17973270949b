#!/usr/bin/env bash
# Downloads into .whl/ the wheels of the project's dependencies that the device machine's image
# lacks (pinned as in constraints.txt, for its Python 3.12 on x86-64), and keeps .whl/ out of git.
# The image brings its own jax, flax, optax, orbax-checkpoint, numpy and the rest; see
# benchmarks/accelerator.sh for how a device call installs these and runs the benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
MISSING="aqtp array_record grain immutabledict ml_collections portpicker promise
  tensorflow-datasets tensorflow-metadata toml"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
for name in $MISSING; do
  pin=$(grep -i "^${name}==" constraints.txt) || { echo "no pin for $name in constraints.txt"; exit 1; }
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$pin" 2>/dev/null ||
    python3 -m pip wheel --quiet --no-deps -w .whl "$pin"  # a pure-Python package sold as sdist
done
du -sh .whl
