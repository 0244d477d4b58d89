#!/usr/bin/env bash
# Reproduces the autoencoders shipped in src/emorig/weights/autoencoder (builtin-f4, builtin-f8)
# for latent DiffusionRig-EMO. Training data: 1600 SYNTHETIC renders of the built-in head at
# 256 px (the last 64 held out for the PSNR and the scaling factor written to training.json).
# Every step's crops depend only on the seed and the step, so a rerun gives the same weights
# up to floating-point summation order (a run stopped and resumed gives the same steps).
# On 2 CPU cores, one thread each, side by side: about 55 min for f = 8 (1600 steps, held-out
# PSNR 24.7 dB) and 50 min for f = 4 (1400 steps, 24.9 dB). Weights ship as float16.
set -euo pipefail
runs=${1:-runs}
export OMP_NUM_THREADS=1
emorig synth --mode random --count 1600 --size 256 --seed 200 --emotions --prepared \
    --out "$runs/synth256" --batch-size 32
for fs in 8:1600 4:1400; do
    f=${fs%:*}
    emorig train autoencoder --data "$runs/synth256/prepared" --out "$runs/ae-f$f" --factor $f \
        --steps "${fs#*:}" --batch-size 8 --crop 96 --lr 1e-3 --save-every 50 --cpu &
done
wait
for f in 8 4; do
    python -m emorig.weights.pack "$runs/ae-f$f/model" "src/emorig/weights/autoencoder/builtin-f$f"
done
