"""The answer loss of a model that knows how keys are drawn but not which key it is: the entropy of the
answer " {k}." per token under finetune.py's key distribution (passkey.random_key: 4, 5 or 6 digits drawn
uniformly, then a uniform key of that many digits, redrawn until it is on the fine-tuning side of the
split). Exact, by enumerating every key: H(key) = sum_n P(n) (log A_n - log P(n)) nats, spread over the
expected number of answer tokens (the tokenisation is one-to-one, and "." costs nothing). A needle
fine-tune whose answer val_loss stays at or above this has learnt the format, not the key.

    TIKTOKEN_CACHE_DIR=../shared/data/tiktoken_cache python results/answer_entropy.py   # ~15 s: 3.67, 3.66
"""
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import passkey  # noqa: E402
from prepare_fineweb import gpt2_encoding  # noqa: E402

enc = gpt2_encoding()
dot = len(enc.encode("."))


def side(is_eval):
    """P(n) and A_n (keys per digit count) of one side of the split, and its mean answer tokens per n."""
    A, toks = {}, {}
    for n in (4, 5, 6):
        keys = [k for k in range(10 ** (n - 1), 10 ** n) if passkey.is_eval_key(k) == is_eval]
        A[n], toks[n] = len(keys), sum(len(enc.encode(f" {k}")) for k in keys) / len(keys) + dot
    # rejection sampling redraws the digit count too: P(n) is proportional to the share of n-digit keys kept
    w = {n: A[n] / (9 * 10 ** (n - 1)) for n in A}
    return {n: w[n] / sum(w.values()) for n in A}, A, toks


P, A, toks = side(False)
H, T = sum(P[n] * (math.log(A[n]) - math.log(P[n])) for n in A), sum(P[n] * toks[n] for n in A)
print(f"fine-tuning keys: {H:.2f} nats a key over {T:.3f} tokens = {H / T:.3f} nats per answer token")
# val_loss uses evaluation keys, which a model cannot tell from fine-tuning keys: its best guess still gives
# every n-digit key P(n) / A_n, so the yardstick for val_loss is that guess's loss on evaluation keys
Pe, _, te = side(True)
CE, Te = sum(Pe[n] * (math.log(A[n]) - math.log(P[n])) for n in A), sum(Pe[n] * te[n] for n in A)
print(f"evaluation keys, scored by that guess: {CE:.2f} nats a key over {Te:.3f} tokens = {CE / Te:.3f} nats per answer token")
