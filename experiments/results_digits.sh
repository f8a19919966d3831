#!/usr/bin/env bash
# Regenerates the "TRADES on digits" section of docs/RESULTS.md (about 15 minutes on one CPU core).
# The models come from the "Diffusion and classifier on digits" section; they are trained here if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
CDP=.venv/bin/cdp
PY=.venv/bin/python

if [ ! -f var/models/digits-classifier/model.safetensors ]; then
  $CDP train classifier --dataset digits --epochs 30 --seed 0 --out var/models/digits-classifier \
      --augment --lr 2e-3 --json > /dev/null
fi
if [ ! -f var/models/digits-diffusion/model_index.json ]; then
  $CDP train diffusion --dataset digits --epochs 200 --seed 0 --out var/models/digits-diffusion \
      --batch-size 64 --lr 2e-3 --time-limit 540 --json > /dev/null
fi

# main table: 1500 vanilla DDIM and 1500 Contrastive-DP images (lambda 1e3), 70 % synthetic per batch
$PY experiments/results_digits.py --out docs/data/trades-digits.json
# ablations, reusing the cached runs and samples: 30 % synthetic per batch; stronger guidance (lambda 1e4)
$PY experiments/results_digits.py --synthetic-fraction 0.3 --out docs/data/trades-digits-f0.3.json
$PY experiments/results_digits.py --lam 1e4 --out docs/data/trades-digits-lam1e4.json
# AutoAttack standard on the seed-0 model of each arm of the main table (needs the autoattack extra)
for run in real-seed0 vanilla-seed0 cdp-seed0; do
  $CDP evaluate var/results-digits/trades/$run --dataset digits --split test --eps 0.1 --steps 20 \
      --autoattack --device cpu --json > docs/data/trades-digits-autoattack-$run.json
done
