"""prepare_fineweb.py (work in progress): the GPT-2 tokenizer, shared by every script."""
import tiktoken


def gpt2_encoding():
    """tiktoken's GPT-2 BPE. r50k_base has the same ranks, regex and <|endoftext|> as "gpt2" and is a
    single cache file, so it is tried first: with TIKTOKEN_CACHE_DIR pointing at a folder holding that
    file it loads offline. Exits with one line saying what to do when neither can be had."""
    for name in ("r50k_base", "gpt2"):
        try:
            return tiktoken.get_encoding(name)
        except Exception:
            continue
    raise SystemExit("error: cannot load the GPT-2 BPE vocabulary (tiktoken needs the network to fetch it). "
                     "Offline, set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached r50k_base file, "
                     "e.g. TIKTOKEN_CACHE_DIR=../shared/data/tiktoken_cache")
