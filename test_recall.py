"""
CPU tests for recall.py: the task's layout, and the behaviour the project exists to show — the memory
carries a key->value pair across a segment boundary, where local attention cannot see it.
    python -m pytest -q test_recall.py
"""
import json

import numpy as np
import pytest
import torch

import recall

torch.set_num_threads(2)


def test_task_layout():
    args = recall.get_parser().parse_args(["--segments=4", "--segment=16", "--n_pairs=3", "--device=cpu"])
    recall.check_args(args)
    F, K, V, _ = recall.vocab(args)
    x, y, dist = recall.make_batch(np.random.default_rng(0), 8, 4, args)
    assert x.shape == y.shape == dist.shape == (8, 64)
    for r in range(8):
        ask = np.flatnonzero(y[r] >= 0)
        assert len(ask) == 3 and (ask >= 48).all()                     # queries: the last segment only
        for t in ask:
            k, v = x[r, t], y[r, t]
            assert F <= k < F + K and F + K <= v < F + K + V and x[r, t + 1] == v
            w = [p for p in np.flatnonzero(x[r, :48] == k)]                # written once, earlier, as "k v"
            assert len(w) == 1 and x[r, w[0] + 1] == v and w[0] // 16 == w[0] // 16 + 0
            assert dist[r, t] == 4 - 2 - w[0] // 16                        # d = segments back - 1
        assert (x[r][y[r] < 0] < F + K + V).all()
    assert recall.stage_segments(0, args) == 4
    args = recall.get_parser().parse_args(["--segments=8", "--curriculum=2,4", "--steps=30", "--device=cpu"])
    recall.check_args(args)
    assert [recall.stage_segments(s, args) for s in (0, 9, 10, 19, 20, 29)] == [2, 2, 4, 4, 8, 8]


def run(tmp_path, attn):
    out = tmp_path / "recall.json"
    recall.main([f"--attn={attn}", "--device=cpu", "--segments=2", "--segment=16", "--n_embd=64", "--n_head=2",
                 "--n_values=16", "--steps=250", "--batch_size=32", "--lr=3e-3", "--eval_rows=256",
                 "--log_every=50", f"--out_dir={tmp_path / attn}", f"--out={out}"])
    return json.load(open(out))[-1]


def test_memory_recalls_across_a_segment_boundary_local_cannot(tmp_path):
    """Seeded: the pair sits in segment 0, the query in segment 1. Infini-attention (delta rule) must answer
    from its memory (>= 0.9); local attention, identical but for the memory, stays near chance (1/16)."""
    infini = run(tmp_path, "infini")
    local = run(tmp_path, "local")
    assert infini["acc"] >= 0.9, infini
    assert local["acc"] <= 2 * local["chance"], local
    rows = json.load(open(tmp_path / "recall.json"))
    assert [r["attn"] for r in rows] == ["infini", "local"]                # appended, nothing overwritten
    assert {"attn", "update", "gate", "segments", "segment", "head_dim", "n_pairs", "curriculum", "steps", "acc",
            "acc_by_distance", "chance"} <= rows[0].keys() and len(rows[0]["acc_by_distance"]) == 1
    import plots
    plots.main(["recall", "--json", str(tmp_path / "recall.json"), "--out", str(tmp_path / "recall.png")])
    assert (tmp_path / "recall.png").stat().st_size > 10_000


def test_bad_input_one_line():
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.abspath(__file__))
    for flags, expect in [(["--segments=1"], "must be >= 2"), (["--curriculum=2,x"], "comma list"),
                          (["--n_pairs=65", "--segment=128"], "--n_pairs (65) must fit"),
                          (["--n_head=3"], "divisible"), (["--step=10"], "unrecognized arguments")]:
        r = subprocess.run([sys.executable, os.path.join(repo, "recall.py"), "--device=cpu", *flags], cwd=repo,
                           capture_output=True, text=True, timeout=60, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode != 0 and "Traceback" not in r.stderr and expect in r.stderr, (flags, r.stderr)


def test_bad_out_refused_before_training(tmp_path, monkeypatch):
    # a bad --out is said before the training, not after it; a missing folder is refused as passkey.py does
    monkeypatch.setattr(recall.train, "train", lambda *a, **k: pytest.fail("trained before checking --out"))
    (tmp_path / "notes.md").write_text("# not JSON")
    flags = ["--device=cpu", "--segments=2", "--segment=16", "--n_embd=64", "--n_head=2", "--steps=2",
             f"--out_dir={tmp_path / 'run'}"]
    for out, expect in [("notes.md", "notes.md exists but is not a JSON list of recall rows"),
                        ("nodir/r.json", f"the folder of --out ({tmp_path / 'nodir'}) does not exist"),
                        ("", "is a folder; give a file name")]:
        with pytest.raises(SystemExit) as e:
            recall.main(flags + [f"--out={tmp_path / out}"])
        assert str(e.value).startswith("error:") and "\n" not in str(e.value) and expect in str(e.value), e.value
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.md"]      # nothing made, nothing left


def test_cpu_example_and_default_write_under_out():
    # results/ holds the committed measurements: neither the help's CPU line nor the default writes there
    import os
    line = next(l.strip() for l in recall.__doc__.splitlines() if l.strip().startswith("python recall.py --device=cpu"))
    assert "--out=out/" in line, line
    readme = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")
    assert line in open(readme).read()                                     # the README's CPU line is the same
    args = recall.get_parser().parse_args(["--device=cpu"])
    recall.check_args(args)
    assert args.out == os.path.join("out", "recall_cpu.json")


def test_resumed_finished_run_appends_no_second_row(tmp_path, capsys):
    # re-running a finished run with --resume=1 (as the error of a plain re-run suggests) used to append its row twice
    flags = ["--device=cpu", "--segments=2", "--segment=16", "--n_embd=32", "--n_head=2", "--n_values=16",
             "--steps=3", "--batch_size=4", "--eval_rows=8", f"--out_dir={tmp_path / 'run'}", f"--out={tmp_path / 'r.json'}"]
    recall.main(flags)
    with pytest.raises(SystemExit) as e:                          # a plain re-run: the checkpoint is not overwritten
        recall.main(flags)
    assert "pass --resume=1" in str(e.value)
    recall.main(flags + ["--resume=1"])
    assert "already holds this run's row: nothing appended" in capsys.readouterr().out
    assert len(json.load(open(tmp_path / "r.json"))) == 1


def test_default_run_on_the_cpu_warns(capsys):
    args = recall.get_parser().parse_args(["--device=cpu"])
    recall.check_args(args)
    assert "take hours; for a quick CPU run use the CPU line of --help" in capsys.readouterr().err


TINY = ["--device=cpu", "--segments=2", "--segment=16", "--n_embd=32", "--n_head=2", "--n_values=16", "--steps=3",
        "--batch_size=4", "--eval_rows=8"]


def test_bad_numbers_curriculum_and_dtype_one_line(tmp_path, monkeypatch, capsys):
    # each used to run (or die in a ZeroDivisionError): --lr=0, --log_every=0, an LR that climbs to min_lr, a negative
    # rate, a repeated or shrinking curriculum labelled "+curriculum", and float16 silently run as float32
    monkeypatch.setattr(recall.train, "train", lambda *a, **k: pytest.fail("trained with a bad flag"))
    for flags, expect in [(["--lr=0"], "--lr must be positive"), (["--log_every=0"], "--log_every must be positive"),
                          (["--min_lr=1", "--lr=3e-3"], "--min_lr (1.0) must be in (0, --lr (0.003)]"),
                          (["--beta_lr=-1"], "--beta_lr must be at least 0"), (["--warmup=-1"], "--warmup must be at least 0"),
                          (["--weight_decay=-0.1"], "--weight_decay must be at least 0"),
                          (["--segments=16", "--curriculum=2,2"], "stages must increase and stay below --segments (16)"),
                          (["--segments=16", "--curriculum=8,4"], "got '8,4'"),
                          (["--segments=16", "--curriculum=4,16"], "stay below --segments")]:
        with pytest.raises(SystemExit) as e:
            recall.main(TINY + flags + [f"--out_dir={tmp_path / 'run'}", f"--out={tmp_path / 'r.json'}"])
        assert str(e.value).startswith("error:") and "\n" not in str(e.value) and expect in str(e.value), (flags, e.value)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        recall.main(TINY + ["--dtype=float16"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "--dtype: invalid choice: 'float16'" in err, err
    assert not (tmp_path / "run").exists()


def test_default_out_dir_is_per_run(tmp_path, monkeypatch):
    # the README's CPU line, then the same with another --steps or --seed: each used to be refused ("ckpt.pt exists")
    # since the default out_dir ignored those flags, and --resume=1 too (they differ from the saved ones)
    monkeypatch.chdir(tmp_path)
    for extra in ([], ["--steps=4"], ["--seed=3"]):
        recall.main(TINY + extra + ["--out=r.json"])
    dirs = sorted(p.name for p in (tmp_path / "out" / "recall").iterdir())
    assert len(dirs) == 3 and all(d.startswith("infini-delta-s2x16-p1-hd16-") and len(d.split("-")[-1]) == 8 for d in dirs)
    parse = lambda flags: recall.default_out_dir(vars(recall.get_parser().parse_args(TINY + flags)), 16)
    assert parse([]) == parse(["--log_every=7", "--resume=1", "--name=x"]) != parse(["--n_keys=64"])   # only run flags
    # the same run with another --name (a label of its row) and --resume=1 finds its folder: finished, nothing to do
    recall.main(TINY + ["--out=r.json", "--name=mine", "--resume=1"])
    assert len(list((tmp_path / "out" / "recall").iterdir())) == 3


def test_progress_and_signal_during_evaluation(tmp_path, monkeypatch):
    # Ctrl-C after training, during the evaluation (minutes with a large --eval_rows), printed a KeyboardInterrupt
    # traceback; now one line that says the checkpoint is kept. The evaluation shows a progress bar (with an ETA).
    import signal
    import tqdm
    seen = []

    class Bar:                                   # records what accuracy tells tqdm
        def __init__(self, total, **kw):
            seen.append(total)

        def update(self, n):
            seen.append(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass
    monkeypatch.setattr(tqdm, "tqdm", Bar)
    monkeypatch.setattr(recall.train, "train", lambda *a, **k: None)
    flags = TINY + [f"--out_dir={tmp_path / 'run'}", f"--out={tmp_path / 'r.json'}"]
    recall.main(flags + ["--eval_rows=10"])
    assert seen == [10, 4, 4, 2]
    make_batch = recall.make_batch

    def interrupted(*a):
        signal.raise_signal(signal.SIGINT)
        return make_batch(*a)
    monkeypatch.setattr(recall, "make_batch", interrupted)
    before = signal.getsignal(signal.SIGINT)               # (whatever the test runner installed)
    with pytest.raises(SystemExit) as e:
        try:
            recall.main(flags)
        except KeyboardInterrupt:
            pytest.fail("KeyboardInterrupt (a traceback) instead of one line")
    assert str(e.value) == (f"stopped by SIGINT during the evaluation: the trained checkpoint {tmp_path / 'run' / 'ckpt.pt'} "
                            "is saved; the same command plus --resume=1 evaluates it")
    assert signal.getsignal(signal.SIGINT) is before                             # restored
