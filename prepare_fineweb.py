"""
Tokenize FineWeb sample-10BT (or local text files) into llm.c-style uint16 token shards.

    python prepare_fineweb.py                                   # FineWeb sample-10BT from the HF Hub (~10B tokens)
    python prepare_fineweb.py --max_tokens=1000000000           # just the first ~1B tokens (enough for P1's 983M)
    python prepare_fineweb.py --input='corpus/*.parquet' --out_dir=data/local   # offline, local files

Every document is encoded with GPT-2 BPE (`encode_ordinary`, so text that looks like a special token
stays text) and followed by <|endoftext|> (50256); documents are concatenated and cut into shards.
The first shard (--val_tokens tokens, at most 10% of --max_tokens) is validation, the rest training; with
several --input files they are read in the order given (a glob's matches sorted), so validation comes from
the first of them:
    data/fineweb10B/fineweb_val_000000.bin, fineweb_train_000001.bin, ...
Shard layout (llm.c): a header of 256 int32 (magic 20240520, version 1, token count, zeros), then the
tokens as uint16 (GPT-2's 50257 ids fit). `load_shard(path)` checks the header and memory-maps the tokens.
"""
import argparse
import glob
import itertools
import json
import os
import socket
import sys
import urllib.parse

import numpy as np
import tiktoken

MAGIC, VERSION, HEADER_INTS = 20240520, 1, 256
EOT = 50256  # <|endoftext|> in GPT-2 BPE
HUB_TOKENS = 10_000_000_000  # sample-10BT is ~10B GPT-2 tokens: the progress bar's total for ETA


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the docstring's line breaks and show every flag's default in --help, unless its help names it already."""

    def _get_help_string(self, action):
        return action.help if "default" in (action.help or "") else super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """Every script's parser: HelpFormatter, no prefix matching (--step is an error, not --steps), and a bad flag
    answered with one line and exit 2, not the whole usage block (--help has it)."""

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, allow_abbrev=False, **kw)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def check_out_file(path, flag="--out"):
    """An output file name, checked before any work (passkey.py, recall.py, plots.py): one line if it names a
    folder or its folder does not exist, except out/, the git-ignored scratch folder of the defaults, which
    the writer makes (out_folder). Whether an existing file may be replaced is the script's own rule."""
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        raise SystemExit(f"error: {flag} {path} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) and os.path.dirname(os.path.normpath(path)) != "out":
        raise SystemExit(f"error: the folder of {flag} ({folder}) does not exist")


def out_folder(path):
    """Make out/ when a checked output file goes there (check_out_file let only that folder be missing)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def gpt2_encoding():
    """tiktoken's GPT-2 BPE. r50k_base has the same ranks, regex and <|endoftext|> as "gpt2" and is a
    single cache file, so it is tried first: with TIKTOKEN_CACHE_DIR pointing at a folder holding that
    file it loads offline. Exits with one line saying what to do when neither can be had."""
    for name in ("r50k_base", "gpt2"):
        try:
            return tiktoken.get_encoding(name)
        except Exception:
            continue
    cache, r50k = os.environ.get("TIKTOKEN_CACHE_DIR"), "0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4"
    if cache and not os.path.isfile(os.path.join(cache, r50k)):
        what = "holds no" if os.path.isdir(cache) else "is not a folder, so it holds no"
        raise SystemExit(f"error: cannot load the GPT-2 BPE vocabulary offline: TIKTOKEN_CACHE_DIR={cache} {what} "
                         f"file {r50k} (tiktoken's cached r50k_base); point it at a folder that does")
    raise SystemExit("error: cannot load the GPT-2 BPE vocabulary (tiktoken needs the network to fetch it). "
                     "Offline, set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached r50k_base file "
                     f"(file name {r50k}, copied from a machine with network)")

# -----------------------------------------------------------------------------
# the shard format

def write_shard(path, tokens):
    """Write header + uint16 tokens to path.tmp, then rename: a killed run never leaves a half shard."""
    tokens = np.asarray(tokens)
    assert tokens.size < 2**31 and (tokens.size == 0 or tokens.max() < 2**16), "tokens must fit uint16"
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (MAGIC, VERSION, tokens.size)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16, copy=False).tobytes())
    os.replace(tmp, path)


def load_shard(path):
    """The tokens of one shard as a read-only uint16 memmap (no copy into RAM). SystemExit with one line
    naming the file if it is not a shard of this format or its size disagrees with its header."""
    try:
        header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
        size = os.path.getsize(path)
    except OSError as e:
        raise SystemExit(f"error: cannot read token shard {path} ({e.strerror})")
    if header.size < HEADER_INTS or header[0] != MAGIC or header[1] != VERSION:
        raise SystemExit(f"error: {path} is not a token shard (bad header magic/version); "
                         "re-create it with prepare_fineweb.py")
    n = int(header[2])
    if size != 4 * HEADER_INTS + 2 * n:
        raise SystemExit(f"error: token shard {path} is truncated or corrupt (header says {n} tokens, "
                         f"file has {(size - 4 * HEADER_INTS) // 2}); re-create it with prepare_fineweb.py")
    return np.memmap(path, dtype=np.uint16, mode="r", offset=4 * HEADER_INTS, shape=(n,))


def find_shards(data_dir, split):
    """Sorted shard paths of one split ("train" or "val") in data_dir."""
    return sorted(glob.glob(os.path.join(data_dir, f"*_{split}_*.bin")))

# -----------------------------------------------------------------------------
# document sources: local files or the Hub

def expand_inputs(patterns):
    """The files named by --input, globs expanded, checked before any work starts."""
    files = []
    for pat in patterns:
        hits = sorted(glob.glob(os.path.expanduser(pat)))
        if not hits:
            raise SystemExit(f"error: --input {pat!r} matches no file")
        bad = [h for h in hits if not h.endswith((".parquet", ".jsonl", ".json", ".txt"))]
        if bad:
            raise SystemExit(f"error: {bad[0]}: unsupported file type (use .parquet, .jsonl or .txt)")
        files += hits
    return files


def local_texts(files):
    """Yield the `text` of every document in local .parquet / .jsonl / .txt files. Parquet is read in
    record batches so RAM stays small however big the file; a .txt file is one document. Bad content
    raises ValueError (not SystemExit: this generator may run in the worker pool's feeder thread)."""
    for path in files:
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq
            try:
                pf = pq.ParquetFile(path)
            except Exception as e:  # empty, truncated or not parquet at all: name the file
                raise ValueError(f"{path} is not a readable parquet file ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})")
            if "text" not in pf.schema_arrow.names:
                raise ValueError(f"{path} has no 'text' column (columns: {pf.schema_arrow.names})")
            for batch in pf.iter_batches(batch_size=1024, columns=["text"]):
                yield from (t for t in batch.column(0).to_pylist() if t)
        elif path.endswith((".jsonl", ".json")):
            with open(path, encoding="utf-8") as f:
                for i, line in enumerate(f):
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)["text"]
                    except (ValueError, KeyError, TypeError):
                        raise ValueError(f"{path} line {i + 1} is not a JSON object with a 'text' field")
                    if text:
                        yield text
        elif path.endswith(".txt"):
            with open(path, encoding="utf-8") as f:
                yield f.read()


def _can_connect(host, port=443, timeout=5.0):
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_reachable():
    """False when the Hugging Face Hub is surely out of reach: HF_HUB_OFFLINE set, or no TCP connection to
    it within 5 s. Offline, `datasets` would retry for ~30 s and print a page of warnings instead.
    (True behind an HTTPS proxy, where a direct connection may fail though the Hub is reachable.)"""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""):
        return False
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True
    return _can_connect(urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname)


def hub_texts(dataset, name):
    """An iterator over the documents of a Hub dataset, streamed (no full download). The first document is
    fetched here, eagerly, so that being offline gives one line and no traceback."""
    offline = (f"error: cannot reach the Hugging Face Hub to stream {dataset} ({name}). Offline, tokenize local "
               "files instead: --input='path/*.parquet' (or .jsonl/.txt with a 'text' field)")
    if not hub_reachable():
        raise SystemExit(offline)
    try:
        import datasets
        ds = datasets.load_dataset(dataset, name=name, split="train", streaming=True)
        it = iter(ds)
        first = next(it)
    except SystemExit:
        raise
    except Exception as e:
        raise SystemExit(offline + f" [{type(e).__name__}]")
    return itertools.chain([first["text"]], (doc["text"] for doc in it))


_enc = None


def _init_worker():
    global _enc
    _enc = gpt2_encoding()


def tokenize(text):
    """One document -> uint16 tokens + <|endoftext|>. encode_ordinary: '<|endoftext|>' in a web page is text."""
    return np.array(_enc.encode_ordinary(text) + [EOT], dtype=np.uint16)

# -----------------------------------------------------------------------------

def get_parser():
    p = ArgumentParser(description=__doc__)
    p.add_argument("--input", nargs="+", default=None, help="local .parquet/.jsonl/.txt files or globs with a 'text' "
                   "column/field (quote globs); default: stream --dataset from the Hub")
    p.add_argument("--dataset", default="HuggingFaceFW/fineweb", help="Hub dataset (streamed) when no --input")
    p.add_argument("--name", default="sample-10BT", help="Hub dataset config")
    p.add_argument("--out_dir", default="data/fineweb10B", help="where the shards go")
    p.add_argument("--prefix", default="fineweb", help="shard file name prefix")
    p.add_argument("--shard_size", type=float, default=1e8, help="tokens per training shard")
    p.add_argument("--val_tokens", type=float, default=2**22, help="tokens in the first (validation) shard; "
                   "with --max_tokens at most 10%% of it, so a small run still gets training shards")
    p.add_argument("--max_tokens", type=float, default=0, help="stop after this many tokens in all (0 = everything)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2), help="tokenizer processes")
    p.add_argument("--force", type=int, default=0, help="1 = delete existing shards in out_dir and rewrite them")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    shard_size, val_tokens, max_tokens = int(args.shard_size), int(args.val_tokens), int(args.max_tokens)
    if shard_size <= 0 or val_tokens <= 0 or max_tokens < 0:
        raise SystemExit("error: --shard_size and --val_tokens must be positive, --max_tokens >= 0")
    if args.workers < 1:
        raise SystemExit(f"error: --workers must be at least 1, got {args.workers}")
    new_dirs, d = [], os.path.abspath(args.out_dir)   # the folders this run creates, deepest first
    while not os.path.exists(d):
        new_dirs.append(d)
        d = os.path.dirname(d)
    if not os.path.isdir(d):
        raise SystemExit(f"error: --out_dir {args.out_dir} is a file, not a folder" if not new_dirs else
                         f"error: --out_dir {args.out_dir} cannot be made: {d} is a file, not a folder")
    if max_tokens:
        val_tokens = max(1, min(val_tokens, max_tokens // 10))  # a small run keeps 90% for training

    existing = glob.glob(os.path.join(args.out_dir, f"{args.prefix}_*.bin"))
    if existing and not args.force:
        raise SystemExit(f"error: {args.out_dir} already holds {len(existing)} shard(s); pass --force=1 to rewrite them")
    _init_worker()  # fail fast, in this process, with gpt2_encoding()'s one-line message
    files = expand_inputs(args.input) if args.input else None
    if files and len(files) > 1:   # the validation shard is the start of the stream: say which file that is
        print(f"validation: the first {val_tokens:,} tokens of {len(files)} inputs read in this order: "
              + ", ".join(os.path.basename(f) for f in files), flush=True)
    texts = local_texts(files) if files else hub_texts(args.dataset, args.name)
    os.makedirs(args.out_dir, exist_ok=True)   # only now, and undone() if a bad input stops the run
    for f in existing:  # --force: stale higher-numbered shards must not survive next to the new ones
        os.remove(f)
    pool = None
    if args.workers > 1:
        import multiprocessing as mp
        pool = mp.Pool(args.workers, initializer=_init_worker)
        docs = pool.imap(tokenize, texts, chunksize=16)  # imap keeps document order: shards are reproducible
    else:
        docs = map(tokenize, texts)

    from tqdm import tqdm
    total = max_tokens or (None if args.input else HUB_TOKENS)
    bar = tqdm(total=total, unit="tok", unit_scale=True, dynamic_ncols=True)
    shard, buf, fill, written, paths = 0, np.empty(val_tokens, dtype=np.uint16), 0, 0, []

    def flush():
        nonlocal shard, buf, fill
        split = "val" if shard == 0 else "train"
        paths.append(os.path.join(args.out_dir, f"{args.prefix}_{split}_{shard:06d}.bin"))
        write_shard(paths[-1], buf[:fill])
        shard, buf, fill = shard + 1, np.empty(shard_size, dtype=np.uint16), 0

    def undone(msg):
        """A failed run removes what it created, and only that: its shards, then the folders it made."""
        for f in paths:
            os.remove(f)
        for d in new_dirs:
            try:
                os.rmdir(d)
            except OSError:    # not empty: someone else's files arrived meanwhile
                break
        return SystemExit(msg)

    try:
        for toks in docs:
            if max_tokens:
                toks = toks[:max_tokens - written]
            while len(toks):  # a document may straddle two shards (llm.c does the same)
                take = min(len(toks), len(buf) - fill)
                buf[fill:fill + take] = toks[:take]
                fill, written, toks = fill + take, written + take, toks[take:]
                bar.update(take)
                if fill == len(buf):
                    flush()
            if max_tokens and written >= max_tokens:
                break
        if fill:
            flush()
    except ValueError as e:  # bad document content, from local_texts
        raise undone(f"error: {e}")
    except KeyboardInterrupt:
        raise SystemExit(f"interrupted: {shard} complete shard(s) in {args.out_dir}")
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    if written == 0:
        raise undone(f"error: the input holds no text (0 tokens); nothing written to {args.out_dir}")
    if shard < 2:
        print(f"warning: only {written:,} tokens: no training shard (lower --val_tokens)", file=sys.stderr)
    print(f"wrote {shard} shard(s), {written:,} tokens, to {args.out_dir}")


if __name__ == "__main__":
    main()
