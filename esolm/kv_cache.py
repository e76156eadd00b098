"""The KV cache of chunked decoding (spec 4.3 AR, 6.4 BD3-LM, 7.8 Eso-LM).

A cache holds, for every layer, the keys and values of the slots decoded so far. The first
``length`` slots are *committed*: final, attended to by every later pass without restriction.
A forward pass with a cache feeds a chunk of N tokens; each attention layer calls
``update(layer, k, v)``, which writes the chunk's K/V right after the committed slots and
returns the keys/values to attend over (committed slots, then the chunk). The chunk stays
*provisional*: the next pass overwrites it, unless ``commit(n)`` first makes its first n slots
committed. That is the whole interface: attention calls ``update``, the samplers call
``commit`` (and read ``length``); neither reaches into the buffers.

    cache = backbone.new_cache(batch, max_len)
    logits = backbone(chunk, positions, mask, cache=cache)  # every layer: cache.update(...)
    cache.commit(n)  # the chunk's first n tokens are final

The layout is [B, H, slot, d_h] per layer, the one scaled_dot_product_attention takes.
"""
from __future__ import annotations

import torch


class KVCache:
    """Per-layer key/value buffers [B, H, max_len, d_h] with ``length`` committed slots."""

    def __init__(self, n_layers: int, batch: int, max_len: int, n_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch, n_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]  # buffers: read by
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]  # tests only
        self.max_len = max_len
        self._length = 0

    @property
    def length(self) -> int:
        """Committed slots: ``update`` writes after them, ``commit`` moves the boundary."""
        return self._length

    @property
    def dtype(self) -> torch.dtype:
        return self.k[0].dtype

    @property
    def device(self) -> torch.device:
        return self.k[0].device

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this pass's chunk k, v [B, H, N, d_h] of ``layer`` at slots [length, length + N);
        return (keys, values) [B, H, length + N, d_h]: the committed slots, then the chunk."""
        start, end = self._length, self._length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {self._length} committed slots + a chunk of {k.shape[2]} "
                             f"> max_len={self.max_len}")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def commit(self, n: int) -> None:
        """The first ``n`` slots after the committed ones (the last chunk's first n) become final."""
        if n < 0 or self._length + n > self.max_len:
            raise ValueError(f"cannot commit {n} slots: {self._length} of max_len={self.max_len} are committed")
        self._length += n

    def reset(self) -> None:
        """Forget every slot (the buffers are reused)."""
        self._length = 0
