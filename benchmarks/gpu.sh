#!/usr/bin/env bash
# The GPU checks in one go, on a CUDA host (well under 8 minutes on one H200):
#   1. a venv with the repository installed on top of the machine's CUDA torch (never another torch),
#   2. the CUDA tests (tests/test_device_paths.py),
#   3. the benchmarks at the CIFAR-10 shape with --device cuda: ddim_vs_diffusers (a), guided_floor (b),
#      trades_step (c), throughput (e, at batch 8 and at batch 128).
# Every JSON, printed table and log lands in one folder.
#
#   bash benchmarks/gpu.sh [OUT_DIR]          # OUT_DIR defaults to ${OUT:-gpu-results}
#
# Environment: PYTHON (the interpreter whose CUDA torch to use, default python3), VENV (default .venv-gpu;
# made with --system-site-packages so that it sees that torch).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
OUT_DIR="${1:-${OUT:-gpu-results}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
BASE_PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv-gpu}"
STARTED=$(date +%s)
FAILED=()

say() { echo "== [$(( $(date +%s) - STARTED )) s] $*" | tee -a "$OUT_DIR/gpu.log"; }

# run NAME TIMEOUT_S CMD...: stdout -> OUT_DIR/NAME.txt (echoed), stderr -> OUT_DIR/NAME.log
run() {
    local name=$1 limit=$2
    shift 2
    say "$name: $*"
    timeout "$limit" "$@" >"$OUT_DIR/$name.txt" 2>"$OUT_DIR/$name.log"
    local rc=$?
    cat "$OUT_DIR/$name.txt"
    if [ "$rc" -ne 0 ]; then
        FAILED+=("$name (exit $rc)")
        say "$name FAILED (exit $rc); last lines of $name.log:"
        tail -n 20 "$OUT_DIR/$name.log"
    fi
}

say "torch of $BASE_PYTHON"
"$BASE_PYTHON" -c "import torch; print(torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())" \
    | tee "$OUT_DIR/torch.txt"
if ! "$BASE_PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "CUDA is not available to $BASE_PYTHON's torch: nothing to do on this machine"
    exit 1
fi
command -v nvidia-smi >/dev/null && nvidia-smi >"$OUT_DIR/nvidia-smi.txt" 2>&1

# 1. The venv: the machine's torch stays (seen through --system-site-packages, pinned by a constraint).
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$BASE_PYTHON" -m venv --system-site-packages "$VENV" || rm -rf "$VENV"
fi
if [ -x "$VENV/bin/python" ]; then PY="$VENV/bin/python"; else
    say "no venv could be made (python3-venv missing?): installing into $BASE_PYTHON's environment"
    PY="$BASE_PYTHON"
fi
"$PY" -c "import torch; print(f'torch=={torch.__version__}')" >"$OUT_DIR/torch-pin.txt"
PIP=("$PY" -m pip install --disable-pip-version-check --progress-bar off -c "$OUT_DIR/torch-pin.txt")
say "pip install -e .[dev] (torch pinned to $(cat "$OUT_DIR/torch-pin.txt"))"
if ! "${PIP[@]}" -e ".[dev]" >"$OUT_DIR/pip.log" 2>&1; then
    say "pip install -e .[dev] failed (offline host?): see pip.log; trying --no-build-isolation --no-deps"
    "${PIP[@]}" --no-build-isolation --no-deps -e . >>"$OUT_DIR/pip.log" 2>&1 \
        || say "editable install failed too; relying on PYTHONPATH and the packages already present"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "the venv's torch has no CUDA (was it replaced?): stop"
    exit 1
fi
"$PY" -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, \
torch.cuda.get_device_name(0))" | tee -a "$OUT_DIR/torch.txt"

# 2. The CUDA tests.
run test_device_paths 150 "$PY" -m pytest tests/test_device_paths.py -q -p no:cacheprovider

# 3. The benchmarks at the CIFAR-10 shape on the GPU.
run ddim_vs_diffusers 60 "$PY" benchmarks/ddim_vs_diffusers.py --shapes cifar10 --steps 20 --device cuda \
    --repeats 10 --json "$OUT_DIR/ddim_vs_diffusers.json"
run guided_floor 90 "$PY" benchmarks/guided_floor.py --shapes cifar10 --device cuda --steps 50 \
    --repeats 10 --unit-calls 10 --wrn-depth 28 --wrn-widen 10 --json "$OUT_DIR/guided_floor.json"
run trades_step 120 "$PY" benchmarks/trades_step.py --shapes cifar10 --device cuda --batch 128 \
    --train-steps 10 --repeats 3 --wrn-depth 28 --wrn-widen 10 --json "$OUT_DIR/trades_step.json"
run throughput_b8 60 "$PY" benchmarks/throughput.py --device cuda --batch-size 8 --count 8 --steps 50 \
    --repeats 5 --wrn-depth 28 --wrn-widen 10 --json "$OUT_DIR/throughput_b8.json"
run throughput_b128 60 "$PY" benchmarks/throughput.py --device cuda --batch-size 128 --count 128 \
    --steps 20 --repeats 3 --wrn-depth 28 --wrn-widen 10 --json "$OUT_DIR/throughput_b128.json"

say "done in $(( $(date +%s) - STARTED )) s; results in $OUT_DIR"
if [ "${#FAILED[@]}" -ne 0 ]; then
    say "failed: ${FAILED[*]}"
    exit 1
fi
