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
import contextlib
import glob
import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import urllib.parse

import numpy as np
import tiktoken

MAGIC, VERSION, HEADER_INTS = 20240520, 1, 256
EOT = 50256  # <|endoftext|> in GPT-2 BPE
HUB_TOKENS = 10_000_000_000  # sample-10BT is ~10B GPT-2 tokens: the progress bar's total for ETA
MAX_SHARD = 2**31 - 1  # the header's int32 token count; also caps a shard buffer at 4 GiB
INCOMPLETE = "INCOMPLETE"  # <prefix>_INCOMPLETE: the marker of a shard set whose run stopped early (a truncated set)
# tiktoken caches r50k_base under the sha1 of its URL and checks the sha256 (tiktoken/load.py, tiktoken_ext/
# openai_public.py, 0.14.0); both match shared/data/tiktoken_cache
R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
R50K_CACHE = hashlib.sha1(R50K_URL.encode()).hexdigest()  # 0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"


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
    folder or its folder does not exist (except out/, the git-ignored scratch folder of the defaults, which
    the writer makes: out_folder) or cannot be written. Whether an existing file may be replaced is the
    script's own rule."""
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        raise SystemExit(f"error: {flag} {path} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) and os.path.dirname(os.path.normpath(path)) != "out":
        raise SystemExit(f"error: the folder of {flag} ({folder}) does not exist")
    why = os.path.isdir(folder) and not_writable(folder)
    if why:
        raise SystemExit(f"error: the folder of {flag} ({folder}) is not writable ({why})")


def not_writable(folder):
    """Why a file cannot be made in folder (its strerror), or None. A real probe: os.access() says yes to root
    even on /proc, where the write would fail only after the work. The probe file is nameless (O_TMPFILE)."""
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        return e.strerror or str(e)
    return None


def out_folder(path):
    """Make out/ when a checked output file goes there (check_out_file let only that folder be missing)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


@contextlib.contextmanager
def exit_on_signal(message):
    """While active, SIGINT (Ctrl-C) and SIGTERM (what job schedulers send before they kill) end the script with one
    line, message(the signal's name), and a non-zero exit, not a traceback (SIGTERM: not a silent death); the old
    handlers come back after. For work saved as it goes (passkey.py's cells, recall.py's checkpoint); train.py's
    loop, which saves on a signal, has its own (train.StopOnSignal)."""
    def handle(signum, frame):
        raise SystemExit(message(signal.Signals(signum).name))
    main = threading.current_thread() is threading.main_thread()   # signal.signal works only there
    old = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def gpt2_encoding():
    """tiktoken's GPT-2 BPE. r50k_base has the same ranks, regex and <|endoftext|> as "gpt2" and is a
    single cache file, so it is tried first: with TIKTOKEN_CACHE_DIR pointing at a folder holding that
    file it loads offline. Exits with one line saying what to do when neither can be had, or when that file
    is corrupt: tiktoken would delete it (a shared cache loses its copy) and report it as missing."""
    cache = os.environ.get("TIKTOKEN_CACHE_DIR")
    cached = os.path.join(cache, R50K_CACHE) if cache else ""
    if os.path.isfile(cached):
        try:
            with open(cached, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        except OSError as e:
            raise SystemExit(f"error: cannot read tiktoken's cached r50k_base {cached} ({e.strerror})")
        if digest != R50K_SHA256:
            raise SystemExit(f"error: tiktoken's cached r50k_base {cached} is corrupt (sha256 {digest}, expected "
                             f"{R50K_SHA256}); delete it or copy a good one")
    for name in ("r50k_base", "gpt2"):
        try:
            return tiktoken.get_encoding(name)
        except Exception:
            continue
    if cache and not os.path.isfile(cached):
        what = "holds no" if os.path.isdir(cache) else "is not a folder, so it holds no"
        raise SystemExit(f"error: cannot load the GPT-2 BPE vocabulary offline: TIKTOKEN_CACHE_DIR={cache} {what} "
                         f"file {R50K_CACHE} (tiktoken's cached r50k_base); point it at a folder that does")
    raise SystemExit("error: cannot load the GPT-2 BPE vocabulary (tiktoken needs the network to fetch it). "
                     "Offline, set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached r50k_base file "
                     f"(file name {R50K_CACHE}, copied from a machine with network)")

# -----------------------------------------------------------------------------
# the shard format

def write_shard(path, tokens):
    """Write header + uint16 tokens to path.tmp, then rename: a killed run never leaves a half shard."""
    tokens = np.asarray(tokens)
    assert tokens.size < 2**31 and (tokens.size == 0 or tokens.max() < 2**16), "tokens must fit uint16"
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (MAGIC, VERSION, tokens.size)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(tokens.astype(np.uint16, copy=False).tobytes())
    except BaseException:  # disk full, Ctrl-C: no half-written .tmp left behind either
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    os.replace(tmp, path)


def write_text(path, text):
    """A small text file written atomically (tmp + rename), like a shard; no .tmp left when the write fails."""
    try:
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    finally:
        with contextlib.suppress(OSError):
            os.remove(path + ".tmp")        # (gone already after the rename)


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
    """The files named by --input, globs expanded, each checked (check_input) before any work starts."""
    files = []
    for pat in patterns:
        hits = sorted(glob.glob(os.path.expanduser(pat)))
        if not hits:
            raise SystemExit(f"error: --input {pat!r} matches no file")
        bad = [h for h in hits if not h.endswith((".parquet", ".jsonl", ".json", ".txt"))]
        if bad:
            raise SystemExit(f"error: {bad[0]}: unsupported file type (use .parquet, .jsonl or .txt)")
        files += hits
    for path in files:
        check_input(path)
    return files


def check_input(path):
    """One line if an input cannot be read, or is a parquet file without a string `text` column: found up
    front, not after tokenizing the inputs before it (and, with --force, after deleting the old shards).
    Only parquet's footer is read; a jsonl line's content is checked as it is read (local_texts)."""
    if not path.endswith(".parquet"):
        try:
            open(path, "rb").close()
        except OSError as e:
            raise SystemExit(f"error: cannot read --input {path} ({e.strerror})")
        return
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        schema = pq.ParquetFile(path).schema_arrow
    except Exception as e:  # missing, empty, truncated or not parquet at all: name the file
        raise SystemExit(f"error: {path} is not a readable parquet file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})")
    if "text" not in schema.names:
        raise SystemExit(f"error: {path} has no 'text' column (columns: {schema.names})")
    kind = schema.field("text").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise SystemExit(f"error: {path}: its 'text' column holds {kind}, not strings")


def local_texts(files):
    """Yield the `text` of every document in local .parquet / .jsonl / .txt files (checked by check_input).
    Parquet is read in record batches so RAM stays small however big the file; a .txt file is one document.
    Bad content raises ValueError naming the file (not SystemExit: this generator may run in the worker
    pool's feeder thread)."""
    for path in files:
        try:
            yield from _file_texts(path)
        except UnicodeDecodeError as e:  # a ValueError, but its message has no file name
            raise ValueError(f"{path} is not UTF-8 text ({e})") from None


def _file_texts(path):
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=["text"]):
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
                if text is not None and not isinstance(text, str):  # null is skipped, as in parquet
                    raise ValueError(f"{path} line {i + 1}: 'text' is {type(text).__name__}, not a string")
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


def _init_pool_worker():
    # Ctrl-C reaches the whole process group: only the parent handles it (no worker tracebacks)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _init_worker()


def _sigterm(signum, frame):
    raise KeyboardInterrupt  # kill or a job scheduler stops a run the way Ctrl-C does: cleaned up and marked


def tokenize(text):
    """One document -> uint16 tokens + <|endoftext|>. encode_ordinary: '<|endoftext|>' in a web page is text."""
    return np.array(_enc.encode_ordinary(text) + [EOT], dtype=np.uint16)

# -----------------------------------------------------------------------------

def get_parser():
    p = ArgumentParser(description=__doc__)
    p.add_argument("--input", nargs="+", action="extend", default=None, help="local .parquet/.jsonl/.txt files or "
                   "globs with a 'text' column/field (quote globs; repeats add up); default: stream --dataset from the Hub")
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


def check_args(args):
    """Every flag checked before any work (a NaN or 1e15 --shard_size used to fail in numpy, or allocate
    petabytes, after the validation shard was written). Returns the sizes as ints and the folders that
    making --out_dir creates, deepest first."""
    for flag in ("shard_size", "val_tokens"):
        if not 1 <= getattr(args, flag) <= MAX_SHARD:  # NaN fails every comparison
            raise SystemExit(f"error: --{flag} must be 1 to {MAX_SHARD:,} tokens (a shard header's int32), "
                             f"got {getattr(args, flag):g}")
    if not 0 <= args.max_tokens < 2**63:
        raise SystemExit(f"error: --max_tokens must be 0 (everything) or a token count, got {args.max_tokens:g}")
    if args.workers < 1:
        raise SystemExit(f"error: --workers must be at least 1, got {args.workers}")
    if not args.prefix or any(c and c in args.prefix for c in ("/", os.sep, os.altsep)):
        raise SystemExit(f"error: --prefix {args.prefix!r} must be a non-empty file name part, with no '/'")
    new_dirs, d = [], os.path.abspath(args.out_dir)
    while not os.path.exists(d):
        new_dirs.append(d)
        d = os.path.dirname(d)
    if not os.path.isdir(d):
        raise SystemExit(f"error: --out_dir {args.out_dir} is a file, not a folder" if not new_dirs else
                         f"error: --out_dir {args.out_dir} cannot be made: {d} is a file, not a folder")
    why = not_writable(d)
    if why:
        raise SystemExit(f"error: --out_dir {args.out_dir}: cannot write in {d} ({why})")
    return int(args.shard_size), int(args.val_tokens), int(args.max_tokens), new_dirs


def main(argv=None):
    args = get_parser().parse_args(argv)
    shard_size, val_tokens, max_tokens, new_dirs = check_args(args)
    if max_tokens:
        val_tokens = max(1, min(val_tokens, max_tokens // 10))  # a small run keeps 90% for training
        shard_size = min(shard_size, max_tokens)                # the buffer: no 2 GB of it for a 10k-token run
    out_dir, marker = args.out_dir, os.path.join(args.out_dir, f"{args.prefix}_{INCOMPLETE}")   # (one per shard set)
    existing = glob.glob(os.path.join(out_dir, f"{args.prefix}_*.bin"))
    if existing and not args.force:
        note = f" (from a run that stopped early: see {marker})" if os.path.exists(marker) else ""
        raise SystemExit(f"error: {out_dir} already holds {len(existing)} shard(s){note}; pass --force=1 to rewrite them")
    files = expand_inputs(args.input) if args.input else None
    _init_worker()  # fail fast, in this process, with gpt2_encoding()'s one-line message
    if files and len(files) > 1:   # the validation shard is the start of the stream: say which file that is
        print(f"validation: the first {val_tokens:,} tokens of {len(files)} inputs read in this order: "
              + ", ".join(os.path.basename(f) for f in files), flush=True)
    texts = local_texts(files) if files else hub_texts(args.dataset, args.name)
    # --force writes the new set beside the old one and swaps them only once it is complete, so a bad input,
    # a full disk or Ctrl-C costs nothing. (A SIGKILLed --force run leaves this folder; the next one clears it.)
    dest = os.path.join(out_dir, f".{args.prefix}_new") if existing else out_dir
    shard, buf, fill, written, kept, paths, pool, bar = 0, None, 0, 0, 0, [], None, None

    def flush():
        nonlocal shard, buf, fill, kept
        split = "val" if shard == 0 else "train"
        paths.append(os.path.join(dest, f"{args.prefix}_{split}_{shard:06d}.bin"))
        write_shard(paths[-1], buf[:fill])
        shard, kept, buf, fill = shard + 1, kept + fill, np.empty(shard_size, dtype=np.uint16), 0

    def stop(msg, keep):
        """A stopped run. keep (interrupted, disk full): a plain run keeps its complete shards, marked INCOMPLETE
        so that they do not pass for a finished set. Otherwise (bad input, --force) it removes what it created,
        and only that: its shards, then the folders it made."""
        if keep and paths and not existing:
            with contextlib.suppress(OSError):  # unmarked they would pass for a finished set: removed below
                write_text(marker, f"{msg} after {shard} complete shard(s), {kept:,} tokens: a truncated set; "
                                   "re-run with --force=1 to redo it\n")
                return SystemExit(f"{msg}: {shard} complete shard(s) kept in {out_dir}, marked {INCOMPLETE}")
        for f in paths:
            with contextlib.suppress(OSError):
                os.remove(f)
        if existing:
            shutil.rmtree(dest, ignore_errors=True)
            msg += f"; the old shards in {out_dir} were kept"
        for d in new_dirs:
            try:
                os.rmdir(d)
            except OSError:    # not empty: someone else's files arrived meanwhile
                break
        return SystemExit(msg)

    in_main = threading.current_thread() is threading.main_thread()   # the only thread that may set handlers
    old_sigterm = signal.signal(signal.SIGTERM, _sigterm) if in_main else None
    try:
        os.makedirs(out_dir, exist_ok=True)
        if existing:
            shutil.rmtree(dest, ignore_errors=True)
            os.mkdir(dest)
        if args.workers > 1:
            import multiprocessing as mp
            pool = mp.Pool(args.workers, initializer=_init_pool_worker)
            docs = pool.imap(tokenize, texts, chunksize=16)  # imap keeps document order: shards are reproducible
        else:
            docs = map(tokenize, texts)
        from tqdm import tqdm
        bar = tqdm(total=max_tokens or (None if args.input else HUB_TOKENS), unit="tok", unit_scale=True,
                   dynamic_ncols=True)
        buf = np.empty(val_tokens, dtype=np.uint16)
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
        raise stop(f"error: {e}", keep=False)
    except KeyboardInterrupt:
        raise stop("interrupted", keep=True)
    except OSError as e:     # disk full, a folder that cannot be made, an input gone unreadable
        raise stop(f"error: {e.filename or dest}: {e.strerror or e}", keep=True)
    except MemoryError:
        raise stop(f"error: out of memory (a shard buffer is {2 * shard_size:,} bytes: lower --shard_size)",
                   keep=True)
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.terminate()
        if old_sigterm is not None:
            signal.signal(signal.SIGTERM, old_sigterm)
    if written == 0:
        raise stop(f"error: the input holds no text (0 tokens); nothing written to {out_dir}", keep=False)
    try:
        if existing:  # the swap: new shards in, stale higher-numbered old ones out; INCOMPLETE covers a crash here
            write_text(marker, "stopped while replacing the old shards; re-run with --force=1 to redo it\n")
            for p in paths:
                os.replace(p, os.path.join(out_dir, os.path.basename(p)))
            for f in set(existing) - {os.path.join(out_dir, os.path.basename(p)) for p in paths}:
                os.remove(f)
            os.rmdir(dest)
        if os.path.exists(marker):  # a complete set now: an old marker would make train.py warn for nothing
            os.remove(marker)
    except OSError as e:
        raise SystemExit(f"error: replacing the shards in {out_dir} failed ({e}); re-run with --force=1")
    if shard < 2:
        print(f"warning: only {written:,} tokens: no training shard (lower --val_tokens)", file=sys.stderr)
    print(f"wrote {shard} shard(s), {written:,} tokens, to {out_dir}")


if __name__ == "__main__":
    main()
