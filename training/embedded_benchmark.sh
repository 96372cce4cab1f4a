#!/usr/bin/env bash
# Issue 4's embedded benchmark in one command. For each model of README's table: train it (a killed run continues
# from its last epoch), then evaluate it with the evaluator's default suite (FGSM, PGD-10/20, APGD-CE, APGD-T with 9
# targets, AutoAttack-style worst case, sanity checks) on the 1,000 embedded test digits at ε = 0.1, 0.2, 0.3 (the
# robustness-vs-ε curve), the Identity model with a clean head as transfer source, into
# outputs/embedded-benchmark/<run>; a killed evaluation continues with the batches it saved (--resume). The
# per-model reports are then merged into one table, plots and sanity report in outputs/embedded-benchmark.
# Then the cross-dataset transfer: embedded-best's purifier in front of a head trained on sklearn's digits, against
# Identity, on the digits' 360 test images, in outputs/digits-transfer-benchmark.
#
# A model whose outputs/embedded-benchmark/<run>/eval.json exists is neither trained nor evaluated again, so the
# benchmark can be spread over several sessions, and `cp -r training/results/embedded-benchmark outputs/` reuses
# the recorded reports (delete a report to redo its model).
#
#     bash training/embedded_benchmark.sh         # many CPU-hours on 2 cores; ACCELERATE_ARGS="..." for accelerate
#     bash training/embedded_benchmark.sh RUN...  # only these models (e.g. two shells, one core each); the table
#                                                 # and the transfer pair are made once every model has a report
#
# Two shells at once must not share a model, nor train the same purifier: list a -clean-head run after its robust
# twin in the same shell, and let one shell train embedded-identity-clean-head (the transfer source) first.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCHMARK=outputs/embedded-benchmark
TRANSFER_SOURCE=embedded-identity-clean-head

train() {
  local run=$1 resume=()
  [ -d "outputs/$run" ] && return
  [ -d "outputs/$run.work/checkpoints" ] && resume=(--resume_from_checkpoint latest)
  # shellcheck disable=SC2086  # ACCELERATE_ARGS holds several words on purpose
  accelerate launch ${ACCELERATE_ARGS:-} training/train.py --config "training/configs/$run.yaml" "${resume[@]}"
}

evaluate() {
  # shellcheck disable=SC2086
  accelerate launch ${ACCELERATE_ARGS:-} training/evaluate_robustness.py --resume "$@"
}

# Each robust-head run trains a purifier; its -clean-head twin reuses it (purifier_from) under a clean head.
runs=()
for model in identity ae best lambda1 lambda10 purifier-features; do
  runs+=("embedded-$model" "embedded-$model-clean-head")
done

for run in "$@"; do
  [[ " ${runs[*]} " == *" $run "* ]] || { echo "unknown model '$run': expected some of ${runs[*]}" >&2; exit 2; }
done

for run in "${@:-${runs[@]}}"; do
  [ -f "$BENCHMARK/$run/eval.json" ] && continue
  train "$TRANSFER_SOURCE"
  source_run=$(sed -n 's|^purifier_from: outputs/||p' "training/configs/$run.yaml")
  [ -n "$source_run" ] && train "$source_run"
  train "$run"
  evaluate --model "outputs/$run" --epsilons 0.1 0.2 0.3 --transfer_from "outputs/$TRANSFER_SOURCE" \
    --output_dir "$BENCHMARK/$run"
done
for run in "${runs[@]}"; do
  [ -f "$BENCHMARK/$run/eval.json" ] || { echo "$run has no report yet: table not made"; exit 0; }
done
python training/evaluate_robustness.py --merge "${runs[@]/#/$BENCHMARK/}" --output_dir "$BENCHMARK"

if [ ! -f outputs/digits-transfer-benchmark/eval.json ]; then
  for run in embedded-best digits-identity digits-transfer; do train "$run"; done
  evaluate --model outputs/digits-transfer outputs/digits-identity --dataset sklearn-digits \
    --transfer_from outputs/digits-identity --output_dir outputs/digits-transfer-benchmark
fi
