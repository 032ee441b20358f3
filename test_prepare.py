"""
CPU tests for prepare_fineweb.py (no network): the shard format, local inputs to shards, its flags, and what a
run stopped by a bad input leaves (nothing of its own). python -m pytest -q test_prepare.py

Tokenizer tests need the GPT-2 BPE file in $INFINI_SHARED/data/tiktoken_cache (default ../shared); they are
skipped without it.
"""
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import prepare_fineweb
from prepare_fineweb import load_shard, write_shard

REPO = os.path.dirname(os.path.abspath(__file__))
TIKTOKEN_CACHE = os.environ.get("TIKTOKEN_CACHE_DIR") or os.path.join(
    os.environ.get("INFINI_SHARED", os.path.join(REPO, "..", "shared")), "data", "tiktoken_cache")
needs_tokenizer = pytest.mark.skipif(not os.path.isdir(TIKTOKEN_CACHE), reason=f"no tiktoken cache at {TIKTOKEN_CACHE}")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TIKTOKEN_CACHE_DIR": TIKTOKEN_CACHE}


def run(*args):
    """prepare_fineweb.py run as a user would; returns the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, os.path.join(REPO, "prepare_fineweb.py"), *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)



DOCS = ["Hello world. This is the first document.", "Zweites Dokument: ünïcödé and emoji \U0001F600.",
        "A third one, with a fake special token <|endoftext|> inside the text.", "short", "x" * 300]


@needs_tokenizer
@pytest.mark.parametrize("fmt,workers", [("jsonl", 1), ("parquet", 2)])
def test_prepare_roundtrip(tmp_path, monkeypatch, fmt, workers):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", TIKTOKEN_CACHE)
    src = tmp_path / f"docs.{fmt}"
    if fmt == "jsonl":
        src.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(DOCS)))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table({"text": DOCS, "id": list(range(len(DOCS)))}), str(src), row_group_size=2)
    out = str(tmp_path / "shards")
    argv = ["--input", str(src), "--out_dir", out, "--val_tokens=20", "--shard_size=50", f"--workers={workers}"]
    prepare_fineweb.main(argv)
    val, tr = prepare_fineweb.find_shards(out, "val"), prepare_fineweb.find_shards(out, "train")
    assert [os.path.basename(p) for p in val] == ["fineweb_val_000000.bin"]
    assert os.path.basename(tr[0]) == "fineweb_train_000001.bin"
    parts = [load_shard(p) for p in val + tr]
    assert len(parts[0]) == 20 and all(len(p) == 50 for p in parts[1:-1]) and 0 < len(parts[-1]) <= 50
    toks = np.concatenate(parts)
    enc = prepare_fineweb.gpt2_encoding()
    # encode_ordinary: the literal "<|endoftext|>" inside a document is text, not token 50256
    assert (toks == 50256).sum() == len(DOCS)
    assert enc.decode(toks.tolist()) == "".join(t + "<|endoftext|>" for t in DOCS)
    # existing shards are kept unless --force; --force rewrites them identically (no stale shards left)
    with pytest.raises(SystemExit, match="--force"):
        prepare_fineweb.main(argv)
    prepare_fineweb.main(argv + ["--force=1", "--max_tokens=30"])
    again = prepare_fineweb.find_shards(out, "val") + prepare_fineweb.find_shards(out, "train")
    assert np.array_equal(np.concatenate([load_shard(p) for p in again]), toks[:30])
    assert len(prepare_fineweb.find_shards(out, "train")) == 1


def test_prepare_bad_input_one_line(tmp_path):
    r = run("--input", str(tmp_path / "nothing*.parquet"), "--out_dir", str(tmp_path / "o"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "matches no file" in r.stderr


@needs_tokenizer
def test_prepare_small_empty_and_unreadable_inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", TIKTOKEN_CACHE)
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS * 10))
    out = str(tmp_path / "small")
    # a --max_tokens below the 4.19M default of --val_tokens still gets training data: val = 10% of it
    prepare_fineweb.main(["--input", str(src), "--out_dir", out, "--max_tokens=500", "--workers=1"])
    val, tr = prepare_fineweb.find_shards(out, "val"), prepare_fineweb.find_shards(out, "train")
    assert len(load_shard(val[0])) == 50 and sum(len(load_shard(p)) for p in tr) == 450
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SystemExit, match="no text") as e:
        prepare_fineweb.main(["--input", str(empty), "--out_dir", str(tmp_path / "e"), "--workers=1"])
    assert "\n" not in str(e.value)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"")
    with pytest.raises(SystemExit, match="bad.parquet is not a readable parquet file") as e:
        prepare_fineweb.main(["--input", str(bad), "--out_dir", str(tmp_path / "b"), "--workers=1"])
    assert "\n" not in str(e.value)


@needs_tokenizer
def test_prepare_validation_comes_from_the_first_input(tmp_path, monkeypatch, capsys):
    # several inputs are read in the order given, so the validation shard is the first input's text, and
    # the run says which order that was (README: Wikipedia first, as results/reproduce_small.sh has it)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", TIKTOKEN_CACHE)
    enc = prepare_fineweb.gpt2_encoding()
    a, b = tmp_path / "b_first.jsonl", tmp_path / "a_second.jsonl"
    a.write_text("".join(json.dumps({"text": "alpha " * 20}) + "\n" for _ in range(5)))
    b.write_text("".join(json.dumps({"text": "omega " * 20}) + "\n" for _ in range(45)))
    out = str(tmp_path / "o")
    prepare_fineweb.main(["--input", str(a), str(b), "--out_dir", out, "--val_tokens=40", "--workers=1"])
    assert "validation: the first 40 tokens of 2 inputs read in this order: b_first.jsonl, a_second.jsonl" \
        in capsys.readouterr().out
    val = load_shard(prepare_fineweb.find_shards(out, "val")[0])
    assert enc.decode(list(val)).strip().startswith("alpha") and "omega" not in enc.decode(list(val))


def test_shard_header_validation(tmp_path):
    good = str(tmp_path / "a_train_000001.bin")
    toks = np.arange(1000, dtype=np.uint16) * 50
    write_shard(good, toks)
    assert np.array_equal(load_shard(good), toks)
    hdr = np.fromfile(good, dtype=np.int32, count=256)
    assert list(hdr[:3]) == [20240520, 1, 1000] and not hdr[3:].any()
    raw = open(good, "rb").read()
    bad_magic = str(tmp_path / "bad_magic.bin")
    open(bad_magic, "wb").write(b"\0\0\0\0" + raw[4:])
    with pytest.raises(SystemExit, match="bad_magic.bin.*not a token shard"):
        load_shard(bad_magic)
    short = str(tmp_path / "short.bin")
    open(short, "wb").write(raw[:-2])
    with pytest.raises(SystemExit, match="short.bin.*truncated"):
        load_shard(short)
    tiny = str(tmp_path / "tiny.bin")
    open(tiny, "wb").write(raw[:100])
    with pytest.raises(SystemExit, match="tiny.bin"):
        load_shard(tiny)


def test_tokenizer_error_names_a_wrong_cache_dir(tmp_path):
    code = "import prepare_fineweb; prepare_fineweb.gpt2_encoding()"
    for cache, says in [(tmp_path / "nowhere", "is not a folder"), (tmp_path, "holds no file")]:
        env = {**ENV, "TIKTOKEN_CACHE_DIR": str(cache)}
        r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "Traceback" not in r.stderr and says in r.stderr, r.stderr
    # prepare_fineweb.py stops there too, and leaves no empty --out_dir behind
    (tmp_path / "a.txt").write_text("some text")
    r = subprocess.run([sys.executable, "prepare_fineweb.py", "--input", str(tmp_path / "a.txt"), "--out_dir",
                        str(tmp_path / "shards")], cwd=REPO, env={**ENV, "TIKTOKEN_CACHE_DIR": str(tmp_path / "nowhere")},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "is not a folder" in r.stderr and not (tmp_path / "shards").exists(), r.stderr


# -----------------------------------------------------------------------------
# prepare_fineweb.py: flags, and what a run stopped by a bad input leaves (nothing of its own)

def test_prepare_bad_flags_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare_fineweb, "hub_texts", lambda *a: pytest.fail("fell back to the Hugging Face Hub"))
    src, file = tmp_path / "a.txt", tmp_path / "notes.md"
    src.write_text("some text")
    file.write_text("a file")
    good = ["--input", str(src), "--out_dir", str(tmp_path / "o")]
    for extra, expect in [(["--out_dir", str(file)], f"--out_dir {file} is a file, not a folder"),
                          (["--out_dir", str(file / "x")], f"cannot be made: {file} is a file"),
                          (["--workers=0"], "--workers must be at least 1, got 0"),
                          (["--workers=-2"], "--workers must be at least 1, got -2")]:
        with pytest.raises(SystemExit) as e:
            prepare_fineweb.main(good + extra)
        assert str(e.value).startswith("error:") and "\n" not in str(e.value) and expect in str(e.value), e.value
    with pytest.raises(SystemExit) as e:                        # --input with no value: refused, not the Hub
        prepare_fineweb.main(["--input", "--out_dir", str(tmp_path / "o")])
    assert e.value.code == 2 and "--input: expected at least one argument" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "notes.md"]


@needs_tokenizer
def test_prepare_bad_input_removes_what_it_created(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", TIKTOKEN_CACHE)
    written = []
    real = prepare_fineweb.write_shard
    monkeypatch.setattr(prepare_fineweb, "write_shard", lambda path, toks: written.append(path) or real(path, toks))
    bad_jsonl, bad_parquet, empty = tmp_path / "bad.jsonl", tmp_path / "bad.parquet", tmp_path / "empty.jsonl"
    bad_jsonl.write_text('{"text": "hello world"}\n{"text": "more words"}\n{"body": "no text field"}\n')
    bad_parquet.write_bytes(b"not a parquet file")
    empty.write_text("")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("someone else's")
    for src, out_dir, workers, expect in [(bad_jsonl, tmp_path / "new" / "deep", 1, "line 3 is not a JSON object"),
                                          (bad_jsonl, theirs, 1, "line 3 is not a JSON object"),
                                          (bad_parquet, tmp_path / "new", 2, "is not a readable parquet file"),
                                          (empty, tmp_path / "new", 1, "holds no text")]:
        written.clear()
        with pytest.raises(SystemExit, match=expect):
            prepare_fineweb.main(["--input", str(src), "--out_dir", str(out_dir), "--val_tokens=2",
                                  f"--workers={workers}"])
        assert written or src != bad_jsonl                      # (the validation shard was written before the error)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "bad.parquet", "empty.jsonl", "theirs"]
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]


# -----------------------------------------------------------------------------
# robustness: inputs checked before anything is deleted, --force keeps the old set until the new one is done,
# a stopped run is marked INCOMPLETE, numeric flags and output paths checked first, a corrupt tokenizer cache

def _jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    return str(path)


def _files(folder):
    """{relative path: bytes} of everything under folder (hidden files and subfolders included)."""
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, names in os.walk(folder) for f in names}


def _stopping_texts(monkeypatch, n_docs, how):
    """local_texts yields n_docs of its documents, then is stopped by how(): Ctrl-C, SIGTERM or an error."""
    real = prepare_fineweb.local_texts

    def texts(files):
        yield from itertools.islice(real(files), n_docs)
        how()
    monkeypatch.setattr(prepare_fineweb, "local_texts", texts)


def _ctrl_c():
    raise KeyboardInterrupt


def _sigterm():
    # without main()'s handler SIGTERM would kill pytest itself: fail instead
    assert signal.getsignal(signal.SIGTERM) is prepare_fineweb._sigterm, "no SIGTERM handler in main()"
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)


@needs_tokenizer
def test_force_keeps_the_old_shards_until_the_new_set_is_done(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", TIKTOKEN_CACHE)
    good, out = _jsonl(tmp_path / "good.jsonl", DOCS * 3), str(tmp_path / "shards")
    argv = ["--out_dir", out, "--val_tokens=20", "--shard_size=50", "--workers=1"]
    prepare_fineweb.main(["--input", good] + argv)
    old = _files(out)
    assert len(old) >= 4
    notext = tmp_path / "notext.parquet"
    pq.write_table(pa.table({"id": [1, 2]}), str(notext))
    bad_line = _jsonl(tmp_path / "bad.jsonl", DOCS)
    with open(bad_line, "a") as f:
        f.write('{"body": "no text"}\n')
    # the second input is checked before the first is tokenized, and before anything is deleted
    monkeypatch.setattr(prepare_fineweb, "write_shard", lambda *a: pytest.fail("tokenized before checking"))
    with pytest.raises(SystemExit, match="notext.parquet has no 'text' column"):
        prepare_fineweb.main(["--input", good, str(notext)] + argv + ["--force=1"])
    assert _files(out) == old
    monkeypatch.setattr(prepare_fineweb, "write_shard", write_shard)
    # a --force run stopped half-way (bad content, Ctrl-C, SIGTERM) removes its new shards, keeps the old set
    for src, stop, expect in [(bad_line, None, "line 6 is not a JSON object"), (good, _ctrl_c, "interrupted"),
                              (good, _sigterm, "interrupted")]:
        with monkeypatch.context() as m:
            if stop:
                _stopping_texts(m, 10, stop)
            with pytest.raises(SystemExit) as e:
                prepare_fineweb.main(["--input", src] + argv + ["--force=1", "--val_tokens=2"])
        assert expect in str(e.value) and str(e.value).endswith(f"the old shards in {out} were kept"), e.value
        assert _files(out) == old
    # a --force run that finishes replaces the set (and no old higher-numbered shard survives)
    prepare_fineweb.main(["--input", good] + argv + ["--force=1", "--max_tokens=30"])
    assert sorted(_files(out)) == ["fineweb_train_000001.bin", "fineweb_val_000000.bin"]


@needs_tokenizer
def test_a_stopped_run_is_marked_incomplete(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", TIKTOKEN_CACHE)
    src, out = _jsonl(tmp_path / "docs.jsonl", DOCS * 4), tmp_path / "shards"
    argv = ["--input", src, "--out_dir", str(out), "--val_tokens=20", "--shard_size=50", "--workers=1"]
    ENOSPC_AFTER = 2

    def disk_full(path, toks):
        if len(written) == ENOSPC_AFTER:
            raise OSError(28, "No space left on device")
        written.append(path)
        write_shard(path, toks)
    for stop in (_ctrl_c, _sigterm, "disk full"):
        written = []
        shutil.rmtree(out, ignore_errors=True)
        with monkeypatch.context() as m:
            if stop == "disk full":
                m.setattr(prepare_fineweb, "write_shard", disk_full)
            else:
                _stopping_texts(m, 10, stop)
            with pytest.raises(SystemExit) as e:
                prepare_fineweb.main(argv)
        msg = str(e.value)
        assert "\n" not in msg and "complete shard(s) kept" in msg and prepare_fineweb.INCOMPLETE in msg, msg
        marker = (out / f"fineweb_{prepare_fineweb.INCOMPLETE}").read_text()
        assert "re-run with --force=1 to redo it" in marker and marker.count("\n") <= 2
        full = sorted(p.name for p in out.iterdir())
        assert len(full) >= 2 and not [p for p in full if p.endswith(".tmp")]
        with pytest.raises(SystemExit, match="stopped early: see .*INCOMPLETE.*--force=1"):
            prepare_fineweb.main(argv)
    assert "No space left on device after 2 complete shard(s)" in marker
    # a finished run of another shard set (--prefix) in the folder leaves this set's marker: train.py globs both
    prepare_fineweb.main(argv + ["--prefix=other"])
    assert (out / f"fineweb_{prepare_fineweb.INCOMPLETE}").exists()
    prepare_fineweb.main(argv + ["--force=1"])   # a finished --force run removes the marker
    assert not (out / f"fineweb_{prepare_fineweb.INCOMPLETE}").exists()
    # stopped before its first complete shard: the folder it made is removed, not left empty
    with monkeypatch.context() as m:
        _stopping_texts(m, 1, _ctrl_c)
        with pytest.raises(SystemExit, match="interrupted"):
            prepare_fineweb.main(argv[:3] + [str(tmp_path / "new" / "deep")] + argv[4:])
    assert not (tmp_path / "new").exists()


@needs_tokenizer
def test_non_string_or_non_utf8_text_names_the_file(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", TIKTOKEN_CACHE)
    ints, jsonl, txt = tmp_path / "ints.parquet", tmp_path / "five.jsonl", tmp_path / "bad.txt"
    pq.write_table(pa.table({"text": [1, 2, 3]}), str(ints))
    jsonl.write_text('{"text": "fine words here"}\n{"text": 5}\n')
    txt.write_bytes(b"ok \xff\xfe not utf-8")
    for src, expect in [(ints, "ints.parquet: its 'text' column holds int64, not strings"),
                        (jsonl, "five.jsonl line 2: 'text' is int, not a string"),
                        (txt, "bad.txt is not UTF-8 text")]:
        with pytest.raises(SystemExit) as e:
            prepare_fineweb.main(["--input", str(src), "--out_dir", str(tmp_path / "o"), "--val_tokens=2",
                                  "--workers=1"])
        assert str(e.value).startswith("error: " + str(src)) and expect in str(e.value) and "\n" not in str(e.value)
        assert not (tmp_path / "o").exists()


def test_numeric_flags_and_output_paths_checked_first(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("some text")
    good = ["--input", str(src), "--out_dir", str(tmp_path / "o")]
    for extra, expect in [(["--shard_size=nan"], "--shard_size must be 1 to 2,147,483,647 tokens"),
                          (["--shard_size=inf"], "got inf"), (["--shard_size=0.5"], "got 0.5"),
                          (["--val_tokens=1e15"], "--val_tokens must be 1 to"), (["--val_tokens=-3"], "got -3"),
                          (["--max_tokens=1e4", "--shard_size=1e15"], "--shard_size must be"),
                          (["--max_tokens=nan"], "--max_tokens must be 0"), (["--max_tokens=inf"], "got inf"),
                          (["--max_tokens=-1"], "got -1"),
                          (["--out_dir=/proc/x"], "--out_dir /proc/x: cannot write in /proc"),
                          (["--prefix=a/b"], "--prefix 'a/b' must be"), (["--prefix="], "--prefix '' must be"),
                          (["--workers=0"], "--workers must be at least 1")]:
        with pytest.raises(SystemExit) as e:
            prepare_fineweb.main(good + extra)
        assert str(e.value).startswith("error:") and "\n" not in str(e.value) and expect in str(e.value), e.value
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


@needs_tokenizer
def test_buffers_are_sized_by_max_tokens(tmp_path, monkeypatch):
    import tracemalloc
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", TIKTOKEN_CACHE)
    src, out = _jsonl(tmp_path / "docs.jsonl", DOCS * 4), str(tmp_path / "o")
    tracemalloc.start()   # numpy reports its buffers to tracemalloc
    try:
        prepare_fineweb.main(["--input", src, "--out_dir", out, "--max_tokens=300", "--shard_size=2e9", "--workers=1"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6, f"{peak:,} bytes for a 300-token run"
    assert sum(len(load_shard(p)) for p in prepare_fineweb.find_shards(out, "train")) == 270


def test_check_out_file_refuses_an_unwritable_folder(tmp_path):
    with pytest.raises(SystemExit, match=r"error: the folder of --out \(/proc\) is not writable") as e:
        prepare_fineweb.check_out_file("/proc/foo.json")
    assert "\n" not in str(e.value)
    prepare_fineweb.check_out_file(str(tmp_path / "a.json"))          # writable: fine
    if os.geteuid() != 0:  # (root writes into a 0o500 folder anyway)
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(SystemExit, match="is not writable"):
            prepare_fineweb.check_out_file(str(ro / "x.json"), "--png")


def test_a_corrupt_tokenizer_cache_is_reported_and_kept(tmp_path, monkeypatch):
    name = "0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4"   # sha1 of r50k_base's URL: tiktoken's cache file name
    good = os.path.join(TIKTOKEN_CACHE, name)
    if not os.path.isfile(good):
        pytest.skip(f"no tiktoken cache at {TIKTOKEN_CACHE}")
    bad = tmp_path / name
    bad.write_bytes(open(good, "rb").read()[:1000])
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    with pytest.raises(SystemExit, match=r"is corrupt \(sha256 .*\); delete it or copy a good one") as e:
        prepare_fineweb.gpt2_encoding()
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    assert bad.read_bytes() == open(good, "rb").read()[:1000]   # tiktoken would have deleted it
    # the constants are the real file's name and hash (tiktoken_ext/openai_public.py's expected_hash)
    with open(good, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == prepare_fineweb.R50K_SHA256
    assert prepare_fineweb.R50K_CACHE == name


@needs_tokenizer
def test_repeated_input_flags_add_up_and_no_bar_before_an_input_error(tmp_path, monkeypatch, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", TIKTOKEN_CACHE)
    a, b = _jsonl(tmp_path / "a.jsonl", DOCS), _jsonl(tmp_path / "b.jsonl", DOCS)
    prepare_fineweb.main(["--input", a, "--input", b, "--out_dir", str(tmp_path / "o"), "--val_tokens=20",
                          "--workers=1"])
    assert "of 2 inputs read in this order: a.jsonl, b.jsonl" in capsys.readouterr().out
    notext = tmp_path / "notext.parquet"
    pq.write_table(pa.table({"id": [1]}), str(notext))
    with pytest.raises(SystemExit, match="has no 'text' column"):
        prepare_fineweb.main(["--input", a, str(notext), "--out_dir", str(tmp_path / "p"), "--workers=1"])
    assert "tok" not in capsys.readouterr().err and not (tmp_path / "p").exists()
