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
