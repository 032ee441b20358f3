#!/usr/bin/env bash
# The fine-tuning study of the README ("Does the memory remember?") as one unattended background run on
# one GPU, so that no checkpoint has to outlive it (on our GPU machines /tmp lasted at most 30 minutes):
# pretrain the `small` models exactly as results/reproduce_small.sh does, climb the fine-tuning ladder on the pretrained infini model (one change
# per rung), pick the best rung by the passkey accuracy the issue targets, and fine-tune the baselines
# and the converted local -> infini model with that recipe.
#
#   setsid nohup bash results/memory_pipeline.sh > /tmp/pipe/log.txt 2>&1 &     # in the background
#   then, from later commands (ours were limited to 10 minutes each), to follow it and collect the results:
#   tail /tmp/pipe/log.txt; tar czf <folder>/memory.tgz -C /tmp/pipe res
#
# Results (JSON, logs) accumulate in /tmp/pipe/res; checkpoints in /tmp/pipe/runs.
set -uo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
P=${PIPE:-/tmp/pipe}
mkdir -p $P/res
rm -rf $P/repo && cp -r "$SRC" $P/repo && cd $P/repo   # a snapshot: changes to the working tree meanwhile cannot reach the run
export RUNS=$P/runs RES=$P/res
say() { echo "[$(date +%H:%M:%S)] $*"; }
ladder() { say "rung $1: ${*:3}"; bash results/finetune_ladder.sh "$@" || say "rung $1 FAILED"; }

say "pretrain infini, local"
WHICH="infini local" bash results/reproduce_small.sh pretrain
# the ladder, one change per rung (base: reproduce_small.sh's fine-tune as it was then, finetune_ladder.sh's
# base recipe: packed rows, loss on all tokens; the passkey JSONs of the last rung's four models are now in
# results/small/ladder)
ladder infini_packed infini
ladder infini_rows infini --pack=0
ladder infini_curric infini --pack=0 --curriculum=1024,2048
ladder infini_gates infini --pack=0 --curriculum=1024,2048 --gate=sigmoid --beta_lr=1e-2
ladder infini_8k infini --pack=0 --curriculum=1024,2048,4096 --seq_len=8192 --batch_size=2 --gate=sigmoid --beta_lr=1e-2

# the best rung: mean accuracy over depths 0/25/50/75 (the needle before the last segment) at 4K and 16K
best=$(python - <<'EOF'
import json, os
rungs = {"infini_packed": "", "infini_rows": "--pack=0", "infini_curric": "--pack=0 --curriculum=1024,2048",
         "infini_gates": "--pack=0 --curriculum=1024,2048 --gate=sigmoid --beta_lr=1e-2",
         "infini_8k": "--pack=0 --curriculum=1024,2048,4096 --seq_len=8192 --batch_size=2 --gate=sigmoid --beta_lr=1e-2"}
def score(name):
    p = os.path.join(os.environ["RES"], f"passkey_{name}_finetuned.json")
    if not os.path.exists(p):
        return -1
    d = json.load(open(p))
    rows = [d["accuracy"][d["lengths"].index(L)] for L in (4096, 16384)]
    return sum(sum(r[:4]) / 4 for r in rows) / 2
s = {n: score(n) for n in rungs}
best = max(rungs, key=lambda n: (s[n], list(rungs).index(n)))   # ties: the later rung (more of the fixes)
json.dump(dict(scores=s, best=best, flags=rungs[best]), open(os.path.join(os.environ["RES"], "best_rung.json"), "w"))
print(rungs[best])
EOF
)
say "best rung flags: $best"
ladder local2infini local --attn=infini $best
ladder local local $best
say "pretrain full"
WHICH=full bash results/reproduce_small.sh pretrain
ladder full full $best
say "done"
