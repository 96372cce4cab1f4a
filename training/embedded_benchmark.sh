#!/usr/bin/env bash
# Issue 4's embedded benchmark in one command. Trains every model of README's table that outputs/ does not hold
# yet (a killed run continues from its last epoch), then evaluates them with the evaluator's default suite (FGSM,
# PGD-10/20, APGD-CE, APGD-T with 9 targets, AutoAttack-style worst case, sanity checks) on the 1,000 embedded test
# digits at ε = 0.1, 0.2, 0.3 (the robustness-vs-ε curve), the Identity model with a clean head as transfer source.
# Then the cross-dataset transfer: embedded-best's purifier in front of a head trained on sklearn's digits, against
# Identity, on the digits' 360 test images. A killed evaluation continues with the batches it saved (--resume).
#
#     bash training/embedded_benchmark.sh         # many CPU-hours on 2 cores; ACCELERATE_ARGS="..." for accelerate
set -euo pipefail
cd "$(dirname "$0")/.."

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

# Robust-head runs train the purifier; their -clean-head twins reuse it (purifier_from) under a clean head.
runs=(
  embedded-identity-clean-head embedded-identity
  embedded-ae embedded-ae-clean-head
  embedded-best embedded-best-clean-head
  embedded-lambda1 embedded-lambda1-clean-head
  embedded-lambda10 embedded-lambda10-clean-head
  embedded-purifier-features embedded-purifier-features-clean-head
)
for run in "${runs[@]}"; do train "$run"; done
evaluate --model "${runs[@]/#/outputs/}" --epsilons 0.1 0.2 0.3 \
  --transfer_from outputs/embedded-identity-clean-head --output_dir outputs/embedded-benchmark

for run in digits-identity digits-transfer; do train "$run"; done
evaluate --model outputs/digits-transfer outputs/digits-identity --dataset sklearn-digits \
  --transfer_from outputs/digits-identity --output_dir outputs/digits-transfer-benchmark
