#!/usr/bin/env bash
# Build the plugin + harness against each TensorRT include folder given, then run the harness
# (interface checks, and enqueue vs the float64 reference when a GPU is present).
#
#   plugins/tensorrt/harness/check_all_headers.sh LOG_DIR CUDA_ARCHS INCLUDE_DIR...
#   e.g. plugins/tensorrt/harness/check_all_headers.sh /tmp/logs 90 .deps/trt11/include .deps/trt103/include
#
# Build trees go to ${VIVIM_BUILD_ROOT:-/tmp/vivim-trt-check}; logs (one per step) to LOG_DIR.
# Exit status 0 only if every build and every harness run passed.
set -u
if [ $# -lt 3 ]; then
  echo "usage: $0 LOG_DIR CUDA_ARCHS INCLUDE_DIR..." >&2
  exit 2
fi
logs=$1; archs=$2; shift 2
root=$(cd "$(dirname "$0")/../../.." && pwd)
build_root=${VIVIM_BUILD_ROOT:-/tmp/vivim-trt-check}
gpu_flag=--require-gpu
command -v nvidia-smi >/dev/null 2>&1 || gpu_flag=--skip-gpu
mkdir -p "$logs" "$build_root"
status=0
for inc in "$@"; do
  inc=$(cd "$inc" && pwd)
  tag=$(basename "$(dirname "$inc")")
  build="$build_root/$tag"
  # The full plugins/ project first (kernel target defined there); plugins/tensorrt alone as a fallback.
  if ! { cmake -S "$root/plugins" -B "$build" -DVIVIM_BUILD_TRT_PLUGIN=ON -DTENSORRT_INCLUDE_DIR="$inc" \
           -DCMAKE_CUDA_ARCHITECTURES="$archs" -DCMAKE_BUILD_TYPE=Release &&
         cmake --build "$build" --parallel "$(nproc)"; } >"$logs/build-$tag.log" 2>&1; then
    echo "plugins/ project did not build for $tag; trying plugins/tensorrt on its own" >>"$logs/build-$tag.log"
    build="$build_root/$tag-standalone"
    if ! { cmake -S "$root/plugins/tensorrt" -B "$build" -DTENSORRT_INCLUDE_DIR="$inc" \
             -DCMAKE_CUDA_ARCHITECTURES="$archs" -DCMAKE_BUILD_TYPE=Release &&
           cmake --build "$build" --parallel "$(nproc)"; } >>"$logs/build-$tag.log" 2>&1; then
      echo "BUILD FAILED $tag (see $logs/build-$tag.log)"
      tail -20 "$logs/build-$tag.log"
      status=1
      continue
    fi
  fi
  harness=$(find "$build" -name vivim_trt_plugin_harness -type f | head -1)
  library=$(find "$build" -name libvivim_trt_plugin.so -type f | head -1)
  echo "== $tag: $library"
  "$harness" --plugin "$library" $gpu_flag >"$logs/harness-$tag.log" 2>&1
  rc=$?
  grep -E "^(FAIL|INFO|SKIP|SUMMARY)|^PASS enqueue" "$logs/harness-$tag.log"
  echo "harness $tag exit $rc"
  [ $rc -eq 0 ] || status=1
done
exit $status
