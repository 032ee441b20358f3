"""
Figures from checkpoints, training logs (log.jsonl) and passkey results (passkey.json), as PNGs.

    python plots.py gates      --ckpt out/ckpt.pt --out out/gates.png          # or --log out/log.jsonl (last gates row)
    python plots.py gate_trend --log out/log.jsonl --out out/gate_trend.png
    python plots.py loss       --logs a/log.jsonl b/log.jsonl --labels infini local --out out/loss.png
    python plots.py passkey    --json a.json b.json --labels infini local --out out/passkey.png

log.jsonl rows: training rows {"step", "loss", "gates": [[g per head] per layer], ...}, validation rows
{"step", "val_loss", ...}; other rows are ignored. The gate g is the memory's weight in eq. 10 of P2:
A = g * A_mem + (1 - g) * A_dot, so g = 1 is a pure memory head and g = 0 a pure local head.
"""
import json
import os
import sys

import matplotlib
matplotlib.use("Agg")   # files only, no display needed (servers, CI)
import matplotlib.backend_bases
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

# -----------------------------------------------------------------------------
# inputs, each failing with one line that names the file

def read_log(path):
    """The rows of a log.jsonl file (blank lines skipped). A malformed last line is what a crash mid-write
    leaves (train.py's Log drops it too): skipped with a warning; anywhere else it is an error."""
    try:
        with open(path) as f:
            lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: cannot read log {path} ({type(e).__name__}: {e})")
    rows = []
    for n, line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError as e:   # (e's own position counts within the line: "line 1 column 14")
            if n != lines[-1][0]:
                raise SystemExit(f"error: {path} line {n} is not JSON ({e.msg} at column {e.colno})")
            print(f"warning: {path} line {n} is cut short (a crash mid-write?): skipped", file=sys.stderr)
    return [r for r in rows if isinstance(r, dict)]


def read_json(path, key="accuracy"):
    """A finished passkey.py result whose grid `key` fits its lengths x depths, or one line naming the file."""
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: cannot read {path} ({type(e).__name__}: {e})")
    if isinstance(d, dict) and d.get("partial"):
        raise SystemExit(f"error: {path} is a partial passkey.py result (an interrupted run): finish it with "
                         "passkey.py --resume=1 and the same flags")
    if not isinstance(d, dict) or not {"lengths", "depths", key} <= d.keys():
        raise SystemExit(f"error: {path} is not a passkey.py result (needs lengths, depths, {key})")

    def bad(why):
        raise SystemExit(f"error: {path} is not a usable passkey.py result: {why}")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    L, D, grid = d["lengths"], d["depths"], d[key]
    if not all(isinstance(x, list) and x and all(map(number, x)) for x in (L, D)) or min(L) <= 0:
        bad("lengths and depths must be non-empty lists of numbers (lengths positive)")
    if not (isinstance(grid, list) and len(grid) == len(L) and all(isinstance(r, list) and len(r) == len(D)
                                                                   for r in grid)):
        bad(f"its {key} grid is not {len(L)} rows (lengths) x {len(D)} columns (depths)")
    if not all(v is None or number(v) and 0 <= v <= 1 for r in grid for v in r):
        bad(f"its {key} values must be numbers in [0, 1] or null (oom)")
    if not (d.get("segment") is None or number(d["segment"]) and d["segment"] > 0):
        bad("its segment must be a positive number")
    return d


def read_rows(path, keys, what, numeric=()):
    """A JSON list of result rows (dicts holding keys, numbers under numeric), or one line naming the file and
    what is wrong."""
    try:
        with open(path) as f:
            rows = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: cannot read {path} ({type(e).__name__}: {e})")
    if not isinstance(rows, list) or not rows:
        raise SystemExit(f"error: {path} is not a {what} result (a non-empty JSON list of rows)")
    for i, r in enumerate(rows):
        missing = sorted(keys - r.keys() if isinstance(r, dict) else keys)
        if missing:
            raise SystemExit(f"error: {path} is not a {what} result (row {i} lacks {missing})")
        text = [k for k in numeric if not isinstance(r[k], (int, float)) or isinstance(r[k], bool)]
        if text:
            raise SystemExit(f"error: {path} is not a {what} result (row {i}: {text} must be numbers)")
    return rows


def gates_from_ckpt(path):
    """(n_layer, n_head) gate values of a checkpoint, through the model's own gate() so the formula
    (hard sigmoid or sigmoid) is never duplicated. Built on the meta device: no init, no memory."""
    import torch
    from model import Llama, LlamaConfig
    from passkey import load_weights
    from train import load_checkpoint
    ckpt = load_checkpoint(path)
    try:
        cfg = LlamaConfig(**ckpt["config"])
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: {path} has no usable model config ({type(e).__name__}: {e})")
    if cfg.attn != "infini":
        raise SystemExit(f"error: {path} is a '{cfg.attn}' model; only infini models have gates")
    with torch.device("meta"):
        model = Llama(cfg)
    load_weights(model, ckpt["model"], path, assign=True)
    return model.gates().numpy()


def gate_array(rows, path):
    """The 'gates' of log rows as one (rows, layer, head) array, or one line naming the file."""
    try:
        g = np.array([r["gates"] for r in rows], dtype=float)
    except (ValueError, TypeError):
        g = None
    if g is None or g.ndim != 3:
        raise SystemExit(f"error: {path}: the 'gates' of its rows are not numeric layer x head grids of one shape")
    return g


def gates_from_log(path):
    rows = [r for r in read_log(path) if r.get("gates")]
    if not rows:
        raise SystemExit(f"error: {path} has no rows with 'gates' (is it an infini run?)")
    return gate_array(rows[-1:], path)[0], rows[-1].get("step")

# -----------------------------------------------------------------------------
# figures

def plot_gates(g, title, out):
    """Heatmap layer x head (annotated) and the per-layer mean as bars."""
    L, H = g.shape
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(4 + 0.6 * H, 1.5 + 0.45 * L), width_ratios=[H, 3],
                                 sharey=True, constrained_layout=True)
    im = ax.imshow(g, cmap="coolwarm", vmin=0, vmax=1, aspect="auto")   # 0.5 (the init) is white
    for i in range(L):
        for j in range(H):
            ax.text(j, i, f"{g[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set(xlabel="head", ylabel="layer", xticks=range(H), yticks=range(L), title=title)
    bx.barh(range(L), g.mean(1), color=plt.get_cmap("coolwarm")(g.mean(1)))
    bx.axvline(0.5, color="grey", ls=":", lw=1)
    bx.set(xlim=(0, 1), xlabel="mean gate", title=f"all: {g.mean():.3f}")
    fig.colorbar(im, ax=bx, label="gate g (1 = memory, 0 = local)")
    save(fig, out)


def plot_gate_trend(rows, title, out, path="the log"):
    """Per-layer mean gate against training step, one line per layer plus the overall mean."""
    rows = [r for r in rows if r.get("gates") and "step" in r]
    if not rows:
        raise SystemExit(f"error: {path} has no rows with both 'step' and 'gates' (is it an infini run?)")
    steps = [r["step"] for r in rows]
    g = gate_array(rows, path)                                       # (rows, layer, head)
    per_layer = g.mean(2)
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    for i in range(per_layer.shape[1]):
        ax.plot(steps, per_layer[:, i], color=cmap(i / max(per_layer.shape[1] - 1, 1)), lw=1.2, label=f"layer {i}")
    ax.plot(steps, g.mean((1, 2)), color="black", ls="--", lw=2, label="all layers")
    ax.set(xlabel="step", ylabel="mean gate g over heads", ylim=(-0.02, 1.02), title=title)
    ax.legend(fontsize=7, ncol=2 if per_layer.shape[1] > 8 else 1, loc="best")
    ax.grid(alpha=0.3)
    save(fig, out)


def plot_loss(logs, labels, out, title="loss"):
    """Train loss as lines, validation loss as markers of the same colour, runs on one axis."""
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    plotted = False
    for i, (rows, label) in enumerate(zip(logs, labels)):
        c = f"C{i}"
        tr = [(r["step"], r["loss"]) for r in rows if "step" in r and "loss" in r]
        va = [(r["step"], r["val_loss"]) for r in rows if "step" in r and "val_loss" in r]
        if tr:
            ax.plot(*zip(*tr), color=c, lw=1, alpha=0.8, label=f"{label} train")
        # finetune.py logs (their args name an --init) validate on the answer tokens only, not on all tokens
        answers = any(isinstance(r.get("args"), dict) and "init" in r["args"] for r in rows)
        if va:
            ax.plot(*zip(*va), color=c, ls="none", marker="^" if answers else "o", ms=5, mec="black",
                    label=f"{label} val" + (" (answer tokens)" if answers else ""))
        plotted |= bool(tr or va)
    if not plotted:
        raise SystemExit("error: no rows with 'step' and 'loss' or 'val_loss' in the logs")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    save(fig, out)


def _grid(d, key="accuracy"):
    """Accuracy grid as a float array, NaN where the cell is None (oom)."""
    return np.array([[np.nan if v is None else v for v in row] for row in d[key]], dtype=float)


def _heatmap(ax, a, lengths, depths, cmap, vmin, vmax, title, fmt="{:.2f}"):
    cm = plt.get_cmap(cmap).with_extremes(bad="lightgrey")            # oom cells in grey
    im = ax.imshow(np.ma.masked_invalid(a), cmap=cm, vmin=vmin, vmax=vmax, aspect="auto")
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            v = a[i, j]
            dark = cmap == "viridis" and v < 0.45                     # white text on the dark end of viridis
            ax.text(j, i, "oom" if np.isnan(v) else fmt.format(v), ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    ax.set(xticks=range(len(depths)), xticklabels=depths, yticks=range(len(lengths)), yticklabels=lengths,
           xlabel="needle depth (%)", ylabel="prompt length (tokens)", title=title)
    return im


def plot_passkey(results, labels, out, key="accuracy"):
    """One heatmap (length x depth) per model on a shared 0-1 scale, a difference panel (model 1 -
    model 2) on the cells both share, and accuracy (mean over depths) against memory compressions."""
    n = len(results)
    ncols = n + (n >= 2) + 1
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 4.2), constrained_layout=True)
    for ax, d, label in zip(axes, results, labels):
        attn = d.get("attn", "?")
        im = _heatmap(ax, _grid(d, key), d["lengths"], d["depths"], "viridis", 0, 1,
                      label if label == attn else f"{label} ({attn})")
    fig.colorbar(im, ax=axes[:n], label=f"passkey {key}", shrink=0.85)
    if n >= 2:
        a, b = results[0], results[1]
        Ls = [L for L in a["lengths"] if L in b["lengths"]]
        Ds = [x for x in a["depths"] if x in b["depths"]]
        if Ls and Ds:
            pick = lambda d: _grid(d, key)[np.ix_([d["lengths"].index(L) for L in Ls], [d["depths"].index(x) for x in Ds])]
            diff = pick(a) - pick(b)
            im = _heatmap(axes[n], diff, Ls, Ds, "RdBu", -1, 1, f"{labels[0]} - {labels[1]}", fmt="{:+.2f}")
            fig.colorbar(im, ax=axes[n], label="accuracy difference", shrink=0.85)
        else:
            axes[n].set_axis_off()
            axes[n].set_title("no common cells to compare")
    ax = axes[-1]
    for i, (d, label) in enumerate(zip(results, labels)):
        seg = d.get("segment") or 1
        x = [L / seg for L in d["lengths"]]
        y = [np.nan if np.isnan(r).all() else np.nanmean(r) for r in _grid(d, key)]   # oom rows: gap
        ax.plot(x, y, marker="o", color=f"C{i}", label=f"{label} (segment {seg})")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set(xlabel="compressions (length / segment)", ylabel=f"{key}, mean over depths",
           ylim=(-0.02, 1.02), title="accuracy vs compressions")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save(fig, out)


def plot_streaming(rows, out):
    """bench.py --mode=stream rows {attn, length, peak_gb, tok_s}: peak memory and prefill speed vs length."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for attn in sorted({r["attn"] for r in rows}):
        rs = sorted((r for r in rows if r["attn"] == attn and None not in (r.get("peak_gb"), r.get("tok_s"))),
                    key=lambda r: r["length"])
        L = [r["length"] for r in rs]
        a1.plot(L, [r["peak_gb"] for r in rs], "o-", label=attn)
        a2.plot(L, [r["tok_s"] / 1e3 for r in rs], "o-", label=attn)
    for ax, ylabel, title in [(a1, "peak GPU memory (GB)", "memory"), (a2, "prefill tokens/s (thousands)", "speed")]:
        ax.set(xscale="log", xlabel="prompt length (tokens)", ylabel=ylabel, title=f"streaming prefill: {title}")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save(fig, out)


# the keys plot_recall reads from every row
RECALL_KEYS = {"name", "attn", "n_pairs", "curriculum", "head_dim", "acc", "acc_by_distance", "chance"}


def plot_recall(rows, out, title="recall"):
    """recall.py rows: accuracy against distance for every one-pair variant (a line each), and accuracy
    against n_pairs (the memory's capacity) for the infini variants trained with the curriculum."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for r in rows:
        if r["n_pairs"] != 1:
            continue
        d = [i + 1 for i, v in enumerate(r["acc_by_distance"]) if v is not None]
        a1.plot(d, [v for v in r["acc_by_distance"] if v is not None], "o-", ms=3,
                label=f"{r['name']} (hd {r['head_dim']}): {r['acc']:.2f}")
    caps = {}
    for r in rows:
        if r["attn"] == "infini" and r["curriculum"]:
            caps.setdefault((r["name"], r["head_dim"], r.get("lr")), []).append((r["n_pairs"], r["acc"]))
    for (name, hd, lr), pts in sorted(caps.items(), key=lambda kv: str(kv[0])):
        if len(pts) > 1:
            a2.plot(*zip(*sorted(pts)), "o-", label=f"{name}, head dim {hd}")
    for ax in (a1, a2):
        if rows:
            ax.axhline(rows[0]["chance"], color="grey", ls=":", lw=1, label="chance")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    a1.set(xlabel="segments between the pair and its query", ylabel="accuracy", title=f"{title}: one pair, by distance")
    a2.set(xscale="log", xlabel="pairs per sequence (n_pairs)", ylabel="accuracy", title=f"{title}: capacity (curriculum)")
    save(fig, out)


def image_format(out):
    """The file type savefig writes for out: its extension (png without one), or one line if matplotlib has none."""
    fmt = os.path.splitext(out)[1][1:].lower() or "png"
    known = matplotlib.backend_bases.FigureCanvasBase.get_supported_filetypes()
    if fmt not in known:
        raise SystemExit(f"error: --out {out}: matplotlib cannot write .{fmt} files (use one of: {', '.join(sorted(known))})")
    return fmt


def save(fig, out):
    # to a temporary name first: Ctrl-C mid-write never leaves a truncated figure under the real name
    from prepare_fineweb import out_folder
    tmp = out + ".tmp"
    try:
        out_folder(out)
        fig.savefig(tmp, dpi=130, format=image_format(out))
        os.replace(tmp, out)
    except OSError as e:                           # disk full, permissions: one line, no half file left
        if os.path.exists(tmp):
            os.remove(tmp)
        raise SystemExit(f"error: cannot write {out} ({e.strerror or e})")
    finally:
        plt.close(fig)
    print(f"wrote {out}")

# -----------------------------------------------------------------------------

def get_parser():
    from prepare_fineweb import ArgumentParser
    p = ArgumentParser(description="Figures for infini-llama runs (PNG).")
    sub = p.add_subparsers(dest="cmd", required=True)             # (its parsers are ArgumentParsers too)
    s = sub.add_parser("gates", help="gate heatmap layer x head + per-layer mean")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="checkpoint (.pt)")
    src.add_argument("--log", help="log.jsonl (its last row with gates)")
    s.add_argument("--out", default="out/gates.png", help="PNG to write")
    s = sub.add_parser("gate_trend", help="per-layer mean gate over training steps")
    s.add_argument("--log", required=True, help="train.py's log.jsonl")
    s.add_argument("--out", default="out/gate_trend.png", help="PNG to write")
    s = sub.add_parser("loss", help="train / val loss of several runs")
    s.add_argument("--logs", nargs="+", required=True, help="log.jsonl files")
    s.add_argument("--labels", nargs="+", help="one name per log (default: the log's folder)")
    s.add_argument("--out", default="out/loss.png", help="PNG to write")
    s = sub.add_parser("passkey", help="passkey accuracy heatmaps, difference, accuracy vs compressions")
    s.add_argument("--json", nargs="+", required=True, help="passkey.py results")
    s.add_argument("--labels", nargs="+", help="one name per result (default: the file's folder)")
    s.add_argument("--metric", default="accuracy", choices=["accuracy", "exact"], help="which score to plot")
    s.add_argument("--out", default="out/passkey.png", help="PNG to write")
    s = sub.add_parser("recall", help="recall.py: accuracy vs distance and vs number of pairs")
    s.add_argument("--json", nargs="+", required=True, help="recall.py's JSON lists of rows (rows of the second "
                   "file on are labelled with its name)")
    s.add_argument("--out", default="out/recall.png", help="PNG to write")
    s = sub.add_parser("streaming", help="bench.py --mode=stream: peak memory and prefill speed vs length")
    s.add_argument("--json", required=True, help="bench.py's streaming JSON")
    s.add_argument("--out", default="out/streaming.png", help="PNG to write")
    for s in sub.choices.values():
        s.add_argument("--overwrite", type=int, default=0, choices=(0, 1), help="1 = replace an existing --out")
    return p


def main(argv=None):
    from prepare_fineweb import check_out_file
    p = get_parser()
    args = p.parse_args(argv)
    image_format(args.out)
    check_out_file(args.out)                       # not a folder, and its folder exists (as in passkey.py)
    if os.path.exists(args.out) and not args.overwrite:
        raise SystemExit(f"error: {args.out} exists; pass another --out or --overwrite=1 to replace it")
    for flag in ("json", "logs", "log"):           # the input files exist (a --ckpt: load_checkpoint says so)
        value = getattr(args, flag, None)
        for path in [value] if isinstance(value, str) else value or []:
            if not os.path.isfile(path):
                raise SystemExit(f"error: --{flag} {path} " + ("is a folder, not a file" if os.path.isdir(path)
                                                               else "does not exist"))

    def labels_for(paths):
        if args.labels and len(args.labels) != len(paths):
            p.error(f"--labels needs {len(paths)} names, got {len(args.labels)}")
        return args.labels or [os.path.basename(os.path.dirname(os.path.abspath(x))) or x for x in paths]

    if args.cmd == "gates":
        if args.ckpt:
            plot_gates(gates_from_ckpt(args.ckpt), f"memory gates: {args.ckpt}", args.out)
        else:
            g, step = gates_from_log(args.log)
            plot_gates(g, f"memory gates: {args.log} (step {step})", args.out)
    elif args.cmd == "gate_trend":
        plot_gate_trend(read_log(args.log), f"memory gate per layer: {args.log}", args.out, args.log)
    elif args.cmd == "loss":
        plot_loss([read_log(x) for x in args.logs], labels_for(args.logs), args.out)
    elif args.cmd == "passkey":
        plot_passkey([read_json(x, args.metric) for x in args.json], labels_for(args.json), args.out, args.metric)
    elif args.cmd == "recall":
        rows = []
        for i, path in enumerate(args.json):
            part = read_rows(path, RECALL_KEYS, "recall.py", numeric=("n_pairs", "acc", "chance"))
            tag = f" [{os.path.splitext(os.path.basename(path))[0]}]" if i else ""
            rows += [dict(r, name=f"{r['name']}{tag}") for r in part]
        if not any(r["n_pairs"] == 1 or r["attn"] == "infini" and r["curriculum"] for r in rows):
            raise SystemExit(f"error: nothing to plot in {' '.join(args.json)}: no one-pair rows, and no infini "
                             "rows trained with a curriculum")
        plot_recall(rows, args.out, os.path.basename(args.json[0]))
    elif args.cmd == "streaming":
        plot_streaming(read_rows(args.json, {"attn", "length"}, "bench.py --mode=stream"), args.out)


if __name__ == "__main__":
    main()
