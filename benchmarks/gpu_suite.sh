#!/usr/bin/env bash
# One device call on a GPU machine: build the peer kernels, run every GPU test, or run the benchmarks.
#   OUT=dir bash benchmarks/gpu_suite.sh tests|bench|compile
# Expects mamba-ssm's source in .deps/mamba/src (.deps/mamba/mamba-peer.sh fetches it), wheels of missing Python
# packages in .whl/ (onnxruntime-extensions), and TensorRT headers in .deps/trt11/include and .deps/trt103/include
# for the plugin harness. None of these is committed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 VIVIM_TRT_INCLUDE_DIRS="$PWD/.deps/trt11/include:$PWD/.deps/trt103/include"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v -i warning | tail -2
if [ -d .deps/mamba/src ] && ! python3 -c "import torch, selective_scan_cuda" 2>/dev/null; then
  ( time bash .deps/mamba/mamba-peer.sh build .deps/mamba/src ) 2>&1 | tail -4
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
case ${1:-tests} in
tests)
  python3 -m pytest -q -m gpu -p no:cacheprovider -rs tests 2>&1 | tee "$OUT/gpu-tests.log" | tail -30 ;;
bench)
  python3 benchmarks/bench_scan.py --out "$OUT/scan.json" > "$OUT/scan.log" 2>&1; tail -25 "$OUT/scan.log"
  vivim-bench --variant paper --frames 5 --size 256 --batch 1 --device cuda \
    --backends torch,torch-fp16,torch-graph,tensorrt --scans all --streaming --output-frame newest \
    --long-clips --long-frames 5,16,32,64,150 --warmup 20 --iters 200 --max-row-seconds 12 --long-iters 10 \
    --pipeline-frames 120 --no-progress --out /tmp/vivim-bench > "$OUT/bench.log" 2>&1
  tail -45 "$OUT/bench.log"; cp /tmp/vivim-bench/results.json "$OUT/bench.json"
  for cache in --stream-cache --no-stream-cache; do
    vivim-run --video vivim/assets/demo_clip.mp4 --checkpoint demo --device cuda --headless --quiet $cache \
      --fp16 --cuda-graph --output-frame newest --stats "$OUT/run$cache.json" 2>&1 | tail -3
  done ;;
compile)  # the streaming rows again, plus their torch.compile (Inductor) variants
  vivim-bench --variant paper --frames 5 --size 256 --batch 1 --device cuda --backends torch --scans vivim_cuda \
    --streaming --compile --output-frame newest --warmup 20 --iters 200 --max-row-seconds 8 --pipeline-frames 60 \
    --no-progress --no-plots --out /tmp/vivim-bench > "$OUT/bench-compile.log" 2>&1
  tail -30 "$OUT/bench-compile.log"; cp /tmp/vivim-bench/results.json "$OUT/bench-compile.json" ;;
esac
