#!/usr/bin/env bash
# Reproduces the weights shipped in src/emorig/weights/demo (used by `emorig demo`), exactly as
# they were made (each step's batch, timesteps and noise depend only on the seed and the step):
#   stage1-small64: the small 64 px DiffusionRig model: 600 steps with P2 weighting, then 900
#                   steps of plain epsilon MSE (gamma 0) from those weights, which learns the
#                   low-noise steps a short CPU run otherwise leaves noisy; shipped as the EMA.
#   encoder64:      a ResNet-18 DECA-style encoder for the built-in head, supervised on the same
#                   faces (re-reconstructs 64 px edits in the demo's evaluation).
# All training data are synthetic renders of the built-in head. On 2 CPU cores, one thread
# each, side by side: about 45 min (diffusion) and 15 min (encoder). Weights ship as float16.
set -euo pipefail
runs=${1:-runs}
export OMP_NUM_THREADS=1
emorig synth --mode random --count 2000 --size 64 --seed 100 --emotions --prepared \
    --out "$runs/synth64" --batch-size 64
emorig train reconstruct --stage synthetic --data "$runs/synth64/prepared" --out "$runs/encoder64" \
    --backbone resnet18 --width 16 --steps 1500 --batch-size 16 --lr 1e-3 --save-every 100 \
    --sample-every 500 --cpu &
emorig train diffusion --stage stage1 --data "$runs/synth64/prepared" --out "$runs/stage1-p2" \
    --model small --steps 600 --batch-size 8 --lr 5e-4 --ema 0.995 --save-every 100 \
    --sample-every 300 --cpu
python -m emorig.train.export "$runs/stage1-p2/checkpoint-00000600.pt" \
    "$runs/stage1-p2-600"
emorig train diffusion --stage stage1 --data "$runs/synth64/prepared" --out "$runs/stage1b" \
    --init "$runs/stage1-p2-600" --steps 900 --batch-size 8 --lr 5e-4 --p2-gamma 0 --ema 0.99 \
    --save-every 100 --sample-every 300 --seed 1 --cpu
wait
python -m emorig.weights.pack "$runs/stage1b/model" src/emorig/weights/demo/stage1-small64
python -m emorig.weights.pack "$runs/encoder64/model" src/emorig/weights/demo/encoder64
