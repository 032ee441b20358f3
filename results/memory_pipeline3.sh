#!/usr/bin/env bash
# Round 3 of the README's fine-tuning study ("Does the memory remember?"), as one unattended run on one GPU:
# a curriculum over the *segment length*. Rounds 1-2 left every rung at 0 % and, with every answer needing
# the memory, at the no-information answer loss (3.66 nats). There, the memory of a row of 2 segments of
# 1024 holds ~1000 filler tokens besides the needle's ~25. recall.py learns its pairs within 200 steps when
# its first curriculum stage is 2 segments of 128 (a memory of 128 tokens), and not at all when it starts on
# 16 of them. So the one change here against round 2's best rung (x16: 256 answers a step, 300 steps, rows of
# 2 x 1024, --needle=memory) is the segment, set by finetune.py --segment (RoPE is relative, local attention
# just sees less): 128 or 256, rows of 2 segments, the same 256 answers a step. Then back to the model's 1024.
#
#   setsid nohup bash results/memory_pipeline3.sh > /tmp/pipe/log.txt 2>&1 &     # in a device call
#   then, in that call and the next ones: tar czf $OUT/memory.tgz -C /tmp/pipe res; tail /tmp/pipe/log.txt
#
# 1. pretrain infini and local exactly as reproduce_small.sh does (side by side);
# 2. rungs on infini, passkey at 2K/4K/16K at the rung's own segment and at 1024 (passkey.py --segment):
#    s128 (segment 128, rows of 256), s256 (256, rows of 512), s128_1k (s128 for 1000 steps);
#    then s128_1024: s128's checkpoint fine-tuned at segment 1024 (rows of 2048, 64 answers a step, 300 steps);
# 3. if a rung scores above 0 at 4K/16K (mean over depths 0-75, at segment 1024), its recipe for infini, local
#    and local -> infini, with the full sweep 1K-32K (names r3_*).
# Results (JSON, logs) accumulate in /tmp/pipe/res/ladder3; checkpoints in /tmp/pipe/runs. A CPU dry run:
#   MODEL=tiny STEPS=4 SEQ=512 SEG=128 COMPILE=0 DEVICE=cpu DTYPE=float32 EVAL_TOKENS=1024 SAMPLES=1 \
#   EXTRA="--steps=2 --batch_size=1 --grad_accum=1 --eval_tokens=512" LENGTHS="1024 2048" PIPE=/tmp/dry3 \
#   bash results/memory_pipeline3.sh
set -uo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
P=$(realpath -m "${PIPE:-/tmp/pipe}")
mkdir -p $P/res/ladder3
R=$P/repo.$$                                           # a snapshot per start: later device calls re-sync the tree
cp -r "$SRC" $R && cd $R || exit 1
export RUNS=$P/runs PYTHONUNBUFFERED=1 COMPILE=${COMPILE:-1}
[ -d .carry/tiktoken_cache ] && export TIKTOKEN_CACHE_DIR=$PWD/.carry/tiktoken_cache
EXTRA=${EXTRA:-}   # appended to every fine-tune's flags (dry runs)
PRETRAIN=${PRETRAIN:-infini local}; RUNGS=${RUNGS:-.}; FINALS=${FINALS:-1}   # FINALS=0 | 1 | force (dry runs)
L3=${LENGTHS:-"2048 4096 16384"}
say() { echo "[$(date +%H:%M:%S)] $*"; }
rows() { tr '\r' '\n' < $1 | grep -E '^ +[0-9]+ +[0-9.]' | head -${2:-3} | tr -s ' ' | tr '\n' '|'; }  # a passkey table

say "pretrain $PRETRAIN"
pids=
for a in $PRETRAIN; do
  WHICH=$a RES=$P/res bash results/reproduce_small.sh pretrain > $P/pretrain_$a.txt 2>&1 || say "pretrain $a FAILED" &
  pids="$pids $!"
done
wait $pids
for a in $PRETRAIN; do say "pretrained $a: $(grep -h 'val_loss' $RUNS/pretrain_$a.txt | tail -1)"; done
[ -f $RUNS/infini/ckpt.pt ] || { say "no pretrained infini checkpoint: stop"; exit 1; }

# rung NAME INIT SEGMENT flags: fine-tune + passkey at the rung's segment (finetune_ladder.sh), then at 1024
rung() {
  local name=$1 init=$2 seg=$3; shift 3
  RES=$P/res/ladder3 LENGTHS="$L3" bash results/finetune_ladder.sh $name $init "$@" $EXTRA > $P/rung_$name.txt 2>&1 \
    || { say "rung $name FAILED: $(tail -3 $P/rung_$name.txt | tr '\n' ' ')"; return 1; }
  say "rung $name: $(head -1 $P/rung_$name.txt)"
  say "$name at segment $seg: $(rows $P/rung_$name.txt)"
  if [ $seg != 1024 ]; then
    python passkey.py --ckpt=$RUNS/ft_$name/ckpt.pt --segment=1024 --lengths $L3 --depths 0 25 50 75 100 \
      --samples ${SAMPLES:-20} --seed 0 --batch_size ${SAMPLES:-20} --device=${DEVICE:-cuda} \
      --out $P/res/ladder3/passkey_${name}_at1024_finetuned.json > $P/pk1024_$name.txt 2>&1 \
      && say "$name at segment 1024: $(rows $P/pk1024_$name.txt)" || say "passkey $name at 1024 FAILED"
  fi
}
S="--pack=0 --needle=memory"
run() {  # the rungs named by RUNGS (a regex)
  [[ $1 =~ $RUNGS ]] && rung "$@"
}
run infini_s128 infini 128 $S --segment=128 --seq_len=256 --batch_size=64 --grad_accum=4 &
run infini_s256 infini 256 $S --segment=256 --seq_len=512 --batch_size=32 --grad_accum=8 &
run infini_s128_1k infini 128 $S --segment=128 --seq_len=256 --batch_size=64 --grad_accum=4 --steps=1000 &
wait
[ -f $RUNS/ft_infini_s128/ckpt.pt ] && \
  run infini_s128_1024 ft_infini_s128 1024 $S --segment=1024 --seq_len=2048 --batch_size=4 --grad_accum=16

best=$(python - "$P/res/ladder3" <<'EOF'
import json, os, sys
res = sys.argv[1]
def score(p):  # the issue's score at segment 1024: mean over depths 0-75 at 4K and 16K
    d = json.load(open(os.path.join(res, p)))
    if d["segment"] != 1024 or not {4096, 16384} <= set(d["lengths"]):
        return None
    acc = lambda L: d["accuracy"][d["lengths"].index(L)]
    return sum(sum(acc(L)[:4]) / 4 for L in (4096, 16384)) / 2
s = {p: score(p) for p in sorted(os.listdir(res)) if p.startswith("passkey_")}
s = {p: v for p, v in s.items() if v is not None}
best = max(s, key=s.get) if s and max(s.values()) > 0 else None
json.dump(dict(scores=s, best=best), open(os.path.join(res, "best_rung.json"), "w"), indent=1)
print(best or "")
EOF
)
say "scores at segment 1024: $(cat $P/res/ladder3/best_rung.json | tr -d '\n ')"
[ $FINALS = 0 ] && { say "done (no finals)"; exit 0; }
[ -n "$best" ] || [ $FINALS = force ] || { say "no rung scores above 0 at 4K/16K: no finals"; exit 0; }
say "best: $best"
# the finals: the staged recipe (s128, then s128_1024) on infini, local and local -> infini, full sweep 1K-32K
final() {
  local name=$1 init=$2; shift 2
  RES=$P/res/ladder3 LENGTHS=none bash results/finetune_ladder.sh ${name}_s128 $init "$@" $S --segment=128 --seq_len=256 \
    --batch_size=64 --grad_accum=4 $EXTRA > $P/final_${name}_a.txt 2>&1 || { say "$name stage 1 FAILED"; return; }
  RES=$P/res/ladder3 LENGTHS="${FINAL_LENGTHS:-1024 2048 4096 8192 16384 32768}" bash results/finetune_ladder.sh $name ft_${name}_s128 \
    $S --segment=1024 --seq_len=2048 --batch_size=4 --grad_accum=16 $EXTRA > $P/final_$name.txt 2>&1 \
    && say "$name: $(head -1 $P/final_$name.txt) $(rows $P/final_$name.txt 6)" || say "$name FAILED"
}
final r3_infini infini &
final r3_local2infini local --attn=infini &
final r3_local local &
wait
say "done"
