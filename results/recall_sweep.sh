#!/usr/bin/env bash
# The recall experiment of the README ("Does the memory remember?"): recall.py variants on one GPU,
# four at a time (each is a 2-layer model, launch-bound: the GPU has room for several).
#
#   RES=<folder> bash results/recall_sweep.sh      # on a GPU: writes <folder>/recall_<gpu>.json + log
#   ONLY='linear|n_embd' RES=<folder> bash results/recall_sweep.sh   # a subset (the whole list took ~15 min at
#                                                  # 6 at a time on an H100: ~4.7 min a variant; split it)
#   python plots.py recall --json results/recall_h100.json --out results/recall_h100.png   # (v1: recall_h100_v1.png)
# The committed runs (one H100; <folder>: the folder the results were written to):
# recall_h100_v1.json: `RES=<folder> PAR=4 bash results/recall_sweep.sh` with the v1 curriculum
# (32 sequences a step at every stage); recall_h100.json: `RES=<folder> PAR=6 LIMIT=500 bash results/recall_sweep.sh`,
# cut by its limit after 7 of 18 variants (infini on memory_fast, then model.py's default). Its last 8 rows (linear at 4/16/64
# pairs, head dim 128, local + curriculum) ran inside results/memory_pipeline2.sh (ONLY=..., PAR=3 there; PAR=4
# when they ran), on model.py's default path, and were appended.
#
# Defaults of recall.py: 2 layers, d 256, 4 heads (head dim 64), 16 segments of 128 tokens, 1 pair,
# 64 values (chance 1/64), 1500 steps of 32 sequences (of 16 segments; curriculum stages take more, same
# tokens), eager. Every variant changes one thing against the first two lines. Head dim 128 = d 512, 4 heads.
# results/recall_h100_v1.json: the first sweep, whose curriculum kept 32 sequences a step at every stage.
set -euo pipefail
cd "$(dirname "$0")/.."
RES=${RES:-out/recall_sweep}      # the committed results/ rows were written with RES=results
PAR=${PAR:-6}
STEPS=${STEPS:-1500}
EXTRA=${EXTRA:-}                # e.g. "--device=cpu --batch_size=2 --eval_rows=4" for a dry run
TMP=$(mktemp -d)
mkdir -p "$RES"
export PYTHONUNBUFFERED=1
C="--curriculum=2,4,8"
{
  for u in delta linear; do
    echo "--attn=infini --update=$u"                        # straight on 16 segments
    echo "--attn=infini --update=$u $C"                     # the length curriculum
    for p in 4 16 64; do echo "--attn=infini --update=$u $C --n_pairs=$p"; done       # capacity
  done
  echo "--attn=infini --update=delta $C --lr=3e-3"          # a hedge on the LR
  for p in 1 16; do echo "--attn=infini --update=delta $C --n_pairs=$p --n_embd=512"; done  # head dim 128
  for p in 1 16; do echo "--attn=infini --update=linear $C --n_pairs=$p --n_embd=512"; done
  echo "--attn=local"; echo "--attn=local $C"; echo "--attn=full"
} | grep -E -- "${ONLY:-.}" > $TMP/variants    # ONLY=regex: a subset of the variants
n=0
while read -r flags; do
  n=$((n + 1))
  echo "python recall.py $flags --steps=$STEPS ${EXTRA:-} --out_dir=$TMP/run$n --out=$TMP/row$n.json > $TMP/log$n.txt 2>&1 \
    || { echo FAILED: $flags; tail -5 $TMP/log$n.txt; }; tail -1 $TMP/log$n.txt"
done < $TMP/variants > $TMP/cmds
echo "$(wc -l < $TMP/variants) variants, $PAR at a time"
timeout ${LIMIT:-520} xargs -P "$PAR" -I{} bash -c {} < $TMP/cmds || echo "stopped at the time limit: merging the rows done so far"
gpu=$(python -c "import torch; print(torch.cuda.get_device_name().split()[1].lower() if torch.cuda.is_available() else 'cpu')")
python - "$TMP" "$RES/recall_$gpu.json" <<'EOF'
import glob, json, os, re, sys
paths = sorted(glob.glob(os.path.join(sys.argv[1], "row*.json")), key=lambda p: int(re.findall(r"\d+", os.path.basename(p))[0]))
rows = [r for p in paths for r in json.load(open(p))]
json.dump(rows, open(sys.argv[2], "w"), indent=1)
print(f"{len(rows)} rows -> {sys.argv[2]}")
fmt = lambda v: "  -" if v is None else f"{v:.2f}"
for r in rows:
    print(f"{r['name']:<28} pairs {r['n_pairs']:>2} hd {r['head_dim']:>3} acc {r['acc']:.3f} "
          f"near {fmt(r['acc_by_distance'][0])} far {fmt(r['acc_by_distance'][-1])} {r['seconds']:>5}s")
EOF
for i in $(seq 1 $n); do echo "== run $i: $(sed -n ${i}p $TMP/variants)"; cat $TMP/log$i.txt 2>/dev/null || echo "(not run: time limit)"; done > "$RES/recall_${gpu}_log.txt"
