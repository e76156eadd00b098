"""The "synthetic" corpus: a seeded sparse Markov chain whose exact entropy is known, so
every model's NLL can be printed next to the floor no correct model can go below.

A sequence is BOS, then x_2 ~ pi (the stationary distribution), then x_{i+1} ~ P[x_i, :].
With BOS fixed and the chain started in its stationary law,
    H(X_1..X_L) = H(pi) + (L - 2) * h,   h = sum_i pi_i H(P[i, :])   (the entropy rate).
"""
from __future__ import annotations

import numpy as np
import torch

from esolm.config import ConfigError, coerce
from esolm.data.cache import array_digest, digest
from esolm.data.corpus import SPLITS, Corpus
from esolm.data.tokenizer import SyntheticTokenizer

DEFAULTS = dict(symbols=64, branching=4, zipf=1.0, num_train=None, num_valid=None, num_test=None)


class SyntheticSource:
    """A primitive Markov chain over ``symbols`` ids with a sparse, Zipf-weighted transition
    matrix. Each state has between 2 and ``2 * branching - 2`` successors (one of them its
    successor on a random Hamiltonian cycle, which makes the chain irreducible); successors
    are drawn with Zipf popularity, so the unigram law is Zipf-like too. Ids: symbols
    0..S-1, BOS = S, MASK = S + 1."""

    def __init__(self, symbols: int = 64, branching: int = 4, zipf: float = 1.0, seed: int = 0):
        _check(symbols >= 4, f"symbols must be >= 4; got {symbols}")
        _check(2 <= branching <= symbols // 2,
               f"branching must lie in [2, symbols/2 = {symbols // 2}]; got {branching}")
        _check(zipf >= 0, f"zipf must be >= 0 (0 = uniform weights); got {zipf}")
        _check(seed >= 0, f"seed must be >= 0; got {seed}")
        self.vocab_size, self.branching, self.zipf, self.seed = int(symbols), int(branching), float(zipf), int(seed)
        self.bos_id, self.mask_id = self.vocab_size, self.vocab_size + 1
        rng = np.random.default_rng([self.seed, self.vocab_size, self.branching])
        while True:  # almost always once: retry only if the random graph is periodic
            P = self._random_transitions(rng)
            if _is_primitive(P > 0):
                break
        self.transition = torch.from_numpy(P)  # [S, S] float64
        self.stationary = torch.from_numpy(_stationary(P))  # [S] float64
        S = self.vocab_size
        logp = torch.full((S + 2, S + 2), -torch.inf, dtype=torch.float64)
        with np.errstate(divide="ignore"):
            logp[:S, :S] = torch.from_numpy(np.log(P))
            logp[self.bos_id, :S] = torch.from_numpy(np.log(self.stationary.numpy()))
        self._logp = logp  # row = previous id, column = next id; impossible moves are -inf
        rows = np.concatenate([P, self.stationary.numpy()[None]], 0)  # last row: the law after BOS
        cdf = rows.cumsum(1)
        cdf /= cdf[:, -1:]  # each row ends exactly at 1.0
        self._shifted_cdf = (cdf + np.arange(S + 1)[:, None]).reshape(-1)
        self._last_successor = (S - 1 - np.argmax(rows[:, ::-1] > 0, axis=1)).astype(np.int64)

    def _random_transitions(self, rng) -> np.ndarray:
        S, b = self.vocab_size, self.branching
        cycle = rng.permutation(S)
        next_on_cycle = np.empty(S, dtype=np.int64)
        next_on_cycle[cycle] = np.roll(cycle, -1)
        popularity = 1.0 / (1.0 + rng.permutation(S)) ** self.zipf
        P = np.zeros((S, S))
        for i in range(S):
            k = int(rng.integers(2, 2 * b - 1))  # successors of state i: 2 .. 2b - 2, mean b
            others = np.delete(np.arange(S), next_on_cycle[i])
            p = popularity[others] / popularity[others].sum()
            succ = np.concatenate([[next_on_cycle[i]], rng.choice(others, k - 1, replace=False, p=p)])
            weights = 1.0 / np.arange(1, k + 1) ** self.zipf
            P[i, succ] = rng.permutation(weights / weights.sum())
        return P

    # -- sampling and exact likelihoods ---------------------------------------------------
    def sample(self, n: int, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """[n, length] sequences, each BOS then ``length - 1`` steps of the chain.

        Inverse-CDF sampling of all rows at once: row r's CDF is stored shifted by r in one
        sorted array, so one binary search per step serves every sequence."""
        _check(length >= 1, f"length must be >= 1; got {length}")
        S = self.vocab_size
        u = torch.rand(max(length - 1, 0), n, dtype=torch.float64, generator=generator).numpy()
        x = np.full((length, n), self.bos_id, dtype=np.int64)
        prev = np.full(n, S, dtype=np.int64)  # row S of the CDF table: the law of x_2 given BOS
        for i in range(1, length):
            j = np.searchsorted(self._shifted_cdf, prev + u[i - 1], side="right")
            # r + u may round up to r + 1; the last successor of row r is then the right answer
            x[i] = prev = np.minimum(j - prev * S, self._last_successor[prev])
        return torch.from_numpy(np.ascontiguousarray(x.T))

    def token_log_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, L-1] float64: log p(x_{i+1} | x_{<=i}) under the chain (Gen-PPL scoring)."""
        tokens = self._check_ids(tokens)
        return self._logp[tokens[:, :-1], tokens[:, 1:]]

    def log_prob(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B] float64: exact log p(sequence); -inf unless it starts with BOS."""
        tokens = self._check_ids(tokens)
        first = torch.where(tokens[:, 0] == self.bos_id, 0.0, -torch.inf).double()
        return first + self.token_log_probs(tokens).sum(1)

    def entropy(self, length: int) -> float:
        """Exact H(X_1..X_length) in nats."""
        _check(length >= 1, f"length must be >= 1; got {length}")
        return 0.0 if length == 1 else self.stationary_entropy() + (length - 2) * self.entropy_rate()

    def entropy_rate(self) -> float:
        """h = sum_i pi_i H(P[i, :]) in nats per token."""
        P = self.transition
        row_h = -torch.where(P > 0, P * P.log(), torch.zeros_like(P)).sum(1)
        return float((self.stationary * row_h).sum())

    def stationary_entropy(self) -> float:
        pi = self.stationary
        return float(-(pi[pi > 0] * pi[pi > 0].log()).sum())

    def _check_ids(self, tokens) -> torch.Tensor:
        tokens = torch.as_tensor(tokens, dtype=torch.long).cpu()
        if tokens.dim() != 2 or tokens.shape[1] < 1:
            raise ConfigError(f"tokens must have shape [batch, length >= 1]; got {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) > self.mask_id):
            raise ConfigError(f"token ids must lie in [0, {self.mask_id}] for the synthetic source "
                              f"({self.vocab_size} symbols, BOS, MASK); got range "
                              f"[{int(tokens.min())}, {int(tokens.max())}]")
        return tokens


def build(length: int, vocab_size=None, tokenizer=None, seed: int = 0, cache_dir=None, **options) -> Corpus:
    """The "synthetic" corpus: splits sampled from the seeded source (no disk cache needed)."""
    unknown = sorted(set(options) - set(DEFAULTS))
    _check(not unknown, f"unknown option(s) {unknown} for corpus 'synthetic'; options: {', '.join(DEFAULTS)}")
    types = dict(symbols=int, branching=int, zipf=float, num_train=int | None, num_valid=int | None,
                 num_test=int | None)
    opts = {k: coerce(v, types[k], k) for k, v in {**DEFAULTS, **options}.items()}
    _check(length >= 2, f"length must be >= 2; got {length}")
    source = SyntheticSource(opts["symbols"], opts["branching"], opts["zipf"], seed)
    tok = SyntheticTokenizer(source.vocab_size)
    if tokenizer not in (None, tok.name):
        raise ConfigError(f"the synthetic corpus has its own tokenizer {tok.name!r}; got tokenizer={tokenizer!r}: "
                          "drop the argument or set symbols=")
    counts = {
        "train": opts["num_train"] or max(1024, 2 ** 21 // length),  # ~2M training tokens
        "valid": opts["num_valid"] or max(64, 2 ** 16 // length),
        "test": opts["num_test"] or max(64, 2 ** 16 // length),
    }
    splits = {}
    for split in SPLITS:
        g = torch.Generator().manual_seed(int(digest("synthetic-split", seed, split)[:12], 16))
        splits[split] = source.sample(int(counts[split]), length, g)
    opts.update({f"num_{s}": int(c) for s, c in counts.items()})
    fingerprint = digest("synthetic", length, seed, opts, [array_digest(splits[s]) for s in SPLITS])
    settings = dict(vocab_size=None, tokenizer=None, seed=int(seed), **opts)
    return Corpus("synthetic", tok, length, splits, fingerprint, source=source, settings=settings)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _stationary(P: np.ndarray) -> np.ndarray:
    """pi with pi P = pi, sum pi = 1 (float64 least squares on the stacked system)."""
    S = len(P)
    A = np.vstack([P.T - np.eye(S), np.ones((1, S))])
    b = np.zeros(S + 1)
    b[-1] = 1.0
    pi = np.linalg.lstsq(A, b, rcond=None)[0]
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def _is_primitive(adjacency: np.ndarray) -> bool:
    """True iff some power of the 0/1 matrix is all positive (irreducible and aperiodic);
    by Wielandt's bound the power 2^k >= (S-1)^2 + 1 suffices."""
    M = adjacency.astype(np.int64)
    S = len(M)
    power = 1
    while power < (S - 1) ** 2 + 1:
        M = np.minimum(M @ M, 1)
        power *= 2
    return bool(M.all())
