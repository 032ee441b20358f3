"""finetune.py: needle fine-tuning from a train.py checkpoint, on the CPU in seconds (the tiny model, the
synthetic shards and the pretrained checkpoint of test_train.py's fixtures)."""
import os

import numpy as np
import pytest
import torch

import prepare_fineweb
import train
from prepare_fineweb import write_shard
# test_train.py's helpers, and its fixtures (imported, pytest uses them here too: module-scoped, made again)
from test_train import TIKTOKEN_CACHE, REPO, VOCAB, ft_args, losses, needs_tokenizer, rows, run, tiny_args
from test_train import pretrained, shards  # noqa: F401

torch.set_num_threads(1)


def test_laptop_finetune_line_is_the_same_in_readme_and_help():
    """finetune.py's CPU line (after train.py's laptop line): in its --help and the README, small enough
    not to trigger the CPU warning (the default recipe takes hours on a laptop)."""
    import finetune
    line = [l.strip() for l in finetune.__doc__.splitlines() if "--device=cpu" in l]
    assert len(line) == 1 and line[0] in open(os.path.join(REPO, "README.md")).read()
    args = finetune.get_parser().parse_args(line[0].split()[2:])
    assert args.init == "out/laptop/ckpt.pt" and args.device == "cpu" and args.steps <= 50
    assert args.batch_size * args.grad_accum * args.seq_len <= 65536 and args.warmup < args.steps // 4


def test_bad_segment_and_short_finetune_rows_one_line(pretrained, tmp_path):
    # --segment=0 used to reach a modulo before its check; --seq_len below a passkey sample's length used to
    # blame --min_len, a flag not given
    r = run("train.py", "--model=tiny", "--device=cpu", "--segment=0", f"--data_dir={tmp_path}", f"--out_dir={tmp_path}/o")
    assert r.returncode != 0 and "Traceback" not in r.stderr and "error: --segment must be a positive integer" in r.stderr
    r = run("finetune.py", f"--init={pretrained[0]}", "--device=cpu", "--seq_len=64", f"--out_dir={tmp_path}/f")
    assert r.returncode != 0 and "Traceback" not in r.stderr and "error: --seq_len (64) must be at least 100" in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@needs_tokenizer
def test_finetune_keeps_gates_and_resumes(pretrained, shards, tmp_path, monkeypatch, capsys):
    import finetune
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", TIKTOKEN_CACHE)
    init, gates = pretrained
    assert not torch.allclose(gates, torch.full_like(gates, 0.5))
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    finetune.main(ft_args(init, full))
    # the gates as loaded, before the first fine-tuning step, are the pretrained ones (P1's code reset them to 0.5)
    assert torch.equal(torch.tensor(rows(full, "config")[0]["gates"]), gates)
    after = torch.tensor(rows(full)[-1]["gates"])
    assert torch.allclose(after, gates, atol=0.02) and not torch.equal(after, gates)  # trained, at beta lr 1.5e-4
    ls = losses(full)
    assert len(ls) == 3 and all(np.isfinite(ls)) and len(rows(full, "val_loss")) == 1
    ckpt = train.load_checkpoint(os.path.join(full, "ckpt.pt"))
    assert ckpt["step"] == 3 and ckpt["config"] == train.load_checkpoint(init)["config"]
    finetune.main(ft_args(init, split, "--halt_at=1"))
    capsys.readouterr()
    finetune.main(ft_args(init, split, "--resume=1"))
    assert losses(split) == ls
    assert f"fine-tuning {init}" in capsys.readouterr().out    # the run's --init, not its own checkpoint
    with pytest.raises(SystemExit, match="is a finetune.py run; resume it with finetune.py"):
        train.main(tiny_args(shards, split, "--resume=1"))
    # --init in the --out_dir that --overwrite=1 replaces: refused, not deleted before the first new checkpoint
    with pytest.raises(SystemExit, match="is the checkpoint in --out_dir that --overwrite=1 replaces"):
        finetune.main(ft_args(split, split, "--overwrite=1"))
    assert train.load_checkpoint(os.path.join(split, "ckpt.pt"))["step"] == 3
    with pytest.raises(SystemExit, match="--overwrite=1"):  # never start over silently
        finetune.main(ft_args(init, full))
    assert losses(full) == ls


@needs_tokenizer
def test_finetune_validation_uses_the_filler(pretrained, shards, tmp_path, monkeypatch):
    """--filler=shards: the held-out samples' haystack is real text too (here: the synthetic shards,
    token ids < 64, where P2's filler sentences have ids in the hundreds and thousands)."""
    import finetune
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", TIKTOKEN_CACHE)
    seen = {}

    def fake_train(args, cfg, model, ctx, next_batch, eval_batches=None, **kw):
        x = {"train": next_batch(0, 0)[0], "val": next(iter(eval_batches()))[0]}
        seen[args.filler] = {k: int((v < VOCAB).sum()) for k, v in x.items()}  # shard tokens, roughly
    monkeypatch.setattr(finetune.train, "train", fake_train)
    for filler in ("p2", "shards"):
        finetune.main(ft_args(pretrained[0], str(tmp_path / filler), f"--filler={filler}", f"--data_dir={shards}"))
    for split in ("train", "val"):
        assert seen["shards"][split] > seen["p2"][split] + 50, seen


@needs_tokenizer
def test_finetune_packing(monkeypatch):
    import re
    import finetune
    import passkey
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", TIKTOKEN_CACHE)
    enc = prepare_fineweb.gpt2_encoding()
    sample = finetune.needle_sampler(enc)
    rows = lambda *ids: [[3, i] for i in ids]
    x, y = finetune.make_batch(rows(5, 6, 7, 8), 512, sample, "answer", 100)
    x2, y2 = finetune.make_batch(rows(5, 6, 7, 8), 512, sample, "answer", 100)
    assert torch.equal(x, x2) and torch.equal(y, y2) and x.shape == y.shape == (4, 512)
    assert not torch.equal(x, finetune.make_batch(rows(6, 7, 8, 9), 512, sample, "answer", 100)[0])
    xa, ya = finetune.make_batch(rows(5, 6, 7, 8), 512, sample, "all", 100)
    assert torch.equal(xa, x)
    for r in range(4):
        text = enc.decode(x[r].tolist())
        keys = re.findall(r"The pass key is (\d+)\. Remember it\.", text)
        assert keys and all(not passkey.is_eval_key(int(k)) for k in keys)
        assert text.count("What is the pass key? The pass key is") >= len(keys) - 1  # the last may be cut
        # answer-only targets: exactly the answers " {k}." of the samples that fit whole
        kept = enc.decode([t for t in y[r].tolist() if t >= 0])
        assert kept and kept == "".join(f" {k}." for k in keys[:kept.count(".")])
        assert ((ya[r] >= 0).sum() > 5 * (y[r] >= 0).sum()) and torch.equal(ya[r][y[r] >= 0], y[r][y[r] >= 0])
    assert sum(len(re.findall("Remember it", enc.decode(r.tolist()))) for r in x) > 4  # packed: several a row
    # pack=0: one sample a row, exactly the row's length (the <|endoftext|> after it is the last target)
    x1, y1 = finetune.make_batch(rows(5, 6, 7, 8), 512, sample, "answer", 100, pack=False)
    for r in range(4):
        text = enc.decode(x1[r].tolist())
        key = re.findall(r"The pass key is (\d+)\. Remember it", text)
        assert len(key) == 1 and "<|endoftext|>" not in text and text.endswith(f"The pass key is {key[0]}.")
        assert enc.decode([t for t in y1[r].tolist() if t >= 0]) == f" {key[0]}."
    # --needle=memory: the needle (both copies of the key) before the last segment (here 128 tokens); uniform
    # depths put it there in ~74% of 512-token rows, so 16 rows all passing by luck has odds of ~1%
    early = finetune.needle_sampler(enc, past_segment=128)
    xm, ym = finetune.make_batch(rows(*range(16)), 512, early, "answer", 100, pack=False)
    ends = []
    for r in range(16):
        key = enc.decode([t for t in ym[r].tolist() if t >= 0])[:-1]      # " {k}"
        kid = enc.encode(key)
        at = [i for i in range(512 - len(kid)) if xm[r, i:i + len(kid)].tolist() == kid]
        assert len(at) == 3 and at[2] > 512 - 128 > at[1] + len(kid) - 1    # 2 in the needle, 1 in the answer
        ends.append(at[1])
    assert max(ends) > 512 - 128 - 60 and min(ends) < 150   # spread over the whole earlier part, not pinned
    # last_frac=0.5 (--needle_last): about half the rows put both copies of the key in the last segment, the
    # question's (32 of these 64; uniform depths put 14 there, so a sampler ignoring last_frac fails)
    def in_last(sampler, n=64):   # rows with both needle copies of the key in the last 128 tokens
        xs, ys = finetune.make_batch(rows(*range(n)), 512, sampler, "answer", 100, pack=False)
        kids = [enc.encode(enc.decode([t for t in ys[r].tolist() if t >= 0])[:-1]) for r in range(n)]
        at = [[i for i in range(512 - len(k)) if xs[r, i:i + len(k)].tolist() == k] for r, k in enumerate(kids)]
        assert all(len(a) == 3 for a in at)                           # 2 in the needle, 1 in the answer
        return sum(a[0] >= 512 - 128 for a in at)
    assert in_last(early) == 0 and 24 <= in_last(finetune.needle_sampler(enc, past_segment=128, last_frac=0.5)) <= 40


@needs_tokenizer
@pytest.mark.parametrize("needle", ["any", "memory"])
def test_finetune_curriculum_keeps_tokens_per_step_and_resumes(pretrained, tmp_path, monkeypatch, needle):
    """--curriculum=128: the first half of the steps on rows of 128 tokens, twice as many of them; resume exact."""
    import finetune
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", TIKTOKEN_CACHE)
    init, _ = pretrained
    seen = []
    make_batch = finetune.make_batch
    monkeypatch.setattr(finetune, "make_batch", lambda rows, L, *a: seen.append((len(rows), L)) or make_batch(rows, L, *a))
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    extra = ("--curriculum=128", "--pack=0", "--steps=4", "--min_len=128", f"--needle={needle}")
    finetune.main(ft_args(init, full, *extra))
    assert seen[:8] == [(4, 128)] * 4 + [(2, 256)] * 4  # 2 micro-batches a step; rows x length = 512 tokens
    finetune.main(ft_args(init, split, *extra, "--halt_at=1"))
    finetune.main(ft_args(init, split, *extra, "--resume=1"))
    assert losses(split) == losses(full)


@needs_tokenizer
def test_finetune_at_another_segment(pretrained, tmp_path, monkeypatch):
    """--segment (README part 4's recipe fine-tunes at 128 a model pretrained at 1024): the model trains and is
    saved with the new segment, and --needle=memory keeps every needle before the last *new* segment;
    --needle_last reaches the training samples only."""
    import finetune
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", TIKTOKEN_CACHE)
    init, _ = pretrained
    past, segs, last = [], [], []
    sampler, train_fn = finetune.needle_sampler, finetune.train.train
    monkeypatch.setattr(finetune, "needle_sampler", lambda *a, past_segment=None, last_frac=0.0, **kw: past.append(
        past_segment) or last.append(last_frac) or sampler(*a, past_segment=past_segment, last_frac=last_frac, **kw))
    monkeypatch.setattr(finetune.train, "train", lambda args, cfg, model, *a, **kw:
                        segs.append(model.cfg.segment) or train_fn(args, cfg, model, *a, **kw))
    out = str(tmp_path / "ft")
    finetune.main(ft_args(init, out, "--segment=64", "--pack=0", "--needle=memory", "--curriculum=128", "--min_len=128",
                          "--needle_last=0.25"))
    assert train.load_checkpoint(init)["config"]["segment"] == 16
    assert segs == [64] and past == [64, 64]                     # the model, the training and the held-out samples
    assert last == [0.25, 0.0]                                   # --needle_last: training rows only
    assert train.load_checkpoint(os.path.join(out, "ckpt.pt"))["config"]["segment"] == 64


@needs_tokenizer
def test_finetune_adds_memory_to_local_checkpoint(shards, tmp_path, monkeypatch):
    """--attn=infini on a local checkpoint: every pretrained weight loaded, gates new at 0.5, then trained."""
    import finetune
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", TIKTOKEN_CACHE)
    local = str(tmp_path / "local")
    train.main(tiny_args(shards, local, "--vocab_size=50304", "--steps=1", "--attn=local"))
    init = os.path.join(local, "ckpt.pt")
    out = str(tmp_path / "conv")
    finetune.main(ft_args(init, out, "--attn=infini"))
    header = rows(out, "config")[0]
    assert header["config"]["attn"] == "infini" and np.allclose(header["gates"], 0.5)
    ckpt, src = train.load_checkpoint(os.path.join(out, "ckpt.pt")), train.load_checkpoint(init)
    assert ckpt["config"]["attn"] == "infini" and set(ckpt["model"]) - set(src["model"]) == {
        f"blocks.{i}.attn.beta" for i in range(2)}
    assert not torch.equal(ckpt["model"]["blocks.0.attn.beta"], torch.zeros(4))  # the gates trained
    # the pretrained weights were loaded (not a fresh init): the embedding moved only a little
    e0, e1 = src["model"]["tok_emb.weight"], ckpt["model"]["tok_emb.weight"]
    assert (e1 - e0).norm() < 0.1 * e0.norm()


@needs_tokenizer
def test_finetune_bad_input_one_line(pretrained, tmp_path):
    init, _ = pretrained
    for extra, expect in [(["--attn=local"], "can only add the memory"),
                          (["--curriculum=100"], "every --curriculum length"),
                          (["--needle=memory"], "--needle=memory needs --pack=0"),
                          (["--needle=memory", "--pack=0", "--segment=256"], "at least 2 segments"),
                          (["--needle_last=0.5"], "--needle_last needs --needle=memory"),
                          (["--needle=memory", "--pack=0", "--needle_last=1"], "--needle_last is a fraction"),
                          (["--init=" + str(tmp_path / "none.pt")], "none.pt does not exist"),
                          (["--parquet=" + str(tmp_path / "none.parquet")], "cannot read columns")]:
        r = run("finetune.py", *ft_args(init, str(tmp_path / "o"), *extra))
        assert r.returncode != 0 and "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
        assert expect in r.stderr


@needs_tokenizer
def test_finetune_bad_table_rows_and_short_filler_shards_one_line(pretrained, tmp_path, monkeypatch):
    # a null or a number in --parquet failed inside the tokenizer, an empty table in the sampler, a filler shard
    # shorter than a row at whichever step first drew it
    import pyarrow as pa
    import pyarrow.parquet as pq
    import finetune
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", TIKTOKEN_CACHE)
    init, _ = pretrained
    empty = pa.table({"prompt": pa.array([], pa.string()), "answer": pa.array([], pa.string())})
    for name, table, expect in [("null", pa.table({"prompt": ["a", None], "answer": ["b", "c"]}), "row 1 of"),
                                ("int", pa.table({"prompt": ["a"], "answer": [5]}), "row 0 of"),
                                ("empty", empty, "has no rows")]:
        path = str(tmp_path / f"{name}.parquet")
        pq.write_table(table, path)
        with pytest.raises(SystemExit) as e:
            finetune.main(ft_args(init, str(tmp_path / "o"), f"--parquet={path}"))
        assert expect in str(e.value) and path in str(e.value) and "\n" not in str(e.value), str(e.value)
    short = tmp_path / "short"
    short.mkdir()
    write_shard(str(short / "s_val_000000.bin"), np.arange(2000) % 50)
    write_shard(str(short / "s_train_000001.bin"), np.arange(300) % 50)
    with pytest.raises(SystemExit, match="needs a train shard of more than 512 tokens"):
        finetune.main(ft_args(init, str(tmp_path / "o"), "--filler=shards", f"--data_dir={short}"))
