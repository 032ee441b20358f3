#!/usr/bin/env bash
# Round 3 of the README's fine-tuning study ("Does the memory remember?", part 4): curricula over the
# *segment length* and then the *number of segments*. Rounds 1-2 left every rung at 0 % and, with every answer
# needing the memory, at the no-information answer loss (3.66 nats). There, the memory of a row of 2 segments
# of 1024 holds ~1000 filler tokens besides the needle's ~25; recall.py learns its pairs within 200 steps when
# its first curriculum stage is 2 segments of 128, and not at all when it starts on 16 of them. So part 1
# changes one thing against round 2's best rung (x16: 256 answers a step, 300 steps, rows of 2 x 1024,
# --needle=memory): the segment, set by finetune.py --segment (RoPE is relative; local attention just sees
# less), 128 or 256, rows of 2 segments, the same 256 answers a step.
#
#   setsid nohup bash results/memory_pipeline3.sh > /tmp/pipe/log.txt 2>&1 &     # in the background
#   then, from later commands (ours were limited to 10 minutes each, and the GPU machine was released after
#   about a minute without one, so they followed each other closely), to follow it and collect the results:
#   tail /tmp/pipe/log.txt; tar czf <folder>/memory.tgz -C /tmp/pipe res log.txt
#
# part 1 (no PART): pretrain infini and local exactly as reproduce_small.sh does (side by side); rungs on
#   infini, passkey at 2K/4K/16K at the rung's own segment and at 1024 (passkey.py --segment): s128 (segment
#   128, rows of 256), s256 (256, rows of 512), s128_1k (s128, 1000 steps); then s128_1024 (s128's model
#   fine-tuned at 1024, rows of 2048, 64 answers a step). Ran on machine 1; s128_1024 was lost with the
#   machine mid-run (a `pkill -f` in a later command matched that command's own command line; never give
#   pkill -f a pattern that the command running it contains).
# part 2 (PRETRAIN=infini PART=count LENGTHS="1024 2048 4096 16384"): on a second machine, after part 1 had
#   shown retrieval learnt at 2 segments of 128 but 0 % at 16+: pretrain infini, then count and count32 below.
# part 3 (PART=final, the same machine, right after part 2): the full sweep 1K-32K of count's model at
#   segment 128 and read at 1024; pretrain local; count's recipe on local and on local -> infini, each with
#   the full sweep (the local -> infini sweep was cut when our GPU time ran out: its val_loss is logged).
# part 4 (PART=next, later, on a third machine, 18:03-18:21 in pipeline_next_log.txt: pretraining
#   8.4 min, then the three fine-tunes side by side, 6-9.5 min each with their sweeps): see its comment.
# part 5 (PART=seed FINAL_LENGTHS="2048 4096 8192 16384", right after part 4, on a fourth machine, 18:44-18:56 in
#   pipeline_seed_log.txt): part 4's --needle_last=0.25 rung again with fine-tuning seed 1.
# The script was tidied after the runs (part 3 was run as a one-off command line, the same steps; the logs'
# passkey summaries then printed only the first three lengths of each table); every rung's flags are those
# recorded in the "args" row of its finetune_*.jsonl. The figures:
#   cd results/small/ladder3 && python ../../../plots.py passkey --json passkey_r3_infini_seg128_finetuned.json \
#     passkey_r3_local_finetuned.json passkey_r3_infini_seg1024_finetuned.json --labels infini local \
#     "infini read at 1024" --out passkey_r3.png
#   python ../../../plots.py passkey --json passkey_r3b_infini_last_finetuned.json \
#     passkey_r3b_infini_last_at1024_finetuned.json passkey_r3b_local2infini_at1024_finetuned.json --labels \
#     "infini, needle_last 0.25" "the same read at 1024" "local -> infini read at 1024" --out passkey_r3b.png
# Results (JSON, logs) accumulate in /tmp/pipe/res/ladder3 (committed: results/small/ladder3); checkpoints in
# /tmp/pipe/runs. A CPU dry run of the plumbing (part 1; then PART=count PRETRAIN=infini, then PART=final):
#   MODEL=tiny STEPS=4 SEQ=512 SEG=128 COMPILE=0 DEVICE=cpu DTYPE=float32 EVAL_TOKENS=1024 SAMPLES=1 \
#   EXTRA="--steps=2 --batch_size=1 --grad_accum=1 --eval_tokens=512" LENGTHS="1024 2048" \
#   FINAL_LENGTHS="1024 2048" PIPE=/tmp/dry3 bash results/memory_pipeline3.sh
set -uo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
P=$(realpath -m "${PIPE:-/tmp/pipe}")
mkdir -p $P/res/ladder3
R=$P/repo.$$                                           # a snapshot per start: changes to the working tree meanwhile cannot reach the run
cp -r "$SRC" $R && cd $R || exit 1
export RUNS=$P/runs PYTHONUNBUFFERED=1 COMPILE=${COMPILE:-1}
[ -d .carry/tiktoken_cache ] && export TIKTOKEN_CACHE_DIR=$PWD/.carry/tiktoken_cache
EXTRA=${EXTRA:-}   # appended to every fine-tune's flags (dry runs)
PRETRAIN=${PRETRAIN:-infini local}; RUNGS=${RUNGS:-.}
L3=${LENGTHS:-"2048 4096 16384"}; L6=${FINAL_LENGTHS:-"1024 2048 4096 8192 16384 32768"}
say() { echo "[$(date +%H:%M:%S)] $*"; }
rows() { tr '\r' '\n' < $1 | grep -E '^ +[0-9]+ +[0-9.]' | head -${2:-$(echo $L3 | wc -w)} | tr -s ' ' | tr '\n' '|'; }  # a passkey table

# rung NAME INIT SEGMENT flags: fine-tune + passkey at the rung's segment (finetune_ladder.sh), then at 1024
rung() {
  local name=$1 init=$2 seg=$3; shift 3
  RES=$P/res/ladder3 LENGTHS="$L3" bash results/finetune_ladder.sh $name $init "$@" $EXTRA > $P/rung_$name.txt 2>&1 \
    || { say "rung $name FAILED: $(tail -3 $P/rung_$name.txt | tr '\n' ' ')"; return 1; }
  say "rung $name: $(head -1 $P/rung_$name.txt)"
  say "$name at segment $seg: $(rows $P/rung_$name.txt)"
  [ $seg = 1024 ] || sweep $name 1024 ${name}_at1024 $L3
}
# sweep NAME SEGMENT OUT LENGTHS...: passkey of $RUNS/ft_NAME read at SEGMENT -> passkey_OUT_finetuned.json
sweep() {
  local name=$1 seg=$2 out=$3; shift 3
  python passkey.py --ckpt=$RUNS/ft_$name/ckpt.pt --segment=$seg --lengths "$@" --depths 0 25 50 75 100 \
    --samples ${SAMPLES:-20} --seed 0 --batch_size ${SAMPLES:-20} --device=${DEVICE:-cuda} \
    --out $P/res/ladder3/passkey_${out}_finetuned.json > $P/pk_$out.txt 2>&1 \
    && say "$out: $(rows $P/pk_$out.txt $#)" || say "passkey $out FAILED"
}
# final NAME INIT [flags]: count's recipe (below) + the sweep 1K-32K at the fine-tune's segment
final() {
  local name=$1 init=$2; shift 2
  RES=$P/res/ladder3 LENGTHS="$L6" bash results/finetune_ladder.sh $name $init "$@" $COUNT $EXTRA > $P/final_$name.txt 2>&1 \
    && say "$name: $(head -1 $P/final_$name.txt) $(rows $P/final_$name.txt $(echo $L6 | wc -w))" || { say "$name FAILED"; return 1; }
}
pretrain() {  # the models named, side by side, exactly as reproduce_small.sh does
  say "pretrain $*"
  for a in "$@"; do WHICH=$a RES=$P/res bash results/reproduce_small.sh pretrain > $P/pretrain_$a.txt 2>&1 & done
  wait
  for a in "$@"; do
    [ -f $RUNS/$a/ckpt.pt ] && say "pretrained $a: $(grep -h 'val_loss' $RUNS/pretrain_$a.txt | tail -1)" || say "pretrain $a FAILED"
  done
}
S="--pack=0 --needle=memory"
run() {  # the rungs named by RUNGS (a regex)
  [[ $1 =~ $RUNGS ]] && rung "$@"
}
# count's recipe (part 2), for part 3 too
COUNT="--pack=0 --needle=memory --segment=128 --steps=1000 --seq_len=2048 --batch_size=8 --grad_accum=4 --curriculum=256,512,1024"
if [ "${PART:-}" = next ]; then
  # what parts 1-3 left open, on one machine (18.3 min: three pretrainings side by side 8.4 min, then three
  # fine-tunes and their sweeps side by side). count's recipe with a quarter of the needles in the question's own segment
  # (--needle_last=0.25: the lost in-segment reading), also read at 1024; local -> infini again, now with its
  # sweep; full attention with count's recipe. Names r3b_*: part 3's files stay as they are.
  pretrain infini local full
  ( final r3b_infini_last infini --needle_last=0.25 && sweep r3b_infini_last 1024 r3b_infini_last_at1024 $L6 ) &
  ( final r3b_local2infini local --attn=infini && sweep r3b_local2infini 1024 r3b_local2infini_at1024 $L6 ) &
  final r3b_full full &
  wait; say "done (next)"; exit 0
fi
if [ "${PART:-}" = seed ]; then
  # part 5 (FINAL_LENGTHS="2048 4096 8192 16384"): did --needle_last cost the long lengths, or did its seed?
  # The same run again with another fine-tuning seed (the pretraining is seeded as before), one machine.
  pretrain infini
  final r3c_infini_last_seed1 infini --needle_last=0.25 --seed=1
  say "done (seed)"; exit 0
fi
if [ "${PART:-}" = final ]; then
  ( sweep infini_count 128 r3_infini_seg128 $L6; sweep infini_count 1024 r3_infini_seg1024 $L6 ) &
  WHICH=local RES=$P/res bash results/reproduce_small.sh pretrain > $P/pretrain_local.txt 2>&1
  final r3_local2infini local --attn=infini &
  final r3_local local &
  wait; say "done (final)"; exit 0
fi
pretrain $PRETRAIN
[ -f $RUNS/infini/ckpt.pt ] || { say "no pretrained infini checkpoint: stop"; exit 1; }

if [ "${PART:-}" = count ]; then
  # part 2 (PRETRAIN=infini PART=count, a second machine): part 1 showed the mechanism learnt at segment 128
  # (rows of 2 segments) but 0 % at 16+ segments, i.e. after more compressions than it was trained with. So a
  # curriculum over the *number* of segments at 128 (finetune.py --curriculum), the needle in any earlier
  # segment, 64K tokens a step (256, 128, 64, 32 answers a step at rows of 2, 4, 8, 16 segments), 1000 steps.
  # count: rows up to 16 segments; count32: one more stage, up to 32 (the same steps, 200 a stage).
  run infini_count infini 128 $COUNT &
  run infini_count32 infini 128 --pack=0 --needle=memory --segment=128 --steps=1000 --seq_len=4096 --batch_size=4 \
    --grad_accum=4 --curriculum=256,512,1024,2048 &
  wait; say "done (count)"; exit 0
fi
run infini_s128 infini 128 $S --segment=128 --seq_len=256 --batch_size=64 --grad_accum=4 &
run infini_s256 infini 256 $S --segment=256 --seq_len=512 --batch_size=32 --grad_accum=8 &
run infini_s128_1k infini 128 $S --segment=128 --seq_len=256 --batch_size=64 --grad_accum=4 --steps=1000 &
wait
[ -f $RUNS/ft_infini_s128/ckpt.pt ] && \
  run infini_s128_1024 ft_infini_s128 1024 $S --segment=1024 --seq_len=2048 --batch_size=4 --grad_accum=16

say "done (part 1)"
