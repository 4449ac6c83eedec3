#!/usr/bin/env bash
# Regenerate the bundled demo weights (vivim/assets/demo_tiny.safetensors) and demo clip (vivim/assets/demo_clip.mp4)
# on a CPU. Synthetic data only: the result is for demos and software tests, not for clinical use.
# See vivim/assets/DEMO_WEIGHTS.md for the numbers the shipped files reached.
set -euo pipefail
WORK=${WORK:-runs/demo}
mkdir -p "$WORK"
export OMP_NUM_THREADS=1   # one intra-op thread: fastest on a small, busy CPU

# training videos (seed 7): indices 0-47 for stage 1, 0-95 for stage 2; 8 held-out test videos (indices 1000-1007)
vivim-data synth "$WORK/train" --videos 48 --frames 20 --size 128 --seed 7 --no-mp4 --overwrite
vivim-data synth "$WORK/train96" --videos 96 --frames 20 --size 128 --seed 7 --no-mp4 --overwrite
vivim-data synth "$WORK/test" --videos 8 --frames 30 --size 128 --seed 7 --first-index 1000 --no-mp4 --overwrite

# stage 1: tiny variant at 64x64, T=5, from scratch (no SegFormer weights), lr 1e-3, 6 epochs
vivim-train --data "$WORK/train" --variant tiny --size 64 --frames 5 --epochs 6 --batch 8 --workers 0 \
  --lr 1e-3 --val-fraction 0.1 --seed 1234 --threads 1 --out "$WORK/stage1.safetensors" --overwrite
# stage 2: twice the videos, lr 3e-4, 3 epochs, starting from stage 1
vivim-train --data "$WORK/train96" --variant tiny --size 64 --frames 5 --epochs 3 --batch 8 --workers 0 \
  --lr 3e-4 --val-fraction 0.1 --seed 1234 --threads 1 --init "$WORK/stage1.safetensors" --out "$WORK/demo64.safetensors" --overwrite

# held-out score (the number recorded in DEMO_WEIGHTS.md)
vivim-eval "$WORK/demo64.safetensors" --data "$WORK/test" --json "$WORK/demo64.test.json" --threads 1

# demo clip: held-out video index 9002 of seed 7 (convex probe, one cyst-like lesion), 60 frames, 128x128
python - "$WORK" <<'PY'
import sys
from pathlib import Path
from vivim.data.image_io import write_video
from vivim.data.synthetic import make_video
video = make_video(7, 9002, frames=60, size=128)
write_video(Path(sys.argv[1]) / "demo_clip.mp4", video.frames, fps=25.0)
PY
echo "copy $WORK/demo64.safetensors to vivim/assets/demo_tiny.safetensors and $WORK/demo_clip.mp4 to vivim/assets/"
