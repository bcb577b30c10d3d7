#!/usr/bin/env bash
# Stage 2 (instruction tuning) with AnyGPT's hyper-parameters (config/train/stage2_sft.yaml) on
# its instruction data (data/instruction/, or DATA). Start from a stage-1 bundle.
#
#   MAX_STEPS=4 scripts/stage2_sft.sh --model runs/stage1_pretrain/final      # smoke run on the CPU
#   ACCELERATE_CONFIG=config/train/accelerate_deepspeed_zero3.yaml scripts/stage2_sft.sh --model B
#
# Environment (all optional; flags given as arguments win):
#   MODEL, OUTPUT_DIR, DATA (one dataset spec per line: PATH[,group=G]), MIXTURE, TEMPLATE
#   (mmgpt|anygpt), MAX_STEPS, LR, MAX_LENGTH, BATCH_SIZE, GRAD_ACCUM, SAVE_STEPS, EVAL_STEPS,
#   VAL_SET_SIZE, PRECISION, SEED, CONFIG, ACCELERATE_CONFIG, PYTHON, DRY_RUN=1 (print only).
# Extra arguments go to 'anygpt sft' (see 'anygpt sft --help'); --data adds a dataset.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
CONFIG="${CONFIG:-$ROOT/config/train/stage2_sft.yaml}"
DATA="${DATA:-$ROOT/data/instruction/anyinstruct_speech.jsonl}"

args=(sft --config "$CONFIG")
while IFS= read -r spec; do
  [ -n "$spec" ] && args+=(--data "$spec")
done <<< "$DATA"
opt() { if [ -n "${!1:-}" ]; then args+=("$2" "${!1}"); fi; }
opt MODEL --model
opt OUTPUT_DIR --output-dir
opt MIXTURE --mixture
opt TEMPLATE --template
opt MAX_STEPS --max-steps
opt LR --learning-rate
opt MAX_LENGTH --model-max-length
opt BATCH_SIZE --per-device-train-batch-size
opt GRAD_ACCUM --gradient-accumulation-steps
opt SAVE_STEPS --save-steps
opt EVAL_STEPS --eval-steps
opt VAL_SET_SIZE --val-set-size
opt PRECISION --precision
opt SEED --seed

cmd=("$PYTHON" -m anygpt "${args[@]}" "$@")
if [ -n "${ACCELERATE_CONFIG:-}" ]; then
  cmd=("$PYTHON" -m accelerate.commands.launch --config_file "$ACCELERATE_CONFIG" -m anygpt
       "${args[@]}" "$@")
fi
if [ -n "${DRY_RUN:-}" ]; then  # print the command instead of running it
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
