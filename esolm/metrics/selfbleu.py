"""Self-BLEU: each sample's BLEU against all the other samples as references, averaged; a
second guard (beside entropy) against repetitive, mode-collapsed samples. High = repetitive.

The score is nltk's ``sentence_bleu`` (uniform n-gram weights, smoothing method 1) of
every hypothesis against the others, computed in one pass: the clipped n-gram counts use
leave-one-out maxima over the references instead of re-counting every reference for
every hypothesis, and the precisions, brevity penalty and smoothing are nltk's own
functions. ``tests/test_metrics*.py`` checks equality with ``sentence_bleu`` itself.
"""
from __future__ import annotations

import math
import random
from collections import Counter

from esolm.config import ConfigError


def self_bleu(texts, n_gram: int = 4, max_samples: int | None = 500, seed: int = 0) -> float:
    """Mean over samples of BLEU-``n_gram`` against all other samples (words = whitespace split).

    ``texts``: strings, or already-tokenized lists. With more than ``max_samples`` texts a
    seeded random subset of that size serves as both hypotheses and references.
    """
    from nltk.util import ngrams

    docs = _subset(_documents(texts, n_gram), max_samples, seed)
    tables = [_leave_one_out_table([Counter(ngrams(d, n)) for d in docs]) for n in range(1, n_gram + 1)]
    lengths = [len(d) for d in docs]
    scores = [_sentence_bleu(i, len(doc), tables, lengths, n_gram) for i, doc in enumerate(docs)]
    return float(sum(scores) / len(scores))


def _documents(texts, n_gram: int) -> list[list]:
    docs = [t.split() if isinstance(t, str) else list(t) for t in texts]
    if len(docs) < 2:
        raise ConfigError(f"self-BLEU needs at least 2 samples; got {len(docs)}")
    if n_gram < 1:
        raise ConfigError(f"n_gram must be >= 1; got {n_gram}")
    return docs


def _subset(docs: list[list], max_samples: int | None, seed: int) -> list[list]:
    """A seeded random ``max_samples`` of ``docs`` (in their order) when there are more."""
    if max_samples is None or len(docs) <= max_samples:
        return docs
    if max_samples < 2:
        raise ConfigError(f"max_samples must be >= 2; got {max_samples}")
    return [docs[i] for i in sorted(random.Random(seed).sample(range(len(docs)), max_samples))]


def _sentence_bleu(i: int, hyp_len: int, tables, lengths: list[int], n_gram: int) -> float:
    """nltk's ``sentence_bleu`` of document ``i`` against all the others (uniform weights, method 1)."""
    from nltk.translate.bleu_score import Fraction, SmoothingFunction, brevity_penalty

    p_n = []
    for counts, best in tables:
        hyp = counts[i]
        clipped = sum(min(c, _max_other(best, g, i)) for g, c in hyp.items())
        p_n.append(Fraction(clipped, max(1, sum(hyp.values())), _normalize=False))
    if p_n[0].numerator == 0:
        return 0.0
    others = lengths[:i] + lengths[i + 1:]
    ref_len = min(others, key=lambda r: (abs(r - hyp_len), r))
    bp = brevity_penalty(ref_len, hyp_len)
    p_n = SmoothingFunction().method1(p_n, hyp_len=hyp_len)
    weights = (1.0 / n_gram,) * n_gram
    return bp * math.exp(math.fsum(w * math.log(p) for w, p in zip(weights, p_n) if p > 0))


def _leave_one_out_table(counts: list[Counter]):
    """Per n-gram: (largest count, its document, second largest count) over all documents."""
    best: dict = {}
    for i, c in enumerate(counts):
        for g, k in c.items():
            top = best.get(g)
            if top is None:
                best[g] = (k, i, 0)
            elif k > top[0]:
                best[g] = (k, i, top[0])
            elif k > top[2]:
                best[g] = (top[0], top[1], k)
    return counts, best


def _max_other(best: dict, g, i: int) -> int:
    """max over documents j != i of count_j(g)."""
    top, owner, second = best[g]
    return second if owner == i else top
