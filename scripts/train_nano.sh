#!/usr/bin/env bash
# Reproduce models/anygpt-nano from nothing: world -> modality tokenizers -> text tokenizer and LLM
# -> stage 1 -> stage 2 -> stages 3-6 (clips; speech; pictures weighted up; fresh pictures) -> bundle
# -> evaluation.
# Every step is an `anygpt` command a user can run.
#
#   bash scripts/train_nano.sh                 # the shipped recipe (about 5 hours on 2 CPU cores)
#   TINY=1 OUT=/tmp/nano bash scripts/train_nano.sh   # a minutes-long run of every step (CI)
#
# WORK holds the world, tokenized data and checkpoints; OUT receives the finished bundle.  A step
# whose result exists is skipped, so an interrupted run continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
A=.venv/bin/anygpt
TINY=${TINY:-0}
WORK=${WORK:-work/nano}
OUT=${OUT:-models/anygpt-nano}
THREADS=${THREADS:-2}
# torch takes every core by default; two jobs doing so on a shared machine slow each other 10x
export OMP_NUM_THREADS=$THREADS
mkdir -p "$WORK"

if [ "$TINY" = 1 ]; then
  WORLD_ARGS="--tiny"
  IMAGE_ARGS="--steps 4 --batch-size 4"
  MUSIC_ARGS="--steps 4 --batch-size 2 --crop-s 0.5"
  SPEECH_ARGS="--size tiny --units 32 --recogniser-steps 4 --vocoder-steps 4 --kmeans-iters 2 --batch-size 2"
  LLM_ARGS="--vocab-size 400 --hidden 64 --layers 2 --heads 4 --kv-heads 2"
  PRE_ARGS="--max-steps 4 --save-steps 2 --eval-steps 2 --val-set-size 1 --per-device-train-batch-size 2"
  SFT_ARGS="--max-steps 4 --save-steps 2 --eval-steps 2 --val-set-size 1 --per-device-train-batch-size 2"
  CLIP_ARGS="$SFT_ARGS --num-examples 40"
  REBALANCE_ARGS="$SFT_ARGS --num-examples 40"
  PICTURE_ARGS="$SFT_ARGS --num-examples 40"
  FRESH_WORLD_ARGS="--tiny"
  FRESH_ARGS="$SFT_ARGS --num-examples 40"
  EVAL_LIMIT=2
else
  WORLD_ARGS=""
  IMAGE_ARGS="--steps ${IMAGE_STEPS:-4000}"
  MUSIC_ARGS="--steps ${MUSIC_STEPS:-3000}"
  SPEECH_ARGS="${SPEECH_EXTRA:-}"
  LLM_ARGS="--vocab-size 1024"
  PRE_ARGS="--max-steps ${PRETRAIN_STEPS:-800}"
  SFT_ARGS="--max-steps ${SFT_STEPS:-1400}"
  CLIP_ARGS="--max-steps ${CLIP_STEPS:-1600} --num-examples 40000"
  REBALANCE_ARGS="--max-steps ${REBALANCE_STEPS:-800} --num-examples 20000"
  PICTURE_ARGS="--max-steps ${PICTURE_STEPS:-1000} --num-examples 24000"
  FRESH_WORLD_ARGS="--images 48000 --speech 1 --music 1 --videos 1 --background 1 --dialogues 1"
  FRESH_ARGS="--max-steps ${FRESH_STEPS:-1600} --num-examples 48000"
  EVAL_LIMIT=${EVAL_LIMIT:-50}
fi

step() { echo; echo "== $(date +%H:%M:%S) $*"; }
W=$WORK/world
T=$WORK/tokenizers

step "world"
[ -f "$W/world.json" ] || $A world "$W" --seed 0 $WORLD_ARGS

step "image tokenizer (VQ)"
[ -f "$T/image/config.json" ] || $A train-tokenizer image "$W/train/image.jsonl" --out "$T/image" \
  --val-data "$W/heldout/image.jsonl" $IMAGE_ARGS
step "music tokenizer (EnCodec architecture)"
[ -f "$T/music/config.json" ] || $A train-tokenizer music "$W/train/music.jsonl" --out "$T/music" \
  --threads "$THREADS" $MUSIC_ARGS
step "speech tokenizer (recogniser units + unit vocoder)"
[ -f "$T/speech/nano_speech.json" ] || $A train-tokenizer speech "$W/train/speech.jsonl" --out "$T/speech" \
  --threads "$THREADS" $SPEECH_ARGS
[ -f "$T/bundle/bundle.json" ] || $A bundle-tokenizers "$T/bundle" \
  "image=vq-image:$T/image" "music=encodec:$T/music" \
  "speech=nano-units:model=$T/speech/nano_speech.safetensors,config=$T/speech/nano_speech.json"

step "text tokenizer and a random LLaMA"
CORPUS=$WORK/corpus.txt
[ -f "$CORPUS" ] || .venv/bin/python -m anygpt.world.corpus "$W/train" "$CORPUS"
[ -f "$WORK/llm0/config.json" ] || $A init-llm "$WORK/llm0" --corpus "$CORPUS" $LLM_ARGS
[ -f "$WORK/bundle0/bundle.json" ] || $A extend-vocab "$WORK/llm0" "$WORK/bundle0" \
  --modalities image,speech,music --modality-files "$T/bundle" --copy-modalities --video

step "tokenize the world"
D=$WORK/data
mkdir -p "$D"
for m in image speech music; do
  $A tokenize "$W/train/$m.jsonl" --model "$WORK/bundle0" -o "$D/$m.jsonl" --device cpu
done
[ -f "$D/dialogues.jsonl" ] || $A tokenize-chat "$W/train/dialogues.jsonl" --model "$WORK/bundle0" -o "$D/dialogues.jsonl" --device cpu
[ -f "$D/video.jsonl" ] || $A tokenize-chat "$W/train/video_dialogues.jsonl" --model "$WORK/bundle0" -o "$D/video.jsonl" --device cpu

step "stage 1: pretraining"
[ -f "$WORK/pretrain/final/bundle.json" ] || $A pretrain --config config/train/nano_pretrain.yaml \
  --model "$WORK/bundle0" --output-dir "$WORK/pretrain" --num-threads "$THREADS" \
  --data "$D/image.jsonl,group=image,x2t=0.5" --data "$D/speech.jsonl,group=speech" \
  --data "$D/music.jsonl,group=music" $PRE_ARGS
step "stage 2: instruction tuning (with stage 1 replayed)"
[ -f "$WORK/sft/final/bundle.json" ] || $A sft --config config/train/nano_sft.yaml \
  --model "$WORK/pretrain/final" --output-dir "$WORK/sft" --num-threads "$THREADS" \
  --data "$D/dialogues.jsonl" --data "$D/image.jsonl,group=image,x2t=0.5" \
  --data "$D/speech.jsonl,group=speech" --data "$D/music.jsonl,group=music" $SFT_ARGS

# Stages 3 to 5 go on from stage 2 at lower learning rates.  Stage 3 sees every training clip
# described and asked about; stage 4 rebalances towards speech generation (text -> speech pairs
# weighted up), which stage 3's clip-heavy mixture had let slip (0.85 -> 0.69 recognised); stage 5
# weights the picture pairs up (captioning 0.40 -> 0.54), replaying everything else.
PAIRS="--data $D/image.jsonl,group=image,x2t=0.5 --data $D/music.jsonl,group=music"
step "stage 3: clips (with the conversations and stage 1's pairs)"
[ -f "$WORK/clips/final/bundle.json" ] || $A sft --config config/train/nano_sft.yaml \
  --model "$WORK/sft/final" --output-dir "$WORK/clips" --num-threads "$THREADS" --learning-rate 5e-4 \
  --data "$D/video.jsonl,group=video" --data "$D/dialogues.jsonl,group=dialogues" \
  --data "$D/speech.jsonl,group=speech" $PAIRS \
  --mixture video=0.4,dialogues=0.33,image=0.1,speech=0.11,music=0.06 $CLIP_ARGS
step "stage 4: speech rebalanced"
[ -f "$WORK/rebalance/final/bundle.json" ] || $A sft --config config/train/nano_sft.yaml \
  --model "$WORK/clips/final" --output-dir "$WORK/rebalance" --num-threads "$THREADS" --learning-rate 3e-4 \
  --data "$D/video.jsonl,group=video" --data "$D/dialogues.jsonl,group=dialogues" \
  --data "$D/speech.jsonl,group=speech,x2t=0.3" $PAIRS \
  --mixture video=0.3,dialogues=0.25,speech=0.25,image=0.12,music=0.08 $REBALANCE_ARGS
step "stage 5: pictures weighted up"
[ -f "$WORK/pictures/final/bundle.json" ] || $A sft --config config/train/nano_sft.yaml \
  --model "$WORK/rebalance/final" --output-dir "$WORK/pictures" --num-threads "$THREADS" --learning-rate 3e-4 \
  --data "$D/image.jsonl,group=image,x2t=0.5" --data "$D/dialogues.jsonl,group=dialogues" \
  --data "$D/speech.jsonl,group=speech,x2t=0.3" --data "$D/video.jsonl,group=video" \
  --data "$D/music.jsonl,group=music" \
  --mixture image=0.45,dialogues=0.2,speech=0.15,video=0.12,music=0.08 $PICTURE_ARGS

# Stage 6 draws its picture pairs from a world of 48,000 pictures (pictures only, the same seed, so
# the same held-out split; the first 12,000 are the main world's, the rest new to the LLM): stage 5
# had seen its 3,000 pictures several times each, and more steps on them stopped helping.
step "stage 6: fresh pictures"
P=$WORK/pictures-world
[ -f "$P/world.json" ] || $A world "$P" --seed 0 $FRESH_WORLD_ARGS
[ -f "$D/fresh-pictures.jsonl" ] || $A tokenize "$P/train/image.jsonl" --model "$WORK/bundle0" \
  -o "$D/fresh-pictures.jsonl" --device cpu
[ -f "$WORK/fresh/final/bundle.json" ] || $A sft --config config/train/nano_sft.yaml \
  --model "$WORK/pictures/final" --output-dir "$WORK/fresh" --num-threads "$THREADS" --learning-rate 2e-4 --seed 44 \
  --data "$D/fresh-pictures.jsonl,group=image,x2t=0.5" --data "$D/dialogues.jsonl,group=dialogues" \
  --data "$D/speech.jsonl,group=speech,x2t=0.3" --data "$D/video.jsonl,group=video" \
  --data "$D/music.jsonl,group=music" \
  --mixture image=0.45,dialogues=0.2,speech=0.15,video=0.12,music=0.08 $FRESH_ARGS

step "bundle -> $OUT"
.venv/bin/python -m anygpt.world.ship "$WORK/fresh/final" "$OUT" --world "$W"

step "evaluation"
$A eval --model "$OUT" --world "$W" --limit "$EVAL_LIMIT" --json "$WORK/eval.json"
