#!/usr/bin/env bash
# Reproduces the weights shipped in src/emorig/weights/demo (used by `emorig demo`):
#   stage1-small64: the small 64 px DiffusionRig model, stage 1 on 2000 synthetic faces;
#   encoder64:      a ResNet-18 DECA-style encoder for the built-in head, supervised on the same
#                   faces (re-reconstructs 64 px edits in the demo's evaluation).
# Both train on synthetic renders of the built-in head only. On 2 CPU cores: ~40 min and
# ~20 min (run one thread each, side by side). Weights are stored as float16 to stay small.
set -euo pipefail
runs=${1:-runs}
export OMP_NUM_THREADS=1
emorig synth --mode random --count 2000 --size 64 --seed 100 --emotions --prepared \
    --out "$runs/synth64" --batch-size 64
emorig train diffusion --stage stage1 --data "$runs/synth64/prepared" --out "$runs/stage1-small64" \
    --model small --steps 1500 --batch-size 8 --lr 5e-4 --ema 0.995 --save-every 100 \
    --sample-every 300 --cpu &
emorig train reconstruct --stage synthetic --data "$runs/synth64/prepared" --out "$runs/encoder64" \
    --backbone resnet18 --width 16 --steps 1500 --batch-size 16 --lr 1e-3 --save-every 100 \
    --sample-every 500 --cpu &
wait
python -m emorig.weights.pack "$runs/stage1-small64/model" src/emorig/weights/demo/stage1-small64
python -m emorig.weights.pack "$runs/encoder64/model" src/emorig/weights/demo/encoder64
