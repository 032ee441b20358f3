"""Tests for passkey.py and plots.py, and that every command in the README parses (prepare_fineweb.py's tests are in
test_prepare.py). CPU only, no network. Run: python -m pytest -q test_eval.py

The GPT-2 tokenizer is read offline from $INFINI_SHARED/data/tiktoken_cache (default ../shared);
tests that need it are skipped, saying so, when that file is missing.
"""
import json
import os
import random
import re

import pytest
import torch

import passkey
from model import Llama, make_config

REPO = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("INFINI_SHARED", os.path.join(REPO, "..", "shared"))
CACHE = os.environ.get("TIKTOKEN_CACHE_DIR") or os.path.join(SHARED, "data", "tiktoken_cache")
R50K = os.path.join(CACHE, "0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4")   # tiktoken's cache name for r50k_base


@pytest.fixture(scope="module")
def enc():
    if not os.path.isfile(R50K):
        pytest.skip(f"GPT-2 BPE not found offline at {R50K} (set TIKTOKEN_CACHE_DIR, or INFINI_SHARED to the shared folder)")
    os.environ["TIKTOKEN_CACHE_DIR"] = CACHE
    from prepare_fineweb import gpt2_encoding
    return gpt2_encoding()


def needle_start(enc, ids, key):
    """Index of the needle's first token (" The pass key is {k}") in a prompt (ids without the answer)."""
    needle = enc.encode(" The pass key is") + enc.encode(f" {key}")
    starts = [i for i in range(len(ids) - len(needle)) if ids[i:i + len(needle)] == needle]
    assert len(starts) == 1, "the needle must occur exactly once"
    return starts[0]

# -----------------------------------------------------------------------------
# the generator

@pytest.mark.parametrize("length", [4096, 16384, 100_000])
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_sample_length_and_depth(enc, length, depth):
    key = 9054
    ids, a = passkey.make_sample(enc, length, depth, key)
    assert abs(len(ids) - length) <= 0.01 * length
    assert len(ids) == length                                     # in fact exact
    assert abs(needle_start(enc, ids[:a], key) - depth * length) <= 0.02 * length
    text = enc.decode(ids)
    assert text.startswith(passkey.INTRO) and text.count(passkey.NEEDLE.format(k=key)) == 1
    assert enc.decode(ids[:a]).endswith("What is the pass key? The pass key is")
    assert enc.decode(ids[a:]) == f" {key}."


@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
def test_depth_is_fraction_of_filler(enc, depth):
    # at short lengths the fixed text (~60 tokens) exceeds 2% of the length, so check the definition:
    # the filler before the needle is depth x all filler, up to the snap to a sentence end
    L, key = 1024, 123456
    ids, a = passkey.make_sample(enc, L, depth, key)
    n_intro = len(enc.encode(passkey.INTRO))
    s = needle_start(enc, ids[:a], key)
    n_fill = L - len(enc.encode(passkey.NEEDLE.format(k=key))) - n_intro - len(enc.encode(passkey.QUESTION)) - (len(ids) - a)
    assert abs((s - n_intro) - depth * n_fill) <= len(enc.encode(passkey.FILLER)) // 2
    if depth == 0.0:
        assert s == n_intro                                       # right after the intro
    if depth == 1.0:
        assert enc.decode(ids[s:a]) == passkey.NEEDLE.format(k=key) + passkey.QUESTION   # needle, then question
    else:
        assert enc.decode(ids[:a]).endswith(" There and back again." + passkey.QUESTION)   # whole sentences


def test_sample_is_natural_tokenization(enc):
    # the model must see what the tokenizer makes of the text, and the key the same tokens twice
    for key in (9054, 31415, 271828, 1000):
        ids, a = passkey.make_sample(enc, 2048, 0.5, key)
        assert enc.encode(enc.decode(ids)) == ids
        k = enc.encode(f" {key}")
        hits = [i for i in range(len(ids)) if ids[i:i + len(k)] == k]
        assert len(hits) == 3 and hits[-1] == a                   # twice in the needle, once as the answer


def test_sample_token_filler_and_errors(enc):
    filler = torch.arange(45000, 50000).numpy()                  # a stand-in token array, ids the template never uses
    ids, a = passkey.make_sample(enc, 1024, 0.5, 777, filler="tokens", filler_ids=filler,
                                 rng=random.Random(1), intro=False)
    assert len(ids) == 1024 and enc.decode(ids[a:]) == " 777."
    window = [t for t in ids if t >= 45000]
    assert window == list(range(window[0], window[0] + len(window)))   # one contiguous window
    ids2, _ = passkey.make_sample(enc, 1024, 0.5, 777, filler="tokens", filler_ids=filler, rng=random.Random(1), intro=False)
    assert ids2 == ids                                            # reproducible from the rng
    with pytest.raises(ValueError):
        passkey.make_sample(enc, 40, 0.5, 777)                    # shorter than the template
    with pytest.raises(ValueError):
        passkey.make_sample(enc, 1024, 1.5, 777)
    with pytest.raises(ValueError):
        passkey.make_sample(enc, 1024, 0.5, 777, filler="tokens")   # no filler_ids / rng

# -----------------------------------------------------------------------------
# keys and scoring

def test_key_split_disjoint_and_deterministic():
    rng = random.Random(0)
    ev = {passkey.random_key(rng, eval=True) for _ in range(300)}
    ft = {passkey.random_key(rng, eval=False) for _ in range(3000)}
    assert ev and ft and not ev & ft
    assert all(passkey.is_eval_key(k) for k in ev) and not any(passkey.is_eval_key(k) for k in ft)
    assert all(1000 <= k < 1_000_000 for k in ev | ft)
    assert {len(str(k)) for k in ft} == {4, 5, 6}
    frac = sum(map(passkey.is_eval_key, range(10_000, 30_000))) / 20_000
    assert 0.05 < frac < 0.15                                     # about 10% reserved
    # the same keys from the same seed, and numpy generators work too
    assert [passkey.random_key(random.Random(5)) for _ in range(3)] == [passkey.random_key(random.Random(5)) for _ in range(3)]
    import numpy as np
    assert passkey.is_eval_key(passkey.random_key(np.random.default_rng(0), digits=(5,), eval=True))


@pytest.mark.parametrize("text, key, contains, exact", [
    (" 9054.", 9054, True, True),
    ("9054 is the pass key", 9054, True, True),
    ("\n 9054", "9054", True, True),
    (" 90541", 9054, True, False),        # study's rule counts it, exact does not
    (" 09054", 9054, True, False),
    (" key 9054.", 9054, True, False),
    (" 905.", 9054, False, False),
    (" 1234.", 9054, False, False),
    ("", 9054, False, False),
])
def test_score(text, key, contains, exact):
    assert passkey.score(text, key) == (contains, exact)

# -----------------------------------------------------------------------------
# streaming evaluation

@pytest.mark.parametrize("attn", ["infini", "local"])
@pytest.mark.parametrize("P", [97, 96, 7])
def test_streaming_matches_single_call(attn, P):
    torch.manual_seed(0)
    cfg = make_config("tiny", attn=attn, vocab_size=256, segment=16)
    model = Llama(cfg).double().eval()
    x = torch.randint(0, 256, (2, P))
    ref, _, _ = model(x)                                         # the whole prompt in one call
    tail, mem = passkey.read_prompt(model, x, chunk=32)
    assert 1 <= tail.size(1) <= 16 and (mem is None) == (attn == "local" or P <= 16)
    last, _, _ = model(tail, memory=mem, last_only=True)
    torch.testing.assert_close(last[:, -1], ref[:, -1], rtol=1e-9, atol=1e-9)
    # and the greedy tokens equal a full-prompt greedy decode
    want = model.generate(x, 5)[:, P:]
    got = passkey.greedy_continue(model, x, 5, chunk=32)
    assert torch.equal(got, want)


def test_streaming_chunk_must_be_whole_segments():
    model = Llama(make_config("tiny", vocab_size=64)).eval()
    with pytest.raises(ValueError):
        passkey.greedy_continue(model, torch.zeros(1, 40, dtype=torch.long), 2, chunk=20)


def test_full_attention_oom_is_recorded(enc, monkeypatch):
    model = Llama(make_config("tiny", attn="full")).eval()
    calls = []

    def boom(*a, **k):
        calls.append(1)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
    monkeypatch.setattr(passkey, "greedy_continue", boom)
    res = passkey.evaluate(model, enc, [128, 256], [0, 100], samples=2, progress=False)
    assert calls and res["accuracy"] == [[None, None], [None, None]] and res["exact"] == [[None, None], [None, None]]
    assert all(r["correct"] is None and r["generated"] is None for r in res["records"])
    assert "oom" in passkey.format_table(res)


def test_grid_counts_a_model_that_finds_the_needle(enc, monkeypatch):
    # an oracle that reads the key off the needle scores 1.0 everywhere; one that is off by one, 0.0
    model = Llama(make_config("tiny", attn="local")).eval()
    marker = enc.encode(" The pass key is")

    def answering(answer):
        """A stand-in for greedy_continue: answer(key) -> the generated ids, the key read off the needle."""
        def fake(model, x, new_tokens, chunk=None):
            outs = []
            for row in x.tolist():
                i = next(i for i in range(len(row)) if row[i:i + len(marker)] == marker) + len(marker)
                key = re.match(r"\s*(\d+)", enc.decode(row[i:i + 8])).group(1)
                outs.append((answer(key) + [0] * new_tokens)[:new_tokens])
            return torch.tensor(outs)
        return fake
    for shift, want in ((0, 1.0), (1, 0.0)):
        monkeypatch.setattr(passkey, "greedy_continue", answering(lambda k: enc.encode(f" {int(k) + shift}.")))
        res = passkey.evaluate(model, enc, [128, 512], [0, 50, 100], samples=3, new_tokens=4, progress=False)
        assert res["accuracy"] == [[want] * 3] * 2 and res["exact"] == [[want] * 3] * 2
    # ids of the padded vocabulary (50257..50303) have no text: shown as "?", never a crash, and never joining
    # the digits around them into a key
    split = lambda k: enc.encode(" " + k[:2]) + [50300] + enc.encode(k[2:])
    monkeypatch.setattr(passkey, "greedy_continue", answering(split))
    res = passkey.evaluate(model, enc, [128], [50], samples=2, new_tokens=4, progress=False)
    assert res["accuracy"] == [[0.0]] and all("?" in r["generated"] for r in res["records"])


def test_oom_batch_falls_back_to_one_prompt_at_a_time(enc, monkeypatch):
    model = Llama(make_config("tiny", attn="full")).eval()
    real, sizes = passkey.greedy_continue, []

    def small_only(model, x, *a, **k):
        sizes.append(x.size(0))
        if x.size(0) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, x, *a, **k)
    monkeypatch.setattr(passkey, "greedy_continue", small_only)
    res = passkey.evaluate(model, enc, [128], [50], samples=6, new_tokens=2, progress=False)
    assert max(sizes) > 1 and sizes.count(1) >= 2                 # a batch was tried, then single prompts
    assert res["accuracy"][0][0] is not None and all(isinstance(r["generated"], str) for r in res["records"])

# -----------------------------------------------------------------------------
# end to end

def test_passkey_cli_end_to_end(enc, tmp_path, monkeypatch, capsys):
    from train import save_checkpoint
    import dataclasses
    torch.manual_seed(0)
    cfg = make_config("tiny", attn="infini", segment=32)
    model = Llama(cfg)
    with torch.no_grad():
        model.blocks[0].attn.beta.fill_(1.0)                     # a non-default gate, to see it survive the file
    ckpt = str(tmp_path / "ckpt.pt")
    save_checkpoint(ckpt, {"model": model.state_dict(), "config": dataclasses.asdict(cfg)})
    out = tmp_path / "pk.json"
    argv = ["--ckpt", ckpt, "--lengths", "128", "300", "--depths", "0", "50", "100", "--samples", "2",
            "--new_tokens", "3", "--device", "cpu", "--out", str(out), "--chunk", "64"]
    passkey.main(argv)
    res = json.loads(out.read_text())
    assert res["checkpoint"] == ckpt and res["attn"] == "infini" and res["segment"] == 32
    assert res["lengths"] == [128, 300] and res["depths"] == [0, 50, 100] and res["samples"] == 2
    for k in ("accuracy", "exact"):
        assert len(res[k]) == 2 and all(len(row) == 3 for row in res[k])
        assert all(0.0 <= v <= 1.0 for row in res[k] for v in row)
    assert len(res["records"]) == 2 * 3 * 2
    assert {(r["length"], r["depth"]) for r in res["records"]} == {(L, d) for L in (128, 300) for d in (0, 50, 100)}
    assert all(passkey.is_eval_key(r["key"]) and isinstance(r["generated"], str) for r in res["records"])
    # the grid's numbers are the records' means
    cell = [r["correct"] for r in res["records"] if r["length"] == 300 and r["depth"] == 50]
    assert res["accuracy"][1][1] == sum(cell) / 2
    assert "length" in capsys.readouterr().out
    # same seed, same prompts and outputs
    out2 = tmp_path / "pk2.json"
    passkey.main(argv[:-3] + [str(out2), "--chunk", "64"])
    assert json.loads(out2.read_text())["records"] == res["records"]


def test_passkey_segment_override(enc, tmp_path, monkeypatch):
    """--segment reads a checkpoint with other segments (a model fine-tuned on short segments, evaluated at
    its pretraining segment): the model is built with it, and the JSON records it; a bad one is one line."""
    from train import save_checkpoint
    import dataclasses
    seen = []
    real = passkey.evaluate
    monkeypatch.setattr(passkey, "evaluate", lambda model, *a, **kw: seen.append(model.cfg.segment) or real(model, *a, **kw))
    for attn in ("infini", "full"):
        cfg = make_config("tiny", attn=attn, segment=32)
        save_checkpoint(str(tmp_path / f"{attn}.pt"), {"model": Llama(cfg).state_dict(), "config": dataclasses.asdict(cfg)})
    argv = ["--ckpt", str(tmp_path / "infini.pt"), "--lengths", "128", "--depths", "0", "--samples", "1",
            "--new_tokens", "1", "--device", "cpu", "--out"]
    passkey.main(argv + [str(tmp_path / "a.json")])
    passkey.main(argv + [str(tmp_path / "b.json"), "--segment", "64"])
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert seen == [32, 64] and a["segment"] == 32 and b["segment"] == 64
    assert "checkpoint_segment" not in a and b["checkpoint_segment"] == 32   # the JSON says it was read at another
    for extra, expect in ((["--segment", "0"], "segment must be a positive integer"),
                          (["--ckpt", str(tmp_path / "full.pt"), "--segment", "64"], "a full-attention model has no segments")):
        with pytest.raises(SystemExit) as e:
            passkey.main(argv + [str(tmp_path / "c.json")] + extra)
        msg = str(e.value)
        assert msg.startswith("error:") and "\n" not in msg and expect in msg, msg


def test_passkey_cli_needs_a_model():
    with pytest.raises(SystemExit):
        passkey.main(["--lengths", "128"])


@pytest.mark.parametrize("flag", [["--model", "small"], ["--attn", "local"]])
def test_passkey_model_flags_only_with_random_init(enc, tmp_path, flag):
    # they were silently ignored next to a --ckpt (the checkpoint's model was evaluated)
    with pytest.raises(SystemExit) as e:
        passkey.main(["--ckpt", str(tmp_path / "ckpt.pt"), *flag, "--lengths", "256", "--device", "cpu",
                      "--out", str(tmp_path / "pk.json")])
    assert str(e.value).startswith("error: --model and --attn are for --random_init"), str(e.value)


@pytest.mark.parametrize("extra,expect", [
    (["--lengths", "256", "50"], "--lengths 50 is too short for the passkey template (at least 66 tokens)"),
    (["--samples", "0"], "must be positive"),
    (["--chunk", "40"], "--chunk (40) must be a multiple of the segment (32)"),
    (["--out", "{tmp}/missing/pk.json"], "missing) does not exist"),
    (["--device", "cuda"], "no CUDA GPU"),
    (["--out", "{tmp}/exists.json"], "exists; pass another --out or --overwrite=1"),
    (["--out", "{tmp}", "--overwrite=1"], "is a folder; give a file name"),
    (["--ckpt", "{tmp}/ckpt.pt"], "--random_init evaluates a random model, --ckpt a trained one: give one of them"),
    (["--lengths", "256", "512", "256"], "--lengths lists 256 more than once"),      # were repeated rows / records
    (["--depths", "0", "50", "0", "50"], "--depths lists 0, 50 more than once"),
    (["--depths", "101"], "--depths are percentages in [0, 100]"),
    (["--resume=1", "--overwrite=1"], "give one of them"),
])
def test_passkey_bad_input_one_line(enc, tmp_path, monkeypatch, extra, expect):
    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    (tmp_path / "exists.json").write_text("{}")
    monkeypatch.setattr(passkey, "evaluate", lambda *a, **kw: pytest.fail("the sweep started"))  # checked before it
    argv = ["--random_init", "--segment", "32", "--lengths", "256", "--samples", "1", "--device", "cpu",
            "--out", str(tmp_path / "pk.json"), *(e.format(tmp=tmp_path) for e in extra)]
    with pytest.raises(SystemExit) as e:
        passkey.main(argv)
    msg = str(e.value)
    assert msg.startswith("error:") and "\n" not in msg and expect in msg, msg
    assert not os.path.exists(f"{tmp_path}.tmp")                  # (an --out that is a folder once left one)

TINY = ["--random_init", "--segment", "32", "--lengths", "128", "256", "--depths", "0", "100", "--samples", "2",
        "--new_tokens", "2", "--device", "cpu"]


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_passkey_interrupt_then_resume_equals_one_run(enc, tmp_path, monkeypatch, request, signum):
    # a signal mid-sweep was a traceback (SIGINT) or a silent death (SIGTERM), every finished cell lost
    import signal
    whole, cut = tmp_path / "whole.json", tmp_path / "cut.json"
    passkey.main(TINY + ["--out", str(whole)])

    def unhandled(s, frame):                                  # without the fix: a failure, not pytest's death
        raise AssertionError(f"passkey.py did not handle {signal.Signals(s).name}")
    for s in (signal.SIGINT, signal.SIGTERM):
        request.addfinalizer(lambda s=s, old=signal.signal(s, unhandled): signal.signal(s, old))
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    real, sent = passkey.greedy_continue, []

    def signal_in_third_cell(model, x, *a, **k):              # cells: (128, 0), (128, 100), (256, 0), (256, 100)
        if x.size(1) > 200 and not sent:
            sent.append(os.kill(os.getpid(), getattr(signal, signum)))
        return real(model, x, *a, **k)
    monkeypatch.setattr(passkey, "greedy_continue", signal_in_third_cell)
    with pytest.raises(SystemExit) as e:
        passkey.main(TINY + ["--out", str(cut)])
    assert str(e.value) == (f"stopped by {signum}: 2 of 4 cells are in {cut} (partial); the same command with "
                            "--resume=1 continues")
    part = json.loads(cut.read_text())
    assert part["partial"] is True and {(r["length"], r["depth"]) for r in part["records"]} == {(128, 0), (128, 100)}
    assert before == {s: signal.getsignal(s) for s in before}  # the handlers are given back
    import plots
    with pytest.raises(SystemExit, match=f"error: {cut} is a partial passkey.py result"):
        plots.main(["passkey", "--json", str(cut), "--out", str(tmp_path / "pk.png")])
    # a partial --out is refused without --resume=1; a resume under other settings names what differs
    for extra, expect in (([], "is a partial result (2 of 4 cells); pass --resume=1 to continue it or --overwrite=1"),
                          (["--resume=1", "--seed", "1"], "differs from its run: seed 1 (saved: 0); repeat"),
                          (["--resume=1", "--depths", "0", "50"], "depths [0, 50] (saved: [0, 100])"),
                          (["--resume=1", "--chunk", "64"], "chunk 64 (saved: None)")):
        with pytest.raises(SystemExit) as e:
            passkey.main(TINY + ["--out", str(cut)] + extra)
        assert str(e.value).startswith("error:") and "\n" not in str(e.value) and expect in str(e.value), str(e.value)
    other = tmp_path / "other.json"                        # the same path, another checkpoint step: another model
    other.write_text(json.dumps(dict(json.loads(cut.read_text()), checkpoint_step=5)))
    with pytest.raises(SystemExit, match=r"checkpoint_step None \(saved: 5\)"):
        passkey.main(TINY + ["--out", str(other), "--resume=1"])
    other.unlink()
    cells = []
    monkeypatch.setattr(passkey, "greedy_continue",
                        lambda m, x, *a, **k: cells.append(x.size(1)) or real(m, x, *a, **k))
    passkey.main(TINY + ["--out", str(cut), "--resume=1"])
    assert min(cells) > 200                                    # the finished cells were not run again
    a, b = (json.loads(p.read_text()) for p in (whole, cut))
    assert a.pop("seconds") >= 0 and b.pop("seconds") >= 0 and a == b and "partial" not in b
    with pytest.raises(SystemExit) as e:        # a finished result: nothing to do, and no error (as train.py, recall.py)
        passkey.main(TINY + ["--out", str(cut), "--resume=1"])
    assert e.value.code == 0 and json.loads(cut.read_text())["accuracy"] == a["accuracy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.json", "whole.json"]   # no .tmp left


def test_passkey_crash_keeps_finished_cells_and_write_failure_is_one_line(enc, tmp_path, monkeypatch):
    out = tmp_path / "pk.json"
    real, calls = passkey.greedy_continue, []

    def crash_second(model, x, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(model, x, *a, **k)
    monkeypatch.setattr(passkey, "greedy_continue", crash_second)
    with pytest.raises(RuntimeError):
        passkey.main(TINY[:4] + ["128", "--depths", "0", "100", "--samples", "1", "--device", "cpu", "--out", str(out)])
    assert len(json.loads(out.read_text())["records"]) == 1    # the first cell survived the crash
    # disk full at the write: one line naming the file, no traceback, no .tmp left
    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", full)                      # (the .tmp is written, then the rename fails)
    with pytest.raises(SystemExit) as e:
        passkey.main(TINY[:4] + ["128", "--depths", "0", "--samples", "1", "--device", "cpu", "--out", str(out),
                                 "--overwrite=1"])
    assert str(e.value) == f"error: cannot write {out} (No space left on device)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pk.json"]


def test_passkey_checkpoint_that_does_not_fit_is_one_line(enc, tmp_path):
    # recall.py's checkpoints have a vocabulary of ~200 (was an IndexError in the embedding), and a state dict
    # that does not fit the config was load_state_dict's page-long RuntimeError
    from train import save_checkpoint
    import dataclasses
    whole = Llama(make_config("tiny")).state_dict()
    cases = {"small_vocab": (make_config("tiny", vocab_size=208), None,
                             "has a vocabulary of 208, smaller than GPT-2's 50257"),
             "missing": (make_config("tiny"), {k: v for k, v in whole.items() if k != "tok_emb.weight"},
                         "does not fit this model (missing ['tok_emb.weight']"),
             "wrong_shape": (make_config("tiny"), Llama(make_config("tiny", n_embd=32, n_head=2)).state_dict(),
                             "does not fit this model (size mismatch for")}
    for name, (cfg, sd, expect) in cases.items():
        save_checkpoint(str(tmp_path / name), {"model": Llama(cfg).state_dict() if sd is None else sd,
                                               "config": dataclasses.asdict(cfg)})
        with pytest.raises(SystemExit) as e:
            passkey.main(["--ckpt", str(tmp_path / name), "--lengths", "128", "--device", "cpu",
                          "--out", str(tmp_path / "pk.json")])
        msg = str(e.value)
        assert msg.startswith(f"error: {tmp_path / name} ") and "\n" not in msg and expect in msg, msg

# -----------------------------------------------------------------------------
# plots

def write_log(path, steps=20, layers=3, heads=4, val_every=5, scale=1.0):
    with open(path, "w") as f:
        f.write(json.dumps({"config": {"attn": "infini"}}) + "\n")   # a non-metric row, to be ignored
        for s in range(steps):
            g = [[0.5 + 0.02 * s * (l - 1) / steps + 0.01 * h for h in range(heads)] for l in range(layers)]
            f.write(json.dumps({"step": s, "loss": scale * (5 - s / steps), "gates": g}) + "\n")
            if s % val_every == 0:
                f.write(json.dumps({"step": s, "val_loss": scale * (5.1 - s / steps)}) + "\n")


def write_result(path, attn, acc, segment=16):
    lengths, depths = [256, 512, 1024], [0, 50, 100]
    d = dict(checkpoint="x", attn=attn, segment=segment, lengths=lengths, depths=depths, accuracy=acc,
             exact=acc, samples=2, records=[])
    path.write_text(json.dumps(d))


def is_png(path):
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_from_logs_and_results(tmp_path):
    import plots
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_log(a)
    write_log(b, scale=1.1)
    ra, rb = tmp_path / "a.json", tmp_path / "b.json"
    write_result(ra, "infini", [[1, 0.5, 1], [0.5, 0, 0.5], [0, 0, 0.5]])
    write_result(rb, "full", [[1, 1, 1], [0.5, 0.5, 1], [None, None, None]])      # an oom row
    outs = {name: tmp_path / f"{name}.png" for name in ("gates", "trend", "loss", "pk", "pk1")}
    plots.main(["gates", "--log", str(a), "--out", str(outs["gates"])])
    plots.main(["gate_trend", "--log", str(a), "--out", str(outs["trend"])])
    plots.main(["loss", "--logs", str(a), str(b), "--labels", "infini", "local", "--out", str(outs["loss"])])
    plots.main(["passkey", "--json", str(ra), str(rb), "--labels", "infini", "full", "--out", str(outs["pk"])])
    plots.main(["passkey", "--json", str(ra), "--out", str(outs["pk1"])])
    stream = tmp_path / "stream.json"
    stream.write_text(json.dumps([dict(attn="infini", length=L, peak_gb=1.9, tok_s=2.9e5) for L in (8192, 32768)]
                                 + [dict(attn="full", length=8192, peak_gb=1.8, tok_s=1.2e5),
                                    dict(attn="full", length=32768, peak_gb=None, tok_s=None, oom=True)]))
    outs["stream"] = tmp_path / "stream.png"
    plots.main(["streaming", "--json", str(stream), "--out", str(outs["stream"])])
    for name, p in outs.items():
        assert is_png(p), name
    with pytest.raises(SystemExit, match="not a bench.py"):
        plots.main(["streaming", "--json", str(ra), "--out", str(tmp_path / "bad.png")])
    g, step = plots.gates_from_log(str(a))
    assert g.shape == (3, 4) and step == 19
    # an existing figure is kept unless asked (one line, nothing written), and replaced when asked
    before = outs["gates"].read_bytes()
    with pytest.raises(SystemExit, match="exists; pass another --out or --overwrite=1"):
        plots.main(["gate_trend", "--log", str(a), "--out", str(outs["gates"])])
    assert outs["gates"].read_bytes() == before
    plots.main(["gate_trend", "--log", str(a), "--out", str(outs["gates"]), "--overwrite=1"])
    assert is_png(outs["gates"]) and outs["gates"].read_bytes() != before
    assert not list(tmp_path.glob("*.tmp"))


def test_loss_plot_names_answer_token_validation(tmp_path, monkeypatch):
    # finetune.py's val_loss is on the answer tokens only: its legend says so, pretraining's does not
    import plots
    figs = []
    monkeypatch.setattr(plots, "save", lambda fig, out: figs.append(fig))
    rows = [{"step": s, "loss": 5.0 - s / 10, "val_loss": 5.1 - s / 10} for s in range(3)]
    logs = [[{"args": {"lr": 1e-3}}] + rows, [{"args": {"init": "out/ckpt.pt"}}] + rows]
    plots.plot_loss(logs, ["pretrain", "finetune"], "x.png")
    labels = [t.get_text() for t in figs[0].axes[0].get_legend().get_texts()]
    assert labels == ["pretrain train", "pretrain val", "finetune train", "finetune val (answer tokens)"]


def test_plot_gates_from_checkpoint(tmp_path):
    import dataclasses
    import plots
    from train import save_checkpoint
    cfg = make_config("tiny", attn="infini")
    model = Llama(cfg)
    with torch.no_grad():
        model.blocks[1].attn.beta.copy_(torch.tensor([-2.5, 0.0, 1.0, 5.0]))
    ckpt = str(tmp_path / "ckpt.pt")
    save_checkpoint(ckpt, {"model": model.state_dict(), "config": dataclasses.asdict(cfg)})
    g = plots.gates_from_ckpt(ckpt)
    torch.testing.assert_close(torch.as_tensor(g), model.gates())
    assert g[1].tolist() == pytest.approx([0.0, 0.5, 0.7, 1.0])   # hard sigmoid clamp(0.2b + 0.5, 0, 1)
    out = tmp_path / "g.png"
    plots.main(["gates", "--ckpt", ckpt, "--out", str(out)])
    assert is_png(out)


def test_plots_unreadable_inputs_fail_in_one_line(tmp_path):
    import plots
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for argv in (["passkey", "--json", str(bad)], ["passkey", "--json", str(tmp_path / "missing.json")],
                 ["loss", "--logs", str(bad)], ["gates", "--log", str(bad)],
                 ["gates", "--ckpt", str(tmp_path / "missing.pt")]):
        with pytest.raises(SystemExit) as e:
            plots.main(argv + ["--out", str(tmp_path / "x.png")])
        msg = str(e.value)
        assert msg.startswith("error:") and "\n" not in msg
    assert not (tmp_path / "x.png").exists()


def test_plots_bad_out_and_missing_inputs_one_line(tmp_path):
    import plots
    log = tmp_path / "log.jsonl"
    write_log(log)
    for out, expect in [("g7.txt", "matplotlib cannot write .txt files"), ("", "is a folder; give a file name"),
                        ("nodir/g.png", f"the folder of --out ({tmp_path / 'nodir'}) does not exist")]:
        with pytest.raises(SystemExit) as e:
            plots.main(["gate_trend", "--log", str(log), "--out", str(tmp_path / out), "--overwrite=1"])
        msg = str(e.value)
        assert msg.startswith("error:") and "\n" not in msg and expect in msg, msg
    missing = str(tmp_path / "missing.json")
    for cmd in (["passkey", "--json"], ["recall", "--json"], ["streaming", "--json"], ["loss", "--logs"],
                ["gate_trend", "--log"], ["gates", "--log"]):
        with pytest.raises(SystemExit) as e:
            plots.main(cmd + [missing, "--out", str(tmp_path / "x.png")])
        assert str(e.value) == f"error: {cmd[1]} {missing} does not exist", str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]  # no figure, no .tmp, no folder

def recall_row(**kw):
    return dict(dict(name="infini", attn="infini", n_pairs=1, curriculum=False, head_dim=16, acc=0.5,
                     acc_by_distance=[1.0, 0.5, None], chance=1 / 64, lr=1e-3), **kw)


def test_plots_bad_results_one_line(tmp_path):
    # inputs half-validated: KeyError, TypeError in imshow, ValueError, an empty figure with exit 0, '(AssertionError)'
    import dataclasses
    import plots
    from train import save_checkpoint
    good = dict(attn="infini", segment=16, lengths=[256, 512], depths=[0, 100], accuracy=[[1, 0.5], [0, None]])
    log = tmp_path / "nogates.jsonl"
    log.write_text(json.dumps({"step": 1, "loss": 3.0}) + "\n")
    cfg = make_config("tiny")
    sd = {k: v for k, v in Llama(cfg).state_dict().items() if k != "norm.weight"}
    save_checkpoint(str(tmp_path / "unfit.pt"), {"model": sd, "config": dataclasses.asdict(cfg)})
    cases = [
        (["passkey", "--metric", "exact"], good, "is not a passkey.py result (needs lengths, depths, exact)"),
        (["passkey"], dict(good, lengths=[]), "lengths and depths must be non-empty lists of numbers"),
        (["passkey"], dict(good, lengths=[256]), "its accuracy grid is not 1 rows (lengths) x 2 columns (depths)"),
        (["passkey"], dict(good, accuracy=["x", "y"]), "its accuracy grid is not 2 rows"),
        (["passkey"], dict(good, accuracy=[["x", 1], [0, 0]]), "its accuracy values must be numbers in [0, 1] or null"),
        (["passkey"], dict(good, partial=True), "is a partial passkey.py result (an interrupted run): finish it with"),
        (["recall"], [{k: v for k, v in recall_row().items() if k != "head_dim"}],
         "is not a recall.py result (row 0 lacks ['head_dim'])"),
        (["recall"], [], "is not a recall.py result (a non-empty JSON list of rows)"),
        (["recall"], [recall_row(acc="0.5")], "is not a recall.py result (row 0: ['acc'] must be numbers)"),
        (["recall"], good, "is not a recall.py result (a non-empty JSON list of rows)"),   # a passkey.py result
        (["recall"], [recall_row(n_pairs=4)], "nothing to plot"),
        (["streaming"], [1], "is not a bench.py --mode=stream result (row 0 lacks ['attn', 'length'])"),
        (["gate_trend", "--log", str(log)], None, f"error: {log} has no rows with both 'step' and 'gates'"),
        (["gates", "--ckpt", str(tmp_path / "unfit.pt")], None, "does not fit this model (missing ['norm.weight']"),
    ]
    for i, (cmd, content, expect) in enumerate(cases):
        path = tmp_path / f"in{i}.json"
        if content is not None:
            path.write_text(json.dumps(content))
            cmd = [cmd[0], "--json", str(path)] + cmd[1:]
        with pytest.raises(SystemExit) as e:
            plots.main(cmd + ["--out", str(tmp_path / "x.png")])
        msg = str(e.value)
        assert msg.startswith("error: ") and "\n" not in msg and expect in msg and "Error)" not in msg, msg
        assert content is None or str(path) in msg, msg
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.tmp"))
    # real rows plot (the keys asked for are the ones recall.py writes)
    path.write_text(json.dumps([recall_row(), *(recall_row(n_pairs=n, curriculum="2,4") for n in (2, 4))]))
    plots.main(["recall", "--json", str(path), "--out", str(tmp_path / "recall.png")])
    assert is_png(tmp_path / "recall.png")


def test_read_log_skips_a_cut_last_line_only(tmp_path, capsys):
    # a crash mid-write leaves half a last line: train.py's Log drops it; plots refused the whole log, citing
    # 'line 1 column 14' (the position within the line)
    import plots
    log = tmp_path / "log.jsonl"
    write_log(log, steps=3)
    n = len(log.read_text().splitlines())
    with open(log, "a") as f:
        f.write('{"step": 3, "loss": 4.')
    assert len(plots.read_log(str(log))) == n                  # every whole row
    assert f"warning: {log} line {n + 1} is cut short" in capsys.readouterr().err
    with open(log, "a") as f:
        f.write("\n" + json.dumps({"step": 3, "loss": 4.0}) + "\n")
    with pytest.raises(SystemExit) as e:
        plots.read_log(str(log))
    assert str(e.value).startswith(f"error: {log} line {n + 1} is not JSON ("), str(e.value)


def test_plots_write_failure_is_one_line(tmp_path, monkeypatch):
    import matplotlib.figure
    import plots
    log = tmp_path / "log.jsonl"
    write_log(log, steps=3)

    def full(self, fname, **kw):
        open(fname, "wb").write(b"\x89PNG")                 # half a file, then the disk is full
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    out = tmp_path / "g.png"
    with pytest.raises(SystemExit) as e:
        plots.main(["gate_trend", "--log", str(log), "--out", str(out)])
    assert str(e.value) == f"error: cannot write {out} (No space left on device)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]


def test_readme_commands_parse():
    # every `python X.py ...` line of the README's bash blocks is a command its script's parser accepts (a renamed
    # or removed flag fails here, not in a newcomer's first hour); parsing only, nothing runs
    import importlib
    import shlex
    readme = open(os.path.join(REPO, "README.md")).read()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            toks = shlex.split(line, comments=True)
            script = next((i for i, t in enumerate(toks) if t.endswith(".py")), None)
            if toks and toks[0] in ("python", "torchrun") and script is not None:
                cmds.append((toks[script], toks[script + 1:]))
    scripts = {s for s, _ in cmds}
    assert {"prepare_fineweb.py", "train.py", "finetune.py", "recall.py", "passkey.py", "plots.py"} <= scripts
    for script, argv in cmds:
        parser = importlib.import_module(script[:-3]).get_parser()
        try:
            parser.parse_args(argv)
        except SystemExit as e:
            raise AssertionError(f"README: {script} {' '.join(argv)} does not parse") from e
    # the bench.py commands quoted in the text: accepted by its checks too (all but the refusal to replace the
    # committed results they wrote, and the GPU), which run before any device time is spent
    import bench
    quoted = re.findall(r"`python bench\.py([^`]*)`", readme)
    assert len(quoted) >= 3
    for flags in quoted:
        args = bench.get_parser().parse_args(shlex.split(flags))
        args.overwrite = 1
        try:
            bench.check_args(args)
        except SystemExit as e:
            raise AssertionError(f"README: python bench.py{flags} is refused: {e}") from e


def test_default_outputs_go_to_out(tmp_path, monkeypatch):
    # the defaults wrote passkey.json and loss.png into the repo's root; they go to out/ (git-ignored), made when
    # needed; another missing folder is still refused; --random_init=1 is the bare flag (every flag takes =value)
    import plots
    monkeypatch.chdir(tmp_path)
    assert passkey.get_parser().parse_args(["--random_init=1"]).random_init == 1
    assert passkey.get_parser().parse_args(["--random_init"]).random_init == 1
    assert passkey.get_parser().parse_args([]).out == os.path.join("out", "passkey.json")
    write_log(tmp_path / "log.jsonl")
    plots.main(["loss", "--logs", str(tmp_path / "log.jsonl")])
    assert (tmp_path / "out" / "loss.png").is_file() and not (tmp_path / "loss.png").exists()
    with pytest.raises(SystemExit, match="does not exist"):
        plots.main(["loss", "--logs", str(tmp_path / "log.jsonl"), "--out", "elsewhere/loss.png"])
