#!/usr/bin/env bash
# One call on a GPU machine: build the peers, run every GPU test, then the benchmarks; logs and JSON under $OUT.
#   bash benchmarks/gpu_suite.sh [tests|bench|all]     (OUT defaults to ./gpu-out)
# Expects mamba-ssm's source in .deps/mamba/src (see .deps/mamba/mamba-peer.sh) and, for the TensorRT plugin
# harness, TensorRT headers in .deps/trt11/include and .deps/trt103/include (never committed).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
what=${1:-all}
export PYTHONUNBUFFERED=1 VIVIM_TRT_INCLUDE_DIRS=".deps/trt11/include:.deps/trt103/include"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
if [ -d .deps/mamba/src ] && ! python3 -c "import selective_scan_cuda" 2>/dev/null; then
  ( time bash .deps/mamba/mamba-peer.sh build .deps/mamba/src ) 2>&1 | tail -4 | tee "$OUT/mamba-build.log"
fi
if [ "$what" = tests ] || [ "$what" = all ]; then
  python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$OUT/gpu-tests.log" | tail -25
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  python3 benchmarks/bench_scan.py --out "$OUT/scan.json" 2>&1 | tee "$OUT/scan.log" | tail -40
fi
