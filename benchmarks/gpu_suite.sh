#!/usr/bin/env bash
# GPU check in one command, for a lent CUDA machine with torch/triton/pytest already installed (no network, no pip):
# the kernel tests on CUDA, then the kernel benchmark table -> benchmarks/results/<device>.md (and $OUT if set).
#
#   bash benchmarks/gpu_suite.sh            # from anywhere; runs from the source tree with PYTHONPATH=.
#
# Budget: about 8 minutes in all. Tests get TEST_TIMEOUT_S, the benchmark what is left of TOTAL_S; the table is
# rewritten after every case, so a benchmark cut short still leaves the cases it finished. Env overrides:
# PYTHON, TOTAL_S, TEST_TIMEOUT_S, GPU_TESTS (test files), BENCH_ARGS (extra `python -m benchmarks.kernels` flags),
# TABLE (where the table goes), and DEVICE=cpu for a dry run of this script on a machine without a GPU.
set -uo pipefail

cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
TOTAL_S="${TOTAL_S:-450}"  # leaves room for the kill grace and start-up inside 8 minutes
TEST_TIMEOUT_S="${TEST_TIMEOUT_S:-240}"
START=$(date +%s)
DEVICE="${DEVICE:-cuda}"
LOGDIR="${OUT:-benchmarks/results}"
mkdir -p "$LOGDIR" benchmarks/results

if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_suite.sh: no CUDA device visible to torch ($PY)" >&2
    exit 2
fi
"$PY" -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '|',
          torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"

# 1. correctness of the kernels on CUDA (the shared backend matrix runs torch + triton there; native is CPU-only)
DEFAULT_TESTS="tests/test_logprobs_entropy.py tests/test_linear.py tests/test_hf_helper.py tests/test_native.py"
TESTS=""
for f in ${GPU_TESTS:-$DEFAULT_TESTS}; do
    [ -f "$f" ] && TESTS="$TESTS $f"
done
echo "== tests:$TESTS (timeout ${TEST_TIMEOUT_S}s)"
# shellcheck disable=SC2086
timeout -k 10 "$TEST_TIMEOUT_S" "$PY" -m pytest -q -ra -p no:cacheprovider $TESTS 2>&1 | tee "$LOGDIR/gpu_tests.log"
TEST_RC=${PIPESTATUS[0]}
echo "== tests exit code $TEST_RC ($(( $(date +%s) - START ))s so far)"

# 2. the benchmark table; torch.compile with dynamic shapes compiles once per dtype instead of once per shape
NAME=$("$PY" -c "from benchmarks import harness; print(harness.results_filename('$DEVICE'))")
TABLE="${TABLE:-benchmarks/results/$NAME}"
LEFT=$(( TOTAL_S - ($(date +%s) - START) ))
if [ "$LEFT" -lt 60 ]; then
    echo "gpu_suite.sh: only ${LEFT}s left for the benchmark; skipping it" >&2
    exit 3
fi
echo "== benchmark -> $TABLE (timeout ${LEFT}s)"
# shellcheck disable=SC2086
timeout -k 10 "$LEFT" "$PY" -u -m benchmarks.kernels --device "$DEVICE" --compile dynamic --out "$TABLE" ${BENCH_ARGS:-} \
    2>&1 | tee "$LOGDIR/gpu_bench.log"
BENCH_RC=${PIPESTATUS[0]}
echo "== benchmark exit code $BENCH_RC ($(( $(date +%s) - START ))s in all)"

if [ -n "${OUT:-}" ] && [ -f "$TABLE" ] && ! [ "$TABLE" -ef "$OUT/$(basename "$TABLE")" ]; then
    cp "$TABLE" "$OUT/"
fi
# non-zero when either half failed (a benchmark timeout is 124: the table then holds the finished cases)
[ "$TEST_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ]
