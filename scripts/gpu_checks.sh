#!/usr/bin/env bash
# The GPU checks on a lent GPU machine (the device tool, docs/executors.md): the CUDA tests, the layer
# benchmark, the end-to-end decode benchmark and the kernel probe, each under its own time limit so one overrun
# keeps the others. Logs and results go to $OUT (the device tool brings back 8 files); from the repository root:
#   bash scripts/gpu_checks.sh [TEST_S LAYERS_S DECODE_S PROBE_S]   (LAYERS_ARGS, DECODE_ARGS: the benchmarks' options)
# The four steps overrun one device call (600 s): run them as two, STEPS="tests layers" then STEPS="decode probe".
set -u
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
TEST_S=${1:-180}; LAYERS_S=${2:-300}; DECODE_S=${3:-230}; PROBE_S=${4:-250}
STEPS=" ${STEPS:-tests layers decode probe} "
LAYERS_ARGS=${LAYERS_ARGS:---models smollm2-135m,llama3-8b --blocks 32,64,128}
DECODE_ARGS=${DECODE_ARGS:---layers 16 --batches 1,32}
step() {  # step NAME SECONDS CMD...: run CMD under a time limit, its output appended to $OUT/steps.log
    local name=$1 limit=$2; shift 2
    [[ $STEPS == *" $name "* ]] || return 0
    local t0=$SECONDS
    echo "===== $name: $*" >>"$OUT/steps.log"
    timeout "$limit" "$@" >"$OUT/$name.tmp" 2>&1
    local rc=$?
    cat "$OUT/$name.tmp" >>"$OUT/steps.log"
    echo "$name: rc=$rc in $((SECONDS - t0)) s (limit $limit)" | tee -a "$OUT/summary.log"
    tail -n 25 "$OUT/$name.tmp"
    rm "$OUT/$name.tmp"
}
fresh() {  # copy to $OUT those of these results files this run wrote (not the committed ones it failed to replace)
    for f in "$@"; do [ "$f" -nt "$OUT/started" ] && cp "$f" "$OUT/"; done
}
touch "$OUT/started"
{ nvidia-smi -L; $PY -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'triton', triton.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"; } 2>&1 | tee "$OUT/summary.log"
step tests "$TEST_S" $PY -m pytest -q -rs -p no:cacheprovider tests/test_cuda_kernels.py tests/test_gpu_path.py
step layers "$LAYERS_S" $PY -m benchmarks.layers --device cuda $LAYERS_ARGS --name layers-cuda-checks
fresh benchmarks/results/layers-cuda-checks.json benchmarks/results/layers-cuda-checks.md
step decode "$DECODE_S" $PY -m benchmarks.decode_e2e --device cuda $DECODE_ARGS
fresh benchmarks/results/decode-e2e-cuda.json benchmarks/results/decode-e2e-cuda.md
step probe "$PROBE_S" $PY scripts/gpu_probe.py  # writes $OUT/probe.json
rm "$OUT/started"
cat "$OUT/summary.log"
