"""
Pretrain Infini-LLaMA (or the segment-local / full-attention baselines) on token shards.

One GPU, the study's Infini recipe (P1: 300M model, 8192 tokens = 8 segments of 1024, batch 4, 30k steps,
lr 6e-5 -> 6e-6 cosine after 500 warmup steps, gate parameters beta at lr 0.01 without weight decay):
    python prepare_fineweb.py            # once: FineWeb sample-10BT -> data/fineweb10B/*.bin
    python train.py --segment=1024
Several GPUs of one node: the same global batch, --grad_accum is split across the GPUs:
    torchrun --standalone --nproc_per_node=4 train.py --batch_size=1 --grad_accum=4
The baselines. P1 trained its baseline at lr 1.2e-4 (at 6e-5 it failed to train), so pass it:
    python train.py --attn=local --lr=1.2e-4 --min_lr=1.2e-5 --out_dir=out/local
    python train.py --attn=full  --lr=1.2e-4 --min_lr=1.2e-5 --out_dir=out/full
On a laptop (CPU; 2-4 minutes on 2 cores; validation loss 10.83 -> ~8.2 on the Wikipedia + Gutenberg shards):
    python train.py --model=tiny --device=cpu --seq_len=256 --segment=64 --batch_size=2 --steps=200 --lr=3e-3 --min_lr=3e-4 --warmup=20 --eval_tokens=16384 --data_dir=data/local --out_dir=out/laptop
Resume after a crash or a job time limit: the same command plus --resume=1 (exact: the data order is a
function of (seed, step)); it refuses flags that define the run (RESUME_MAY_CHANGE lists the others).
--halt_at=N stops cleanly after N steps, to split a run across jobs. Ctrl-C or SIGTERM (job schedulers send
it before they kill) finishes the current step, saves a checkpoint and exits non-zero; --resume=1 then
continues exactly. Before the first step is done (the first evaluation, say) it exits at once, with nothing
new to save, and so does a second signal. An out_dir that holds a checkpoint is never overwritten
without --resume=1 or --overwrite=1.

Batch arithmetic: one optimizer step sees batch_size * grad_accum sequences of seq_len tokens (study:
4 x 8192 = 32,768 tokens), whatever the number of GPUs; each GPU runs grad_accum / world_size micro-batches.

out_dir/log.jsonl, one JSON object per line: a header {"config", "args", "torch", "gpu", ...} per (re)start;
train rows {"step", "loss", "lr", "grad_norm", "tok_s", "mfu", "gates"} where loss is the mean over the steps
since the previous row and gates[layer][head] is the memory weight; validation rows {"step", "val_loss"}.
out_dir/ckpt.pt: see save_checkpoint / load_checkpoint; passkey.py and finetune.py read it.
"""
import contextlib
import dataclasses
import gc
import glob
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections import namedtuple

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from model import PRESETS, Llama, compile_model, make_config
from prepare_fineweb import INCOMPLETE, ArgumentParser, find_shards, load_shard, write_text

# -----------------------------------------------------------------------------
# checkpoint I/O, shared by train.py, finetune.py and passkey.py

def save_checkpoint(path, state):
    """Atomic: write path.tmp, fsync, rename. A crash mid-write never leaves a half file at path."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:  # a full disk, or a second Ctrl-C mid-write: the checkpoint at path is untouched
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu"):
    """The checkpoint dict, or SystemExit with one line naming the file if it is missing or corrupt.
    Format: {"model": state_dict of an uncompiled Llama, "config": dataclasses.asdict(LlamaConfig),
    "optimizer", "step" (optimizer steps done), "args", "rng", "log_acc" (the sums of the log row in progress)}.
    A folder (an out_dir) means its ckpt.pt."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "ckpt.pt")):
            raise SystemExit(f"error: {path} is a folder without a ckpt.pt; pass a checkpoint file or a train.py/finetune.py out_dir")
        path = os.path.join(path, "ckpt.pt")
    if not os.path.isfile(path):
        raise SystemExit(f"error: checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise SystemExit(f"error: checkpoint {path} is unreadable or corrupt ({type(e).__name__})")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise SystemExit(f"error: {path} is not a checkpoint of this project (no 'model'/'config')")
    cfg, missing = ckpt["config"], None
    if isinstance(cfg, dict):       # the fields that fix the model's shape: every consumer reads them
        missing = sorted({"vocab_size", "n_layer", "n_head", "n_embd", "ffn_hidden", "segment", "attn"} - set(cfg))
    if not isinstance(cfg, dict) or missing or not isinstance(ckpt["model"], dict) or not ckpt["model"]:
        raise SystemExit(f"error: {path} is not a complete checkpoint of this project ("
                         + (f"its config lacks {', '.join(missing)})" if missing else "an empty model or config)"))
    return ckpt

# -----------------------------------------------------------------------------
# flags

def get_parser(description=__doc__, model_from=None):
    """The flags shared by train.py and finetune.py (finetune changes defaults and adds its own).
    model_from: a phrase like "the checkpoint": the model flags then default to None, meaning "from there"."""
    cuda = torch.cuda.is_available()
    p = ArgumentParser(description=description)
    a = p.add_argument
    # model (presets in model.py)
    d = (lambda v: v) if model_from is None else (lambda v: None)
    note = "" if model_from is None else f"; None = from {model_from}"
    a("--model", default=d("300m"), help="size preset: 300m (P1), small, tiny" + note)
    a("--vocab_size", type=int, default=None, help="override the preset's 50304 (GPT-2 padded); tokens must be below it" + note)
    a("--attn", default=d("infini"), help="infini | local (P1's baseline: no memory) | full" + note)
    a("--update", default=d("delta"), help="memory update: delta (P2 eq. 9, P1) | linear (eq. 8)" + note)
    a("--gate", default=d("hard_sigmoid"), help="hard_sigmoid (P1) | sigmoid (P2)" + note)
    a("--fast_memory", type=int, default=1, choices=(0, 1), help="1 = memory_fast, 0 = compressive_memory (the "
      "spec): the same function, a code path and not part of the model (so not taken from a checkpoint); on an "
      "H200 fast had 1-8%% more tokens/s (against local attention in each run) and 9-23%% less peak memory "
      "(results/bench_v4_h200, bench_v5_h200)")
    a("--segment", type=int, default=None, help="segment length N for infini/local" +
      (note if model_from else " (default: the preset's, 1024; tiny: 16)"))
    # data and batch
    a("--data_dir", default="data/fineweb10B", help="folder of *_train_*.bin / *_val_*.bin shards (prepare_fineweb.py)")
    a("--seq_len", type=int, default=8192, help="tokens per training sequence (a multiple of --segment)")
    a("--batch_size", type=int, default=4, help="sequences per micro-batch per GPU")
    a("--grad_accum", type=int, default=1, help="micro-batches per optimizer step, in total over all GPUs")
    # optimizer and schedule (P1)
    a("--steps", type=int, default=30000, help="optimizer steps")
    a("--lr", type=float, default=6e-5, help="peak LR (P1: 6e-5 for Infini, 1.2e-4 for the baseline)")
    a("--min_lr", type=float, default=6e-6, help="LR at the end of the cosine; every group decays by min_lr/lr")
    a("--warmup", type=int, default=500, help="linear warmup steps (at most a quarter of --steps)")
    a("--beta_lr", type=float, default=0.01, help="peak LR of the gate parameters beta (no weight decay)")
    a("--weight_decay", type=float, default=0.1, help="AdamW decoupled weight decay of the >=2-D weights "
      "(norms and beta get none)")
    a("--grad_clip", type=float, default=1.0, help="max global grad norm (0 = off)")
    # system
    a("--device", default="cuda" if cuda else "cpu", help="cuda | cpu (torchrun: each rank uses cuda:LOCAL_RANK)")
    a("--dtype", default="bfloat16" if cuda else "float32", help="autocast dtype: bfloat16 | float32 (the CPU default: "
      "bf16 autocast ran 1.6-2.1x slower than fp32 on 2 CPU threads, results/cpu_dtype.txt)")
    a("--compile", type=int, default=1 if cuda else 0, choices=(0, 1), help="torch.compile each block (default on CUDA)")
    a("--seed", type=int, default=1337, help="model init and data order")
    # logging, evaluation, checkpoints
    a("--out_dir", default="out", help="log.jsonl and ckpt.pt go here")
    a("--log_every", type=int, default=10, help="steps between log rows (the only host syncs)")
    a("--eval_every", type=int, default=500, help="steps between validation losses (0 = only at the end)")
    a("--eval_tokens", type=int, default=2**20, help="validation tokens: the first ones of the val shard, always the same")
    a("--ckpt_every", type=int, default=1000, help="steps between checkpoints (always one at the end)")
    a("--resume", type=int, default=0, choices=(0, 1), help="1 = continue from out_dir/ckpt.pt")
    a("--halt_at", type=int, default=0, help="stop after this many steps with a checkpoint (0 = run to --steps)")
    a("--overwrite", type=int, default=0, choices=(0, 1), help="1 = start over in an out_dir that holds a checkpoint")
    return p


POSITIVE = ("seq_len", "batch_size", "grad_accum", "steps", "lr", "log_every", "ckpt_every", "eval_tokens")
AT_LEAST_0 = ("warmup", "beta_lr", "weight_decay", "grad_clip", "eval_every", "halt_at")   # (0: none, off or never)


def check_numbers(args):
    """The numeric flags' ranges, one line for the first that is out of it (train.py, finetune.py and recall.py:
    each has some of them). NaN and inf are out of every range; a negative --beta_lr would ascend the gradient."""
    for k in POSITIVE + AT_LEAST_0:
        v = getattr(args, k, None)
        if v is not None and not (math.isfinite(v) and (v > 0 if k in POSITIVE else v >= 0)):
            raise SystemExit(f"error: --{k} must be {'positive' if k in POSITIVE else 'at least 0'}, got {v}")
    if getattr(args, "min_lr", None) is not None and not 0 < args.min_lr <= args.lr:
        raise SystemExit(f"error: --min_lr ({args.min_lr}) must be in (0, --lr ({args.lr})]")


def check_args(args):
    """One line per mistake, before anything expensive starts."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    check_numbers(args)
    if args.grad_accum % world:
        raise SystemExit(f"error: --grad_accum ({args.grad_accum}) must be a multiple of the number of processes ({world}); "
                         f"e.g. --grad_accum={world} --batch_size={max(1, args.batch_size // world)}")
    if args.segment <= 0:                                  # before it divides anything below
        raise SystemExit(f"error: --segment must be a positive integer, got {args.segment}")
    if args.attn != "full" and args.seq_len % args.segment:
        raise SystemExit(f"error: --seq_len ({args.seq_len}) must be a multiple of --segment ({args.segment}): the model "
                         "accepts a short last segment, but the study's recipe trains on whole segments")
    if args.dtype not in ("bfloat16", "float32"):
        raise SystemExit(f"error: --dtype must be bfloat16 or float32, got {args.dtype!r}")
    check_device(args.device)
    check_out_dir(args)


def check_device(device):
    """One line instead of a traceback deep inside the first .to(device) (every script calls this): a name
    torch cannot parse (--device=gpu), CUDA without a GPU, a GPU index that is not there."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise SystemExit(f"error: --device={device} is not a device name; pass cuda, cuda:N or cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device={device} but this torch sees no CUDA GPU; pass --device=cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise SystemExit(f"error: --device={device} but this machine has {torch.cuda.device_count()} GPU(s)")


def check_out_dir(args):
    """Refuse to start over in an out_dir that holds a checkpoint: that would truncate its log and overwrite
    the checkpoint. Called by check_args and by train() for train.py, finetune.py and recall.py alike."""
    path = os.path.join(args.out_dir, "ckpt.pt")
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise SystemExit(f"error: --out_dir={args.out_dir} is a file, not a folder; pass another --out_dir")
    if args.resume and getattr(args, "overwrite", 0):
        raise SystemExit("error: --resume=1 continues the run in --out_dir, --overwrite=1 replaces it: pass one of them")
    if not args.resume and not getattr(args, "overwrite", 0) and os.path.exists(path):
        raise SystemExit(f"error: {path} exists; pass --resume=1 to continue it, another --out_dir, "
                         "or --overwrite=1 to start over (its log and checkpoint are then replaced)")
    if args.resume and not os.path.exists(path):         # (before the out_dir is made: nothing is left behind)
        raise SystemExit(f"error: --resume=1 but {path} does not exist: nothing to resume; without --resume=1 "
                         "the run starts there")


# The flags that may change on --resume=1: where the run writes, how often it reports, evaluates and saves,
# when this job halts, and how it executes (device, autocast dtype, compile, the memory's code path).
# Every other flag defines the run (model and config, data, --seq_len/--segment/--batch_size/--grad_accum,
# optimizer and schedule, --steps, --eval_tokens, --seed, finetune.py's sample and --init flags, recall.py's
# task flags): changed, the run would not "continue exactly", so a resume refuses it (resume_diff).
# recall.py's --out and --name only say where its result row goes.
RESUME_MAY_CHANGE = {"out_dir", "resume", "overwrite", "halt_at", "log_every", "eval_every", "ckpt_every",
                     "device", "dtype", "compile", "fast_memory", "out", "name"}


def script_of(args):
    """Which script a run's flags (vars of its args) belong to: a resume must continue a run of its own kind."""
    return "finetune.py" if "init" in args else "recall.py" if "n_pairs" in args else "train.py"


def resume_diff(saved, args):
    """'--flag=new (saved: old)' for each run-defining flag that differs from a checkpoint's saved args. Not
    compared: a flag the checkpoint does not know (added since), or one left at None (finetune.py: --init and
    the model flags, which then come from the checkpoint). Paths are compared normalised (./data = data/)."""
    new = vars(args)
    same = lambda k: new[k] == saved[k] or (k in ("data_dir", "init") and isinstance(saved[k], str)
                                            and os.path.normpath(new[k]) == os.path.normpath(saved[k]))
    return ", ".join(f"--{k}={new[k]} (saved: {saved[k]})" for k in sorted(set(saved) & set(new))
                     if k not in RESUME_MAY_CHANGE and new[k] is not None and not same(k))


def config_diff(saved, cfg):
    """'name: saved -> new' for each config field that differs (for one-line mismatch errors)."""
    new = dataclasses.asdict(cfg)
    return ", ".join(f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(saved) | set(new))
                     if saved.get(k) != new.get(k))


def build_config(model, **overrides):
    """make_config, with its ValueError turned into one line."""
    try:
        return make_config(model, **overrides)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"error: {e}")

# -----------------------------------------------------------------------------
# distributed setup

Ctx = namedtuple("Ctx", "rank world device master cpu_group", defaults=(None,))


def setup_distributed(device):
    """Under torchrun (RANK set) join the process group, nccl on CUDA and gloo on CPU, each process on the
    GPU of its LOCAL_RANK; otherwise a single process. TF32 on: free speed for any fp32 matmul left."""
    if "RANK" in os.environ:
        rank, local, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
        if device.startswith("cuda"):
            device = f"cuda:{local}"
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    else:
        rank, world = 0, 1
    # a gloo group for tiny host-side agreements (the stop flag) that must not wait for the GPU
    cpu_group = (dist.new_group(backend="gloo") if device.startswith("cuda") else dist.group.WORLD) if world > 1 else None
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Ctx(rank, world, device, rank == 0, cpu_group)


def teardown_distributed():
    """Destroy the process group while the interpreter is fully alive. DDP sits in a reference cycle and
    holds the process group, so without gc.collect() here the group's C++ object (and its gloo worker
    threads, which may need the GIL to free tensors) would die only during interpreter shutdown, where
    such a thread aborts the process: "terminate called without an active exception", exit code 1."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        gc.collect()

# -----------------------------------------------------------------------------
# data

class TokenData:
    """The train shards cut into non-overlapping windows of seq_len + 1 tokens: input tokens plus next-token
    targets (a window's last target is the next window's first input, so every token is trained on).
    The window order is a seeded permutation per epoch, so the batch of any step is a pure function of
    (seed, step): resuming needs no loader state and every rank can compute its own part."""

    def __init__(self, data_dir, seq_len, seed):
        train, val = find_shards(data_dir, "train"), find_shards(data_dir, "val")
        if not train or not val:
            raise SystemExit(f"error: no token shards (*_train_*.bin and *_val_*.bin) in {data_dir}; run "
                             "prepare_fineweb.py first, or pass --data_dir=<folder with shards>")
        markers = glob.glob(os.path.join(data_dir, f"*_{INCOMPLETE}"))   # a shard set prepare_fineweb.py did not finish
        if markers and int(os.environ.get("RANK", 0)) == 0:
            marker = markers[0]
            with open(marker) as f:
                why = f.readline().strip()
            print(f"warning: {data_dir} holds a truncated shard set ({marker}: {why}); training on the shards "
                  "it has", file=sys.stderr, flush=True)
        self.shards = [load_shard(p) for p in train]
        self.val = load_shard(val[0])
        self.seq_len, self.seed = seq_len, seed
        self.cum = np.cumsum([0] + [max(0, len(s) - 1) // seq_len for s in self.shards])  # windows per shard
        self.n = int(self.cum[-1])
        if self.n == 0:
            raise SystemExit(f"error: the train shards in {data_dir} hold fewer than --seq_len+1 ({seq_len + 1}) tokens")
        if len(self.val) < seq_len + 1:  # here, not at the first evaluation
            raise SystemExit(f"error: the val shard {val[0]} holds {len(self.val)} tokens, fewer than --seq_len+1 ({seq_len + 1})")
        self._perm = (None, None)

    def check_vocab(self, vocab_size):
        """Tokens >= vocab_size would fail deep inside the embedding: check the val shard and the first
        train shard up front (cheap, and catches a model built for another tokenizer)."""
        top = int(max(self.val.max(), self.shards[0].max()))
        if top >= vocab_size:
            raise SystemExit(f"error: the shards hold token id {top}, the model's vocabulary is {vocab_size}; "
                             "pass a larger --vocab_size or shards of the matching tokenizer")

    def window(self, w):
        i = int(np.searchsorted(self.cum, w, side="right")) - 1
        off = (w - int(self.cum[i])) * self.seq_len
        return self.shards[i][off:off + self.seq_len + 1]

    def window_ids(self, start, count):
        """Window ids of global samples start .. start+count-1; sample g is in epoch g // n."""
        ids = []
        for g in range(start, start + count):
            epoch, pos = divmod(g, self.n)
            if self._perm[0] != epoch:  # one permutation per epoch, cached
                self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
            ids.append(int(self._perm[1][pos]))
        return ids

    def batch(self, step, micro, batch_size, grad_accum):
        """(x, y) int64 (batch_size, seq_len) of global micro-batch `micro` (0 .. grad_accum-1) of `step`."""
        start = (step * grad_accum + micro) * batch_size
        rows = np.stack([self.window(w) for w in self.window_ids(start, batch_size)]).astype(np.int64)
        return torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:])

    def val_batches(self, eval_tokens, batch_size, rank, world):
        """This rank's share of the fixed validation set: the first eval_tokens tokens of the val shard.
        The count is rounded down to whole batches on every rank, so compiled blocks never see a new shape."""
        n = min(eval_tokens, len(self.val) - 1) // self.seq_len  # >= 1: checked by main and __init__
        if n >= batch_size * world:
            n -= n % (batch_size * world)
        L = self.seq_len
        mine = list(range(rank, n, world))
        for i in range(0, len(mine), batch_size):
            rows = np.stack([self.val[s * L: s * L + L + 1] for s in mine[i:i + batch_size]]).astype(np.int64)
            yield torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:])

# -----------------------------------------------------------------------------
# schedule, speed accounting, logging

def lr_multiplier(step, warmup, total, min_ratio):
    """Linear warmup over `warmup` steps, then cosine from 1 to min_ratio at step `total` (P1: 500 steps,
    6e-5 -> 6e-6). The trainer sets every param group's lr = base_lr * this, the beta group included."""
    warmup = min(warmup, total // 4)  # a short run must not end before its warmup does
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + 0.5 * (1.0 - min_ratio) * (1.0 + math.cos(math.pi * progress))


def parse_curriculum(spec, final, what):
    """'a,b' -> [a, b, final]: the stages of a length curriculum (recall.py: segments per sequence,
    finetune.py: tokens per row), each trained for an equal share of the steps by curriculum_stage."""
    try:
        return [int(v) for v in spec.split(",") if v.strip()] + [final]
    except ValueError:
        raise SystemExit(f"error: --curriculum must be a comma list of {what}, got {spec!r}")


def curriculum_stage(stages, step, steps):
    """The stage in force at this step: equal shares of the steps, in order."""
    return stages[min(len(stages) - 1, step * len(stages) // steps)]


# dense bf16 tensor-core peak per GPU (no sparsity); unknown GPUs and CPUs get no MFU
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device, dtype):
    if device.type != "cuda" or dtype != "bfloat16":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


class Log:
    """Console + out_dir/log.jsonl, rank 0 only. On resume the rows of the steps trained after the checkpoint
    are dropped (they are about to be redone), so the log reads as one uninterrupted run. The resumed step's
    validation row (of the checkpoint's weights) stays until this run writes that step's again: a resume
    that does not evaluate there (another --eval_every, a signal during the evaluation) loses nothing."""

    def __init__(self, out_dir, master, start_step):
        self.master, self.path = master, os.path.join(out_dir, "log.jsonl")
        self.redo = start_step if start_step > 0 else None  # the step whose kept val row a new one replaces
        if master:
            self._rewrite(lambda r: start_step > 0 and (r.get("step", -1) < start_step or
                                                        r.get("step") == start_step and "val_loss" in r))

    def _rewrite(self, keep):
        """Atomically rewrite the log with the rows for which keep(row) is true (a row cut short by a crash goes)."""
        rows = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                for line in f:
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue
                    if keep(r):
                        rows.append(line.rstrip("\n") + "\n")
        write_text(self.path, "".join(rows))

    def row(self, text=None, **fields):
        if not self.master:
            return
        if text:
            print(text, flush=True)
        if "val_loss" in fields and fields.get("step") == self.redo:
            self._rewrite(lambda r: not ("val_loss" in r and r.get("step") == self.redo))
            self.redo = None
        with open(self.path, "a") as f:
            f.write(json.dumps(fields) + "\n")


def rng_state():
    return dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])


def format_eta(seconds):
    """1h05m, or 4m07s under an hour (a short run's ETA is not always 0h00m)."""
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)

# -----------------------------------------------------------------------------
# the training loop (finetune.py runs the same one)

@torch.no_grad()
def evaluate(model, batches, ctx, autocast):
    """Mean loss over this rank's batches, averaged over all ranks (weighted by sequence count)."""
    model.eval()
    tot = torch.zeros(2, device=ctx.device, dtype=torch.float64)
    for x, y in batches:
        with autocast:
            _, loss, _ = model(x.to(ctx.device), y.to(ctx.device))
        tot += torch.stack([loss.double() * len(x), torch.tensor(float(len(x)), device=ctx.device, dtype=torch.float64)])
    if ctx.world > 1:
        dist.all_reduce(tot)
    model.train()
    return (tot[0] / tot[1]).item()


class StopOnSignal:
    """While active, SIGINT (Ctrl-C) and SIGTERM (what job schedulers send before they kill) end the run with
    one line and a non-zero exit. Before a step of this run has completed (self.defer False: loading, the
    first evaluation, the first step) there is nothing new to save, so a signal exits at once. After that,
    the first signal only sets self.signum: the loop finishes its step, saves a checkpoint and exits. A
    second signal exits at once, without saving. _train keeps step, ckpt_path and last_ckpt current for the
    message; on other ranks than rank 0 (master False) the exit prints nothing."""

    def __init__(self):
        self.signum, self.old, self.defer = None, {}, False
        self.step, self.ckpt_path, self.last_ckpt, self.master = 0, None, None, True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal.signal works only there
            self.old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def saved(self):
        return (f"the last checkpoint is {self.ckpt_path} (step {self.last_ckpt})" if self.last_ckpt is not None
                else "no checkpoint was written")

    def _handle(self, signum, frame):
        if self.defer and self.signum is None:
            self.signum = signum
            return
        name = signal.Signals(signum).name
        if self.signum is None:
            msg = f"stopped by {name} before step {self.step} completed: nothing new to save; {self.saved()}"
        else:
            msg = f"stopped by {name}, a second signal, during step {self.step}: exiting without saving; {self.saved()}"
        raise SystemExit(msg if self.master else 1)

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)

    def requested(self, ctx):
        """True on every rank once any rank got a signal, so that all ranks stop at the same step."""
        if ctx.world == 1:
            return self.signum is not None
        flag = torch.tensor([float(self.signum is not None)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=ctx.cpu_group)
        return flag.item() > 0


def train(args, cfg, model, ctx, next_batch, eval_batches=None, init_note=None):
    """Run args.steps optimizer steps of `model` (an uncompiled Llama on the CPU).

    next_batch(step, micro) -> (x, y) CPU int64 tensors of global micro-batch `micro` (0 .. grad_accum-1)
    of `step`; y = -1 is ignored. It must be a function of its arguments for resume to be exact.
    eval_batches() -> iterable of this rank's (x, y) validation batches, or None (no validation).
    --resume=1 restores model, optimizer, step and RNG from out_dir/ckpt.pt. Returns the last step done."""
    check_out_dir(args)
    with StopOnSignal() as stop:
        return _train(args, cfg, model, ctx, next_batch, eval_batches, init_note, stop)


def _train(args, cfg, model, ctx, next_batch, eval_batches, init_note, stop):
    device, master = ctx.device, ctx.master
    if master:
        try:
            os.makedirs(args.out_dir, exist_ok=True)
        except OSError as e:
            raise SystemExit(f"error: cannot create --out_dir={args.out_dir} ({e.strerror})")
    ckpt_path = os.path.join(args.out_dir, "ckpt.pt")
    stop.ckpt_path, stop.master = ckpt_path, master
    model.to(device)
    optimizer = model.configure_optimizers(args.lr, args.weight_decay, args.beta_lr, fused=device.type == "cuda")
    base_lrs = [g["base_lr"] for g in optimizer.param_groups]
    start, log_acc = 0, None
    if args.resume:
        ckpt = load_checkpoint(ckpt_path)  # on the CPU: RNG states must stay CPU tensors
        theirs, ours = script_of(ckpt.get("args") or {}), script_of(vars(args))
        if theirs != ours:
            raise SystemExit(f"error: {ckpt_path} is a {theirs} run; resume it with {theirs} (its command plus "
                             f"--resume=1), or pass {ours} another --out_dir")
        ckpt["config"]["fast_memory"] = cfg.fast_memory  # a choice of code path, not of model: the flag's wins
        if ckpt["config"] != dataclasses.asdict(cfg):
            raise SystemExit(f"error: {ckpt_path} holds a different model config than these flags "
                             f"({config_diff(ckpt['config'], cfg)}); --resume=1 takes the command of the run it continues")
        changed = resume_diff(ckpt.get("args") or {}, args)
        if changed:
            raise SystemExit(f"error: --resume=1 continues {ckpt_path} exactly, but these flags differ from its "
                             f"saved ones: {changed}; pass the saved values, or start a new run in another --out_dir")
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise SystemExit(f"error: {ckpt_path} does not match this model/optimizer ({str(e).splitlines()[0]})")
        for g, lr in zip(optimizer.param_groups, base_lrs):
            g["base_lr"] = lr  # the current flags' peak LRs win over the saved ones
        start = int(ckpt["step"])
        set_rng_state(ckpt["rng"])
        log_acc = ckpt.get("log_acc")  # the sums of a log row cut in two by the checkpoint (absent: before they were saved)
        del ckpt
        stop.last_ckpt = stop.step = start
        if start >= args.steps or 0 < args.halt_at <= start:
            what = "the run is finished" if start >= args.steps else f"--halt_at={args.halt_at} is reached"
            if master:
                print(f"{ckpt_path} is at step {start} of --steps={args.steps}: {what}, nothing to do", flush=True)
            return start

    # Compile block by block (and the loss head) rather than the whole model: the identical blocks share
    # one graph, compiled once instead of n_layer times (seconds, not minutes), with the memory scan over
    # segments unrolled inside it; state-dict keys stay those of Llama (no _orig_mod. prefix).
    if args.compile:
        compile_model(model)
    # DDP averages gradients across ranks during the last micro-batch's backward
    train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if ctx.world > 1 else model
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bfloat16"
                else contextlib.nullcontext())
    accum = args.grad_accum // ctx.world  # micro-batches per rank per step

    if master and args.warmup > args.steps // 4:       # (lr_multiplier's cap: said, not silent)
        print(f"note: --warmup={args.warmup} is more than a quarter of --steps={args.steps}: the run warms up over a "
              f"quarter ({args.steps // 4})", file=sys.stderr, flush=True)
    if master and start == 0 and os.path.exists(ckpt_path):
        os.remove(ckpt_path)   # --overwrite=1: the old run's checkpoint goes with its log (Log truncates it), so
        #                        a stop before the first new checkpoint cannot leave the two of different runs
    log = Log(args.out_dir, master, start)
    gates = model.gates()  # as loaded: P1's code once reset them to 0.5 on reload, so the header records them
    log.row(f"{'resuming at step ' + str(start) if start else 'starting'}: {model.num_params() / 1e6:.1f}M params "
            f"(non-embedding), world {ctx.world}, {init_note or ''}",
            config=dataclasses.asdict(cfg), args=vars(args), start_step=start, world_size=ctx.world,
            torch=torch.__version__, gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            params=model.num_params(non_embedding=False), cmd=" ".join(sys.argv),
            gates=gates.tolist() if gates is not None else None)
    flops_per_token = model.flops_per_token(args.seq_len)
    peak = peak_flops(device, args.dtype)

    def reduce_mean(t):  # mean over ranks; gloo has no AVG, so SUM / world
        t = t.detach().clone()
        if ctx.world > 1:
            dist.all_reduce(t)
        return t / ctx.world

    # device-side accumulators: the hot loop never waits for the GPU, only log/eval/checkpoint steps do
    acc = torch.zeros(2, device=device)  # loss, grad norm, summed over steps since the last row
    n_acc, n_tok = 0, 0  # n_tok: tokens this rank trained on
    if log_acc:  # resumed mid-row: the row goes on averaging from where the checkpoint left it, as in one run
        acc, n_acc = torch.tensor(log_acc["sums"], device=device), log_acc["steps"]
    t_last, steps_timed, time_timed = time.perf_counter(), 0, 0.0

    def check_finite(step):
        vals = reduce_mean(acc).tolist()
        if not all(math.isfinite(v) for v in vals):
            where = f"{ckpt_path} (step {stop.last_ckpt}) is kept" if stop.last_ckpt is not None else "no checkpoint was written"
            raise SystemExit(f"error: loss or gradient became {vals[0] if not math.isfinite(vals[0]) else vals[1]} "
                             f"by step {step}; stopping (try a lower --lr). Last good checkpoint: {where}")
        return vals

    step, stopped = start, False
    for step in range(start, args.steps + 1):
        stop.step = step
        last = step == args.steps
        if eval_batches is not None and (last or (args.eval_every > 0 and step % args.eval_every == 0)):
            _sync(device)
            t0 = time.perf_counter()
            val = evaluate(model, eval_batches(), ctx, autocast)
            log.row(f"step {step}: val_loss {val:.4f}", step=step, val_loss=val)
            t_last += time.perf_counter() - t0  # evaluation is not training time
        # a signal (asked after the evaluation, so that one during it costs no extra step): checkpoint, then exit
        stopped = step > start and not last and stop.requested(ctx)
        halt = 0 < args.halt_at == step < args.steps or stopped
        if step > start and (last or halt or step % args.ckpt_every == 0):
            _sync(device)
            t0 = time.perf_counter()
            # never save weights that a NaN already reached; the sums of the log row in progress (means over
            # ranks) go with the checkpoint, so that a resumed log reads as one run
            sums = check_finite(step - 1) if n_acc else None
            if master:
                save_checkpoint(ckpt_path, dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                                                step=step, config=dataclasses.asdict(cfg), args=vars(args),
                                                rng=rng_state(), log_acc=dict(sums=sums, steps=n_acc) if n_acc else None))
            stop.last_ckpt = step
            t_last += time.perf_counter() - t0  # nor is saving
        if last or halt:
            break

        # one optimizer step: grad_accum micro-batches in total, this rank's share of them
        mult = lr_multiplier(step, args.warmup, args.steps, args.min_lr / args.lr)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * mult
        for j in range(accum):
            x, y = next_batch(step, ctx.rank * accum + j)
            n_tok += x.numel()  # counted, not seq_len x batch: a length curriculum changes the length
            if device.type == "cuda":
                x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
            if ctx.world > 1:
                train_model.require_backward_grad_sync = j == accum - 1  # all-reduce once per step, not per micro-batch
            with autocast:
                _, loss, _ = train_model(x, y)
            loss = loss / accum  # mean over micro-batches; DDP then averages over ranks
            loss.backward()
            acc[0] += loss.detach()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip if args.grad_clip > 0 else float("inf"))
        acc[1] += norm.detach()
        optimizer.step()
        stop.defer = True  # from now on there is something new to save: a signal waits for the checkpoint
        optimizer.zero_grad(set_to_none=True)
        n_acc += 1

        if step % args.log_every == 0 or step == args.steps - 1:
            loss_v, norm_v = (v / n_acc for v in check_finite(step))  # .tolist() here is the sync
            now = time.perf_counter()
            dt, t_last = now - t_last, now
            tok_s = n_tok * ctx.world / dt
            if step > start:  # the first row includes compilation: keep it out of the ETA
                steps_timed, time_timed = steps_timed + n_acc, time_timed + dt
            eta = (args.steps - step - 1) * time_timed / steps_timed if steps_timed else float("nan")
            mfu = flops_per_token * tok_s / (peak * ctx.world) if peak else None   # (unknown GPU, CPU: no peak)
            gates = model.gates()
            gates = gates.tolist() if gates is not None else None
            text = (f"step {step:6d}/{args.steps} | loss {loss_v:.4f} | lr {optimizer.param_groups[0]['lr']:.2e} | "
                    f"norm {norm_v:.2f} | {tok_s:,.0f} tok/s" + (f" | mfu {100 * mfu:.1f}%" if peak else "") +
                    (f" | eta {format_eta(eta)}" if eta == eta else "") +
                    (" | gates " + " ".join(f"{sum(l) / len(l):.2f}" for l in gates) if gates else ""))
            log.row(text, step=step, loss=loss_v, lr=optimizer.param_groups[0]["lr"], grad_norm=norm_v,
                    tok_s=tok_s, mfu=mfu, gates=gates)
            acc.zero_()
            n_acc = n_tok = 0
    if ctx.world > 1:
        dist.barrier(group=ctx.cpu_group)  # every rank leaves together, after rank 0 has written the checkpoint
    if stopped:
        name = signal.Signals(stop.signum).name if stop.signum else "a signal on another rank"
        raise SystemExit(f"stopped by {name} at step {step}: checkpoint {ckpt_path} written; the same command "
                         "plus --resume=1 continues exactly" if master else 1)
    if master and step < args.steps:
        print(f"halted at step {step} (--halt_at): checkpoint {ckpt_path} written; the same command plus --resume=1 "
              "continues exactly", flush=True)
    return step


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.segment is None:  # the preset's (an unknown preset is reported by build_config below)
        args.segment = make_config(args.model if args.model in PRESETS else "300m").segment
    check_args(args)
    if args.eval_tokens < args.seq_len:
        raise SystemExit(f"error: --eval_tokens ({args.eval_tokens}) must be at least --seq_len ({args.seq_len}): "
                         "validation runs on whole sequences")
    if args.model == "300m" and args.device == "cpu":
        print("warning: the 300m preset on the CPU takes minutes per step and logs nothing for a long while; "
              "for a quick CPU run use the laptop line of --help (--model=tiny)", file=sys.stderr, flush=True)
    cfg = build_config(args.model, vocab_size=args.vocab_size, attn=args.attn, update=args.update,
                       fast_memory=bool(args.fast_memory),
                       gate=args.gate, segment=args.segment)
    data = TokenData(args.data_dir, args.seq_len, args.seed)
    data.check_vocab(cfg.vocab_size)
    if args.eval_tokens // args.seq_len > (len(data.val) - 1) // args.seq_len and int(os.environ.get("RANK", 0)) == 0:
        print(f"note: --eval_tokens={args.eval_tokens} is more than the val shard holds ({len(data.val) - 1}): "
              "validating on all of it", file=sys.stderr, flush=True)
    ctx = setup_distributed(args.device)
    try:
        torch.manual_seed(args.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
        model = Llama(cfg)
        train(args, cfg, model, ctx,
              next_batch=lambda step, micro: data.batch(step, micro, args.batch_size, args.grad_accum),
              eval_batches=lambda: data.val_batches(args.eval_tokens, args.batch_size, ctx.rank, ctx.world),
              init_note=f"{data.n:,} train windows of {args.seq_len + 1} tokens")
    finally:
        teardown_distributed()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C outside train()'s handler: reading shards, building the model
        raise SystemExit("stopped by SIGINT outside the training loop: nothing new to save")
