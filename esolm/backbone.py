"""The DiT backbone shared by every model (spec 2), read top to bottom:
RoPE -> LayerNorm -> conditioning -> attention -> block -> KV cache -> Backbone.

Attention always takes an explicit boolean mask (True = may attend) or the string
"causal"; positions are an explicit input, so permuted and partial inputs work.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from esolm.config import ConfigError, ModelConfig

MASK_LOGIT = -1e6  # the mask token's logit, everywhere (spec 1.1, 13)


# --------------------------------------------------------------------------- RoPE (2.3)
class Rotary(nn.Module):
    """Rotate-half RoPE over the whole head dimension, indexed by original position.

    The tables cover ``length`` positions from the start (row p depends on p only, so a table
    grown later holds the same values). On CPU a longer input grows them; on CUDA the bound
    is checked on the device (``_assert_async``): no host sync per forward pass, and a
    position beyond the table fails loudly instead of reading garbage."""

    def __init__(self, head_dim: int, base: float = 10000.0, length: int = 0):
        super().__init__()
        self.head_dim, self.base = head_dim, base
        self.register_buffer("_cos", torch.empty(0, head_dim, dtype=torch.float64), persistent=False)
        self.register_buffer("_sin", torch.empty(0, head_dim, dtype=torch.float64), persistent=False)
        if length > 0:
            self._grow(length)

    def _grow(self, n: int) -> None:
        half = self.head_dim // 2
        inv = self.base ** (-torch.arange(half, dtype=torch.float64, device=self._cos.device) * 2 / self.head_dim)
        theta = torch.arange(n, dtype=torch.float64, device=self._cos.device)[:, None] * inv[None]
        theta = torch.cat([theta, theta], dim=-1)
        self._cos, self._sin = theta.cos(), theta.sin()

    def tables(self, positions: torch.Tensor, dtype: torch.dtype):
        """cos, sin of shape [B or 1, 1, N, d_h] for integer ``positions`` [B, N] or [N]."""
        if positions.is_cuda and self._cos.shape[0] > 0:
            if positions.numel():
                torch._assert_async(positions.max() < self._cos.shape[0],
                                    "RoPE position beyond the model's length (Rotary tables)")
        else:
            need = int(positions.max()) + 1 if positions.numel() else 1
            if need > self._cos.shape[0]:
                self._grow(max(need, 2 * self._cos.shape[0]))
        if positions.dim() == 1:
            positions = positions[None]
        cos, sin = self._cos[positions], self._sin[positions]
        return cos.to(dtype)[:, None], sin.to(dtype)[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


# ------------------------------------------------------------------- LayerNorm (2.2)
class LayerNorm(nn.Module):
    """Bias-free LayerNorm with a learned weight, computed in (at least) float32."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """``weight``/``bias`` replace the learned weight (AdaLN folded in, see Backbone.conditioning)."""
        compute = torch.promote_types(x.dtype, torch.float32)
        w = self.weight if weight is None else weight
        dev = x.device.type  # leave autocast only where it is on (entering the context costs)
        with torch.autocast(device_type=dev, enabled=False) if torch.is_autocast_enabled(dev) else nullcontext():
            return F.layer_norm(x.to(compute), (x.shape[-1],), w.to(compute),
                                None if bias is None else bias.to(compute), 1e-5)


# ------------------------------------------------------------- conditioning (2.2, 2.4)
class SigmaEmbedding(nn.Module):
    """sigma -> SiLU(MLP(sinusoid(sigma))); the models always feed sigma = 0."""

    def __init__(self, cond_dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half)
        args = sigma.float()[:, None] * freqs[None]
        feats = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(self.mlp[0].weight.dtype)
        return F.silu(self.mlp(feats))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


# ---------------------------------------------------------- small-batch linear (8.6)
SMALL_ROWS = 8  # rows (batch x tokens fed) of a batch-1 sampling step: AR 1, Eso-LM 2, BD3-LM L'


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for every linear layer of a batch-1 sampling step (no autograd, CPU, at most
    SMALL_ROWS rows), through the BLAS call that is fastest there: (W @ X^T)^T, a product on the
    weight [out, in] as it is stored and the rows as a transposed view, with a single row
    doubled (2 columns run MKL's fast path; 1 column falls back to a slow GEMV). Measured on
    the 2-core CPU of docs/benchmarks.md, per batch-1 step of the tiny backbone with its
    V = 50258 head: 2 rows 3.2 ms against nn.Linear's 7.2 ms, 1 row 4.2 against 5.4. The
    result is the same product (tested equal to nn.Linear); anything else goes to nn.Linear."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if (not 0 < rows <= SMALL_ROWS or x.device.type != "cpu" or torch.is_grad_enabled()
            or torch.is_autocast_enabled("cpu")):
        return layer(x)
    w, b, x2 = layer.weight, layer.bias, x.reshape(rows, x.shape[-1])
    if rows == 1:
        x2 = torch.cat([x2, x2])
    out = torch.mm(w, x2.t()) if b is None else torch.addmm(b[:, None], w, x2.t())
    return out.t()[:rows].contiguous().view(*x.shape[:-1], out.shape[0])


# ------------------------------------------------------------------- KV cache (7.8)
class KVCache:
    """Per-layer key/value buffers [B, H, max_len, d_h], written by slot.

    A forward pass with a cache attends to committed slots ``[0, length)`` without
    restriction plus the fed chunk (under the chunk mask), and writes the chunk's
    K/V at ``[length, length + N)``. ``advance(n)`` commits the first ``n`` of them;
    the rest are provisional and get overwritten by the next pass.
    """

    def __init__(self, n_layers: int, batch: int, max_len: int, n_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch, n_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.length = 0
        self.max_len = max_len

    def advance(self, n: int) -> None:
        self.length += n
        assert self.length <= self.max_len, "KV cache overflow"

    def reset(self) -> None:
        self.length = 0


# ------------------------------------------------------------------ attention (2.2)
def _sdpa_mask(mask, nq: int, nk: int, prefix: int, device):
    """Turn a chunk mask (None | "causal" | bool [B|1, nq, nq]) into SDPA's argument."""
    if prefix == 0:
        if mask is None or isinstance(mask, str):
            return None, mask == "causal"
        return mask[:, None], False
    if mask is None:
        return None, False
    if not isinstance(mask, str) and mask.shape[-1] == prefix + nq:  # already spans prefix + chunk
        return mask[:, None], False
    if isinstance(mask, str):  # causal inside the chunk, everything in the prefix
        mask = torch.ones(nq, nq, dtype=torch.bool, device=device).tril()[None]
    full = torch.ones(mask.shape[0], nq, prefix, dtype=torch.bool, device=device)
    return torch.cat([full, mask], dim=-1)[:, None], False


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, h, cos, sin, mask, cache: KVCache | None = None, layer: int = 0):
        B, N, _ = h.shape
        qkv = linear(self.qkv, h).view(B, N, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        (q, k), v = apply_rope(qkv[:2], cos, sin), qkv[2]  # q and k rotated together
        prefix = 0
        if cache is not None:
            prefix = cache.length
            cache.k[layer][:, :, prefix:prefix + N] = k
            cache.v[layer][:, :, prefix:prefix + N] = v
            k, v = cache.k[layer][:, :, :prefix + N], cache.v[layer][:, :, :prefix + N]
        attn_mask, causal = _sdpa_mask(mask, N, prefix + N, prefix, h.device)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)
        return linear(self.out, o.transpose(1, 2).reshape(B, N, -1))


# ---------------------------------------------------------------------- block (2.2)
class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.norm1, self.norm2 = LayerNorm(d), LayerNorm(d)
        self.attn = Attention(cfg)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.mlp_ratio * d, d))
        self.dropout = nn.Dropout(cfg.dropout)
        self.adaln = nn.Linear(cfg.cond_dim, 6 * d) if cfg.adaln else None
        if self.adaln is not None:  # adaLN-zero: every block starts as the identity
            nn.init.zeros_(self.adaln.weight)
            nn.init.zeros_(self.adaln.bias)

    def drop(self, h):
        """Dropout, not called in eval, where it is the identity (a module call per use costs
        ~5 us, 16 per step of a batch-1 sampler)."""
        return self.dropout(h) if self.training else h

    def feed_forward(self, h):
        up, act, down = self.mlp
        return linear(down, act(linear(up, h)))

    def forward(self, x, c, cos, sin, mask, cache=None, layer=0):
        if isinstance(c, tuple):  # AdaLN folded into the norms (Backbone.conditioning)
            w1, b1, gate1, w2, b2, gate2 = c
            h = self.attn(self.norm1(x, w1, b1), cos, sin, mask, cache, layer)
            x = torch.addcmul(x, gate1, self.drop(h))
            return torch.addcmul(x, gate2, self.drop(self.feed_forward(self.norm2(x, w2, b2))))
        if self.adaln is not None:
            shift1, scale1, gate1, shift2, scale2, gate2 = self.adaln(c)[:, None].chunk(6, dim=-1)
            h = modulate(self.norm1(x), shift1, scale1)
            x = x + gate1 * self.drop(self.attn(h, cos, sin, mask, cache, layer))
            h = modulate(self.norm2(x), shift2, scale2)
            return x + gate2 * self.drop(self.feed_forward(h))
        x = x + self.drop(self.attn(self.norm1(x), cos, sin, mask, cache, layer))
        return x + self.drop(self.feed_forward(self.norm2(x)))


# ------------------------------------------------------------------- backbone (2.2)
class Backbone(nn.Module):
    """Tokens + positions + mask (+ optional KV cache) -> logits with the mask logit at -1e6."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.kaiming_uniform_(self.embed.weight, a=math.sqrt(5))
        self.sigma_embed = SigmaEmbedding(cfg.cond_dim) if cfg.adaln else None
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base, cfg.length)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm_final = LayerNorm(cfg.d_model)
        self.final_adaln = nn.Linear(cfg.cond_dim, 2 * cfg.d_model) if cfg.adaln else None
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)  # untied, with bias
        for layer in (self.final_adaln, self.head):
            if layer is not None:  # initial logits are exactly 0
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def conditioning(self, device):
        """(c, folded) for sigma = 0 (spec 2.4). With autograd off, AdaLN's outputs are
        constants of the weights: LN(x) * (1 + scale) + shift is LayerNorm with weight
        w * (1 + scale) and bias shift, so each block gets (w1, b1, gate1, w2, b2, gate2)
        and the final layer (w, b), computed once and reused until one of the weights
        involved changes (seen through data_ptr and version counters; a write through
        ``.data`` bypasses those: set ``_cond_memo = None`` after one). With autograd on,
        folded is None and every block applies its AdaLN."""
        if self.sigma_embed is None:
            return None, None
        if torch.is_grad_enabled() or torch.is_autocast_enabled(torch.device(device).type):
            return self.sigma_embed(torch.zeros(1, device=device)), None
        modules = getattr(self, "_cond_modules", None)
        if modules is None:
            modules = self._cond_modules = [*self.sigma_embed.mlp[::2], self.final_adaln, self.norm_final,
                                            *(m for b in self.blocks for m in (b.adaln, b.norm1, b.norm2))]
        key = (torch.device(device), tuple((p.data_ptr(), p._version, p.dtype) for m in modules
                                           for p in (m.weight, getattr(m, "bias", None)) if p is not None))
        memo = getattr(self, "_cond_memo", None)
        if memo is None or memo[0] != key:
            c = self.sigma_embed(torch.zeros(1, device=device))
            folded = []
            for b in self.blocks:
                shift1, scale1, gate1, shift2, scale2, gate2 = b.adaln(c)[0].chunk(6)
                folded.append((b.norm1.weight * (1 + scale1), shift1, gate1,
                               b.norm2.weight * (1 + scale2), shift2, gate2))
            shift, scale = self.final_adaln(c)[0].chunk(2)
            folded.append((self.norm_final.weight * (1 + scale), shift))
            memo = self._cond_memo = (key, c, folded)
        return memo[1], memo[2]

    def time_conditioning(self, sigma: torch.Tensor) -> torch.Tensor:
        """c = SiLU(MLP(sinusoid(sigma))) [B, cond] for an explicit sigma [B] (unfolded AdaLN)."""
        if self.sigma_embed is None:
            raise ConfigError("this backbone has no AdaLN (adaln=False), so it takes no sigma; drop sigma=")
        return self.sigma_embed(sigma.reshape(-1).to(self.head.weight.device))

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        p = self.head.weight
        return KVCache(self.cfg.n_layers, batch, max_len, self.cfg.n_heads, self.cfg.head_dim,
                       torch.get_autocast_dtype(p.device.type) if torch.is_autocast_enabled(p.device.type)
                       else p.dtype, p.device)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, mask=None,
                cache: KVCache | None = None, last: int | None = None,
                at: torch.Tensor | None = None, sigma: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, N or last, V].

        tokens [B, N]; positions [B, N] or [N] (original indices, for RoPE);
        mask: None (bidirectional), "causal", or bool [B|1, N, N] (True = may attend);
            with a cache also a bool or additive float mask [B|1, N, prefix + N] over all keys;
        cache: attend to its committed slots and write this chunk's K/V after them;
        last: only compute logits for the last ``last`` positions;
        at: or only at the positions ``at`` [B, k] (indices into the N fed tokens);
        sigma: time conditioning [B] (or [1]) fed to the AdaLN embedding; None is sigma = 0,
            what every model here feeds (spec 2.4). A nonzero sigma serves time-conditioned
            models (SEDD-, DUO-style) and the parity checks of imported weights.
        """
        x = self.embed(tokens)
        cos, sin = self.rotary.tables(positions, x.dtype if not torch.is_autocast_enabled(x.device.type)
                                      else torch.get_autocast_dtype(x.device.type))
        c, mods = self.conditioning(tokens.device) if sigma is None else (self.time_conditioning(sigma), None)
        for i, block in enumerate(self.blocks):
            x = block(x, mods[i] if mods else c, cos, sin, mask, cache, i)
        if last is not None:
            x = x[:, -last:]
        elif at is not None:
            x = torch.gather(x, 1, at[..., None].expand(-1, -1, x.shape[-1]))
        if mods:
            h = self.norm_final(x, *mods[-1])
        else:
            h = self.norm_final(x)
            if self.final_adaln is not None:
                h = modulate(h, *self.final_adaln(c)[:, None].chunk(2, dim=-1))
        logits = linear(self.head, h)
        if logits.dtype in (torch.bfloat16, torch.float16):
            logits = logits.float()
        logits[..., self.cfg.mask_id] = MASK_LOGIT
        return logits
