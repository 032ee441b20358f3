"""
CPU tests for bench.py (the GPU measurements): what runs without a GPU, i.e. its flags, its error rows and its
check's pass mark. python -m pytest -q test_bench.py
"""
import json
import os
import subprocess
import sys

import pytest

import bench

REPO = os.path.dirname(os.path.abspath(__file__))


def run(*args):
    """bench.py run as a user would; the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, os.path.join(REPO, "bench.py"), *args], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)


def test_bench_unknown_variant_one_line():
    # checked before anything else, so a typo costs no GPU time (and never silently runs another path)
    r = run("--mode=train", "--variants", "local", "infini-linear-fasttorch")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: unknown variant 'infini-linear-fasttorch'"), r.stderr


def test_bench_flag_errors_before_the_gpu_check():
    # a bad flag is reported as such, not as "no GPU" on a CPU machine (nor as a KeyError on a GPU one)
    r = run("--mode=foo")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: unknown --mode 'foo'"), r.stderr
    for argv, expect in [(["--mode=train,"], "unknown --mode ''"), (["--profile=infini-foo"], "(--profile, or none)"),
                         (["--variants", "loc"], "unknown variant 'loc'")]:
        with pytest.raises(SystemExit) as e:
            bench.check_args(bench.get_parser().parse_args(argv))
        assert str(e.value).startswith("error:") and expect in str(e.value), (argv, e.value)
    bench.check_args(bench.get_parser().parse_args(["--mode=check,stream", "--profile=none"]))   # good flags pass


def test_bench_train_mode_survives_every_variant_failing(monkeypatch, tmp_path):
    # a T at which no variant builds (e.g. out of memory) is recorded and the run goes on to the next T
    def fail(*a, **k):
        raise RuntimeError("boom")
    monkeypatch.setattr(bench, "train_setup", fail)
    args = bench.get_parser().parse_args(["--mode=train", "--Ts", "64", "128", "--variants", "local",
                                          "--out_dir", str(tmp_path)])
    args.tag = "t"
    rows = bench.train_throughput(args)
    assert [(r["T"], r["error"]) for r in rows] == [(64, "RuntimeError: boom"), (128, "RuntimeError: boom")]
    assert json.load(open(tmp_path / "bench_t.json")) == rows


def test_bench_check_pass_mark():
    # the GPU check's verdict on the fast path, from the H200's numbers (check_h200_final.json): they pass; an
    # output 10 % further from float64 than the spec path, a NaN or a gradient off by 1e-2 fail
    plain = dict(finite=True, rel_err_out=4.61e-3, rel_err_M=3.46e-3, rel_err_z=4.30e-5)
    fast = dict(finite=True, rel_err_out=4.59e-3, rel_err_M=3.14e-3, rel_err_z=4.30e-5,
                grad_rel_err_vs_plain=dict(x=2.2e-3, wqkv=2.2e-3, wo=1.8e-3, beta=5.8e-4))
    assert bench.check_passes(fast, plain)
    assert not bench.check_passes(dict(fast, rel_err_out=5.1e-3), plain)
    assert not bench.check_passes(dict(fast, finite=False), plain)
    assert not bench.check_passes(dict(fast, grad_rel_err_vs_plain=dict(x=1e-2)), plain)
    assert not bench.check_passes(dict(fast, grad_rel_err_vs_plain=dict(x=1e-3, beta=float("nan"))), plain)


def test_bench_rounds_must_divide_steps_one_line():
    # train mode splits --steps into --rounds interleaved rounds: a count that does not divide them would time
    # fewer steps than asked, silently
    for bad in (["--steps", "8", "--rounds", "5"], ["--rounds", "0"]):
        assert "rounds" not in run("--mode=stream", *bad).stderr     # (only train mode has rounds)
        r = run("--mode=train", *bad)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("error: --rounds must be at least 1 and divide --steps"), r.stderr


def test_bench_flags_that_failed_only_on_the_gpu_one_line(tmp_path):
    # each passed check_args and failed after device time was spent (a traceback in stream(), a batch of 0, a
    # ZeroDivisionError, model.py's "chunk that ended mid-segment", an out_dir found bad at the first row)
    (tmp_path / "f").write_text("")
    out = f"--out_dir={tmp_path}"
    for argv, expect in [(["--model=huge", out], "unknown model preset 'huge'"),
                         (["--segment=0", out], "segment must be a positive integer, got 0"),
                         (["--segment=-4", out], "got -4"), (["--mode=check,check", out], "names a mode twice"),
                         (["--mode=train", "--Ts", "8192", "1000", out], "every --Ts must be a positive multiple of --segment (1024)"),
                         (["--mode=layer", "--Ts", "0", out], "positive multiple"),
                         (["--mode=train", "--tokens", "8192", out], "--tokens (8192) must be at least the longest --Ts (32768)"),
                         (["--mode=train", "--steps", "0", out], "--steps of at least 1"),
                         (["--mode=stream", "--chunk", "1000", out], "--chunk (1000) must be a positive multiple of --segment (1024)"),
                         (["--mode=stream", "--lengths", "8192", "0", out], "every --lengths must be positive"),
                         ([f"--out_dir={tmp_path / 'f'}"], "is a file, not a folder"),
                         ([f"--out_dir={tmp_path / 'f' / 'sub'}"], "cannot be written")]:
        with pytest.raises(SystemExit) as e:
            bench.check_args(bench.get_parser().parse_args(argv))
        assert str(e.value).startswith("error:") and "\n" not in str(e.value) and expect in str(e.value), (argv, e.value)
    bench.check_args(bench.get_parser().parse_args(["--mode=stream", "--chunk", "2048", "--lengths", "1", out]))


def test_bench_never_overwrites_without_asking(tmp_path):
    # the default was results/: a plain `python bench.py` replaced the committed check_h100.json, bench_h100.json...
    args = bench.get_parser().parse_args([])
    assert args.out_dir == "out/bench" and args.overwrite == 0
    if os.path.isdir(os.path.join(REPO, ".git")):          # (a copy of the tree without git: nothing to ask)
        assert subprocess.run(["git", "check-ignore", "-q", "out/bench/check_h100.json"], cwd=REPO).returncode == 0
    out = ["--tag=t", f"--out_dir={tmp_path}"]
    (tmp_path / "check_t.json").write_text("[]")
    (tmp_path / "profile_infini-linear-fast_8192.txt").write_text("")
    for argv, expect in [(["--mode=stream,check"], "check_t.json exists; pass another --out_dir or --tag, or --overwrite=1"),
                         (["--mode=train"], "profile_infini-linear-fast_8192.txt exists")]:
        with pytest.raises(SystemExit) as e:
            bench.check_args(bench.get_parser().parse_args(argv + out))
        assert str(e.value).startswith("error:") and expect in str(e.value), (argv, e.value)
        bench.check_args(bench.get_parser().parse_args(argv + out + ["--overwrite=1"]))
    for ok in (["--mode=stream"], ["--mode=train", "--profile=none"], ["--mode=check", "--tag=u"]):
        bench.check_args(bench.get_parser().parse_args(out + ok))       # files this run does not write
    assert (tmp_path / "check_t.json").read_text() == "[]"
