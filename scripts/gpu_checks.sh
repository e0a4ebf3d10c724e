#!/usr/bin/env bash
# The GPU checks in one call on a lent GPU machine (the device tool, docs/executors.md): the CUDA tests, the layer
# benchmark and the end-to-end decode benchmark, each under its own time limit so one overrun keeps the others.
# Logs and results go to $OUT (the device tool brings them back); run from the repository root:
#   bash scripts/gpu_checks.sh [TEST_S LAYERS_S DECODE_S] [layers args...]
set -u
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
TEST_S=${1:-150}; LAYERS_S=${2:-150}; DECODE_S=${3:-270}
LAYERS_ARGS=${LAYERS_ARGS:---models smollm2-135m,llama3-8b --blocks 32,64,128}
DECODE_ARGS=${DECODE_ARGS:---layers 16 --batches 1,32}
step() {  # step NAME SECONDS CMD...: run CMD under a time limit, its log in $OUT/NAME.log, its status in the summary
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: rc=$rc in $((SECONDS - t0)) s (limit $limit)" | tee -a "$OUT/summary.log"
    tail -n 25 "$OUT/$name.log"
}
{ nvidia-smi -L; $PY -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'triton', triton.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"; } 2>&1 | tee "$OUT/summary.log"
step tests "$TEST_S" $PY -m pytest -q -rs -p no:cacheprovider tests/test_cuda_kernels.py tests/test_gpu_path.py
step layers "$LAYERS_S" $PY -m benchmarks.layers --device cuda $LAYERS_ARGS
cp benchmarks/results/layers-cuda-*.json benchmarks/results/layers-cuda-*.md "$OUT/" 2>/dev/null
step decode "$DECODE_S" $PY -m benchmarks.decode_e2e --device cuda $DECODE_ARGS
cp benchmarks/results/decode-e2e-cuda.json benchmarks/results/decode-e2e-cuda.md "$OUT/" 2>/dev/null
cat "$OUT/summary.log"
