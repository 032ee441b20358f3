"""
Passkey retrieval: the needle-in-a-haystack sample generator (also used by finetune.py) and the
zero-shot / fine-tuned evaluation of a checkpoint over a grid of prompt lengths x needle depths.

    python passkey.py --ckpt=out/ckpt.pt --lengths 1024 2048 4096 8192 16384 32768 \
        --depths 0 25 50 75 100 --samples 10 --seed 0 --out out/passkey.json
    python passkey.py --random_init --model tiny --attn infini --lengths 256 1024 --device cpu   # smoke test

--out is rewritten after every finished cell (length, depth), marked "partial": true until the last one: a
Ctrl-C, SIGTERM or crash loses at most the cell in progress, and the same command with --resume=1 continues.

A sample is P2's template (App. B): intro, filler sentences, the needle
"The pass key is {k}. Remember it. {k} is the pass key." at a depth, more filler, then
"What is the pass key? The pass key is" and the answer " {k}.". Scoring follows P1/HFB: greedy
decoding, correct if the key appears anywhere in the generated text; an exact-match column is kept too.

Infini and local models read the prompt in streaming mode (chunks of whole segments, memory carried
between calls), so GPU memory stays flat in the prompt length; full attention reads it in one call.
"""
import hashlib
import json
import os
import random
import re
import time

import torch

# the template, word for word from P2 App. B. Every piece after the intro starts with a space, so the
# concatenated token lists are exactly what the tokenizer would make of the concatenated text.
INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
         "I will quiz you about the important information there.")
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {k}. Remember it. {k} is the pass key."
QUESTION = " What is the pass key? The pass key is"

# -----------------------------------------------------------------------------
# keys: a fixed split of the key space, so fine-tuning never sees an evaluation key

def is_eval_key(k):
    """True for the ~10% of keys reserved for evaluation. A hash (not Python's salted hash()) of the
    decimal string: the same split on every machine and run, independent of any seed."""
    return hashlib.sha256(str(int(k)).encode()).digest()[0] % 10 == 0


def _randint(rng, lo, hi):
    """Uniform integer in [lo, hi] from a random.Random or a numpy Generator."""
    return int(rng.integers(lo, hi + 1)) if hasattr(rng, "integers") else rng.randint(lo, hi)


def random_key(rng, digits=(4, 5, 6), eval=False):
    """A key with a number of digits drawn from `digits`, from the eval side of the split if eval,
    else from the fine-tuning side (rejection sampling: ~10 draws for eval, ~1 otherwise)."""
    while True:
        n = digits[_randint(rng, 0, len(digits) - 1)]
        k = _randint(rng, 10 ** (n - 1), 10 ** n - 1)
        if is_eval_key(k) == eval:
            return k

# -----------------------------------------------------------------------------
# the sample generator

def make_sample(enc, length, depth, key, filler="p2", filler_ids=None, rng=None, intro=True):
    """One passkey sample of exactly `length` tokens -> (ids, answer_start).

    ids[:answer_start] is the prompt (ending "... The pass key is"), ids[answer_start:] the answer " {k}.".
    depth in [0, 1] is the fraction of the filler placed before the needle: 0 = the needle opens the
    context (right after the intro), 1 = it ends it (right before the question). With filler="p2" the
    needle is moved to the nearest sentence end (a few tokens at most); filler="tokens" takes a random
    window of real text from `filler_ids` (a token array, e.g. a memmapped shard) using rng
    (random.Random or numpy Generator). The key's tokens are the same in the needle and the answer
    (the pieces are encoded separately around " {k}", a pretokenizer unit of its own).
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    k = str(int(key))
    key_ids = enc.encode(" " + k)
    head = enc.encode(INTRO) if intro else []
    before_key, middle, after_key = NEEDLE.split(" {k}")    # " The pass key is", ". Remember it.", " is the pass key."
    needle = enc.encode(before_key) + key_ids + enc.encode(middle) + key_ids + enc.encode(after_key)
    question = enc.encode(QUESTION)
    answer = key_ids + enc.encode(".")
    n_fill = length - len(head) - len(needle) - len(question) - len(answer)
    if n_fill < 0:
        raise ValueError(f"length {length} is too short for the template ({length - n_fill} tokens without filler)")

    if filler == "p2":
        # a partial passage (its first n_fill % 24 tokens), then whole ones: the price of an exact length
        # is one unfinished sentence near the start, and the text before the question ends on "again."
        sentence = enc.encode(FILLER)
        stream = sentence[:n_fill % len(sentence)] + sentence * (n_fill // len(sentence))
        dot = enc.encode(".")[-1]
        boundary = lambda c: c == 0 or 0 < c <= n_fill and stream[c - 1] == dot
        cut = round(depth * n_fill)
        cut = next((c for d in range(len(sentence) + 1) for c in (cut - d, cut + d) if boundary(c)), cut)
    elif filler == "tokens":
        if filler_ids is None or rng is None:
            raise ValueError("filler='tokens' needs filler_ids (a token array) and rng")
        if len(filler_ids) < n_fill:
            raise ValueError(f"filler_ids holds {len(filler_ids)} tokens, the sample needs {n_fill}")
        start = _randint(rng, 0, len(filler_ids) - n_fill)
        window = filler_ids[start:start + n_fill]
        stream = window.tolist() if hasattr(window, "tolist") else list(window)
        cut = round(depth * n_fill)
    else:
        raise ValueError(f"filler must be 'p2' or 'tokens', got {filler!r}")

    prompt = head + stream[:cut] + needle + stream[cut:] + question
    return prompt + answer, len(prompt)

# -----------------------------------------------------------------------------
# scoring

def score(generated_text, key):
    """(contains, exact) for the decoded continuation of the prompt.
    contains: the study's rule (P1, HFB): the key's digits appear anywhere ("key 90541" counts for 9054).
    exact: the continuation, leading whitespace stripped, starts with a run of digits equal to the key,
    i.e. the next character is not a digit: " 9054." and "9054 is" pass, "90541", "09054", "key 9054" fail."""
    k = str(int(key))
    m = re.match(r"\s*(\d+)", generated_text)
    return k in generated_text, bool(m) and m.group(1) == k

# -----------------------------------------------------------------------------
# reading a prompt and decoding greedily

@torch.no_grad()
def read_prompt(model, prompt, chunk=None):
    """prompt (B, P) token ids -> (tail, memory): what is left to run, and the state to run it with.

    full: the whole prompt, no memory (one call; attention over P tokens). infini: everything but a
    tail of 1..segment tokens is streamed in chunks of `chunk` tokens (a multiple of the segment), the
    per-layer memory carried from chunk to chunk, so the tail starts on a segment boundary. local:
    the same tail with no memory, which is exact: local attention never looks past its own segment.
    For infini and local, activation memory is thus flat in P: at most a chunk (or the tail) at a time.
    """
    cfg = model.cfg
    if cfg.attn == "full":
        return prompt, None
    N = cfg.segment
    chunk = chunk or 8 * N
    if chunk % N:
        raise ValueError(f"chunk ({chunk}) must be a multiple of the segment ({N})")
    n_head = (prompt.size(1) - 1) // N * N          # whole segments before the tail (never empty)
    memory = None
    if cfg.attn == "infini":
        for s in range(0, n_head, chunk):
            # last_only: the logits of the streamed part are never used, and a chunk's full logits
            # (chunk x 50304 floats) would take more memory than the whole model
            _, _, memory = model(prompt[:, s:min(s + chunk, n_head)], memory=memory, last_only=True)
    return prompt[:, n_head:], memory


@torch.no_grad()
def greedy_continue(model, prompt, new_tokens, chunk=None):
    """prompt (B, P) -> (B, new_tokens) greedy continuation (read_prompt, then decode the tail)."""
    tail, memory = read_prompt(model, prompt, chunk)
    return model.generate(tail, new_tokens, memory=memory)[:, tail.size(1):]

# -----------------------------------------------------------------------------
# the evaluation grid

def load_weights(model, state_dict, path, assign=False):
    """A checkpoint's weights into model (a torch.compile'd module's state_dict too), or one line naming the
    file: load_state_dict's own error is a page long (plots.py uses this as well)."""
    try:
        sd = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}
        missing, unexpected = model.load_state_dict(sd, strict=False, assign=assign)
    except (AttributeError, TypeError, ValueError, RuntimeError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        raise SystemExit(f"error: {path} does not fit this model ({lines[min(1, len(lines) - 1)]})")
    if missing or unexpected:
        raise SystemExit(f"error: {path} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_model(args, device, n_vocab):
    """(model, label, the checkpoint's own segment, its step: None for a randomly initialised preset) from --ckpt,
    or --random_init. n_vocab: the tokenizer's; a smaller embedding table (recall.py's) cannot read prompts."""
    from model import Llama, LlamaConfig, make_config
    if args.random_init:
        torch.manual_seed(args.seed)
        try:
            cfg, label = make_config(args.model, attn=args.attn, segment=args.segment), f"random_init:{args.model}"
        except ValueError as e:
            raise SystemExit(f"error: {e}")
        model, own, step = Llama(cfg), None, None
    else:
        from train import load_checkpoint
        ckpt = load_checkpoint(args.ckpt)
        try:
            cfg = dict(ckpt["config"])
            own, vocab = cfg["segment"], cfg["vocab_size"]
        except (TypeError, ValueError, KeyError) as e:
            raise SystemExit(f"error: {args.ckpt} has no usable model config ({type(e).__name__}: {e})")
        if vocab < n_vocab:   # as finetune.py says it
            raise SystemExit(f"error: {args.ckpt} has a vocabulary of {vocab}, smaller than GPT-2's {n_vocab}")
        cfg["fast_memory"] = LlamaConfig.fast_memory   # a code path, not the model's: today's default, whatever was saved
        if args.segment is not None:
            if cfg["attn"] == "full":
                raise SystemExit(f"error: --segment does not apply to {args.ckpt}: a full-attention model has no segments")
            cfg["segment"] = args.segment
        try:
            model = Llama(LlamaConfig(**cfg))
        except (TypeError, ValueError) as e:
            raise SystemExit(f"error: {e}")
        load_weights(model, ckpt["model"], args.ckpt)
        label, step = args.ckpt, ckpt.get("step")
    return model.to(device).eval(), label, own, step


def evaluate(model, enc, lengths, depths, samples, seed=0, new_tokens=8, chunk=None, batch_size=8,
             device="cpu", progress=True, done=(), on_cell=None):
    """Accuracy grid over lengths x depths (depths in percent). Returns the JSON-ready result dict.
    Sample (length, depth, i) draws its key from random.Random(f"{seed}-{length}-{depth}-{i}"): the
    prompts are reproducible, and a cell does not change when other lengths or depths are added.
    A cell whose forward pass runs out of GPU memory even one prompt at a time is recorded as "oom"
    (accuracy None), so a full-attention model's grid ends where its memory does, without a crash.
    done: the records of cells an interrupted run finished (--resume=1), kept as they are; on_cell(records)
    is called after each new cell with the records of all cells finished so far (main writes them to --out)."""
    from tqdm import tqdm
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if str(device).startswith("cuda") \
        else torch.autocast("cpu", enabled=False)

    def decode(prompts):
        """Greedy continuations (token lists) of equal-length prompts, or None when out of memory."""
        for size in sorted({len(prompts), 1}, reverse=True):        # the batch, then one at a time
            try:
                out = []
                for b in range(0, len(prompts), size):
                    x = torch.tensor(prompts[b:b + size], dtype=torch.long, device=device)
                    with autocast:
                        out += greedy_continue(model, x, new_tokens, chunk).tolist()
                return out
            except torch.cuda.OutOfMemoryError:
                pass                     # leave the except block first: it holds the failed attempt's tensors
            torch.cuda.empty_cache()
        return None

    qmark = enc.encode("?")[0]  # how a generated id past the tokenizer's vocabulary is shown
    cells = {}                  # (length, depth) -> the records of its samples; a cell's grid values come from them
    for r in done:
        cells.setdefault((r["length"], r["depth"]), []).append(r)
    grid_order = lambda: [r for L in lengths for d in depths for r in cells.get((L, d), [])]
    with tqdm(total=len(lengths) * len(depths) * samples, initial=len(cells) * samples, disable=not progress,
              desc="passkey") as bar:     # (closed on a signal too: the stop line gets a line of its own)
        for L in lengths:
            for d in depths:
                if (L, d) in cells:
                    continue
                cell, prompts = [], []
                for i in range(samples):
                    key = random_key(random.Random(f"{seed}-{L}-{d}-{i}"), eval=True)
                    ids, a = make_sample(enc, L, d / 100, key)
                    cell.append(dict(length=L, depth=d, key=key, generated=None, correct=None, exact=None))
                    prompts.append(ids[:a])
                # batch prompts of equal length (keys of different token counts make lengths differ)
                oom = False
                for n in sorted({len(p) for p in prompts}):
                    idx = [i for i, p in enumerate(prompts) if len(p) == n]
                    for b in range(0, len(idx), batch_size):
                        rows = idx[b:b + batch_size]
                        out = None if oom else decode([prompts[i] for i in rows])
                        oom = out is None
                        for i, o in zip(rows, out or []):
                            # ids past the tokenizer's (the embedding table is padded to a multiple of 64) have no
                            # text, but a barely trained model may emit them: shown as "?" (dropping them could
                            # join "12" and "34" into a key)
                            text = enc.decode([t if t < enc.n_vocab else qmark for t in o])
                            ok, ex = score(text, cell[i]["key"])
                            cell[i].update(generated=text, correct=ok, exact=ex)
                        bar.update(len(rows))
                cells[(L, d)] = cell
                if on_cell:
                    on_cell(grid_order())
    # an oom cell is one with an unscored sample (after an oom the rest of the cell is skipped)
    mean = lambda cell, k: None if any(r[k] is None for r in cell) else sum(r[k] for r in cell) / samples
    acc = [[mean(cells[(L, d)], "correct") for d in depths] for L in lengths]
    exact = [[mean(cells[(L, d)], "exact") for d in depths] for L in lengths]
    cfg = model.cfg
    return dict(attn=cfg.attn, segment=cfg.segment, lengths=list(lengths), depths=list(depths),
                accuracy=acc, exact=exact, samples=samples, seed=seed, new_tokens=new_tokens, records=grid_order())


def format_table(result, key="accuracy"):
    """The grid as text: one row per length, one column per depth, plus the row mean."""
    fmt = lambda v: "  oom" if v is None else f"{v:5.2f}"
    lines = [f"{key} ({result['attn']}), rows: length, columns: depth %",
             f"{'length':>8} " + " ".join(f"{d:>5}" for d in result["depths"]) + "   mean"]
    for L, row in zip(result["lengths"], result[key]):
        vals = [v for v in row if v is not None]
        mean = sum(vals) / len(vals) if vals else None
        lines.append(f"{L:>8} " + " ".join(fmt(v) for v in row) + "  " + fmt(mean))
    return "\n".join(lines)


def get_parser():
    from prepare_fineweb import ArgumentParser
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", help="checkpoint written by train.py / finetune.py")
    p.add_argument("--random_init", type=int, nargs="?", const=1, default=0, choices=(0, 1),
                   help="1 (or the bare flag): no checkpoint, a random model (smoke test)")
    p.add_argument("--model", default=None, help="preset for --random_init (default tiny; a --ckpt holds its own)")
    p.add_argument("--attn", default=None, choices=["infini", "local", "full"],
                   help="attention for --random_init (default infini; a --ckpt holds its own)")
    p.add_argument("--segment", type=int, default=None, help="segment length (default: the checkpoint's, or the "
                   "preset's with --random_init); another value reads the prompt with other segments, e.g. a model "
                   "fine-tuned on short segments evaluated at its pretraining segment")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768],
                   help="prompt + answer lengths in tokens")
    p.add_argument("--depths", type=int, nargs="+", default=[0, 25, 50, 75, 100], help="needle depths in percent")
    p.add_argument("--samples", type=int, default=10, help="samples (keys) per cell")
    p.add_argument("--seed", type=int, default=0, help="keys of every cell (and --random_init's weights)")
    p.add_argument("--new_tokens", type=int, default=8, help="greedy tokens generated after the prompt")
    p.add_argument("--chunk", type=int, default=None, help="streaming chunk in tokens (default 8 segments)")
    p.add_argument("--batch_size", type=int, default=8, help="prompts of one cell decoded together")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda | cpu")
    p.add_argument("--out", default="out/passkey.json", help="result JSON (records of every sample)")
    p.add_argument("--overwrite", type=int, default=0, choices=(0, 1), help="1 = replace an existing --out")
    p.add_argument("--resume", type=int, default=0, choices=(0, 1),
                   help="1 = continue the partial --out of an interrupted run of the same command")
    return p


def check_args(args, enc):
    """Every mistake as one line, before the model is loaded or the sweep starts."""
    if not args.random_init and not args.ckpt:
        raise SystemExit("error: give --ckpt PATH, or --random_init for a smoke test")
    if args.random_init and args.ckpt:
        raise SystemExit("error: --random_init evaluates a random model, --ckpt a trained one: give one of them")
    if args.ckpt and (args.model or args.attn):
        raise SystemExit("error: --model and --attn are for --random_init; a --ckpt's model is the one it holds "
                         "(convert attention with finetune.py --attn)")
    args.model, args.attn = args.model or "tiny", args.attn or "infini"
    if any(not 0 <= d <= 100 for d in args.depths):
        raise SystemExit("error: --depths are percentages in [0, 100]")
    if min(args.samples, args.new_tokens, args.batch_size) <= 0:
        raise SystemExit("error: --samples, --new_tokens and --batch_size must be positive")
    if args.chunk is not None and args.chunk <= 0:
        raise SystemExit("error: --chunk must be positive")
    def fits(L):  # keys take 1 to 4 tokens, 999999 takes 2: 3 copies of the key x 2 tokens of margin
        try:
            return len(make_sample(enc, L - 6, 0.5, 999999)[0]) > 0
        except ValueError:
            return False
    for L in args.lengths:
        if not fits(L):
            need = next(n for n in range(L, L + 10_000) if fits(n))
            raise SystemExit(f"error: --lengths {L} is too short for the passkey template (at least {need} tokens)")
    for flag in ("lengths", "depths"):                 # a repeated value was a repeated row or column
        twice = sorted({v for v in getattr(args, flag) if getattr(args, flag).count(v) > 1})
        if twice:
            raise SystemExit(f"error: --{flag} lists {', '.join(map(str, twice))} more than once")
    from train import check_device
    check_device(args.device)
    from prepare_fineweb import check_out_file
    check_out_file(args.out)                        # not a folder, and its folder exists
    if args.resume and args.overwrite:
        raise SystemExit("error: --resume=1 continues --out, --overwrite=1 replaces it: give one of them")
    args.previous = prev = read_partial(args.out) if not args.overwrite else None
    if os.path.exists(args.out) and not args.overwrite and not (prev and args.resume):
        if prev:
            raise SystemExit(f"error: {args.out} is a partial result ({len(prev['cells'])} of "
                             f"{len(prev['lengths']) * len(prev['depths'])} cells); pass --resume=1 to continue it "
                             "or --overwrite=1 to start over")
        if args.resume and is_finished(args.out):      # as train.py and recall.py answer a finished run's resume
            print(f"{args.out} is a finished result: nothing to do", flush=True)
            raise SystemExit(0)
        what = " (not a passkey.py result to resume)" if args.resume else ""
        raise SystemExit(f"error: {args.out} exists{what}; pass another --out or --overwrite=1 to replace it")
    if args.resume and not prev:
        print(f"--resume=1: {args.out} does not exist yet; starting from the first cell", flush=True)


def read_partial(path):
    """The saved dict of an interrupted run at path, its finished cells added as d["cells"]; None when there is
    no such file or it is anything else (a finished result, another file, one not written by passkey.py)."""
    try:
        with open(path) as f:
            d = json.load(f)
        if not (isinstance(d, dict) and d.get("partial") is True):
            return None
        d["cells"] = {(r["length"], r["depth"]) for r in d["records"]}
        whole = len(d["records"]) == len(d["cells"]) * d["samples"]          # every cell has all its samples
        return d if whole and all(L in d["lengths"] and x in d["depths"] for L, x in d["cells"]) else None
    except (OSError, ValueError, TypeError, KeyError):
        return None


def is_finished(path):
    """Whether path holds a finished passkey.py result (a grid, not marked partial)."""
    try:
        with open(path) as f:
            d = json.load(f)
        return isinstance(d, dict) and "accuracy" in d and not d.get("partial")
    except (OSError, ValueError):
        return False


# what makes two runs the same run: a partial --out continues only under the same values
# (the checkpoint by its path and its step: one retrained at the same path is another run)
RUN_KEYS = ("checkpoint", "checkpoint_step", "checkpoint_segment", "attn", "segment", "lengths", "depths", "samples",
            "seed", "new_tokens", "chunk")


def write_json(path, obj):
    """Atomically (a temporary file, then a rename): a run killed mid-write never leaves half a JSON. A late
    failure (disk full, permissions) is one line."""
    from prepare_fineweb import out_folder, write_text
    try:
        out_folder(path)
        write_text(path, json.dumps(obj, indent=1))
    except OSError as e:
        raise SystemExit(f"error: cannot write {path} ({e.strerror or e})")


def main(argv=None):
    args = get_parser().parse_args(argv)
    from prepare_fineweb import exit_on_signal
    total, progress = len(args.lengths) * len(args.depths), dict(done=0)    # cells: in --out (main writes each)

    def stopped(name):
        where = (f"{progress['done']} of {total} cells are in {args.out} (partial); the same command with --resume=1 "
                 "continues" if progress["done"] else "no cell was finished, nothing written")
        return f"stopped by {name}: {where}"

    with exit_on_signal(stopped):
        from prepare_fineweb import gpt2_encoding
        enc = gpt2_encoding()
        check_args(args, enc)
        prev = args.previous
        model, label, own_segment, step = load_model(args, args.device, enc.n_vocab)
        cfg = model.cfg
        if args.chunk is not None and cfg.attn != "full" and args.chunk % cfg.segment:
            raise SystemExit(f"error: --chunk ({args.chunk}) must be a multiple of the segment ({cfg.segment})")
        settings = dict(checkpoint=label, checkpoint_step=step, attn=cfg.attn, segment=cfg.segment, lengths=args.lengths,
                        depths=args.depths, samples=args.samples, seed=args.seed, new_tokens=args.new_tokens,
                        chunk=args.chunk)
        if own_segment is not None and own_segment != cfg.segment:   # read at another segment (--segment)
            settings["checkpoint_segment"] = own_segment
        differ = [f"{k} {settings.get(k)} (saved: {prev.get(k)})" for k in RUN_KEYS
                  if prev and prev.get(k) != settings.get(k)]
        if differ:
            raise SystemExit(f"error: --resume=1 continues {args.out}, but this command differs from its run: "
                             f"{'; '.join(differ)}; repeat that run's flags, or pass --overwrite=1 to start over")
        done = prev["records"] if prev else []
        progress["done"] = len(done) // args.samples
        t0 = time.time() - (prev.get("seconds", 0) if prev else 0)   # a resumed run's time includes the first part's

        def on_cell(records):
            write_json(args.out, dict(settings, partial=True, seconds=round(time.time() - t0, 1), records=records))
            progress["done"] = len(records) // args.samples

        result = evaluate(model, enc, args.lengths, args.depths, args.samples, seed=args.seed,
                          new_tokens=args.new_tokens, chunk=args.chunk, batch_size=args.batch_size,
                          device=args.device, done=done, on_cell=on_cell)
        result = dict(checkpoint=label, seconds=round(time.time() - t0, 1), **result)
        if "checkpoint_segment" in settings:
            result["checkpoint_segment"] = own_segment
        write_json(args.out, result)
    print(format_table(result))
    print(format_table(result, "exact"))
    print(f"wrote {args.out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
