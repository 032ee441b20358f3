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
On a laptop (CPU), after train.py's laptop line (about a minute on 2 cores; the default recipe is hours there):
    python finetune.py --init=out/laptop/ckpt.pt --device=cpu --dtype=float32 --seq_len=512 --batch_size=2 --grad_accum=1 --steps=30 --warmup=5 --lr=1e-3 --min_lr=1e-4 --eval_tokens=2048 --out_dir=out/laptop_ft

Each training row is seq_len tokens packed with samples separated by <|endoftext|>: P2's template
(passkey.make_sample) of a random length in [--min_len, seq_len] (the last one fills the row), the needle
at a uniform random depth, a key from the fine-tuning side of passkey.py's key split (evaluation keys
are never trained on). --loss_on=all (default) is next-token loss on the whole packed sequence, as
nanotron's fine-tuning does; --loss_on=answer trains on the answer tokens " {k}." only. Every row is a
function of (seed, its index), so resume is exact. val_loss is the loss on the answer tokens of fixed
held-out samples with evaluation keys (--eval_tokens of them). The model's architecture comes from
the checkpoint; only --segment, --update and --gate may be changed, and --attn=infini adds the memory to
a local or full checkpoint (its gates start at beta = 0, g = 0.5). --fast_memory is the flag's (default 1),
whatever the checkpoint holds: a code path, not part of the model.
--pack=0 puts one sample of exactly the row's length in each row instead (the memory then holds one key);
--curriculum=1024,2048 trains on rows of 1024, then 2048, then --seq_len tokens, in equal shares of the
steps, with more rows per micro-batch at the shorter lengths (the tokens per step stay the same).
--needle=memory (with --pack=0) puts every needle in a segment before the question's, where local attention
cannot see it: every answer then needs the memory; --needle_last=0.25 moves a quarter of the training rows'
needles into the question's own segment, so that reading (by local attention) is trained too. What these do
to passkey accuracy is in the README ("Does the memory remember?"). The memory learnt to retrieve (on `small`,
README part 4) only with short memories first: --segment=128 --pack=0 --needle=memory --seq_len=2048
--curriculum=256,512,1024, 256 answers a step at the first stage (--batch_size=8 --grad_accum=4), 1000 steps.
"""
import os
import sys

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
    a("--min_len", type=int, default=None, help="shortest generated sample, in tokens (packed rows); "
                                                 "default min(256, --seq_len)")
    a("--pack", type=int, default=1, choices=(0, 1), help="1: pack samples of random lengths into each row, "
      "the memory carried across them (nanotron); 0: one sample per row, exactly the row's length, so the "
      "memory holds one key")
    a("--needle", default="any", choices=("any", "memory"), help="any: the needle at a uniform depth (P2); "
      "memory: in a segment before the question's (needs --pack=0), so every answer has to come from the memory")
    a("--needle_last", type=float, default=0.0, help="with --needle=memory: this fraction of the training rows "
      "puts the needle in the question's own segment instead, so reading it there (local attention) is trained "
      "too; held-out rows stay memory-only")
    a("--curriculum", default="", help="comma list of row lengths trained before --seq_len, each for an equal "
      "share of --steps, rows per micro-batch scaled to keep the tokens per step (e.g. 1024,2048); empty = none")
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
    if args.vocab_size is not None and args.vocab_size != cfg["vocab_size"]:
        raise SystemExit(f"error: --vocab_size={args.vocab_size} differs from {path}'s {cfg['vocab_size']}; "
                         "fine-tuning keeps the pretrained vocabulary")
    if args.attn is not None and args.attn != cfg["attn"]:
        # the one architecture change allowed: add the memory to a model pretrained without it
        if args.attn != "infini":
            raise SystemExit(f"error: --attn={args.attn} differs from {path}'s {cfg['attn']!r}; fine-tuning can only "
                             "add the memory (--attn=infini on a local or full checkpoint), not remove it")
        cfg["attn"] = "infini"
    for k in ("segment", "update", "gate"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    cfg["fast_memory"] = bool(args.fast_memory)   # a code path, not the model's: the flag's, whatever the checkpoint says
    try:
        return LlamaConfig(**cfg)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"error: {e}")

# -----------------------------------------------------------------------------
# samples and packing

def needle_sampler(enc, eval_keys=False, filler_shards=None, past_segment=None, last_frac=0.0):
    """sample(rng, room, first, lo, hi) -> (ids, answer_start) of at most room - 1 tokens (room for the
    <|endoftext|>), or None when not even lo tokens fit. Lengths are uniform in [lo, hi], cut to the room left.
    past_segment=N: the needle (both copies of the key) lies before the sample's last N tokens, i.e. in an
    earlier segment than the question when the sample starts on a segment boundary (--pack=0): only the
    memory can carry it to the answer. Depths are drawn uniformly and redrawn until that holds. last_frac: the
    share of samples (drawn one by one) whose key lies in those last N tokens instead, the question's own
    segment, where local attention reads it."""
    def sample(rng, room, first, lo, hi):
        if room - 1 < lo:
            return None
        late = past_segment is not None and last_frac > 0 and rng.random() < last_frac   # no draw at 0
        length = min(int(rng.integers(lo, hi + 1)), room - 1)
        key = passkey.random_key(rng, eval=eval_keys)
        last_key_token = enc.encode(f" {key}")[-1]
        for _ in range(1000):
            kw = dict(filler="p2")
            if filler_shards:
                kw = dict(filler="tokens", filler_ids=filler_shards[int(rng.integers(len(filler_shards)))], rng=rng)
            depth = float(rng.random())
            if late:   # a depth in [1 - N / length, 1]: the needle within about the last N tokens (checked below)
                depth = 1.0 - depth * past_segment / length
            ids, a = passkey.make_sample(enc, length, depth, key, **kw)
            if past_segment is None:
                return ids, a
            # every copy of the key's last token in the prompt (real-text filler may hold it too: then redraw)
            at = np.flatnonzero(np.asarray(ids[:a]) == last_key_token)
            if (at.min() >= length - past_segment) if late else (at.max() < length - past_segment):
                return ids, a
        where = "inside" if late else "before"
        raise SystemExit(f"error: found no needle position {where} the last {past_segment} tokens of a {length}-token sample")
    return sample


def table_sampler(enc, prompts, answers):
    """sample(rng, room, first, lo, hi): a random row (prompt, answer) of a dataset (lo, hi unused). A row too
    long for an empty sequence (first) is cut from the left (the answer stays); one that does not fit the room
    left ends the row."""
    def sample(rng, room, first, lo, hi):
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


def pack_row(rng, seq_len, sample, loss_on, min_len, pack=True):
    """seq_len + 1 tokens of samples, each followed by <|endoftext|>, padded with <|endoftext|> at the end;
    and a mask of the tokens that are loss targets (answer tokens, or everything but the padding).
    pack=False: a single sample of exactly seq_len tokens (the memory then never holds another sample's key:
    packed rows do not reset it between samples)."""
    ids, keep = [], []
    while len(ids) <= seq_len:
        lo = min_len if pack else seq_len
        s = sample(rng, seq_len + 1 - len(ids), not ids, lo, seq_len)
        if s is None:
            break
        toks, a = s
        ids += list(toks) + [EOT]
        keep += [loss_on == "all"] * a + [True] * (len(toks) - a) + [loss_on == "all"]
        if not pack:
            break
    pad = seq_len + 1 - len(ids)
    return np.array(ids + [EOT] * pad, dtype=np.int64), np.array(keep + [False] * pad)


def make_batch(rows, seq_len, sample, loss_on, min_len, pack=True):
    """(x, y) for the given rows, each a list of ints seeding its content: row r is a function of r alone."""
    xs, ys = [], []
    for r in rows:
        ids, keep = pack_row(np.random.default_rng(r), seq_len, sample, loss_on, min_len, pack)
        xs.append(ids[:-1])
        ys.append(np.where(keep[1:], ids[1:], -1))  # -1: ignored by the loss
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def checked_table(prompts, answers, what):
    """The table's columns, if it has rows and every prompt and answer is a string (one line naming the first
    that is not: a null or a number would fail deep inside the tokenizer, mid-run)."""
    if not prompts:
        raise SystemExit(f"error: {what} has no rows")
    for i, row in enumerate(zip(prompts, answers)):
        if not all(isinstance(v, str) for v in row):
            raise SystemExit(f"error: row {i} of {what} has a prompt or answer that is not a string: {row!r:.80}")
    return prompts, answers


def load_table(args):
    """(prompts, answers) from --parquet or --hf_dataset (columns 'prompt' and 'answer')."""
    if args.parquet:
        import pyarrow.parquet as pq
        try:
            t = pq.read_table(args.parquet, columns=["prompt", "answer"])
        except Exception as e:
            raise SystemExit(f"error: cannot read columns 'prompt', 'answer' of {args.parquet} ({type(e).__name__})")
        return checked_table(t.column("prompt").to_pylist(), t.column("answer").to_pylist(), args.parquet)
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
    own = os.path.join(args.out_dir, "ckpt.pt")
    init = os.path.join(args.init, "ckpt.pt") if args.init and os.path.isdir(args.init) else args.init
    if args.overwrite and init and os.path.isfile(init) and os.path.isfile(own) and os.path.samefile(own, init):
        raise SystemExit(f"error: --init={args.init} is the checkpoint in --out_dir that --overwrite=1 replaces (deleted "
                         "before the first new one is saved); pass another --out_dir")
    src = train.load_checkpoint(src_path)
    cfg = finetune_config(src["config"], args, src_path)
    args.attn, args.segment, args.update, args.gate, args.vocab_size = cfg.attn, cfg.segment, cfg.update, cfg.gate, cfg.vocab_size
    converted = src["config"]["attn"] != cfg.attn       # local/full -> infini: the gates are new
    train.check_args(args)
    if args.seq_len < 100:                          # the passkey template alone is ~70 tokens
        raise SystemExit(f"error: --seq_len ({args.seq_len}) must be at least 100: a passkey sample needs ~70 tokens")
    args.min_len = min(256, args.seq_len) if args.min_len is None else args.min_len
    if not 100 <= args.min_len <= args.seq_len:
        raise SystemExit(f"error: --min_len must be in [100, --seq_len ({args.seq_len})]")
    stages = train.parse_curriculum(args.curriculum, args.seq_len, "row lengths")
    shortest = args.min_len if args.pack else 100
    if any(not shortest <= L <= args.seq_len or (cfg.attn != "full" and L % cfg.segment) for L in stages):
        raise SystemExit(f"error: every --curriculum length must be in [{shortest}, --seq_len ({args.seq_len})]"
                         + (f" and a multiple of the segment ({cfg.segment})" if cfg.attn != "full" else ""))
    past = None
    if args.needle == "memory":
        if args.pack or args.parquet or args.hf_dataset:
            raise SystemExit("error: --needle=memory needs --pack=0 and the built-in generator: it places the needle "
                             "before the row's last --segment tokens (for a full-attention model too)")
        if any(L < 2 * cfg.segment for L in stages):
            raise SystemExit(f"error: --needle=memory needs rows of at least 2 segments ({2 * cfg.segment} tokens): "
                             "check --seq_len and --curriculum")
        past = cfg.segment
    if not 0.0 <= args.needle_last < 1.0:
        raise SystemExit(f"error: --needle_last is a fraction in [0, 1), got {args.needle_last}")
    if args.needle_last and args.needle != "memory":
        raise SystemExit("error: --needle_last needs --needle=memory (and --pack=0): it is the share of needles "
                         "in the question's own segment")
    if args.device == "cpu" and args.batch_size * args.grad_accum * args.seq_len > 65536:   # flags all valid
        print(f"warning: {args.batch_size * args.grad_accum * args.seq_len:,} tokens a step take minutes per step on "
              "the CPU; for a quick CPU run use the laptop line of --help", file=sys.stderr, flush=True)
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
            # a sample takes its filler from one shard: a shard shorter than a row (prepare_fineweb.py's last
            # one can be any size) would fail at whichever step first drew it
            shards = [s for s in (load_shard(p) for p in paths) if len(s) > 2 * args.seq_len]
            if not shards:
                raise SystemExit(f"error: --filler=shards needs a train shard of more than {2 * args.seq_len} tokens "
                                 f"(2 x --seq_len) in {args.data_dir}; its shards are shorter")
        sample = needle_sampler(enc, filler_shards=shards, past_segment=past, last_frac=args.needle_last)
    # held-out samples: evaluation keys, loss on the answers only, always the same rows, the same haystack
    # and needle placement as training (--needle=memory: val_loss is then the loss of retrieval from memory)
    val_sample = needle_sampler(enc, eval_keys=True, filler_shards=shards, past_segment=past)
    n_val = max(1, args.eval_tokens // args.seq_len)
    if n_val >= args.batch_size * ctx_world:  # whole batches on every rank: compiled blocks see one shape
        n_val -= n_val % (args.batch_size * ctx_world)

    def next_batch(step, micro):
        # the curriculum's stage for this step; shorter rows, more of them: the tokens per step stay fixed
        L = train.curriculum_stage(stages, step, args.steps)
        rows = [[args.seed, step, micro, r] for r in range(max(1, args.batch_size * args.seq_len // L))]
        return make_batch(rows, L, sample, args.loss_on, args.min_len, args.pack)

    def eval_batches():
        mine = list(range(ctx.rank, n_val, ctx.world))
        for i in range(0, len(mine), args.batch_size):
            rows = [[args.seed + 1, r] for r in mine[i:i + args.batch_size]]
            yield make_batch(rows, args.seq_len, val_sample, "answer", args.min_len, args.pack)

    ctx = train.setup_distributed(args.device)
    try:
        torch.manual_seed(args.seed)
        model = Llama(cfg)
        if not args.resume:
            # strict, except that a converted model's gates are new (beta = 0: g = 0.5, memory and local
            # attention weighted equally); an infini checkpoint must bring its gates back (P1's code once
            # silently reset them to 0.5)
            try:
                missing, unexpected = model.load_state_dict(src["model"], strict=False)
            except RuntimeError as e:
                raise SystemExit(f"error: {src_path} does not fit this model ({str(e).splitlines()[0]})")
            new = [k for k in missing if not (converted and k.endswith("attn.beta"))]
            if new or unexpected:
                raise SystemExit(f"error: {src_path} does not fit this model (missing {new[:3]}, unexpected {unexpected[:3]})")
        init = (src.get("args") or {}).get("init") if args.resume else src_path     # (resumed: the run's own --init)
        del src
        note = f"fine-tuning {init}" + (" (memory added: gates start at 0.5)" if converted else "")
        train.train(args, cfg, model, ctx, next_batch, eval_batches, init_note=note)
    finally:
        train.teardown_distributed()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C outside train.train's handler: loading the checkpoint, building the model
        raise SystemExit("stopped by SIGINT outside the training loop: nothing new to save")
