"""Calibration rows (issue 25, item 6): null samplers whose samples are scored exactly as a model's,
so that a table shows what real text, cheap imitations and degenerate output score.

Each sampler returns ``n`` token-id rows of the corpus's length L, each beginning with the BOS id
(as a model's sample and every packed corpus row do), in the corpus tokenizer's ids:

- "real text": held-out test rows, a seeded choice among rows ``REFERENCE_ROWS`` and later (the
  first 64 test rows are the MAUVE / distributional references, spec 8.4, so they are never drawn);
- "unigram": ids drawn iid from the train split's unigram frequencies, special ids excluded;
- "repeater": the train split's most frequent k-gram of ids (default k = 4) repeated to length L;
- "all-EOS": every position the EOS id (what a sampler that only emits end-of-text would give).
"""
from __future__ import annotations

import numpy as np

from esolm.config import ConfigError

REFERENCE_ROWS = 64  # test rows 0..63 are the references of the distributional metrics (spec 8.4)
REPEAT_K = 4  # 4 byte ids: a short word with its space (" the" on Shakespeare), far below real entropy
_STATS: dict = {}  # (corpus fingerprint, what) -> train statistics, computed once per process


def _check_n(n: int) -> int:
    if int(n) < 1:
        raise ConfigError(f"a null sampler needs n >= 1 rows; got n={n}")
    return int(n)


def _train_ids(corpus) -> np.ndarray:
    return corpus.splits["train"].numpy().astype(np.int64)


def _unigram_probs(corpus) -> np.ndarray:
    """Train-split frequency of every id, special ids (BOS, EOS, mask) set to zero, normalised."""
    key = (corpus.fingerprint, "unigram")
    if key not in _STATS:
        counts = np.bincount(_train_ids(corpus).reshape(-1), minlength=corpus.tokenizer.vocab_size).astype(float)
        counts[sorted(corpus.tokenizer.special_ids)] = 0.0
        if counts.sum() == 0:
            raise ConfigError(f"the train split of {corpus.name} holds no ordinary token: no unigram to sample")
        _STATS[key] = counts / counts.sum()
    return _STATS[key]


def most_frequent_kgram(corpus, k: int = REPEAT_K) -> list[int]:
    """The most frequent run of ``k`` consecutive ids inside the train rows that holds no special id
    (ties: the smallest ids first, so the choice is deterministic)."""
    key = (corpus.fingerprint, "kgram", int(k))
    if key not in _STATS:
        ids = _train_ids(corpus)
        if k < 1 or k > ids.shape[1] - 1:
            raise ConfigError(f"the repeater's k must be between 1 and L - 1 = {ids.shape[1] - 1}; got k={k}")
        v = corpus.tokenizer.vocab_size
        windows = np.lib.stride_tricks.sliding_window_view(ids, k, axis=1).reshape(-1, k)
        special = np.isin(windows, sorted(corpus.tokenizer.special_ids)).any(axis=1)
        windows = windows[~special]
        if len(windows) == 0:
            raise ConfigError(f"the train split of {corpus.name} holds no {k}-gram without special ids; use a "
                              f"smaller k")
        codes = np.zeros(len(windows), dtype=np.int64)
        for j in range(k):  # V**k stays below 2**63 for V <= 2**15 and k <= 4
            codes = codes * v + windows[:, j]
        uniq, counts = np.unique(codes, return_counts=True)
        best = int(uniq[np.argmax(counts)])  # argmax takes the first of ties: the smallest code
        _STATS[key] = [int(best // v ** (k - 1 - j) % v) for j in range(k)]
    return list(_STATS[key])


def real_text(corpus, n: int, seed: int = 0) -> list[list[int]]:
    """``n`` test rows drawn without replacement, seeded, from rows REFERENCE_ROWS and later (never
    a reference row); a seeded choice rather than the next rows in order, which would all come
    from one scene of one play."""
    n = _check_n(n)
    test = corpus.splits["test"]
    pool = len(test) - REFERENCE_ROWS
    if n > pool:
        raise ConfigError(f"real text needs {n} held-out test rows but {corpus.name} has {pool} after its "
                          f"{REFERENCE_ROWS} reference rows; ask for at most {pool}")
    rows = REFERENCE_ROWS + np.random.default_rng(seed).choice(pool, size=n, replace=False)
    return [test[int(i)].tolist() for i in rows]


def unigram(corpus, n: int, seed: int = 0) -> list[list[int]]:
    """``n`` rows: BOS, then L - 1 ids drawn iid from the train unigram frequencies (special ids excluded)."""
    n = _check_n(n)
    body = np.random.default_rng(seed).choice(corpus.tokenizer.vocab_size, size=(n, corpus.length - 1),
                                              p=_unigram_probs(corpus))
    return [[corpus.tokenizer.bos_id] + row for row in body.tolist()]


def ngram_repeater(corpus, n: int, seed: int = 0, k: int = REPEAT_K) -> list[list[int]]:
    """``n`` identical rows: BOS, then the train split's most frequent k-gram repeated (cut) to
    length L. ``seed`` is accepted for the common signature; the rows do not depend on it."""
    n = _check_n(n)
    gram = most_frequent_kgram(corpus, k)
    body = (gram * (corpus.length // len(gram) + 1))[:corpus.length - 1]
    return [[corpus.tokenizer.bos_id] + body for _ in range(n)]


def all_eos(corpus, n: int, seed: int = 0) -> list[list[int]]:
    """``n`` rows of L EOS ids (the leading one doubles as BOS where BOS = EOS). ``seed`` unused."""
    n = _check_n(n)
    return [[corpus.tokenizer.eos_id] * corpus.length for _ in range(n)]


NULL_SAMPLERS = {"real text": real_text, "unigram": unigram, "repeater": ngram_repeater, "all-EOS": all_eos}


def null_samples(name: str, corpus, n: int, seed: int = 0) -> list[list[int]]:
    """The ``n`` rows of null sampler ``name`` (a key of NULL_SAMPLERS) for ``corpus``."""
    if name not in NULL_SAMPLERS:
        raise ConfigError(f"unknown null sampler {name!r}; choose one of: {', '.join(NULL_SAMPLERS)}")
    return NULL_SAMPLERS[name](corpus, n, seed)
