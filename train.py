"""train.py (work in progress): checkpoint I/O shared by train.py, finetune.py and passkey.py."""
import os
import torch


def save_checkpoint(path, state):
    """Atomic: write path.tmp, fsync, rename. A crash mid-write never leaves a half file at path."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu"):
    """The checkpoint dict, or SystemExit with one line naming the file if it is missing or corrupt.
    Format: {"model": state_dict of an uncompiled Llama, "config": dataclasses.asdict(LlamaConfig), ...}."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise SystemExit(f"error: checkpoint {path} is unreadable or corrupt ({type(e).__name__})")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise SystemExit(f"error: {path} is not a checkpoint of this project (no 'model'/'config')")
    return ckpt
