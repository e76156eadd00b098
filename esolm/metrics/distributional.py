"""The distributional metric (issue 25, item 5): one minus the Jensen-Shannon divergence between
the pooled byte k-gram distributions of a sample set and of a reference set, averaged over k.

    score = mean over k in orders of  1 - JSD_2(P_k(samples) || P_k(references))

P_k(X) counts every run of k consecutive UTF-8 bytes inside each text of X (k-grams never cross
two texts), pooled over the set and normalised. JSD in base 2 lies in [0, 1], so the score does
too: 1 for identical sets, 0 when no k-gram of one set occurs in the other. It is symmetric in
its two arguments (JSD is). There is no clustering and no learned featurizer, so the number is
exact given the texts; its finite-sample bias (real text against real text does not reach 1)
depends on the sample and reference counts, so compare scores at equal counts only.

Why this and not MAUVE on MiniLM features: at 128 bytes of Shakespeare-like text the sentence
embedder puts every sample set and the references into one cluster (MAUVE 0.004-0.015 for every
configuration); the evidence for the choice is in docs/metrics.md, "The distributional metric".

Interval: resampling the samples with replacement duplicates texts, which thins the pooled
distribution and pulls every bootstrap score below the point estimate (by about 0.03 at 64
samples), so the plain percentile interval can miss the estimate. We keep the bootstrap's spread
and centre it on the estimate (a "centred percentile" interval); at 64 iid real rows its width
matches the spread of the score over independent sample sets (docs/metrics.md).
"""
from __future__ import annotations

import numpy as np
from scipy import sparse

from esolm.config import ConfigError

ORDERS = (1, 2, 3, 4)  # byte k-gram orders averaged: k = 1-2 see the alphabet, 3-4 see syllables and short words
DRAWS = 200
LEVEL = 0.95
SEED = 25
_CHUNK = 100  # bootstrap draws scored at once: bounds the dense [draws, k-grams] matrix
METRIC = "1 - JSD (base 2) of pooled byte k-grams, mean over k"


def byte_kgrams(text: str, k: int) -> np.ndarray:
    """The int64 codes (base-256 numbers) of every run of ``k`` consecutive UTF-8 bytes of ``text``;
    empty when the text is shorter than k bytes."""
    b = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    n = len(b) - k + 1
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    code = np.zeros(n, dtype=np.int64)
    for j in range(k):
        code = code * 256 + b[j:j + n]
    return code


def _count_matrices(samples: list[str], references: list[str], k: int):
    """(per-sample counts [n, K] sparse, pooled reference counts [K]) over the K k-grams seen in
    either set: the rows let a bootstrap re-pool the samples with any multiplicities."""
    s_codes = [byte_kgrams(t, k) for t in samples]
    r_codes = np.concatenate([byte_kgrams(t, k) for t in references])
    s_all = np.concatenate(s_codes) if s_codes else np.zeros(0, dtype=np.int64)
    keys, inverse = np.unique(np.concatenate([s_all, r_codes]), return_inverse=True)
    owner = np.repeat(np.arange(len(samples)), [len(c) for c in s_codes])
    per_sample = sparse.csr_matrix((np.ones(len(s_all)), (owner, inverse[:len(s_all)])),
                                   shape=(len(samples), len(keys)))
    ref = np.bincount(inverse[len(s_all):], minlength=len(keys)).astype(np.float64)
    return per_sample, ref


def _similarity(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """1 - JSD in bits between each row of count matrix ``p`` [d, K] and counts ``q`` [K]; a row
    without any count scores 0 (an empty sample set shares nothing with the references)."""
    p_tot = p.sum(axis=1, keepdims=True)
    p = p / np.where(p_tot > 0, p_tot, 1.0)
    q = (q / q.sum())[None, :]
    m = (p + q) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum(axis=1)
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum(axis=1)
    sim = 1.0 - np.clip((kl_p + kl_q) / 2.0, 0.0, 1.0)
    return np.where(p_tot[:, 0] > 0, sim, 0.0)


def _check(samples, references, orders) -> tuple[list[str], list[str], tuple[int, ...]]:
    """The inputs as lists; a ConfigError naming the problem otherwise."""
    samples, references = list(samples), list(references)
    if not samples or not references:
        raise ConfigError(f"the distributional score needs samples and references; got {len(samples)} samples "
                          f"and {len(references)} references")
    if any(not isinstance(t, str) for t in samples + references):
        raise ConfigError("the distributional score compares texts (str); decode token ids first "
                          "(tokenizer.decode(ids, skip_special=True))")
    orders = tuple(int(k) for k in orders)
    if not orders or min(orders) < 1 or max(orders) > 7:
        raise ConfigError(f"orders must be byte k-gram sizes between 1 and 7 (int64 codes); got {orders}")
    if sum(max(0, len(t.encode("utf-8")) - max(orders) + 1) for t in references) == 0:
        raise ConfigError(f"the references hold no {max(orders)}-gram of bytes: pass longer reference texts "
                          f"or smaller orders")
    return samples, references, orders


def _tables(samples, references, orders) -> list:
    return [_count_matrices(samples, references, k) for k in orders]


def _point(tables) -> list[float]:
    return [float(_similarity(np.asarray(m.sum(axis=0)), ref)[0]) for m, ref in tables]


def _interval(tables, point: float, draws: int, seed: int, level: float) -> tuple[float, float]:
    """The centred-percentile ``level`` interval: the bootstrap quantiles shifted so that the
    bootstrap median sits on ``point`` (see the module docstring), clipped to [0, 1]."""
    n = tables[0][0].shape[0]
    rng = np.random.default_rng(seed)
    scores = []
    for start in range(0, draws, _CHUNK):
        d = min(_CHUNK, draws - start)
        weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(d)]).astype(np.float64)
        per_order = [_similarity(np.asarray(weights @ m), ref) for m, ref in tables]
        scores.append(np.mean(per_order, axis=0))
    scores = np.concatenate(scores)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(scores, [tail, 1.0 - tail]) + (point - np.median(scores))
    return float(np.clip(lo, 0.0, 1.0)), float(np.clip(hi, 0.0, 1.0))


def bootstrap(samples: list[str], references: list[str], draws: int = DRAWS, seed: int = SEED, *,
              orders=ORDERS, level: float = LEVEL) -> tuple[float, float]:
    """(lo, hi): the ``level`` interval of the score over samples resampled with replacement
    (references fixed), ``draws`` draws from ``numpy.random.default_rng(seed)``, centred percentile."""
    samples, references, orders = _check(samples, references, orders)
    if draws < 1 or not 0.0 < level < 1.0:
        raise ConfigError(f"bootstrap needs draws >= 1 and 0 < level < 1; got draws={draws}, level={level}")
    tables = _tables(samples, references, orders)
    return _interval(tables, float(np.mean(_point(tables))), draws, seed, level)


def distributional_score(samples: list[str], references: list[str], *, orders=ORDERS, draws: int = DRAWS,
                         seed: int = SEED, level: float = LEVEL) -> dict:
    """The score of ``samples`` against ``references`` with its bootstrap interval over samples.

    Returns ``score`` (in [0, 1], higher = closer to the references), ``score_lo`` / ``score_hi``
    (None when ``draws`` is 0), ``per_order`` ({"k=1": ...}), the counts (``num_samples``,
    ``num_references``, ``sample_bytes``, ``empty_samples``: texts with no byte) and every setting
    that changes the number (``orders``, ``draws``, ``seed``, ``level``, ``interval``, ``metric``).
    Texts are the decoded samples without special tokens, as MAUVE's (spec 8.4).
    """
    samples, references, orders = _check(samples, references, orders)
    tables = _tables(samples, references, orders)
    per_order = _point(tables)
    score = float(np.mean(per_order))
    lo, hi = _interval(tables, score, draws, seed, level) if draws > 0 else (None, None)
    sample_bytes = [len(t.encode("utf-8")) for t in samples]
    return dict(score=score, score_lo=lo, score_hi=hi,
                per_order={f"k={k}": v for k, v in zip(orders, per_order)},
                num_samples=len(samples), num_references=len(references), sample_bytes=int(sum(sample_bytes)),
                empty_samples=int(sum(b == 0 for b in sample_bytes)), orders=list(orders), draws=int(draws),
                seed=int(seed), level=float(level), interval="centred percentile bootstrap over samples",
                metric=METRIC)
