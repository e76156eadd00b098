"""The KV cache's interface (esolm/kv_cache.py): update writes a provisional chunk after the
committed slots, commit moves the boundary, and the samplers and attention reach the cache
only through these methods (spec 4.3, 6.4, 7.8)."""
import pytest
import torch

from esolm import registry
from esolm.kv_cache import KVCache


def test_update_returns_the_committed_slots_then_the_chunk_and_commit_keeps_them():
    cache = KVCache(n_layers=2, batch=1, max_len=6, n_heads=1, head_dim=2, dtype=torch.float64,
                    device=torch.device("cpu"))
    chunk = lambda value, n: torch.full((1, 1, n, 2), float(value), dtype=torch.float64)  # noqa: E731
    k, v = cache.update(0, chunk(1, 3), chunk(-1, 3))
    assert k.shape == (1, 1, 3, 2) and torch.all(k == 1) and torch.all(v == -1)
    cache.commit(2)  # the chunk's first two slots are final, the third provisional
    k, v = cache.update(0, chunk(2, 2), chunk(-2, 2))  # overwrites the provisional slot
    assert cache.length == 2 and k[0, 0, :, 0].tolist() == [1, 1, 2, 2]
    assert cache.update(1, chunk(7, 1), chunk(7, 1))[0].shape[2] == 3  # layers are apart
    with pytest.raises(ValueError, match="overflow"):
        cache.update(0, chunk(3, 5), chunk(3, 5))
    with pytest.raises(ValueError, match="commit"):
        cache.commit(5)
    cache.reset()
    assert cache.length == 0


class InterfaceOnly:
    """A KV cache that exposes its interface and nothing else: no buffers to index."""

    def __init__(self, cache: KVCache):
        self._cache = cache

    update, commit = (lambda self, *a: self._cache.update(*a)), (lambda self, n: self._cache.commit(n))
    length = property(lambda self: self._cache.length)
    dtype = property(lambda self: self._cache.dtype)
    device = property(lambda self: self._cache.device)


@pytest.mark.parametrize("name, steps, kw", [("ar", 1, {}), ("bd3lm", 16, {}), ("esolm-b", 4, {"alpha_0": 0.5}),
                                            ("esolm-a", 4, {"alpha_0": 0.5})])
def test_samplers_and_attention_reach_the_cache_only_through_its_interface(name, steps, kw):
    """Sampling with a cache that hides its buffers draws what sampling with the real one does."""
    model = registry.build(name, preset="smoke", vocab_size=37, length=16, dropout=0.0, **kw).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    run = lambda: model.sample(2, steps=steps, generator=torch.Generator().manual_seed(3))  # noqa: E731
    real = run()
    new_cache = model.backbone.new_cache
    wrapped = []
    model.backbone.new_cache = lambda *a: wrapped.append(1) or InterfaceOnly(new_cache(*a))
    hidden = run()
    assert wrapped and torch.equal(hidden.tokens, real.tokens) and hidden.nfe == real.nfe
