#!/usr/bin/env bash
# The accelerator check in one command, for a machine with a GPU that reaches no package
# registry (the `device` machine: its image carries jax with CUDA, flax, optax, orbax, torch,
# pytest). ndjax is installed from this checkout without dependencies, the tests that matter on a
# device run (thresholds, counts, views, ties, precision, upsampling, the pipeline), then
# benchmarks/accelerator.py times VGG16 conv5_3 over a generated Broden-sized probe set.
# One results file: <outdir>/accelerator.json (tests' summary line inside).
#
#   bash benchmarks/accelerator.sh [OUTDIR]          # default $OUT, else /tmp/ndjax_accel
# Sizes (environment): NDJAX_ACCEL_IMAGES (63305), NDJAX_ACCEL_SUBSET (2000),
# NDJAX_ACCEL_TESTS (1 = run them), NDJAX_ACCEL_TEST_S (240: the tests' time limit), PYTHON.
# On a machine without an accelerator it runs the same steps on the CPU (jax's default backend).
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-/tmp/ndjax_accel}}
PY=${PYTHON:-python3}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
if ! "$PY" -c 'import ndjax.models' 2>/dev/null; then
  "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . \
    || { echo "accelerator.sh: could not install ndjax from $(pwd) (pip, setuptools needed)" >&2; exit 2; }
fi
"$PY" -c 'import jax; print("jax", jax.__version__, "backend", jax.default_backend(), jax.devices())'
SUMMARY="tests not run"
if [ "${NDJAX_ACCEL_TESTS:-1}" = 1 ]; then
  timeout "${NDJAX_ACCEL_TEST_S:-240}" "$PY" -m pytest -q -p no:cacheprovider -m 'not slow' \
    tests/test_thresholds.py tests/test_iou.py tests/test_views.py tests/test_ties.py \
    tests/test_precision.py tests/test_upsample.py tests/test_dissect.py 2>&1 | tee "$OUTDIR/tests.log"
  SUMMARY=$(tail -n 1 "$OUTDIR/tests.log")
fi
"$PY" benchmarks/accelerator.py --images="${NDJAX_ACCEL_IMAGES:-63305}" \
  --subset="${NDJAX_ACCEL_SUBSET:-2000}" --out="$OUTDIR/accelerator.json" --tests="$SUMMARY"
