"""Exact-likelihood throughput (spec 7.10): sequences per second of ``nll(exact=True)`` at K
orders. Eso-LM (B) scores an order in one 2L-token pass; MDLM needs L passes per order (its
K = 1 cost times K is its cost at K orders: the orders are independent); AR is one pass."""
from __future__ import annotations

import torch

from esolm.metrics.timing import summarize
from protocol import METHODS, STORE, build, load, timed


def pytest_generate_tests(metafunc):
    if "entry" in metafunc.fixturenames:
        s = metafunc.config.stash[STORE].settings
        entries = [("esolm-b", k, k) for k in s.likelihood_orders]
        entries += [("mdlm", 1, s.likelihood_length), ("ar", 1, 1)]
        metafunc.parametrize("entry", entries, ids=[f"{m}-K{k}" for m, k, _ in entries])


def test_exact_likelihood_sequences_per_second(benchmark, bench, entry):
    key, orders, passes = entry
    s = bench.settings
    L, B = s.likelihood_length, s.likelihood_batch
    model = build(METHODS[key], s, L)
    torch.manual_seed(s.seed)
    tokens = torch.randint(1, s.vocab_size - 1, (B, L), device=s.device)
    seconds, outs = [], []
    before = load()

    def once():
        secs, nll = timed(lambda: model.nll(tokens, exact=True, num_orders=orders))
        seconds.append(secs)
        outs.append(nll)

    benchmark.pedantic(once, rounds=s.rounds, warmup_rounds=s.warmup, iterations=1)
    del seconds[:s.warmup]
    st = summarize(seconds)
    bench.add("likelihood", dict(model=key, label=METHODS[key].label, length=L, batch=B, orders=orders,
                                      passes_per_sequence=passes, seconds=st, sequences_per_second=B / st["median"],
                                      load_before=before, load_after=load()))
    nll = outs[-1]
    assert nll.per_sequence.shape == (B,) and bool(torch.isfinite(nll.per_sequence).all())
