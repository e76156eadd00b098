"""Sampling time at NFE = L (spec 8.6, v4 Table 11): every method on one backbone, batch 1, no
nucleus, with and without its KV cache, side by side in one session; ratios in the report."""
from __future__ import annotations

import pytest
import torch

from esolm.metrics.timing import summarize
from estimate import SubsampledNetwork
from protocol import (FIRST_HITTING_T, METHODS, STORE, backbone_summary, build, configurations, load, round_seeds,
                      sampler, timed)


def pytest_generate_tests(metafunc):
    if "configuration" in metafunc.fixturenames:
        s = metafunc.config.stash[STORE].settings
        confs = configurations(s)
        metafunc.parametrize("configuration", confs,
                             ids=[f"L{L}-{k}-{'cache' if c else 'nocache'}" for L, k, c in confs])
    if "pair" in metafunc.fixturenames:
        s = metafunc.config.stash[STORE].settings
        pairs = [(max(s.lengths), k) for k in ("ar", "esolm-b")] if s.alt_vocab_size else []
        metafunc.parametrize("pair", pairs, ids=[f"L{L}-{k}-V{s.alt_vocab_size}" for L, k in pairs])


def subsampled(run, model, stride: int, nets: list):
    """``run`` with 1 network call in ``stride`` computed (estimate.py); each call appends its
    SubsampledNetwork to ``nets``."""
    def call(seed):
        with SubsampledNetwork(model, stride) as net:
            out = run(seed)
        nets.append(net)
        return out
    return call


def measure(benchmark, run, model, settings, stride=None) -> tuple[list[float], object, dict | None]:
    """Warm-up, then ``rounds`` runs through pytest-benchmark, each timed by ``timed``
    (torch.utils.benchmark) with its round's seed; per-round seconds (the full-run estimate when
    ``stride`` subsamples the network), the last round's output and the subsample info of its
    timed run."""
    seconds, outs, nets = [], [], []
    call = run if stride is None else subsampled(run, model, stride, nets)
    seeds = round_seeds(settings)

    def once():
        seed = next(seeds)
        secs, out = timed(lambda: call(seed))
        seconds.append(secs if stride is None else nets[-1].estimated_seconds(secs))
        outs.append(out)

    benchmark.pedantic(once, rounds=settings.rounds, warmup_rounds=settings.warmup, iterations=1)
    del seconds[:settings.warmup]
    info = nets[-1].summary() if nets else None
    return seconds, outs[-1], info


def record(method, model, cache, L, seconds, out, info, before) -> dict:
    return dict(method=method.key, label=method.label, cache=cache, length=L,
                vocab_size=model.config.vocab_size, nfe=int(out.nfe),
                mode="subsampled" if info else "full", subsample=info,
                seconds=summarize(seconds), options=dict(method.options), overrides=dict(method.overrides),
                backbone=backbone_summary(model), load_before=before, load_after=load())


def test_sampling_time_at_nfe_equals_length(benchmark, bench, configuration):
    L, key, cache = configuration
    s, method = bench.settings, METHODS[key]
    model = build(method, s, L)
    run = sampler(method, model, cache)
    expensive = not (cache and method.has_cache)  # MDLM, or a sampler recomputing its prefix
    stride = max(1, L // s.timed_calls) if expensive and L > s.full_upto else None
    before = load()
    seconds, out, info = measure(benchmark, run, model, s, stride)
    rec = record(method, model, cache, L, seconds, out, info, before)
    benchmark.extra_info.update(nfe=rec["nfe"], mode=rec["mode"], median_s=rec["seconds"]["median"])
    bench.add("sampling", rec)
    # first hitting with T steps: about L^2 / 2T pairs of tokens share a step (2 at L = 2048)
    assert out.tokens.shape == (1, L) and out.nfe >= L - 1 - 3 * (1 + L * L // (2 * FIRST_HITTING_T))
    if expensive and stride is None and L == max(x for x in s.lengths if x <= s.full_upto):
        # the estimator, checked against the full runs just measured (same L, same sampler)
        estimates, nets = [], []
        call = subsampled(run, model, max(1, L // s.timed_calls), nets)
        for seed in range(s.seed + 1, s.seed + 1 + s.rounds):
            wall, _ = timed(lambda: call(seed))
            estimates.append(nets[-1].estimated_seconds(wall))
        est = summarize(estimates)["median"]
        bench.add("estimator_check", dict(method=key, label=method.label, cache=cache, length=L,
                                          full_median_s=rec["seconds"]["median"], estimate_median_s=est,
                                          estimate_over_full=est / rec["seconds"]["median"], subsample=nets[-1].summary()))


def test_cached_pair_with_the_other_vocabulary(benchmark, bench, pair):
    """AR and Eso-LM (B) with their caches at the largest L with the second vocabulary: the LM
    head is a large share of a batch-1 step, so the Eso-LM / AR ratio depends on V."""
    L, key = pair
    s, method = bench.settings, METHODS[key]
    model = build(method, s, L, vocab_size=s.alt_vocab_size)
    before = load()
    seconds, out, info = measure(benchmark, sampler(method, model, True), model, s)
    bench.add("sampling", record(method, model, True, L, seconds, out, info, before))


@pytest.mark.parametrize("key", ["ar", "esolm-b"])
def test_where_a_cached_step_spends_its_time(benchmark, bench, key):
    """The network's share of a cached run (profile=True times only the network calls, 8.5):
    the rest is drawing tokens, schedules, masks and Python."""
    s, method = bench.settings, METHODS[key]
    L = max(s.lengths)
    model = build(method, s, L)
    runs = []  # (wall seconds, network seconds, output) of the same run

    def profiled():  # the same seed every call: the same run
        torch.manual_seed(s.seed)
        return model.sample(1, top_p=1.0, kv_cache=True, profile=True, **method.options)

    def once():
        wall, out = timed(profiled)
        runs.append((wall, out.seconds, out))

    benchmark.pedantic(once, rounds=s.rounds, warmup_rounds=s.warmup, iterations=1)
    del runs[:s.warmup]
    wall = summarize([w for w, _, _ in runs])["median"]
    net = summarize([n for _, n, _ in runs])["median"]
    outs = [o for _, _, o in runs]
    nfe = outs[-1].nfe
    ops = ops_per_step(model, method, min(s.lengths))
    bench.add("per_step", dict(method=key, label=method.label, length=L, nfe=nfe, wall_ms_per_step=1e3 * wall / nfe,
                               network_ms_per_step=1e3 * net / nfe, other_ms_per_step=1e3 * (wall - net) / nfe,
                               network_share=net / wall, **ops))
    bench.notes.append(f"{method.label} with cache, L={L}: {1e3 * wall / nfe:.2f} ms per step, of which "
                       f"{1e3 * net / nfe:.2f} ms in the network ({100 * net / wall:.0f}%) and "
                       f"{1e3 * (wall - net) / nfe:.2f} ms drawing tokens and bookkeeping; "
                       f"{ops['kernel_ops_per_step']:.0f} tensor operations that compute (launch a kernel "
                       f"on a GPU) per step, {ops['aten_ops_per_step']:.0f} ATen calls in all")


# ATen calls that only make views or read metadata: no kernel on a GPU
VIEW_OPS = {"aten::view", "aten::as_strided", "aten::slice", "aten::transpose", "aten::permute",
            "aten::expand", "aten::reshape", "aten::select", "aten::unsqueeze", "aten::t", "aten::_unsafe_view",
            "aten::detach", "aten::alias", "aten::chunk", "aten::split", "aten::unbind", "aten::lift_fresh",
            "aten::empty", "aten::empty_strided", "aten::resolve_conj", "aten::resolve_neg", "aten::item",
            "aten::_local_scalar_dense", "aten::is_nonzero", "aten::unflatten", "aten::narrow", "aten::squeeze",
            "aten::linear", "aten::matmul", "aten::scaled_dot_product_attention", "aten::layer_norm",
            "aten::dropout", "aten::to", "aten::contiguous", "aten::numpy_T", "aten::result_type"}


def ops_per_step(model, method, length) -> dict:
    """ATen calls per sampling step (torch.profiler over one cached run at ``length``); the
    compute ones (no views, no composite wrappers) are what a GPU would launch kernels for."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = model.sample(1, length=length, top_p=1.0, kv_cache=True, **method.options)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.count for e in events)
    compute = sum(e.count for e in events if e.key not in VIEW_OPS)
    return dict(ops_length=length, aten_ops_per_step=total / out.nfe, kernel_ops_per_step=compute / out.nfe)
