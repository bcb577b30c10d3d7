#!/usr/bin/env bash
# Stage 1 (modality-text pretraining) with AnyGPT's hyper-parameters
# (config/train/stage1_pretrain.yaml) on its data files (data/pretrain/, or DATA).
#
#   MAX_STEPS=4 scripts/stage1_pretrain.sh --model /tmp/bundle             # smoke run on the CPU
#   ACCELERATE_CONFIG=config/train/accelerate_fsdp.yaml scripts/stage1_pretrain.sh --model BUNDLE
#
# Environment (all optional; flags given as arguments win):
#   MODEL, OUTPUT_DIR, DATA (one dataset spec per line: PATH[,group=G][,x2t=P]), MIXTURE
#   (GROUP=W,... or none), MAX_STEPS, LR, BLOCK_SIZE, BATCH_SIZE, GRAD_ACCUM, SAVE_STEPS,
#   EVAL_STEPS, VAL_SET_SIZE, PRECISION (bf16|fp16|fp32), SEED, CONFIG (settings file),
#   ACCELERATE_CONFIG (launch through 'accelerate launch'), PYTHON, DRY_RUN=1 (print, do not run).
# Extra arguments go to 'anygpt pretrain' (see 'anygpt pretrain --help'); --data adds a dataset.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
CONFIG="${CONFIG:-$ROOT/config/train/stage1_pretrain.yaml}"
D="$ROOT/data/pretrain"
# AnyGPT's stage-1 sets; the three speech sets are pooled as in AnyGPT (laion2b was not used)
DATA="${DATA:-$D/music/music-1m.jsonl,group=music
$D/speech/mls.jsonl,group=speech
$D/speech/commonvoice.jsonl,group=speech
$D/speech/gigaspeech.jsonl,group=speech
$D/image/laion-coco-caption.jsonl,group=image-caption
$D/image/journeydb.jsonl,group=image-generation
$D/image/laion_aesthetics_6plus_8m.jsonl,group=image-generation}"

args=(pretrain --config "$CONFIG")
while IFS= read -r spec; do
  [ -n "$spec" ] && args+=(--data "$spec")
done <<< "$DATA"
opt() { if [ -n "${!1:-}" ]; then args+=("$2" "${!1}"); fi; }
opt MODEL --model
opt OUTPUT_DIR --output-dir
opt MIXTURE --mixture
opt MAX_STEPS --max-steps
opt LR --learning-rate
opt BLOCK_SIZE --block-size
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
