#!/usr/bin/env bash
# A reduced-scale reproduction of P1 (arXiv 2512.23862) on one GPU, with the project's own scripts.
#
#   bash results/reproduce_small.sh prepare   # on CPU: offline corpus -> .carry/data (28M tokens)
#   bash results/reproduce_small.sh pretrain  # GPU: pretrain infini (delta, hard sigmoid), local, full
#   bash results/reproduce_small.sh evaluate  # GPU, same machine: passkey zero-shot, needle fine-tuning, passkey again
#   bash results/reproduce_small.sh plots     # on CPU: PNGs from the logs and passkey JSONs
#   bash results/reproduce_small.sh --help    # this list
#
# Where it writes: logs and JSONs (pretrain, evaluate) and PNGs (plots) go to RES (default
# out/reproduce_small, ignored by git); checkpoints to RUNS (default /tmp/repro). `plots` reads the logs
# from IN (default: RES if pretrain has written there, else the committed results/small), so on a fresh
# clone it redraws the committed figures into RES. The committed results/small is written only when asked:
# RES=results/small OVERWRITE=1 (OVERWRITE=1 also lets plots.py and passkey.py replace existing files).
# .carry/ (ignored by git) holds the prepared data and the GPT-2 tokenizer files; ../shared/data holds the
# source corpus (parquet files) and tokenizer cache.
#
# The committed pretraining logs came from these two commands, on one H100, one after the other on the
# same machine (each command was limited to 10 minutes, hence two); RES was the folder they were written to:
#   WHICH="infini local" RES=<folder> bash results/reproduce_small.sh pretrain     # 376 s
#   WHICH=full RES=<folder> bash results/reproduce_small.sh pretrain               # 201 s
# `evaluate` fine-tunes each model with the recipe that teaches the memory (README, "Does the memory
# remember?", part 4: `count`, segment 128, rows of 2 -> 4 -> 8 -> 16 segments, every needle in an earlier
# segment, 1000 steps of 64K tokens) through results/finetune_ladder.sh, and sweeps passkey at the fine-tune's
# segment. The committed results/small/{finetune,passkey}_*_finetuned files are those steps' output as run by
# results/memory_pipeline3.sh (infini and local on one machine, local2infini and full on another; each
# machine pretrained its models again with `pretrain`; 6-9 min a fine-tune with its sweep, two or three
# side by side on one H100). Each command we ran was limited to 10 minutes, and a GPU machine was ours for
# at most 30 minutes, after which its disk, checkpoints included, was gone. So, as the pipelines do, we
# started the stages in the background and checked on them with later commands, e.g.
#   (setsid nohup bash -c 'bash results/reproduce_small.sh pretrain; for a in infini local local2infini full;
#    do WHICH=$a bash results/reproduce_small.sh evaluate > /tmp/eval_$a.txt 2>&1 & done; wait' > /tmp/log.txt 2>&1 &)
# (~10 min for the three pretrainings, then ~12 min for the four fine-tunes side by side: estimated from the
# runs above, this exact command was not run). Without such limits, just run the stages in order.
# Round 1's recipe (P1's, scaled: 300 steps of 16 x 4096 packed rows, segment 1024; the memory learnt
# nothing) is finetune_ladder.sh's base recipe: `bash results/finetune_ladder.sh NAME INIT`; its results are
# in results/small/v1 (the first run), results/small/ladder and results/small/ft900 (900 steps).
#
# What is scaled down, and why (to fit 10-minute commands on a GPU machine held at most 30 minutes):
# - model: the "small" preset (8 layers, d 512, 8 heads of 64, SwiGLU 2048; 59M parameters without the
#   embedding table) instead of 300m; the sequence (8192) and segment (1024) are the study's, so every
#   training sequence is 8 segments, 7 compressions, as in P1.
# - pretraining: $STEPS steps of 4 x 8192 tokens (the study's batch) on 28M tokens of Wikipedia +
#   Gutenberg text (the offline stand-in for FineWeb), i.e. ~3.5 epochs, instead of 30K steps of FineWeb.
# - LRs: 10x the study's (infini 6e-4, baselines 1.2e-3: the same 2x ratio P1 needed for its baseline),
#   because a 59M model trained for 3K steps at 6e-5 barely leaves the unigram loss; beta keeps the
#   study's LRs (0.01 pretraining, 1.5e-4 fine-tuning).
# - fine-tuning: 1000 steps of 32 x 2048 tokens (study: 500 x 64 x 4096) at 7.5e-4 (10x), P2 filler, at
#   segment 128 (at the study's 1024 the answer loss never left the no-information guess: README part 4).
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { printf '%s\n' "usage: bash results/reproduce_small.sh STAGE   (settings: environment variables, see this file's header)" \
  "  prepare   on CPU: offline corpus -> .carry/data (28M tokens)" \
  "  pretrain  GPU: pretrain infini, local, full (WHICH: a subset); logs -> RES (default out/reproduce_small)" \
  "  evaluate  GPU, after pretrain on the same machine: passkey zero-shot, needle fine-tuning, passkey again" \
  "  plots     PNGs from the logs in IN (default RES, else the committed results/small) -> RES"; }
case ${1:-} in
  -h|--help) usage; exit 0 ;;
  prepare|pretrain|evaluate|plots) STAGE=$1 ;;
  "") usage >&2; exit 2 ;;
  *) echo "unknown stage $1" >&2; usage >&2; exit 2 ;;
esac
MODEL=${MODEL:-small}
STEPS=${STEPS:-3000}
SEQ=${SEQ:-8192}
SEG=${SEG:-1024}
LENGTHS=${LENGTHS:-"1024 2048 4096 8192 16384 32768"}
SAMPLES=${SAMPLES:-20}
EVAL_TOKENS=${EVAL_TOKENS:-262144}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
COMPILE=${COMPILE:-1}
DATA=${DATA:-.carry/data}
RUNS=${RUNS:-/tmp/repro}                # checkpoints: pretrain writes them, evaluate reads them
RES=${RES:-out/reproduce_small}         # the small outputs: logs, JSON, PNGs
OVERWRITE=${OVERWRITE:-0}               # 1: may replace existing files, results/small included
if [ "$(realpath -m "$RES")" = "$(realpath -m results/small)" ] && [ "$OVERWRITE" != 1 ]; then
  echo "error: RES=$RES holds the committed results; pass OVERWRITE=1 as well to replace them" >&2; exit 2
fi
export PYTHONUNBUFFERED=1
# prepare copies the GPT-2 tokenizer files next to the data; they win over a TIKTOKEN_CACHE_DIR that may lack them
[ -d .carry/tiktoken_cache ] && export TIKTOKEN_CACHE_DIR=$PWD/.carry/tiktoken_cache
mkdir -p "$RUNS" "$RES"
common="--device=$DEVICE --dtype=$DTYPE --compile=$COMPILE"

case $STAGE in
prepare)
  mkdir -p .carry/tiktoken_cache && cp ../shared/data/tiktoken_cache/* .carry/tiktoken_cache/
  export TIKTOKEN_CACHE_DIR=$PWD/.carry/tiktoken_cache
  python prepare_fineweb.py \
    --input ../shared/data/wikipedia_en_docs.parquet ../shared/data/gutenberg_en_docs.parquet \
    --out_dir "$DATA" --max_tokens 28000000 --val_tokens 500000 --shard_size 10000000 ;;
pretrain)
  for a in ${WHICH:-infini local full}; do          # WHICH=full: a subset of the models, e.g. to fit a time limit
    lr=$([ $a = infini ] && echo 6e-4 || echo 1.2e-3)
    set -- $a $lr
    min_lr=$(python -c "print($2 / 10)")
    python train.py --model=$MODEL --attn=$1 --update=delta --gate=hard_sigmoid --seq_len=$SEQ --segment=$SEG \
      --batch_size=4 --steps=$STEPS --warmup=$((STEPS / 8)) --lr=$lr --min_lr=$min_lr --beta_lr=0.01 \
      --data_dir=$DATA --out_dir=$RUNS/$1 --eval_every=$((STEPS / 4)) --eval_tokens=${EVAL_TOKENS:-262144} \
      --ckpt_every=$((STEPS / 4)) --log_every=25 $common > $RUNS/pretrain_$1.txt 2>&1 || { tail -20 $RUNS/pretrain_$1.txt; exit 1; }
    grep -E "val_loss" $RUNS/pretrain_$1.txt; tail -2 $RUNS/pretrain_$1.txt
    cp $RUNS/$1/log.jsonl $RES/pretrain_$1.jsonl
  done ;;
evaluate)
  # round 3's `count` recipe (README part 4); local2infini: the local checkpoint with the memory added
  count="--pack=0 --needle=memory --segment=128 --seq_len=2048 --batch_size=8 --grad_accum=4 --curriculum=256,512,1024 --steps=1000"
  for a in ${WHICH:-infini local local2infini full}; do
    init=$a conv=""
    [ $a = local2infini ] && init=local conv=--attn=infini
    [ $a = local2infini ] || python passkey.py --ckpt=$RUNS/$a/ckpt.pt --lengths $LENGTHS --depths 0 25 50 75 100 \
      --samples $SAMPLES --seed 0 --batch_size $SAMPLES --device=$DEVICE --out $RES/passkey_${a}_zeroshot.json --overwrite=$OVERWRITE | tail -9
    RUNS=$RUNS RES=$RES DATA=$DATA LENGTHS="$LENGTHS" SAMPLES=$SAMPLES DEVICE=$DEVICE DTYPE=$DTYPE COMPILE=$COMPILE \
      bash results/finetune_ladder.sh $a $init $conv $count ${FT_FLAGS:-}   # FT_FLAGS: e.g. --steps=10 for a dry run
  done ;;
plots)
  [ -f $RES/pretrain_infini.jsonl ] && IN=${IN:-$RES} || IN=${IN:-results/small}
  echo "plots: logs from $IN, PNGs to $RES"; ow=--overwrite=$OVERWRITE
  python plots.py gates --log $IN/pretrain_infini.jsonl --out $RES/gates_pretrained.png $ow
  python plots.py gates --log $IN/finetune_infini.jsonl --out $RES/gates_finetuned.png $ow
  python plots.py gate_trend --log $IN/pretrain_infini.jsonl --out $RES/gate_trend.png $ow
  python plots.py loss --logs $IN/pretrain_infini.jsonl $IN/pretrain_local.jsonl $IN/pretrain_full.jsonl \
    --labels infini local full --out $RES/loss.png $ow
  python plots.py passkey --json $IN/passkey_infini_zeroshot.json $IN/passkey_local_zeroshot.json \
    $IN/passkey_full_zeroshot.json --labels infini local full --out $RES/passkey_zeroshot.png $ow
  python plots.py passkey --json $IN/passkey_infini_finetuned.json $IN/passkey_local_finetuned.json \
    $IN/passkey_local2infini_finetuned.json $IN/passkey_full_finetuned.json --labels infini local \
    "local -> infini" full --out $RES/passkey_finetuned.png $ow ;;
esac
