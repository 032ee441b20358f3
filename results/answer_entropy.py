"""The answer loss of a model that knows how keys are drawn but not which key this is: the entropy of the
answer " {k}." per token, each token given the answer tokens before it, under finetune.py's key
distribution (passkey.random_key: 4, 5 or 6 digits, the fine-tuning side of the split). A needle
fine-tune whose answer val_loss stays above this has learnt the format, not the key.

    TIKTOKEN_CACHE_DIR=../shared/data/tiktoken_cache python results/answer_entropy.py   # 3.34 nats, 3.38 tokens
"""
import collections
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import passkey  # noqa: E402
from prepare_fineweb import gpt2_encoding  # noqa: E402

enc = gpt2_encoding()
rng = np.random.default_rng(0)
answers = [tuple(enc.encode(f" {passkey.random_key(rng)}") + enc.encode(".")) for _ in range(200_000)]
counts = collections.defaultdict(collections.Counter)    # answer prefix -> next-token counts
for a in answers:
    for i in range(len(a)):
        counts[a[:i]][a[i]] += 1
nll = [-math.log(counts[a[:i]][a[i]] / sum(counts[a[:i]].values())) for a in answers for i in range(len(a))]
print(f"{sum(nll) / len(nll):.2f} nats per answer token ({len(nll) / len(answers):.2f} tokens per answer, "
      f"{len(answers)} keys sampled)")
