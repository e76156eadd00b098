"""Percentile-bootstrap confidence intervals (issue 25: uncertainty on every number).

Rows of the given arrays (sequences, samples, timing trials) are resampled with replacement,
jointly, so that a ratio statistic such as exp(sum nll / sum tokens) keeps each sequence's NLL
with its own token count, and a paired ratio of two interleaved timings keeps trial i of both.
The seed is fixed: the same data give the same interval on every machine and every rerun.

    from esolm.metrics.bootstrap import ppl_interval, interval_fields
    lo, hi = ppl_interval(per_sequence_nll, per_sequence_tokens)      # 95 %, 1000 draws
    row["metrics"].update(interval_fields("ppl", (lo, hi)))          # ppl_lo, ppl_hi
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from esolm.config import ConfigError

DRAWS = 1000
LEVEL = 0.95
_CHUNK_ELEMENTS = 4_000_000  # index-matrix entries resampled at once: bounds memory for long arrays


def bootstrap_interval(stat: Callable[..., np.ndarray], *arrays, draws: int = DRAWS, seed: int = 0,
                       level: float = LEVEL) -> tuple[float, float]:
    """The percentile-bootstrap ``level`` interval (lo, hi) of ``stat`` over the rows of ``arrays``.

    ``stat(*resampled)`` receives each array indexed by a [d, n] matrix of row indices (so shape
    [d, n, ...]) and returns the d statistics (reduce over axis 1); called with the original
    arrays under a leading axis of 1 it gives the point estimate. Rows are drawn jointly (one
    index matrix for every array), ``draws`` times, from ``numpy.random.default_rng(seed)``.
    Degenerate data (one row, or every array constant) return (point, point): no resample can
    differ from it. Returns plain floats.
    """
    arrays = _check(arrays, draws, level)
    n = len(arrays[0])
    point = float(np.asarray(stat(*(a[None] for a in arrays))).reshape(-1)[0])
    if n == 1 or all(np.all(a == a[:1]) for a in arrays):
        return point, point
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    stats = []
    for start in range(0, draws, chunk):
        idx = rng.integers(0, n, size=(min(chunk, draws - start), n))
        stats.append(np.asarray(stat(*(a[idx] for a in arrays)), dtype=np.float64).reshape(-1))
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.concatenate(stats), [tail, 1.0 - tail])
    return float(lo), float(hi)


def _check(arrays: tuple, draws: int, level: float) -> list[np.ndarray]:
    """The arrays as float64 numpy arrays of one length; a ConfigError naming the problem otherwise."""
    if not arrays:
        raise ConfigError("bootstrap_interval needs at least one array of per-item values")
    if draws < 1 or not 0.0 < level < 1.0:
        raise ConfigError(f"bootstrap needs draws >= 1 and 0 < level < 1; got draws={draws}, level={level}")
    out = [np.asarray(a, dtype=np.float64) for a in arrays]
    lengths = {len(a) if a.ndim else -1 for a in out}
    if len(lengths) != 1 or -1 in lengths:
        raise ConfigError(f"bootstrap arrays must be 1-d or more with one length (rows resampled jointly); "
                          f"got lengths {sorted(lengths)}")
    if lengths == {0}:
        raise ConfigError("bootstrap over no items: the metric has no per-item values to resample; "
                          "record them (per sequence, sample or trial) before asking for an interval")
    bad = sum(int((~np.isfinite(a)).sum()) for a in out)
    if bad:
        raise ConfigError(f"bootstrap over {bad} non-finite value(s) (NaN or inf): an interval of them means "
                          f"nothing; drop or fix those items first")
    return out


def ppl_interval(nll, count, **kw) -> tuple[float, float]:
    """Interval of the token-weighted perplexity exp(sum nll / sum count) over items (sequences
    or samples): ``nll`` each item's summed NLL in nats, ``count`` the tokens it is normalized by.
    Items are resampled whole, so long and short items keep their weight (spec 8.1, 8.2)."""
    return bootstrap_interval(lambda x, c: np.exp(x.sum(axis=1) / c.sum(axis=1)), nll, count, **kw)


def mean_interval(values, **kw) -> tuple[float, float]:
    """Interval of the mean of ``values`` (per-sample entropies, timing trials)."""
    return bootstrap_interval(lambda v: v.mean(axis=1), values, **kw)


def median_interval(values, **kw) -> tuple[float, float]:
    """Interval of the median of ``values`` (timing trials: the median time of spec 8.5)."""
    return bootstrap_interval(lambda v: np.median(v, axis=1), values, **kw)


def ratio_interval(num, den, **kw) -> tuple[float, float]:
    """Interval of mean(num) / mean(den) over paired items: trial i of two methods timed in the
    same interleaved round is resampled together, so a slow spell shared by both cancels."""
    return bootstrap_interval(lambda a, b: a.mean(axis=1) / b.mean(axis=1), num, den, **kw)


def interval_fields(name: str, interval: tuple[float, float] | None) -> dict:
    """The results columns of an interval of metric ``name``: {name_lo, name_hi} (None, None when
    there is none), the convention of docs/results_store.md."""
    lo, hi = interval if interval is not None else (None, None)
    return {f"{name}_lo": lo, f"{name}_hi": hi}


def paired_ratio_widths(series: dict, **kw) -> dict:
    """Every pair's ratio interval as a half-width over its ratio: {(a, b): (hi - lo) / 2 / (mean(a) /
    mean(b))} for each a before b in ``series`` ({name: seconds per round}, entry i of every
    series from the same interleaved round i). Rounds are resampled jointly for all series at
    once (the same draws as :func:`ratio_interval` gives each pair), so the whole table of an
    interleaved clock costs one bootstrap: the stopping rule of the clocks of experiments/jobs.py."""
    names = list(series)
    if len(names) < 2:
        return {}
    values = np.stack(_check(tuple(series[n] for n in names), kw.get("draws", DRAWS), kw.get("level", LEVEL)))
    n, draws, level = values.shape[1], kw.get("draws", DRAWS), kw.get("level", LEVEL)
    if np.any(values <= 0):
        raise ConfigError("paired ratio intervals need positive times; a series has a time <= 0")
    point = np.log(values.mean(axis=1))
    if n == 1:
        return {(a, b): 0.0 for i, a in enumerate(names) for b in names[i + 1:]}
    idx = np.random.default_rng(kw.get("seed", 0)).integers(0, n, size=(draws, n))
    logs = np.log(values[:, idx].mean(axis=2))  # [series, draws]
    tail = (1.0 - level) / 2.0
    out = {}
    for i, a in enumerate(names[:-1]):
        diff = logs[i][None, :] - logs[i + 1:]  # log ratios of a over every later series
        lo, hi = np.quantile(diff, [tail, 1.0 - tail], axis=1)
        ratio = np.exp(point[i] - point[i + 1:])
        for j, b in enumerate(names[i + 1:]):
            out[(a, b)] = float((np.exp(hi[j]) - np.exp(lo[j])) / 2.0 / ratio[j])
    return out
