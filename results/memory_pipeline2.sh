#!/usr/bin/env bash
# The second fine-tuning study of the README ("Does the memory remember?"), as one unattended run on one
# GPU. The first (memory_pipeline.sh) left infini at 0 % whenever the needle was outside the last segment;
# recall.py showed that the memory is learnt when many answers a step *need* it. So every rung here but the
# control puts the needle in a segment before the question's (finetune.py --needle=memory). The rungs run
# side by side on one machine, within the 30 minutes we could hold it (measured: six eager rungs of
# 4 x 2048 ran at ~34K tok/s each, ~200K in all, where one alone ran at ~120K; compiled, the same shape ran
# at 260-320K even two side by side):
#
#   setsid nohup bash results/memory_pipeline2.sh > /tmp/pipe/log.txt 2>&1 &     # in the background
#   then, from later commands (ours were limited to 10 minutes each), to follow it and collect the results:
#   tail /tmp/pipe/log.txt; tar czf <folder>/memory.tgz -C /tmp/pipe res
#
# 1. pretrain infini, local and full exactly as reproduce_small.sh does (side by side);
# 2. eight rungs (RUNGS: a regex searched in the rung names, e.g. 'x16|lr'; x16_1k runs only when named) on
#    the pretrained infini model, each one change against
#    M = --pack=0 --seq_len=2048 --needle=memory (rows of 2 segments, the needle always in the first), or a
#    control without --needle=memory; passkey at 2K/4K/16K;
# 3. the best rung by the issue's score (mean over depths 0-75 at 4K and 16K), if any scores above 0, gets the
#    full passkey sweep, and local, local -> infini and full are fine-tuned with its flags and swept too (names
#    r2_*, in res/ladder2: round 1's files in results/small keep their names; round 3 later moved them to
#    results/small/ladder).
# The committed results (results/small/ladder2, results/recall_h100.json's last 8 rows) came from two machines:
#   1. the command above. Its first start ran out of GPU memory (the recall sweep then ran beside the three
#      pretrainings) and lost infini's; after local and full had finished it was started again with
#      EXTRA=--log_every=25 (a no-op flag, which then also skipped a second recall sweep; local and full refused to
#      overwrite their checkpoints, as they should), pretrained infini and ran the six rungs; the final
#      fine-tunes (on an all-zero "best", which the script now skips) were cut when the machine's 30 minutes ran out.
#   2. PRETRAIN=infini RUNGS='x16|lr' FINALS=0 RECALL=0 COMPILE=1, the same command: two more rungs.
# results/small/ladder2/best_rung.json merges the two machines' scores by hand.
# Results (JSON, logs) accumulate in /tmp/pipe/res; checkpoints in /tmp/pipe/runs. A CPU dry run of the plumbing:
#   RECALL=0 MODEL=tiny STEPS=4 SEQ=2048 COMPILE=0 DEVICE=cpu DTYPE=float32 EVAL_TOKENS=4096 SAMPLES=2 \
#   EXTRA="--steps=2 --batch_size=1 --grad_accum=1 --eval_tokens=2048" PIPE=/tmp/dry bash results/memory_pipeline2.sh
set -uo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
P=$(realpath -m "${PIPE:-/tmp/pipe}")
mkdir -p $P/res/ladder2
R=$P/repo.$$                                           # a snapshot per start: changes to the working tree meanwhile cannot reach the run
cp -r "$SRC" $R && cd $R || exit 1
export RUNS=$P/runs PYTHONUNBUFFERED=1
[ -d .carry/tiktoken_cache ] && export TIKTOKEN_CACHE_DIR=$PWD/.carry/tiktoken_cache
EXTRA=${EXTRA:-}   # appended to every fine-tune's flags (dry runs)
# a subset, for a later run: PRETRAIN="infini" RUNGS='x16|lr' FINALS=0 RECALL=0 COMPILE=1
PRETRAIN=${PRETRAIN:-infini local full}; RUNGS=${RUNGS:-'^infini_(rows2k|mem|mem_[a-z0-9]+|mem_x4_lr3e-3)$'}
FINALS=${FINALS:-1}; RECALL=${RECALL:-1}
say() { echo "[$(date +%H:%M:%S)] $*"; }

say "pretrain $PRETRAIN"
for a in $PRETRAIN; do
  WHICH=$a RES=$P/res bash results/reproduce_small.sh pretrain > $P/pretrain_$a.txt 2>&1 || say "pretrain $a FAILED" &
  pids="${pids:-} $!"
done
wait $pids
for a in $PRETRAIN; do say "pretrained $a: $(grep -h 'val_loss' $RUNS/pretrain_$a.txt | tail -1)"; done
[ -f $RUNS/infini/ckpt.pt ] || { say "no pretrained infini checkpoint: stop"; exit 1; }

# alongside the rungs, on the same GPU (not beside the pretraining: three compiled pretrainings and four
# recall runs overflowed the H100's 80 GB in the first start): the recall rows the first
# sweep did not reach before its time limit (v2 curriculum): linear at 4/16/64 pairs, head dim 128, and local with the curriculum
[ $RECALL = 1 ] && ( ONLY='update=linear --curriculum=2,4,8 --n_pairs|n_embd|local --curriculum' RES=$P/res/recall \
  PAR=3 LIMIT=1300 bash results/recall_sweep.sh > $P/recall.txt 2>&1; say "recall: $(grep -c acc $P/recall.txt) rows" ) &

M="--pack=0 --seq_len=2048 --needle=memory"
declare -A RUNG=(
  [infini_rows2k]="--pack=0 --seq_len=2048"                 # the control: the needle anywhere
  [infini_mem]="$M"
  [infini_mem_x4]="$M --grad_accum=16"                      # 4x the answers (and tokens) a step
  [infini_mem_answer]="$M --loss_on=answer"
  [infini_mem_gates]="$M --gate=sigmoid --beta_lr=1e-2"     # gates that can leave saturation
  [infini_mem_curric]="--pack=0 --needle=memory --seq_len=8192 --batch_size=2 --curriculum=2048,4096"
  # the second machine's run (the first's x4 moved val_loss most): more answers a step again, or a higher LR
  [infini_mem_x16]="$M --grad_accum=64"                     # 256 answers a step, as many as recall.py's
  [infini_mem_x4_lr3e-3]="$M --grad_accum=16 --lr=3e-3 --min_lr=3e-4"
  # not run yet: 16x for 1000 steps (round 2 reached the guess level first with 16x; recall.py's loss, too, sat
  # at the guess level before it fell)
  [infini_mem_x16_1k]="$M --batch_size=16 --grad_accum=16 --steps=1000"
)
pids=
for name in "${!RUNG[@]}"; do
  [[ $name =~ $RUNGS ]] || continue
  ( RES=$P/res/ladder2 LENGTHS="2048 4096 16384" bash results/finetune_ladder.sh $name infini ${RUNG[$name]} $EXTRA \
      > $P/rung_$name.txt 2>&1 && say "rung $name: $(tail -1 $P/rung_$name.txt)" || say "rung $name FAILED" ) &
  pids="$pids $!"
done
[ -n "$pids" ] && wait $pids

best=$(python - "$P/res/ladder2" <<'EOF'
import json, os, sys
res = sys.argv[1]
def score(name):
    p = os.path.join(res, f"passkey_{name}_finetuned.json")
    if not os.path.exists(p):
        return (-1, -1)
    d = json.load(open(p))
    acc = lambda L: d["accuracy"][d["lengths"].index(L)]
    # the issue's score; ties broken by the training length's early depths (did the memory learn at all?)
    return (sum(sum(acc(L)[:4]) / 4 for L in (4096, 16384)) / 2, sum(acc(2048)[:2]) / 2)
names = sorted(n[len("passkey_"):-len("_finetuned.json")] for n in os.listdir(res) if n.startswith("passkey_"))
s = {n: score(n) for n in names}
best = max(s, key=lambda n: s[n]) if s and max(s.values())[0] > 0 else None   # all 0: nothing to carry on
json.dump(dict(scores=s, best=best), open(os.path.join(res, "best_rung.json"), "w"), indent=1)
print(best or "")
EOF
)
[ $FINALS = 1 ] || { say "done (no finals)"; exit 0; }
[ -n "$best" ] || { say "no rung scores above 0 at 4K/16K: no finals"; exit 0; }
flags=${RUNG[$best]}
say "best rung: $best ($flags)"
python passkey.py --ckpt=$RUNS/ft_$best/ckpt.pt --lengths 1024 2048 4096 8192 16384 32768 --depths 0 25 50 75 100 \
  --samples ${SAMPLES:-20} --seed 0 --batch_size ${SAMPLES:-20} --device=${DEVICE:-cuda} --out $P/res/ladder2/passkey_r2_infini_finetuned.json > $P/passkey_best.txt 2>&1 \
  && say "infini ($best): $(head -8 $P/passkey_best.txt | tr '\n' ' ')" || say "sweep of $best FAILED"
cp $RUNS/ft_$best/log.jsonl $P/res/ladder2/finetune_r2_infini.jsonl
for m in "r2_local2infini local --attn=infini" "r2_local local" "r2_full full"; do
  set -- $m
  ( RES=$P/res/ladder2 bash results/finetune_ladder.sh $1 $2 ${@:3} $flags $EXTRA > $P/final_$1.txt 2>&1 \
      && say "$1: $(tail -1 $P/final_$1.txt)" || say "$1 FAILED" ) &
done
wait
say "done"
