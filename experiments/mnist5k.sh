#!/usr/bin/env bash
# The whole MNIST-5k study (docs/RESULTS.md), in protocol order, from a fresh clone after `make install`.
# Stages cache under var/mnist5k, so a rerun finishes what is missing; JOBS runs that many TRADES runs at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
JOBS=${JOBS:-2}
export OMP_NUM_THREADS=1
run() { "$PY" experiments/mnist5k.py "$@"; }
for seed in 0 1 2; do run gate1 --seed "$seed"; done          # gate 1: R/2, R, R+O (validation only)
for seed in 0 1 2; do run gate1 --seed "$seed" --longer; done # R, R+O at 3x the steps
run generator                                                   # the class-conditional DDPM on R, labeller, judge; gate 2
run gates                                                       # docs/data/mnist5k-gates.json, figures
if ! "$PY" -c 'import json, sys; sys.exit(0 if json.load(open("var/mnist5k/gate2.json"))["passed"] else 1)'; then
  echo "gate 2 failed (var/mnist5k/gate2.json): no sweep and no arms until the generator passes" >&2
  exit 3
fi
run sweep                                                       # Contrastive-DP configurations -> frozen.json
arms=("R (3x steps)" "R+O (3x steps)" "R+vanilla@0.3" "R+vanilla@0.7" "R+CDP@0.3" "R+CDP@0.7" "R+CDP@eq3")
run sets                                                        # vanilla and Contrastive-DP, same x_T
for arm in "${arms[@]}"; do for seed in 0 1 2; do printf '%s\0%s\0' "$arm" "$seed"; done; done |
  xargs -0 -n 2 -P "$JOBS" sh -c '"$0" experiments/mnist5k.py run --arm "$1" --seed "$2"' "$PY"
run report
