"""The CUDA code path, checked where a CPU can check it (each test runs on "cpu" here and on
"cuda" too when torch sees a GPU; scripts/gpu-check.sh runs this file on a GPU machine):
KV-cache exactness on the device, bf16 autocast training close to float32, the cache in the
autocast dtype, SDPA masks equal to the boolean reference, no host syncs in the sampling loop,
and timings that synchronize the device."""
from __future__ import annotations

import collections
import math
import time
import traceback

import pytest
import torch
import torch.nn.functional as F

from esolm import registry
from esolm.backbone import _sdpa_mask
from esolm.data import load_corpus
from esolm.interface import Clock
from esolm.train import fit, seed_everything, train_config

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="no CUDA GPU (scripts/gpu-check.sh runs it)"))]


def model(name: str, device: str, dtype=torch.float64, length: int = 32):
    torch.manual_seed(0)
    m = registry.build(name, preset="smoke", vocab_size=40, length=length, mask_id=39)
    with torch.no_grad():  # non-zero head: logits that depend on the input (the head starts at 0)
        m.backbone.head.weight.normal_(0, 0.5)
    return m.to(device=device, dtype=dtype).eval()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,steps", [("esolm-b", 8), ("ar", 1), ("bd3lm", 8)])
def test_kv_cached_sampling_equals_uncached_on_the_device(device, name, steps):
    m = model(name, device)
    out = {}
    for cached in (True, False):
        g = torch.Generator(device=device).manual_seed(3)
        with torch.no_grad():
            out[cached] = m.sample(3, steps=steps, kv_cache=cached, generator=g)
    assert out[True].tokens.device.type == device
    assert torch.equal(out[True].tokens, out[False].tokens)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_training_stays_finite_and_close_to_float32(device, tmp_path):
    corpus = load_corpus("synthetic", length=16)
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = train_config("smoke", steps=4, precision=precision, device=device, ema=0.0, checkpoint_every=100)
        seed_everything(cfg.seed)
        m = registry.build("mdlm", preset="smoke", **corpus.model_fields())
        r = fit("mdlm", m, corpus, cfg, tmp_path / precision, progress=False)
        losses[precision] = [h["loss"] for h in r["history"]]
        assert all(math.isfinite(v) for v in losses[precision])
        assert all(p.device.type == device and p.dtype == torch.float32 for p in m.parameters())  # master weights
    for a, b in zip(losses["bf16"], losses["fp32"]):
        assert abs(a - b) < 0.05 * abs(b), losses


@pytest.mark.parametrize("device", DEVICES)
def test_kv_cache_takes_the_autocast_dtype_and_the_model_device(device):
    m = model("esolm-b", device, torch.float32)
    plain = m.backbone.new_cache(2, 32)
    assert plain.k[0].dtype == torch.float32 and plain.k[0].device.type == device
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        cache = m.backbone.new_cache(2, 32)
    assert all(t.dtype == torch.bfloat16 and t.device.type == device for t in cache.k + cache.v)


def _reference_attention(q, k, v, allowed):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("prefix", [0, 5])
def test_sdpa_masks_equal_the_boolean_reference(device, prefix):
    g = torch.Generator().manual_seed(0)
    B, H, nq, d = 2, 2, 6, 8
    nk = prefix + nq
    q, k, v = (torch.randn(B, H, n, d, generator=g, dtype=torch.float64).to(device) for n in (nq, nk, nk))
    chunk = torch.rand(B, nq, nq, generator=g).to(device) < 0.6
    chunk |= torch.eye(nq, dtype=torch.bool, device=device)  # every query sees itself
    causal = torch.ones(nq, nq, dtype=torch.bool, device=device).tril()[None]
    seen = torch.ones(B, nq, prefix, dtype=torch.bool, device=device)
    for mask, allowed in ((None, torch.ones(1, nq, nk, dtype=torch.bool, device=device)),
                          ("causal", torch.cat([seen[:1], causal], -1)),
                          (chunk, torch.cat([seen, chunk], -1))):
        attn_mask, is_causal = _sdpa_mask(mask, nq, nk, prefix, device)
        if attn_mask is not None:
            assert attn_mask.device.type == device
        got = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        torch.testing.assert_close(got, _reference_attention(q, k, v, allowed[:, None]))


def _count_host_syncs(fn):
    """Calls that copy a tensor value to the host (int(t), t.item(), t.tolist(), ...), by caller."""
    counts: collections.Counter = collections.Counter()
    names = ("__int__", "__float__", "__bool__", "__index__", "item", "tolist", "cpu", "numpy")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def counting(name):
        def call(self, *args, **kwargs):
            where = [f for f in traceback.extract_stack()[:-1] if "/esolm/" in f.filename or "/baselines/" in f.filename]
            if where:
                counts[f"{where[-1].filename.rsplit('/', 1)[-1]}:{where[-1].name}"] += 1
            return saved[name](self, *args, **kwargs)
        return call

    try:
        for n in names:
            setattr(torch.Tensor, n, counting(n))
        fn()
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)
    return counts


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,steps", [("esolm-b", 8), ("ar", 1)])
def test_the_sampling_loop_makes_no_host_syncs(device, name, steps):
    """Eso-LM (B) and AR: no host sync per step. Allowed: the plan before the loop (the step
    sizes, schedules.py) and, on CPU only, Rotary.tables growing its table (its CUDA path
    checks the bound on the device instead)."""
    m = model(name, device, torch.float32)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        counts = _count_host_syncs(lambda: m.sample(4, steps=steps, generator=g))
    allowed = {"schedules.py:binomial_schedule"} | ({"backbone.py:tables"} if device == "cpu" else set())
    assert {k: v for k, v in counts.items() if k not in allowed} == {}, counts


@pytest.mark.parametrize("device", DEVICES)
def test_clock_synchronizes_the_device_around_the_timed_region(device, monkeypatch):
    import esolm.interface as interface

    calls = []
    real = interface.sync
    monkeypatch.setattr(interface, "sync", lambda dev: (calls.append(torch.device(dev).type), real(dev)))
    clock = Clock(device)
    with clock.region():
        if device == "cuda":
            torch.cuda._sleep(50_000_000)  # queued GPU work: ~tens of ms that only a sync waits for
    assert calls == [device, device]
    if device == "cuda":
        assert clock.seconds > 0.005, clock.seconds  # the region waited for the GPU
    t0 = time.perf_counter()
    with clock.region(enabled=False):
        pass
    assert calls == [device, device] and time.perf_counter() - t0 < 1
