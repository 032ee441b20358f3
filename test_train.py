"""
CPU tests for train.py and finetune.py (no network, no GPU): python -m pytest -q test_train.py

Tokenizer tests need the GPT-2 BPE file in $INFINI_SHARED/data/tiktoken_cache (default ../shared); they are
skipped without it. Training tests use the tiny model on synthetic shards with a 64-token vocabulary.
"""
import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import prepare_fineweb
import train
from model import Llama, LlamaConfig, make_config
from prepare_fineweb import load_shard, write_shard

REPO = os.path.dirname(os.path.abspath(__file__))
TIKTOKEN_CACHE = os.environ.get("TIKTOKEN_CACHE_DIR") or os.path.join(
    os.environ.get("INFINI_SHARED", os.path.join(REPO, "..", "shared")), "data", "tiktoken_cache")
needs_tokenizer = pytest.mark.skipif(not os.path.isdir(TIKTOKEN_CACHE), reason=f"no tiktoken cache at {TIKTOKEN_CACHE}")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TIKTOKEN_CACHE_DIR": TIKTOKEN_CACHE}
VOCAB = 64
torch.set_num_threads(1)  # tiny ops: threads only add overhead, and contention when the machine is busy


def tiny_args(data_dir, out_dir, *extra):
    """A few-second CPU run: 2 layers, d 64, 64 tokens of vocabulary, 4 segments of 16 per sequence."""
    return ["--model=tiny", f"--vocab_size={VOCAB}", "--device=cpu", "--dtype=float32", "--compile=0",
            "--seq_len=64", "--segment=16", "--batch_size=2", "--grad_accum=2", "--steps=6", "--warmup=2",
            "--lr=3e-3", "--min_lr=3e-4", "--eval_every=0", "--eval_tokens=512", "--log_every=1",
            "--ckpt_every=100", f"--data_dir={data_dir}", f"--out_dir={out_dir}", *extra]


def rows(out_dir, key="loss"):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [r for r in map(json.loads, f) if key in r]


def losses(out_dir):
    return [r["loss"] for r in rows(out_dir)]


def run(script, *args, torchrun=0):
    """Run a script as a user would; returns the CompletedProcess (text output)."""
    launcher = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
                                   if torchrun else [])
    return subprocess.run(launcher + [os.path.join(REPO, script), *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Learnable synthetic data: a fixed random cycle over the 64 tokens (next token = a function of this one)
    with a few random tokens mixed in, split into a val shard and two train shards of unequal size."""
    d = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    cycle = rng.permutation(VOCAB)
    nxt = np.empty(VOCAB, dtype=np.int64)
    nxt[cycle] = np.roll(cycle, -1)
    toks = np.empty(30_000, dtype=np.int64)
    toks[0] = 0
    for i in range(1, len(toks)):
        toks[i] = nxt[toks[i - 1]] if rng.random() > 0.05 else rng.integers(VOCAB)
    write_shard(str(d / "syn_val_000000.bin"), toks[:4000])
    write_shard(str(d / "syn_train_000001.bin"), toks[4000:20000])
    write_shard(str(d / "syn_train_000002.bin"), toks[20000:])
    return str(d)

# -----------------------------------------------------------------------------
# the loader and the schedule

def test_loader_deterministic_and_split_across_ranks(shards):
    L, B, A = 64, 3, 4
    d1, d2 = train.TokenData(shards, L, seed=5), train.TokenData(shards, L, seed=5)
    for step in (0, 7, 200):  # 200 * 12 samples > one epoch (≈ 400 windows): epochs are reshuffled
        for m in range(A):
            x1, y1 = d1.batch(step, m, B, A)
            x2, y2 = d2.batch(step, m, B, A)
            assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.shape == (B, L)
            assert torch.equal(x1[:, 1:], y1[:, :-1])  # targets are the inputs shifted by one
    assert not torch.equal(d1.batch(0, 0, B, A)[0], d1.batch(1, 0, B, A)[0])
    assert not torch.equal(d1.batch(0, 0, B, A)[0], train.TokenData(shards, L, seed=6).batch(0, 0, B, A)[0])
    # ranks take disjoint micro-batches whose union is the global batch; an epoch visits every window once
    ids = [d1.window_ids((3 * A + m) * B, B) for m in range(A)]
    flat = sum(ids, [])
    assert len(set(flat)) == len(flat) == A * B and flat == d1.window_ids(3 * A * B, A * B)
    assert sorted(d1.window_ids(0, d1.n)) == list(range(d1.n))
    # windows tile the shards: window w starts at token w * seq_len of its shard
    s1 = load_shard(os.path.join(shards, "syn_train_000001.bin"))
    assert np.array_equal(d1.window(1), s1[L:2 * L + 1]) and d1.n == (16000 - 1) // L + (10000 - 1) // L


def test_eta_format():
    assert train.format_eta(3725) == "1h02m" and train.format_eta(247) == "4m07s" and train.format_eta(0.4) == "0m00s"


def test_loader_warns_of_a_truncated_shard_set(shards, tmp_path, capsys):
    # prepare_fineweb.py marks the shards of a run it did not finish; training on them is allowed, and said
    import shutil
    d = shutil.copytree(shards, str(tmp_path / "d"))
    train.TokenData(d, 64, seed=0)
    assert capsys.readouterr().err == ""
    with open(os.path.join(d, f"syn_{prepare_fineweb.INCOMPLETE}"), "w") as f:
        f.write("interrupted after 2 complete shard(s), 20,000 tokens: a truncated set; re-run with --force=1\n")
    train.TokenData(d, 64, seed=0)
    assert "holds a truncated shard set" in capsys.readouterr().err


def test_lr_schedule():
    f = lambda s: train.lr_multiplier(s, warmup=10, total=110, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 120))

# -----------------------------------------------------------------------------
# training runs

def test_loss_falls(shards, tmp_path):
    out = str(tmp_path / "o")
    train.main(tiny_args(shards, out, "--steps=40", "--lr=1e-2", "--min_lr=1e-3", "--warmup=5",
                         "--eval_every=20", "--log_every=5"))
    ls, vals = losses(out), [r["val_loss"] for r in rows(out, "val_loss")]
    assert len(ls) == 9 and len(vals) == 3  # rows at 0,5,..,35 and 39; val at 0, 20, 40
    assert ls[-1] < ls[0] - 1.0 and vals[-1] < vals[0] - 1.0, (ls, vals)
    r = rows(out)[-1]
    assert set(r) >= {"step", "loss", "lr", "tok_s", "mfu", "gates"} and r["mfu"] is None   # no peak FLOPs on a CPU
    assert np.array(r["gates"]).shape == (2, 4)  # (n_layer, n_head)
    header = rows(out, "config")[0]
    assert header["config"]["vocab_size"] == VOCAB and header["args"]["steps"] == 40


def test_resume_is_exact(shards, tmp_path, capsys):
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    train.main(tiny_args(shards, full))
    train.main(tiny_args(shards, split, "--halt_at=3"))
    assert "halted at step 3 (--halt_at): checkpoint" in capsys.readouterr().out.strip().splitlines()[-1]
    assert len(losses(split)) == 3
    ckpt = train.load_checkpoint(os.path.join(split, "ckpt.pt"))
    assert ckpt["step"] == 3
    assert list(ckpt["model"]) == list(Llama(LlamaConfig(**ckpt["config"])).state_dict())  # plain keys: no _orig_mod./module. prefixes
    train.main(tiny_args(shards, split, "--resume=1"))
    assert losses(split) == losses(full) and len(losses(full)) == 6
    assert [r["step"] for r in rows(split)] == list(range(6))  # the log reads as one run
    assert rows(split, "val_loss")[-1]["val_loss"] == rows(full, "val_loss")[-1]["val_loss"]


def test_segment_defaults_to_the_preset(shards, tmp_path):
    # --segment defaulted to 1024 whatever the preset: `--model=tiny --seq_len=64` failed ("a multiple of --segment
    # (1024)"); now tiny's 16, and 300m's 1024 as before
    out = str(tmp_path / "o")
    train.main([a for a in tiny_args(shards, out, "--steps=1") if not a.startswith("--segment")])
    assert train.load_checkpoint(out)["config"]["segment"] == 16
    assert train.get_parser().parse_args([]).segment is None and make_config("300m").segment == 1024


def test_resume_mid_log_row_is_exact(shards, tmp_path):
    # a checkpoint between two log rows (Ctrl-C, --halt_at): the next row averages the same steps as in one
    # run (it used to average only the steps after the resume: 7.2278 against 7.2186 in the laptop run)
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    train.main(tiny_args(shards, full, "--log_every=4"))
    train.main(tiny_args(shards, split, "--log_every=4", "--halt_at=3"))
    train.main(tiny_args(shards, split, "--log_every=4", "--resume=1"))
    assert [r["step"] for r in rows(full)] == [0, 4, 5]
    assert losses(split) == losses(full) and [r["grad_norm"] for r in rows(split)] == [r["grad_norm"] for r in rows(full)]


def test_resume_across_memory_paths(shards, tmp_path):
    # a checkpoint written with --fast_memory=0 (compressive_memory; every checkpoint before memory_fast became
    # the default) resumes under the default memory_fast: a choice of code path, not a config mismatch. The
    # two paths compute the same function, so the losses agree with an unbroken run to float32 rounding.
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    train.main(tiny_args(shards, full, "--fast_memory=0"))
    train.main(tiny_args(shards, split, "--fast_memory=0", "--halt_at=3"))
    train.main(tiny_args(shards, split, "--resume=1"))
    assert train.load_checkpoint(os.path.join(split, "ckpt.pt"))["config"]["fast_memory"] is True
    a, b = losses(split), losses(full)
    assert len(a) == len(b) == 6 and a[:3] == b[:3]
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4


@pytest.mark.parametrize("case", ["missing_shards", "segment", "unknown_flag", "corrupt_ckpt", "nan"])
def test_bad_input_one_line(shards, tmp_path, case):
    out = str(tmp_path / "o")
    args = tiny_args(shards, out)
    if case == "missing_shards":
        args = tiny_args(str(tmp_path / "empty"), out)
        expect = "run prepare_fineweb.py"
    elif case == "segment":
        args += ["--seq_len=60"]
        expect = "multiple of --segment"
    elif case == "unknown_flag":
        args += ["--no_such_flag=1"]
        expect = "unrecognized arguments: --no_such_flag=1"
    elif case == "corrupt_ckpt":
        os.makedirs(out)
        open(os.path.join(out, "ckpt.pt"), "wb").write(b"not a checkpoint")
        args += ["--resume=1"]
        expect = "ckpt.pt is unreadable or corrupt"
    else:  # lr 1e30: the first update is finite, the next forward overflows to inf/nan
        args += ["--lr=1e30", "--min_lr=1e29", "--warmup=0", "--ckpt_every=1"]
        expect = "stopping (try a lower --lr). Last good checkpoint"
    r = run("train.py", *args)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert expect in last, r.stderr
    if case != "unknown_flag":
        assert r.stderr.strip().count("\n") == 0, r.stderr  # exactly one line
    if case == "nan":  # the checkpoint of step 1 (finite) is kept, the NaN weights never written
        ckpt = train.load_checkpoint(os.path.join(out, "ckpt.pt"))
        assert ckpt["step"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
        assert "(step 1) is kept" in last


def test_numbers_out_of_range_one_line(shards, tmp_path, capsys):
    out = str(tmp_path / "o")
    for flag, expect in [("--beta_lr=-1", "--beta_lr must be at least 0, got -1.0"),   # (gradient ascent on the gates)
                         ("--warmup=-5", "--warmup must be at least 0, got -5"), ("--lr=nan", "--lr must be positive, got nan"),
                         ("--grad_clip=-1", "--grad_clip must be at least 0"), ("--eval_every=-1", "--eval_every must be at least 0"),
                         ("--weight_decay=inf", "--weight_decay must be at least 0, got inf"),
                         ("--min_lr=1", "--min_lr (1.0) must be in (0, --lr (0.003)]")]:
        with pytest.raises(SystemExit) as e:
            train.main(tiny_args(shards, out, flag))
        assert expect in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not os.path.exists(out)
    # said, not silently changed: a warmup longer than a quarter of the run, more validation tokens than there are
    train.main(tiny_args(shards, out, "--steps=4", "--warmup=3", "--eval_tokens=100000"))
    err = capsys.readouterr().err
    assert "--warmup=3 is more than a quarter of --steps=4: the run warms up over a quarter (1)" in err
    assert "--eval_tokens=100000 is more than the val shard holds (3999): validating on all of it" in err


def test_overwrite_stopped_before_its_first_checkpoint(shards, tmp_path, monkeypatch):
    # --overwrite=1 truncates the old run's log; stopped before its own first checkpoint, it used to leave that
    # checkpoint beside the new log, which --resume=1 then took for a finished run ("nothing to do")
    out = str(tmp_path / "o")
    train.main(tiny_args(shards, out, "--steps=2"))
    def stop(*a):
        raise SystemExit("stopped by SIGINT before step 0 completed")
    monkeypatch.setattr(train.TokenData, "batch", stop)
    with pytest.raises(SystemExit, match="before step 0"):
        train.main(tiny_args(shards, out, "--steps=3", "--overwrite=1"))
    assert not os.path.exists(os.path.join(out, "ckpt.pt")) and rows(out) == []
    with pytest.raises(SystemExit, match="does not exist: nothing to resume"):
        train.main(tiny_args(shards, out, "--steps=3", "--resume=1"))
    # nothing to resume in a folder that does not exist: said before the folder is made
    with pytest.raises(SystemExit, match="nothing to resume"):
        train.main(tiny_args(shards, str(tmp_path / "new"), "--resume=1"))
    assert not os.path.exists(tmp_path / "new")


def test_no_silent_overwrite(shards, tmp_path):
    out = str(tmp_path / "o")
    train.main(tiny_args(shards, out, "--steps=2"))
    log = open(os.path.join(out, "log.jsonl")).read()
    with pytest.raises(SystemExit) as e:
        train.main(tiny_args(shards, out, "--steps=2"))
    msg = str(e.value)
    assert "\n" not in msg and all(s in msg for s in ("--resume=1", "--out_dir", "--overwrite=1")), msg
    assert open(os.path.join(out, "log.jsonl")).read() == log  # nothing touched
    train.main(tiny_args(shards, out, "--steps=3", "--overwrite=1"))
    assert len(losses(out)) == 3 and train.load_checkpoint(os.path.join(out, "ckpt.pt"))["step"] == 3


def test_sigterm_checkpoints_then_resume_is_exact(shards, tmp_path):
    """SIGTERM (or Ctrl-C) mid-run: the step finishes, a checkpoint is saved, one line, non-zero exit;
    --resume=1 then gives the losses of an uninterrupted run."""
    out, ref = str(tmp_path / "o"), str(tmp_path / "ref")
    long = ("--steps=100000", "--ckpt_every=100000")  # far from any scheduled checkpoint or end
    p = subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), *tiny_args(shards, out, *long)],
                         cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if len(losses(out)) >= 3:
                break
        except (OSError, ValueError):  # not there yet, or a half-written row
            pass
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0 and "Traceback" not in err and err.strip().count("\n") == 0, err
    assert "stopped by SIGTERM" in err and "--resume=1" in err, err
    k = train.load_checkpoint(os.path.join(out, "ckpt.pt"))["step"]
    assert k >= 3 and len(losses(out)) == k
    train.main(tiny_args(shards, out, *long, "--resume=1", f"--halt_at={k + 3}"))
    train.main(tiny_args(shards, ref, *long, f"--halt_at={k + 3}"))
    assert losses(out) == losses(ref) and len(losses(ref)) == k + 3


@pytest.fixture(scope="module")
def slow_val(tmp_path_factory):
    """Shards whose validation (500K tokens: ~20 s for the tiny model on one thread) outlasts any signal test."""
    d = tmp_path_factory.mktemp("slow_val")
    rng = np.random.default_rng(0)
    write_shard(str(d / "syn_val_000000.bin"), rng.integers(0, VOCAB, 500_000))
    write_shard(str(d / "syn_train_000001.bin"), rng.integers(0, VOCAB, 5_000))
    return str(d), ("--eval_tokens=500000", "--warmup=0")


def start_train(args):
    return subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), *args], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_rows(out, key, deadline=60):
    end = time.time() + deadline
    while time.time() < end:
        try:
            if rows(out, key):
                return
        except (OSError, ValueError):  # not there yet, or a half-written row
            pass
        time.sleep(0.05)
    raise AssertionError(f"no {key!r} row in {out} within {deadline} s")


def exits_at_once(p, sig):
    """Send sig to the train.py process p: it must exit non-zero within 10 s with one line on stderr (returned)."""
    t = time.time()
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert time.time() - t < 10 and p.returncode != 0, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    return err


def test_signal_before_the_first_step_exits_at_once(slow_val, tmp_path):
    """A SIGTERM during the step-0 validation used to wait for it and the first step (>10 minutes on a CPU):
    with nothing new to save, it exits at once, one line, no checkpoint."""
    data, slow = slow_val
    out = str(tmp_path / "o")
    p = start_train(tiny_args(data, out, *slow, "--eval_every=1000"))
    wait_for_rows(out, "config")  # the header row: the evaluation of step 0 comes next
    err = exits_at_once(p, signal.SIGTERM)
    assert "stopped by SIGTERM before step 0 completed: nothing new to save; no checkpoint was written" in err, err
    assert not os.path.exists(os.path.join(out, "ckpt.pt"))


def test_second_signal_exits_at_once(slow_val, tmp_path):
    """After a step, the first signal waits for the checkpoint (here: the final validation first); a second
    one exits at once with one line (it used to raise KeyboardInterrupt with a traceback)."""
    data, slow = slow_val
    out = str(tmp_path / "o")
    p = start_train(tiny_args(data, out, *slow, "--steps=1"))
    wait_for_rows(out, "loss")  # step 0 is done: the final validation runs
    p.send_signal(signal.SIGTERM)
    time.sleep(1)
    assert p.poll() is None  # deferred
    err = exits_at_once(p, signal.SIGINT)
    assert "stopped by SIGINT, a second signal, during step 1: exiting without saving" in err, err


def test_resume_refuses_changed_flags(shards, tmp_path, capsys):
    out = str(tmp_path / "o")
    train.main(tiny_args(shards, out, "--halt_at=3"))
    log = open(os.path.join(out, "log.jsonl")).read()
    for extra, expect in [(["--lr=1e-2", "--steps=8"], "--lr=0.01 (saved: 0.003), --steps=8 (saved: 6)"),
                          (["--seed=1", "--grad_accum=1"], "--grad_accum=1 (saved: 2), --seed=1 (saved: 1337)"),
                          (["--overwrite=1"], "--resume=1 continues the run in --out_dir, --overwrite=1 replaces it")]:
        with pytest.raises(SystemExit) as e:
            train.main(tiny_args(shards, out, "--resume=1", *extra))
        assert expect in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert open(os.path.join(out, "log.jsonl")).read() == log  # nothing touched
    # operational flags may change, and a path may be written another way; a finished run says so, touches nothing
    train.main(tiny_args(shards, out, "--resume=1", "--log_every=2", "--ckpt_every=4", "--halt_at=5",
                         f"--data_dir={shards}{os.sep}.{os.sep}"))
    train.main(tiny_args(shards, out, "--resume=1"))
    log = open(os.path.join(out, "log.jsonl")).read()
    capsys.readouterr()
    train.main(tiny_args(shards, out, "--resume=1"))
    assert "ckpt.pt is at step 6 of --steps=6: the run is finished, nothing to do" in capsys.readouterr().out
    assert open(os.path.join(out, "log.jsonl")).read() == log


def test_resume_keeps_the_log_rows_it_does_not_redo(shards, tmp_path):
    """A resume at step 3 with another --eval_every used to drop the validation row of step 3 for good."""
    out = str(tmp_path / "o")
    train.main(tiny_args(shards, out, "--eval_every=3", "--halt_at=3"))
    train.main(tiny_args(shards, out, "--resume=1"))  # --eval_every=0: no evaluation at step 3 this time
    assert [r["step"] for r in rows(out, "val_loss")] == [0, 3, 6]
    assert [r["step"] for r in rows(out)] == list(range(6))
    # a resume that does evaluate at step 3 replaces the row instead of adding a second one
    again = str(tmp_path / "again")
    train.main(tiny_args(shards, again, "--eval_every=3", "--halt_at=3"))
    train.main(tiny_args(shards, again, "--eval_every=3", "--resume=1"))
    assert [r["step"] for r in rows(again, "val_loss")] == [0, 3, 6]
    assert rows(again, "val_loss")[-1]["val_loss"] == rows(out, "val_loss")[-1]["val_loss"]


def test_bad_out_dir_device_and_eval_tokens_one_line(shards, pretrained, tmp_path):
    import finetune
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [(["--out_dir=" + str(afile)], "afile is a file, not a folder"),
             (["--device=gpu"], "--device=gpu is not a device name; pass cuda, cuda:N or cpu"),
             (["--device=cuda:x"], "--device=cuda:x is not a device name"),
             (["--eval_tokens=0"], "--eval_tokens must be positive, got 0")]
    for extra, expect in cases + [(["--eval_tokens=10"], "--eval_tokens (10) must be at least --seq_len (64)")]:
        with pytest.raises(SystemExit) as e:
            train.main(tiny_args(shards, str(tmp_path / "o"), *extra))
        assert expect in str(e.value) and "\n" not in str(e.value), str(e.value)
    for extra, expect in cases:
        with pytest.raises(SystemExit) as e:
            finetune.main(ft_args(pretrained[0], str(tmp_path / "f"), *extra))
        assert expect in str(e.value) and "\n" not in str(e.value), str(e.value)
    os.makedirs(tmp_path / "small")  # a val shard too short is named, with its size, before anything runs
    write_shard(str(tmp_path / "small" / "syn_val_000000.bin"), np.arange(10))
    write_shard(str(tmp_path / "small" / "syn_train_000001.bin"), np.arange(1000) % VOCAB)
    with pytest.raises(SystemExit, match=r"syn_val_000000.bin holds 10 tokens, fewer than --seq_len\+1 \(65\)"):
        train.TokenData(str(tmp_path / "small"), 64, seed=0)


def test_checkpoint_folder(pretrained, tmp_path):
    """--init=out/laptop (a folder) said 'checkpoint out/laptop does not exist': its ckpt.pt is used; a folder
    without one is named as such (train.load_checkpoint serves finetune.py, passkey.py and plots.py)."""
    import finetune
    folder = os.path.dirname(pretrained[0])
    assert train.load_checkpoint(folder)["step"] == train.load_checkpoint(pretrained[0])["step"] == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="empty is a folder without a ckpt.pt"):
        train.load_checkpoint(str(empty))
    with pytest.raises(SystemExit, match="empty is a folder without a ckpt.pt"):
        finetune.main(ft_args(str(empty), str(tmp_path / "f")))


def test_laptop_line_is_the_same_in_readme_and_help():
    """One CPU line, in train.py's --help and in the README, with flags that learn in a few minutes on
    2 cores (warmup within the run, an LR for the tiny model, a small evaluation)."""
    line = [l.strip() for l in train.__doc__.splitlines() if "--device=cpu" in l]
    assert len(line) == 1
    readme = open(os.path.join(REPO, "README.md")).read()
    assert line[0] in readme, "README's CPU line differs from train.py's --help"
    args = train.get_parser().parse_args(line[0].split()[2:])
    assert args.model == "tiny" and args.steps <= 300 and args.warmup < args.steps // 4
    assert args.lr >= 1e-3 and args.eval_tokens * 2 <= 2**16 and args.device == "cpu"


def test_help_shows_defaults_and_no_prefix_matching():
    import bench
    import finetune
    import passkey
    import plots
    top = plots.get_parser()
    parsers = [train.get_parser(), finetune.get_parser(), prepare_fineweb.get_parser(), passkey.get_parser(),
               bench.get_parser(), top, *top._subparsers._group_actions[0].choices.values()]
    import recall
    parsers.append(recall.get_parser())
    for p in parsers:
        assert p.allow_abbrev is False and issubclass(p.formatter_class, argparse.ArgumentDefaultsHelpFormatter), p.prog
        for a in p._actions:  # a default is shown only for flags with help text, and only once
            assert a.help or not a.option_strings, (p.prog, a.dest)
            shown = (p.formatter_class("x")._get_help_string(a) or "").replace("%(default)s", "")
            assert shown.count("default") <= 1, (p.prog, a.dest, shown)
        err = io.StringIO()
        with pytest.raises(SystemExit) as e, contextlib.redirect_stderr(err):  # --step is not taken as --steps
            p.parse_args(["--step=10"])
        assert e.value.code == 2 and err.getvalue().count("\n") == 1 and "error:" in err.getvalue(), err.getvalue()


def test_cuda_without_gpu_one_line(shards, tmp_path):
    with pytest.raises(SystemExit, match="no CUDA GPU; pass --device=cpu"):
        train.main(tiny_args(shards, str(tmp_path / "o"), "--device=cuda"))


def test_300m_on_cpu_warns_once(tmp_path):
    r = run("train.py", "--device=cpu", f"--data_dir={tmp_path}", f"--out_dir={tmp_path / 'o'}")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    warn = [l for l in r.stderr.splitlines() if l.startswith("warning:")]
    assert len(warn) == 1 and "300m" in warn[0] and "--model=tiny" in warn[0], r.stderr


def test_tokens_beyond_vocab_one_line(shards, tmp_path):
    with pytest.raises(SystemExit, match="token id 63, the model's vocabulary is 32"):
        train.main(tiny_args(shards, str(tmp_path / "o"), "--vocab_size=32"))


def test_mismatched_checkpoint_one_line(shards, tmp_path):
    out = str(tmp_path / "o")
    for bad in ({"model": {}, "config": {}}, {"model": {"w": torch.zeros(1)}, "config": {"attn": "infini"}}):
        torch.save(bad, str(tmp_path / "bad.pt"))    # passkey.py and plots.py read the config's fields: KeyError
        with pytest.raises(SystemExit, match="is not a complete checkpoint of this project"):
            train.load_checkpoint(str(tmp_path / "bad.pt"))
    train.main(tiny_args(shards, out, "--steps=1"))
    with pytest.raises(SystemExit, match="ckpt.pt holds a different model config") as e:
        train.main(tiny_args(shards, out, "--update=linear", "--segment=8", "--resume=1"))
    msg = str(e.value)  # only the fields that differ
    assert "segment: 16 -> 8" in msg and "update: 'delta' -> 'linear'" in msg and "n_embd" not in msg, msg


def test_ddp_matches_single_process_and_resumes(shards, tmp_path):
    """2 gloo ranks x 2 micro-batches of 1 = 1 process x 4 micro-batches of 1: the same global batch, the
    same losses (up to the order of the gradient sums); a DDP halt + resume repeats the DDP run exactly,
    and every torchrun exits 0 (no abort at exit, see train.teardown_distributed)."""
    single, ddp, ddp_split = (str(tmp_path / n) for n in ("single", "ddp", "ddp_split"))
    micro = ("--batch_size=1", "--grad_accum=4")
    train.main(tiny_args(shards, single, *micro))
    r = run("train.py", *tiny_args(shards, ddp, *micro), torchrun=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert losses(ddp) == pytest.approx(losses(single), rel=1e-5)
    assert rows(ddp, "val_loss")[-1]["val_loss"] == pytest.approx(rows(single, "val_loss")[-1]["val_loss"], rel=1e-5)
    r = run("train.py", *tiny_args(shards, ddp_split, *micro, "--halt_at=2"), torchrun=2)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run("train.py", *tiny_args(shards, ddp_split, *micro, "--resume=1"), torchrun=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert losses(ddp_split) == losses(ddp)


def test_teardown_frees_the_process_group(tmp_path, monkeypatch):
    """The cause of the DDP test's rare exit abort: DDP sits in a reference cycle and holds the process
    group, so after destroy_process_group the gloo group (and its worker threads) lived on until the
    interpreter's shutdown, where a thread needing the GIL aborts the process. Teardown must free it."""
    import gc
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    for k, v in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1").items():
        monkeypatch.setenv(k, v)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)

    def step():  # a DDP wrapper that goes out of scope, as in train.train
        ddp = DDP(torch.nn.Linear(4, 4))
        ddp(torch.randn(2, 4)).sum().backward()
    gc.disable()  # no collection happens to run between train() and exit: teardown must not rely on one
    try:
        step()
        train.teardown_distributed()
        alive = [o for o in gc.get_objects() if type(o) is DDP]
    finally:
        gc.enable()
    assert not dist.is_initialized()
    assert not alive, "a DDP wrapper (and its process group) survived teardown"

# -----------------------------------------------------------------------------
# finetune.py

@pytest.fixture(scope="module")
def pretrained(shards, tmp_path_factory):
    """A train.py checkpoint of the tiny model (GPT-2 vocabulary), its gates moved away from 0.5 by hand."""
    out = str(tmp_path_factory.mktemp("pretrained"))
    train.main(tiny_args(shards, out, "--vocab_size=50304", "--steps=1"))
    path = os.path.join(out, "ckpt.pt")
    ckpt = train.load_checkpoint(path)
    for layer in range(2):
        ckpt["model"][f"blocks.{layer}.attn.beta"] = torch.tensor([-2.0, -0.5, 1.0, 2.0]) * (layer + 1)
    train.save_checkpoint(path, ckpt)
    model = Llama(LlamaConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return path, model.gates()


def ft_args(init, out_dir, *extra):
    return [f"--init={init}", f"--out_dir={out_dir}", "--device=cpu", "--dtype=float32", "--compile=0",
            "--seq_len=256", "--min_len=100", "--batch_size=2", "--grad_accum=2", "--steps=3", "--warmup=1",
            "--log_every=1", "--eval_every=0", "--eval_tokens=512", *extra]
