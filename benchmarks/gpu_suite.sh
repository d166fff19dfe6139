#!/usr/bin/env bash
# GPU check in one command, for a lent CUDA machine with torch/triton/transformers already installed (no network, no
# pip, no C++ extension needed), in at most 8 minutes with compilation, so that a 15-minute window leaves a rerun:
#   1. the kernel tests on CUDA                                                   (TEST_TIMEOUT_S, default 170 s)
#   2. 3 steps of `prepo train` in bf16, HF engine, on a small Llama built on the spot (benchmarks/rl/gpu_train.py):
#      the training loop's GPU path (pk.hf -> the fused linear path's Triton kernels) runs once
#                                                                                 (TRAIN_TIMEOUT_S, default 100 s)
#   3. the kernel benchmarks at the shapes results/triton-tiles.md gives H100 floor times for
#      (--quick: logits N=8192 V=151936 bf16, fused linear N=8192 H=4096 V=151936 bf16) -> results/<device>.md
#                                                        (what is left of TOTAL_S, less RESOURCES_S; at least 60 s)
#   4. python -m benchmarks.kernels.triton_tiles with this machine's Triton on all its CPUs (compiles only; no GPU)
#                                                                     (RESOURCES_S, default 60 s, when that is left)
#
#   bash benchmarks/gpu_suite.sh            # from anywhere; runs from the source tree with PYTHONPATH=.
#
# TOTAL_S (default 420) bounds steps 1-4; each `timeout -k 10` may add 10 s of kill grace, and start-up a few more:
# under 8 minutes in all. Logs (and a copy of the tables) go to $OUT when set, else results.
# Env overrides: PYTHON, TOTAL_S, TEST_TIMEOUT_S, TRAIN_TIMEOUT_S, RESOURCES_S, GPU_TESTS (test files), BENCH_ARGS
# (extra `python -m benchmarks.kernels.run` flags), TABLE (where the benchmark table goes), and DEVICE=cpu for a dry run
# of this script on a machine without a GPU (interpreted kernels, fp32 training: slow, steps get cut by timeouts).
set -uo pipefail

cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
TOTAL_S="${TOTAL_S:-420}"
TEST_TIMEOUT_S="${TEST_TIMEOUT_S:-170}"
TRAIN_TIMEOUT_S="${TRAIN_TIMEOUT_S:-100}"
RESOURCES_S="${RESOURCES_S:-60}"
START=$(date +%s)
DEVICE="${DEVICE:-cuda}"
LOGDIR="${OUT:-results}"
mkdir -p "$LOGDIR" results
elapsed() { echo $(( $(date +%s) - START )); }

if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_suite.sh: no CUDA device visible to torch ($PY)" >&2
    exit 2
fi
"$PY" -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '|',
          torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
if [ "$DEVICE" = cpu ]; then export TRITON_INTERPRET=1; fi

# 1. correctness of the kernels on CUDA (the shared backend matrix runs torch + triton there; native is CPU-only)
DEFAULT_TESTS="tests/test_logprobs_entropy.py tests/test_linear_logprobs_entropy.py tests/test_hf.py tests/test_logprobs_entropy_native.py"
TESTS=""
for f in ${GPU_TESTS:-$DEFAULT_TESTS}; do
    [ -f "$f" ] && TESTS="$TESTS $f"
done
echo "== 1. tests:$TESTS (timeout ${TEST_TIMEOUT_S}s)"
# shellcheck disable=SC2086
timeout -k 10 "$TEST_TIMEOUT_S" "$PY" -m pytest -q -ra -p no:cacheprovider $TESTS 2>&1 | tee "$LOGDIR/gpu_tests.log"
TEST_RC=${PIPESTATUS[0]}
echo "== tests exit code $TEST_RC ($(elapsed)s so far)"

# 2. the training loop on the GPU: 3 steps, bf16, HF engine
if [ "$DEVICE" = cuda ]; then TRAIN_DTYPE=bfloat16; else TRAIN_DTYPE=float32; fi
echo "== 2. prepo train, 3 steps, $TRAIN_DTYPE on $DEVICE (timeout ${TRAIN_TIMEOUT_S}s)"
timeout -k 10 "$TRAIN_TIMEOUT_S" "$PY" -u -m benchmarks.rl.gpu_train --device "$DEVICE" --dtype "$TRAIN_DTYPE" --steps 3 \
    2>&1 | tee "$LOGDIR/gpu_train.log"
TRAIN_RC=${PIPESTATUS[0]}
echo "== train exit code $TRAIN_RC ($(elapsed)s so far)"

# 3a. TRL's Triton kernel (trl/kernels/logprob_entropy.py) is a peer row of the logits table when `trl` imports. The
#     device image has no network: bring TRL's pure-Python wheel along (on a networked machine
#     `pip download --no-deps trl==1.16.0 -d wheels/`; an untracked folder travels with the working tree, or set
#     TRL_WHEEL_DIR); it is unpacked onto PYTHONPATH here. Without it the row says why it is absent.
TRL_WHEEL_DIR="${TRL_WHEEL_DIR:-wheels}"
if ! "$PY" -c "import trl.kernels.logprob_entropy" >/dev/null 2>&1; then
    WHEEL=$(ls "$TRL_WHEEL_DIR"/trl-*.whl 2>/dev/null | tail -n 1)
    if [ -n "$WHEEL" ]; then
        TRL_DIR="$(mktemp -d)"
        "$PY" -m zipfile -e "$WHEEL" "$TRL_DIR" && export PYTHONPATH="$PYTHONPATH:$TRL_DIR"
    fi
fi
"$PY" -c "import trl, trl.kernels.logprob_entropy; print('TRL kernel peer row: trl', trl.__version__, 'from', trl.__file__)" \
    2>/dev/null || echo "TRL kernel peer row: absent (trl not importable and no wheel in $TRL_WHEEL_DIR/)"

# 3. the benchmark table at the --quick shapes; torch.compile with dynamic shapes compiles once per dtype
NAME=$("$PY" -c "from benchmarks.kernels import harness; print(harness.results_filename('$DEVICE'))")
TABLE="${TABLE:-results/$NAME}"
LEFT=$(( TOTAL_S - $(elapsed) - RESOURCES_S ))
BENCH_RC=3
if [ "$LEFT" -lt 60 ]; then
    echo "gpu_suite.sh: only ${LEFT}s left for the benchmark; skipping it" >&2
else
    echo "== 3. benchmark -> $TABLE (timeout ${LEFT}s)"
    # shellcheck disable=SC2086
    timeout -k 10 "$LEFT" "$PY" -u -m benchmarks.kernels.run --device "$DEVICE" --suite logits linear --quick \
        --compile dynamic --out "$TABLE" ${BENCH_ARGS:-} 2>&1 | tee "$LOGDIR/gpu_bench.log"
    BENCH_RC=${PIPESTATUS[0]}
    echo "== benchmark exit code $BENCH_RC ($(elapsed)s so far)"
fi
if [ -n "${OUT:-}" ] && [ -f "$TABLE" ] && ! [ "$TABLE" -ef "$OUT/$(basename "$TABLE")" ]; then
    cp "$TABLE" "$OUT/"
fi

# 4. registers / spills / shared memory of every launch configuration with this machine's Triton (informative here:
#    tests/test_triton_tiles.py enforces them with the development machine's Triton)
LEFT=$(( TOTAL_S - $(elapsed) ))
if [ "$LEFT" -ge 30 ]; then
    echo "== 4. triton resources with this machine's Triton -> $LOGDIR/triton-tiles-device.md (timeout ${LEFT}s)"
    env -u TRITON_INTERPRET timeout -k 10 "$LEFT" "$PY" -m benchmarks.kernels.triton_tiles \
        --out "$LOGDIR/triton-tiles-device.md" 2>&1 | grep -v -i "warn" | tail -n 20
    echo "== resources exit code ${PIPESTATUS[0]} ($(elapsed)s in all)"
else
    echo "gpu_suite.sh: ${LEFT}s left; skipping the resource report" >&2
fi

# non-zero when tests, training or the benchmark failed (a benchmark timeout is 124: the table holds what finished)
[ "$TEST_RC" -eq 0 ] && [ "$TRAIN_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ]
