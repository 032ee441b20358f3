"""
Needle fine-tuning (P1): continue a train.py checkpoint on packed passkey samples.

P1's recipe: 500 steps, batch 64 (here 4 x 16 micro-batches), sequence 4096, lr 7.5e-5 with 50 warmup
steps and cosine (to 7.5e-6 here: P1 gives no floor, we keep train.py's 10%), beta lr 1.5e-4:
    python finetune.py --init=out/ckpt.pt --out_dir=out/finetune
    torchrun --standalone --nproc_per_node=4 finetune.py --init=out/ckpt.pt --batch_size=4 --grad_accum=16
Real text as the haystack instead of P2's repeated sentences, or nanotron-style rows (prompt, answer):
    python finetune.py --init=out/ckpt.pt --filler=shards --data_dir=data/fineweb10B
    python finetune.py --init=out/ckpt.pt --parquet=needle_train.parquet
Then evaluate with passkey.py --ckpt=out/finetune/ckpt.pt. Resume: the same command plus --resume=1.

Each training row is seq_len tokens packed with samples separated by <|endoftext|>: P2's template
(passkey.make_sample) of a random length in [--min_len, seq_len] (the last one fills the row), the needle
at a uniform random depth, a key from the fine-tuning side of passkey.py's key split (evaluation keys
are never trained on). --loss_on=all (default) is next-token loss on the whole packed sequence, as
nanotron's fine-tuning does; --loss_on=answer trains on the answer tokens " {k}." only. Every row is a
function of (seed, its index), so resume is exact. val_loss is the loss on the answer tokens of fixed
held-out samples with evaluation keys (--eval_tokens of them). The model's architecture comes from
the checkpoint; only --segment, --update and --gate may be changed.
"""
import os

import numpy as np
import torch

import passkey
import train
from model import PRESETS, Llama, LlamaConfig
from prepare_fineweb import EOT, find_shards, gpt2_encoding, hub_reachable, load_shard


def get_parser():
    p = train.get_parser(__doc__, model_from="the checkpoint")
    p.set_defaults(seq_len=4096, batch_size=4, grad_accum=16, steps=500, lr=7.5e-5, min_lr=7.5e-6, warmup=50,
                   beta_lr=1.5e-4, out_dir="out/finetune", eval_every=100, eval_tokens=2**17, ckpt_every=100)
    a = p.add_argument
    a("--init", default=None, help="the pretrained checkpoint (train.py's out_dir/ckpt.pt)")
    a("--loss_on", default="all", choices=("all", "answer"), help="loss on the whole packed sequence (nanotron) "
      "or on the answer tokens only")
    a("--filler", default="p2", choices=("p2", "shards"), help="haystack: P2's repeated sentences, or random "
      "windows of real text from the train shards in --data_dir")
    a("--min_len", type=int, default=256, help="shortest generated sample, in tokens")
    a("--parquet", default=None, help="train on rows (prompt, answer) of this parquet file instead of generating")
    a("--hf_dataset", default=None, help="... or of this Hub dataset (e.g. nanotron/needle_in_a_hay_stack_finetuning_dataset)")
    a("--hf_split", default="train", help="split of --hf_dataset")
    return p


def finetune_config(saved, args, path):
    """The checkpoint's config with the compatible overrides; one line for an incompatible one."""
    cfg = dict(saved)
    arch = ("n_layer", "n_head", "n_embd", "ffn_hidden")
    if args.model is not None and (args.model not in PRESETS or
                                   any(cfg[k] != PRESETS[args.model][k] for k in arch)):
        raise SystemExit(f"error: --model={args.model} is not the architecture of {path}; leave --model out")
    for k in ("attn", "vocab_size"):
        if getattr(args, k) is not None and getattr(args, k) != cfg[k]:
            raise SystemExit(f"error: --{k}={getattr(args, k)} differs from {path}'s {cfg[k]!r}; fine-tuning keeps "
                             "the pretrained architecture (only --segment, --update, --gate may change)")
    for k in ("segment", "update", "gate"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    try:
        return LlamaConfig(**cfg)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"error: {e}")

# -----------------------------------------------------------------------------
# samples and packing

def needle_sampler(enc, seq_len, min_len, eval_keys=False, filler_shards=None):
    """sample(rng, room, first) -> (ids, answer_start) of at most room - 1 tokens (room for the <|endoftext|>),
    or None when not even min_len tokens fit. Lengths are uniform in [min_len, seq_len], cut to the room left."""
    def sample(rng, room, first):
        if room - 1 < min_len:
            return None
        length = min(int(rng.integers(min_len, seq_len + 1)), room - 1)
        key = passkey.random_key(rng, eval=eval_keys)
        kw = dict(filler="p2")
        if filler_shards:
            kw = dict(filler="tokens", filler_ids=filler_shards[int(rng.integers(len(filler_shards)))], rng=rng)
        return passkey.make_sample(enc, length, float(rng.random()), key, **kw)
    return sample


def table_sampler(enc, prompts, answers):
    """sample(rng, room, first): a random row (prompt, answer) of a dataset. A row too long for an empty
    sequence (first) is cut from the left (the answer stays); one that does not fit the room left ends the row."""
    def sample(rng, room, first):
        i = int(rng.integers(len(prompts)))
        p, a = enc.encode_ordinary(prompts[i]), enc.encode_ordinary(answers[i])
        ids = p + a
        if len(ids) > room - 1:
            if first:
                ids = ids[len(ids) - (room - 1):]
            else:
                return None
        return ids, len(ids) - len(a)
    return sample


def pack_row(rng, seq_len, sample, loss_on):
    """seq_len + 1 tokens of samples, each followed by <|endoftext|>, padded with <|endoftext|> at the end;
    and a mask of the tokens that are loss targets (answer tokens, or everything but the padding)."""
    ids, keep = [], []
    while len(ids) <= seq_len:
        s = sample(rng, seq_len + 1 - len(ids), not ids)
        if s is None:
            break
        toks, a = s
        ids += list(toks) + [EOT]
        keep += [loss_on == "all"] * a + [True] * (len(toks) - a) + [loss_on == "all"]
    pad = seq_len + 1 - len(ids)
    return np.array(ids + [EOT] * pad, dtype=np.int64), np.array(keep + [False] * pad)


def make_batch(rows, seq_len, sample, loss_on, seed):
    """(x, y) for the given global row indices; row i's content is a function of (seed, i) alone."""
    xs, ys = [], []
    for i in rows:
        ids, keep = pack_row(np.random.default_rng([seed, i]), seq_len, sample, loss_on)
        xs.append(ids[:-1])
        ys.append(np.where(keep[1:], ids[1:], -1))  # -1: ignored by the loss
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def load_table(args):
    """(prompts, answers) from --parquet or --hf_dataset (columns 'prompt' and 'answer')."""
    if args.parquet:
        import pyarrow.parquet as pq
        try:
            t = pq.read_table(args.parquet, columns=["prompt", "answer"])
        except Exception as e:
            raise SystemExit(f"error: cannot read columns 'prompt', 'answer' of {args.parquet} ({type(e).__name__})")
        return t.column("prompt").to_pylist(), t.column("answer").to_pylist()
    if not hub_reachable():
        raise SystemExit(f"error: cannot reach the Hugging Face Hub to load {args.hf_dataset}; offline, pass "
                         "--parquet=<local file with prompt/answer columns> or use the built-in generator")
    try:
        import datasets
        ds = datasets.load_dataset(args.hf_dataset, split=args.hf_split)
        return [str(x) for x in ds["prompt"]], [str(x) for x in ds["answer"]]
    except Exception as e:
        raise SystemExit(f"error: cannot load {args.hf_dataset} (split {args.hf_split}) with columns prompt/answer "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")

# -----------------------------------------------------------------------------

def main(argv=None):
    args = get_parser().parse_args(argv)
    ctx_world = int(os.environ.get("WORLD_SIZE", 1))
    if not args.resume and not args.init:
        raise SystemExit("error: pass --init=<pretrained ckpt.pt> (or --resume=1 to continue this fine-tuning run)")
    src_path = os.path.join(args.out_dir, "ckpt.pt") if args.resume else args.init
    src = train.load_checkpoint(src_path)
    cfg = finetune_config(src["config"], args, src_path)
    args.attn, args.segment, args.update, args.gate, args.vocab_size = cfg.attn, cfg.segment, cfg.update, cfg.gate, cfg.vocab_size
    train.check_args(args)
    if not 100 <= args.min_len <= args.seq_len:  # the passkey template alone is ~70 tokens
        raise SystemExit(f"error: --min_len must be in [100, --seq_len ({args.seq_len})]")
    enc = gpt2_encoding()
    if cfg.vocab_size < enc.n_vocab:
        raise SystemExit(f"error: {src_path} has a vocabulary of {cfg.vocab_size}, smaller than GPT-2's {enc.n_vocab}")

    shards = None
    if args.parquet or args.hf_dataset:
        sample = table_sampler(enc, *load_table(args))
    else:
        if args.filler == "shards":
            paths = find_shards(args.data_dir, "train")
            if not paths:
                raise SystemExit(f"error: --filler=shards needs token shards in --data_dir ({args.data_dir}); "
                                 "run prepare_fineweb.py or pass --data_dir")
            shards = [load_shard(p) for p in paths]
        sample = needle_sampler(enc, args.seq_len, args.min_len, filler_shards=shards)
    # held-out samples: evaluation keys, loss on the answers only, always the same rows
    val_sample = needle_sampler(enc, args.seq_len, args.min_len, eval_keys=True, filler_shards=shards)  # same haystack
    n_val = max(1, args.eval_tokens // args.seq_len)
    if n_val >= args.batch_size * ctx_world:  # whole batches on every rank: compiled blocks see one shape
        n_val -= n_val % (args.batch_size * ctx_world)

    def next_batch(step, micro):
        first = (step * args.grad_accum + micro) * args.batch_size
        return make_batch(range(first, first + args.batch_size), args.seq_len, sample, args.loss_on, args.seed)

    def eval_batches():
        mine = list(range(ctx.rank, n_val, ctx.world))
        for i in range(0, len(mine), args.batch_size):
            yield make_batch(mine[i:i + args.batch_size], args.seq_len, val_sample, "answer", args.seed + 1)

    ctx = train.setup_distributed(args.device)
    try:
        torch.manual_seed(args.seed)
        model = Llama(cfg)
        if not args.resume:
            try:  # strict: the gate parameters beta must come back too (P1's code once reset them to 0.5)
                model.load_state_dict(src["model"])
            except RuntimeError as e:
                raise SystemExit(f"error: {src_path} does not fit this model ({str(e).splitlines()[0]})")
        del src
        train.train(args, cfg, model, ctx, next_batch, eval_batches, init_note=f"fine-tuning {src_path}")
    finally:
        train.teardown_distributed()


if __name__ == "__main__":
    main()
