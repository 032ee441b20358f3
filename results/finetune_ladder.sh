#!/usr/bin/env bash
# Needle fine-tuning, one change at a time (README: "Does the memory remember?"). Each call fine-tunes one
# pretrained `small` checkpoint of results/reproduce_small.sh and runs the passkey sweep on the result:
#
#   bash results/finetune_ladder.sh NAME INIT [finetune.py flags that differ from the base recipe]
#
# writes $RES/finetune_NAME.jsonl and $RES/passkey_NAME_finetuned.json. INIT is infini | local | full
# ($RUNS/INIT/ckpt.pt). The base recipe is round 1's (P1's scaled down, reproduce_small.sh's evaluate
# stage until round 3: 300 steps of 16 x 4096 tokens, packed rows, loss on every token, lr 7.5e-4, beta lr
# 1.5e-4; evaluate now passes round 3's flags on top of it), run eager unless COMPILE=1 (a curriculum
# changes the row shape, so each stage compiles anew. Measured on the H100, rows of 2048 four at a time:
# eager ~120K tok/s, compiled 260-320K; eager rows of 4096, ~240K; pretraining, compiled, 4 x 8192, 704K).
# The commands run (round 1; round 2: results/memory_pipeline2.sh), on one H100, <folder> the folder the
# results were written to:
#   WHICH="infini local" RES=<folder> bash results/reproduce_small.sh pretrain
#   WHICH=full RES=<folder> bash results/reproduce_small.sh pretrain
#   bash results/finetune_ladder.sh infini_rows infini --pack=0
#   bash results/finetune_ladder.sh infini_curric infini --pack=0 --curriculum=1024,2048
#   ...                                                (the README's table lists every rung and its flags)
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:?usage: finetune_ladder.sh NAME INIT [flags]}
INIT=${2:?usage: finetune_ladder.sh NAME INIT [flags]}
shift 2
RUNS=${RUNS:-/tmp/repro}
RES=${RES:-out/finetune_ladder}    # the committed results/small was written with RES=results/small
LENGTHS=${LENGTHS:-"1024 2048 4096 8192 16384 32768"}
SAMPLES=${SAMPLES:-20}
export PYTHONUNBUFFERED=1
[ -d .carry/tiktoken_cache ] && export TIKTOKEN_CACHE_DIR=$PWD/.carry/tiktoken_cache
mkdir -p "$RES"
t0=$(date +%s)
python finetune.py --init=$RUNS/$INIT/ckpt.pt --out_dir=$RUNS/ft_$NAME --steps=300 --seq_len=4096 \
  --batch_size=4 --grad_accum=4 --lr=7.5e-4 --min_lr=7.5e-5 --warmup=30 --beta_lr=1.5e-4 --filler=p2 \
  --data_dir=${DATA:-.carry/data} --eval_every=100 --ckpt_every=300 --log_every=25 --device=${DEVICE:-cuda} --dtype=${DTYPE:-bfloat16} \
  --compile=${COMPILE:-0} "$@" > $RUNS/finetune_$NAME.txt 2>&1 || { tail -20 $RUNS/finetune_$NAME.txt; exit 1; }
grep -E "val_loss|step +299" $RUNS/finetune_$NAME.txt | tr '\n' ' '; echo
cp $RUNS/ft_$NAME/log.jsonl $RES/finetune_$NAME.jsonl
python passkey.py --ckpt=$RUNS/ft_$NAME/ckpt.pt --lengths $LENGTHS --depths 0 25 50 75 100 --samples $SAMPLES \
  --seed 0 --batch_size $SAMPLES --device=${DEVICE:-cuda} --out $RES/passkey_${NAME}_finetuned.json > $RUNS/passkey_$NAME.txt 2>&1 \
  || { tail -5 $RUNS/passkey_$NAME.txt; exit 1; }
head -8 $RUNS/passkey_$NAME.txt
echo "$NAME: $(( $(date +%s) - t0 )) s"
