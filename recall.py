"""
Does the memory remember? Multi-query associative recall (MQAR, Arora et al. 2023, "Zoology") across
segment boundaries: the smallest task on which Infini-attention's memory must work and local attention
cannot, in minutes on a GPU.

A sequence is --segments segments of --segment tokens of random filler. --n_pairs key->value pairs
(two adjacent tokens "k v") are written at random places in the segments before the last; the last
segment asks for every pair once: the key appears again and the model must predict its value next.
Loss and accuracy are on those answers only; everything else is noise the memory has to ignore.
Local attention sees only the last segment, so it is at chance (1 / --n_values); full attention sees
everything; Infini-attention sees the earlier segments only through its compressive memory.

    python recall.py --attn=infini --update=delta --segments=16 --curriculum=2,4,8   # 1-5 min on an H100, 4-6 runs sharing it
    python recall.py --attn=local --segments=16                                     # the baseline: chance
    python recall.py --device=cpu --segments=2 --segment=16 --n_embd=64 --n_head=2 --n_values=16 --steps=250 --warmup=60 --lr=3e-3 --out=out/recall_cpu.json
                                                      # CPU, ~30 s on 2 cores: one boundary (test_recall.py)

--curriculum=2,4,8 trains on 2, then 4, then 8 segments, then --segments, each for an equal share of
--steps, with proportionally more sequences per step (the same tokens, more answers). Training straight on
16 segments leaves the memory unused: see the README. The model is
model.py's, unchanged, built from the flags; the training loop is train.py's (logging, compile,
resume, checkpoints in --out_dir). Each run appends one row to --out (default out/recall_<device>.json;
the committed results/recall_*.json were written with --out, by results/recall_sweep.sh):
  {"attn", "update", "gate", "segments", "segment", "head_dim", "n_pairs", "curriculum", "steps",
   "acc", "acc_by_distance", "chance", ...}
acc_by_distance[d] is the accuracy on pairs written d+1 segments before the query segment.
"""
import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch

import train
from prepare_fineweb import ArgumentParser, check_out_file, exit_on_signal, out_folder, write_text
from model import Llama

# -----------------------------------------------------------------------------
# the task

def vocab(args):
    """Disjoint id ranges: filler [0, F), keys [F, F+K), values [F+K, F+K+V). Disjoint, so a filler token
    is never mistaken for a key and the answer is always a value id."""
    F, K, V = args.n_filler, args.n_keys, args.n_values
    return F, K, V, F + K + V


def make_batch(rng, rows, segments, args):
    """(x, y, dist) int64 numpy arrays of shape (rows, segments * segment).

    y[t] is the target at position t (the next token), -1 except where x[t] is a queried key: then y[t]
    is its value. dist[t] = d >= 0 at those positions when the pair was written d+1 segments before
    the query segment, else -1. Pairs sit at even offsets inside one segment ("k v" never straddles a
    boundary), each key at most once per sequence."""
    F, K, V, _ = vocab(args)
    S, N, P = segments, args.segment, args.n_pairs
    T, slots = S * N, N // 2                       # slot j of a segment = offsets (2j, 2j+1)
    x = rng.integers(0, F, size=(rows, T))
    y = np.full((rows, T), -1, dtype=np.int64)
    dist = np.full((rows, T), -1, dtype=np.int64)
    for r in range(rows):
        keys = F + rng.choice(K, P, replace=False)
        vals = F + K + rng.integers(0, V, size=P)
        where = 2 * rng.choice((S - 1) * slots, P, replace=False)      # writes: segments 0 .. S-2
        ask = (S - 1) * N + 2 * rng.choice(slots, P, replace=False)     # queries: the last segment
        x[r, where], x[r, where + 1] = keys, vals
        x[r, ask], x[r, ask + 1] = keys, vals      # the value after the query is the answer (teacher forced)
        y[r, ask] = vals
        dist[r, ask] = S - 2 - where // N
    return x, y, dist


def stage_segments(step, args):
    """Segments per sequence at this step: the curriculum's stages in equal shares, then --segments."""
    return train.curriculum_stage(args.curriculum + [args.segments], step, args.steps)


@torch.no_grad()
def accuracy(model, args, device, autocast):
    """(acc, acc_by_distance) on --eval_rows fixed sequences of --segments segments, greedy argmax over
    the whole vocabulary at every query."""
    from tqdm import tqdm
    model.eval()
    S = args.segments
    hit, cnt = np.zeros(S - 1), np.zeros(S - 1)
    # a bar with an ETA, shown only once the evaluation has taken 5 s (a large --eval_rows takes minutes); closed
    # (cleared) on a signal too, before its one-line message
    with tqdm(total=args.eval_rows, unit="seq", desc="eval", delay=5, mininterval=1, leave=False) as bar:
        for i in range(0, args.eval_rows, args.batch_size):
            x, y, dist = make_batch(np.random.default_rng([args.seed + 1, i]), min(args.batch_size, args.eval_rows - i), S, args)
            with autocast:
                logits, _, _ = model(torch.from_numpy(x).to(device))
            pred = logits.argmax(-1).cpu().numpy()
            m = dist >= 0
            np.add.at(hit, dist[m], pred[m] == y[m])
            np.add.at(cnt, dist[m], 1)
            bar.update(len(x))
    model.train()
    by_d = [float(h / c) if c else None for h, c in zip(hit, cnt)]
    return float(hit.sum() / cnt.sum()), by_d


# -----------------------------------------------------------------------------

def get_parser():
    cuda = torch.cuda.is_available()
    p = ArgumentParser(description=__doc__)
    a = p.add_argument
    # the model (model.py, unchanged)
    a("--attn", default="infini", choices=("infini", "local", "full"), help="attention")
    a("--update", default="delta", choices=("delta", "linear"), help="memory update rule (P2 eq. 9 or 8)")
    a("--gate", default="hard_sigmoid", choices=("hard_sigmoid", "sigmoid"), help="memory gate (P1 or P2)")
    a("--n_layer", type=int, default=2, help="layers (2 suffice: one to pair k with v, one to write and read)")
    a("--n_embd", type=int, default=256, help="model width")
    a("--n_head", type=int, default=4, help="heads; head dim = n_embd / n_head is the memory's size per head")
    # the task
    a("--segment", type=int, default=128, help="tokens per segment N")
    a("--segments", type=int, default=16, help="segments per sequence at the end of training and in evaluation")
    a("--curriculum", default="", help="comma list of segment counts trained first, in equal shares of --steps "
      "(e.g. 2,4,8); empty = none")
    a("--n_pairs", type=int, default=1, help="key-value pairs per sequence (the memory's load)")
    a("--n_keys", type=int, default=128, help="key vocabulary")
    a("--n_values", type=int, default=64, help="value vocabulary (chance = 1 / n_values)")
    a("--n_filler", type=int, default=64, help="filler vocabulary")
    # training (train.py's loop)
    a("--steps", type=int, default=1500, help="optimizer steps")
    a("--batch_size", type=int, default=32, help="sequences of --segments segments per step (shorter curriculum "
      "stages take proportionally more)")
    a("--lr", type=float, default=1e-3, help="peak LR")
    a("--min_lr", type=float, default=1e-4, help="LR at the end of the cosine")
    a("--warmup", type=int, default=100, help="linear warmup steps (at most a quarter of --steps)")
    a("--beta_lr", type=float, default=0.01, help="LR of the gate parameters (P1)")
    a("--weight_decay", type=float, default=0.1, help="AdamW weight decay of the >= 2-D weights")
    a("--grad_clip", type=float, default=1.0, help="max global grad norm (0 = off)")
    a("--seed", type=int, default=0, help="init and data")
    a("--device", default="cuda" if cuda else "cpu", help="cuda | cpu")
    a("--dtype", default="bfloat16" if cuda else "float32", choices=("bfloat16", "float32"), help="autocast dtype")
    a("--compile", type=int, default=0, choices=(0, 1), help="torch.compile the blocks (the curriculum's "
      "lengths each compile anew; eager is fast enough for a model this small)")
    a("--out_dir", default=None, help="log.jsonl and ckpt.pt of the run (default out/recall/<the run's name>-<hash of "
      "its run-defining flags>)")
    a("--overwrite", type=int, default=0, choices=(0, 1), help="1 = start over in an out_dir that holds a checkpoint")
    a("--resume", type=int, default=0, choices=(0, 1), help="1 = continue from out_dir/ckpt.pt")
    a("--log_every", type=int, default=100, help="steps between log rows")
    a("--eval_rows", type=int, default=512, help="fixed evaluation sequences")
    a("--out", default=None, help="JSON list the result row is appended to (default out/recall_<device>.json)")
    a("--name", default=None, help="a label for this row in plots (default: derived from the flags)")
    return p


def check_args(args):
    train.check_numbers(args)          # lr > 0, 0 < min_lr <= lr, warmup, beta_lr, weight_decay >= 0, log_every > 0, ...
    stages = train.parse_curriculum(args.curriculum, args.segments, "segment counts")
    if min(stages) < 2:
        raise SystemExit("error: --segments and every --curriculum stage must be >= 2 (the last segment asks, "
                         "the earlier ones hold the pairs)")
    if any(a >= b for a, b in zip(stages, stages[1:])):    # a repeated or shorter stage is no curriculum
        raise SystemExit(f"error: --curriculum stages must increase and stay below --segments ({args.segments}), "
                         f"got {args.curriculum!r}")
    args.curriculum = stages[:-1]
    if min(args.segment, args.n_pairs, args.n_values, args.n_filler, args.steps, args.batch_size, args.eval_rows) <= 0:
        raise SystemExit("error: --segment, --n_pairs, --n_values, --n_filler, --steps, --batch_size, --eval_rows must be positive")
    smallest = min(args.curriculum + [args.segments])
    if args.n_pairs > min(args.n_keys, args.segment // 2, (smallest - 1) * (args.segment // 2)):
        raise SystemExit(f"error: --n_pairs ({args.n_pairs}) must fit: at most --n_keys ({args.n_keys}), "
                         f"--segment/2 ({args.segment // 2}) queries in the last segment, and the slots of "
                         f"{smallest - 1} earlier segment(s)")
    train.check_device(args.device)
    tokens = args.steps * args.batch_size * args.segments * args.segment
    if args.device == "cpu" and tokens > 2e7:
        print(f"warning: {tokens / 1e6:.0f}M tokens on the CPU take hours; for a quick CPU run use the CPU line of "
              "--help", file=sys.stderr, flush=True)
    if args.out is None:       # out/ is the scratch folder (git-ignored), made when the row is written
        args.out = os.path.join("out", f"recall_{device_name(args.device)}.json")
    check_out_file(args.out)                       # not a folder, and its folder exists (as in passkey.py)
    read_rows(args.out)                            # an existing --out must take the row: said now, not after training


def default_out_dir(flags, head_dim):
    """out/recall/<attn-update[-curriculum]>-s<segments>x<segment>-p<pairs>-hd<head dim>-<8 hex> for the flags as parsed
    (a dict): the hash is of the run-defining ones (all but train.RESUME_MAY_CHANGE, as --resume=1 checks them) that
    differ from their defaults. A run that differs in any (--steps, --seed, --lr, ...) gets its own folder; the same
    command with --resume=1, another --log_every, --name or --device finds its own again; a flag added later moves none."""
    defaults = vars(get_parser().parse_args([]))
    name = (flags["attn"] + (f"-{flags['update']}" if flags["attn"] == "infini" else "")
            + ("-curriculum" if flags["curriculum"] else ""))
    defining = {k: v for k, v in flags.items() if k not in train.RESUME_MAY_CHANGE and v != defaults.get(k)}
    digest = hashlib.sha1(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:8]
    return os.path.join("out", "recall", f"{name}-s{flags['segments']}x{flags['segment']}-p{flags['n_pairs']}-hd{head_dim}-{digest}")


def device_name(device):
    """The row's device: "cpu", or the GPU's short name (h100, ...)."""
    if not device.startswith("cuda"):
        return "cpu"
    return next((k.lower() for k in train.PEAK_FLOPS if k in torch.cuda.get_device_name()), "gpu")


def read_rows(path):
    """The JSON list of rows at path ([] if there is no such file), or one line saying it is not one."""
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            rows = json.load(f)
        assert isinstance(rows, list)
    except (OSError, ValueError, AssertionError):
        raise SystemExit(f"error: {path} exists but is not a JSON list of recall rows; pass another --out")
    return rows


def append_row(path, row):
    """Add row to the JSON list at path (created if missing), atomically: earlier rows are never lost."""
    rows = read_rows(path)     # read again: another run may have appended since check_args
    out_folder(path)
    write_text(path, json.dumps(rows + [row], indent=1))


def main(argv=None):
    args = get_parser().parse_args(argv)
    flags = dict(vars(args))                     # as parsed (check_args turns --curriculum into a list)
    check_args(args)
    _, _, _, vocab_size = vocab(args)
    cfg = train.build_config("tiny", n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                             ffn_hidden=4 * args.n_embd, vocab_size=vocab_size, segment=args.segment,
                             attn=args.attn, update=args.update, gate=args.gate)
    name = args.name or (f"{args.attn}" + (f"-{args.update}" if args.attn == "infini" else "") +
                         (" +curriculum" if args.curriculum else ""))
    if args.out_dir is None:
        args.out_dir = default_out_dir(flags, cfg.head_dim)
    # what train.train reads from its args: the recall flags plus the fixed choices below
    targs = argparse.Namespace(**vars(args), seq_len=args.segments * args.segment, grad_accum=1, halt_at=0,
                               eval_every=0, ckpt_every=args.steps)
    ctx = train.setup_distributed(args.device)
    torch.manual_seed(args.seed)
    model = Llama(cfg)

    def next_batch(step, micro):
        # a curriculum stage of S segments has segments/S times the rows: the same tokens per step, and
        # as many more answers, the only signal that teaches the memory (one per pair: ~0.1% of the tokens)
        S = stage_segments(step, args)
        x, y, _ = make_batch(np.random.default_rng([args.seed, step, micro]), args.batch_size * args.segments // S, S, args)
        return torch.from_numpy(x), torch.from_numpy(y)

    t0 = time.time()
    train.train(targs, cfg, model, ctx, next_batch, init_note=f"recall, {args.n_pairs} pair(s), "
                f"{args.segments} segments of {args.segment}, curriculum {args.curriculum or 'none'}")
    autocast = (torch.autocast(ctx.device.type, dtype=torch.bfloat16) if args.dtype == "bfloat16"
                else torch.autocast(ctx.device.type, enabled=False))
    # a signal here: train's loop has saved the checkpoint, and a re-run with --resume=1 finds the run finished
    ckpt_path = os.path.join(args.out_dir, "ckpt.pt")
    with exit_on_signal(lambda name: f"stopped by {name} during the evaluation: the trained checkpoint {ckpt_path} "
                        "is saved; the same command plus --resume=1 evaluates it"):
        acc, by_d = accuracy(model, args, ctx.device, autocast)
    curriculum = args.curriculum or False
    row = dict(name=name, attn=args.attn, update=args.update if args.attn == "infini" else None,
               gate=args.gate if args.attn == "infini" else None, segments=args.segments, segment=args.segment,
               head_dim=cfg.head_dim, n_pairs=args.n_pairs, curriculum=curriculum, steps=args.steps, acc=acc,
               acc_by_distance=by_d, chance=1.0 / args.n_values, n_layer=args.n_layer, n_embd=args.n_embd,
               lr=args.lr, batch_size=args.batch_size, seed=args.seed, seconds=round(time.time() - t0, 1),
               gates=model.gates().tolist() if model.gates() is not None else None, device=device_name(args.device))
    same = lambda r: {k: v for k, v in r.items() if k != "seconds"} == {k: v for k, v in row.items() if k != "seconds"}
    if any(same(r) for r in read_rows(args.out)):   # e.g. a finished run resumed: its row is there already
        print(f"{name}: acc {acc:.3f}; {args.out} already holds this run's row: nothing appended")
        return
    append_row(args.out, row)
    print(f"{name}: acc {acc:.3f} (chance {1 / args.n_values:.3f}) by distance "
          + " ".join("-" if a is None else f"{a:.2f}" for a in by_d) + f" | appended to {args.out}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C outside train()'s handler and the evaluation's: building, writing the row
        raise SystemExit("stopped by SIGINT outside the training loop and the evaluation: a checkpoint in --out_dir "
                         "is kept; the same command plus --resume=1 continues or evaluates it")
