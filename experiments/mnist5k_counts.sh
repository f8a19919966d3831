#!/usr/bin/env bash
# The MNIST-5k sample-efficiency study (experiments/mnist5k_counts.py), most decisive runs first, so a
# stopped run leaves the comparisons that matter most complete. Stages cache under WORK (default
# var/mnist5k, shared with experiments/mnist5k.py); a rerun finishes what is missing. JOBS runs at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
JOBS=${JOBS:-2}
WORK=${WORK:-var/mnist5k}
# The label of this work directory's runs in the report: one training of the generator on one machine. The
# recorded runs are replicates 1 and 2; a new work directory or machine is a new replicate.
REPLICATE=${REPLICATE:?set REPLICATE to label this run of the study (recorded: 1 and 2)}
export OMP_NUM_THREADS=1
study() { "$PY" experiments/mnist5k.py --work "$WORK" "$@"; }
counts() { "$PY" experiments/mnist5k_counts.py --work "$WORK" "$@"; }
study generator                                      # DDPM on R, labeller, judge, gate 2
counts mild                                          # the mild setting, on sample metrics only
counts sets                                          # each method's 5000 images from one x_T
plan() {  # one "kind method count seed" line per run, in priority order
  for seed in 0 1 2; do echo "real - - $seed"; done
  for seed in 0 1 2; do for n in 500 1000; do for m in vanilla cdp-mild cdp-paper; do echo "count $m $n $seed"; done; done; done
  for seed in 0 1 2; do echo "count vanilla 2000 $seed"; echo "count vanilla 5000 $seed"; echo "count cdp-mild 2000 $seed"; echo "count cdp-mild 5000 $seed"; done
  for seed in 3 4; do echo "real - - $seed"; for n in 500 1000; do for m in vanilla cdp-mild cdp-paper; do echo "count $m $n $seed"; done; done; done
  for seed in 0 1 2 3 4; do for n in 500 1000; do echo "count cdp-mild-robust $n $seed"; done; done
  for seed in 0 1 2; do echo "count cdp-paper 2000 $seed"; echo "count cdp-paper 5000 $seed"; echo "count cdp-mild-robust 2000 $seed"; echo "count cdp-mild-robust 5000 $seed"; done
}
one() {  # kind method count seed
  if [ "$1" = real ]; then study run --arm "R (3x steps)" --seed "$4"; else counts run --method "$2" --count "$3" --seed "$4"; fi
}
export -f one study counts
export PY WORK
plan | xargs -P "$JOBS" -L 1 bash -c 'one "$@" | tail -n 1' _
counts report --replicate "$REPLICATE"
