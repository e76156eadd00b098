"""The DiT backbone shared by every model (spec 2), read top to bottom as the spec's ladder:
RoPE -> LayerNorm -> conditioning -> attention -> block -> Backbone (embeddings, blocks,
final layer, LM head); then, apart, the inference mode and its measured CPU fast paths.

Attention always takes an explicit boolean mask (True = may attend) or the string
"causal"; positions are an explicit input, so permuted and partial inputs work. A KV
cache (esolm/kv_cache.py) is reached only through its ``update`` method.
"""
from __future__ import annotations

import functools
import math
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from esolm.config import ConfigError, ModelConfig
from esolm.kv_cache import KVCache

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


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the blocks compute in: autocast's where it is on, else ``x``'s."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


# ------------------------------------------------------------------- LayerNorm (2.2)
class LayerNorm(nn.Module):
    """Bias-free LayerNorm with a learned weight, computed in (at least) float32."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """``weight``/``bias`` replace the learned weight (AdaLN folded in: the inference mode)."""
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


# ------------------------------------------------------------------ attention (2.2)
def _sdpa_mask(mask, nq: int, nk: int, prefix: int, device):
    """Turn a chunk mask (None | "causal" | bool [B|1, nq, nq]) into SDPA's argument, given
    ``prefix`` cached keys before the chunk's (``nk = prefix + nq`` keys in all)."""
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


def call_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``: how the plain forward applies a projection (the inference mode swaps it)."""
    return layer(x)


class Attention(nn.Module):
    """Steps 3-6 of 2.2: qkv (no bias) -> RoPE on q, k -> masked SDPA -> output projection."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, h, cos, sin, mask, cache: KVCache | None = None, layer: int = 0, proj=call_layer):
        """``cache``: attend to its committed slots too, through ``cache.update(layer, k, v)``."""
        B, N, _ = h.shape
        qkv = proj(self.qkv, h).view(B, N, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        (q, k), v = apply_rope(qkv[:2], cos, sin), qkv[2]  # q and k rotated together
        if cache is not None:
            k, v = cache.update(layer, k, v)
        attn_mask, causal = _sdpa_mask(mask, N, k.shape[2], k.shape[2] - N, h.device)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)
        return proj(self.out, o.transpose(1, 2).reshape(B, N, -1))


# ---------------------------------------------------------------------- block (2.2)
class Block(nn.Module):
    """Pre-norm block with AdaLN (steps 1-10 of 2.2); without AdaLN (AR) no modulation, gates 1."""

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

    def forward(self, x, c, cos, sin, mask, cache=None, layer=0):
        """x [B, N, d]; c [B|1, cond_dim] the conditioning (None without AdaLN)."""
        if self.adaln is None:
            x = x + self.dropout(self.attn(self.norm1(x), cos, sin, mask, cache, layer))
            return x + self.dropout(self.mlp(self.norm2(x)))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaln(c)[:, None].chunk(6, dim=-1)
        h = self.attn(modulate(self.norm1(x), shift1, scale1), cos, sin, mask, cache, layer)
        x = x + gate1 * self.dropout(h)
        h = self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x + gate2 * self.dropout(h)


# ------------------------------------------------------------------- backbone (2.2)
def select(x: torch.Tensor, last: int | None, at: torch.Tensor | None) -> torch.Tensor:
    """The rows the LM head runs on: the last ``last``, or those at indices ``at`` [B, k]."""
    if last is not None:
        return x[:, -last:]
    if at is not None:
        return torch.gather(x, 1, at[..., None].expand(-1, -1, x.shape[-1]))
    return x


def finish_logits(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Logits out of the low-precision region (float32), the mask logit at -1e6 (2.2, 13)."""
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()
    logits[..., mask_id] = MASK_LOGIT
    return logits


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
        self._inference: InferenceMode | None = None  # set inside ``inference()``

    def conditioning(self, sigma: torch.Tensor | None = None) -> torch.Tensor | None:
        """c = SiLU(MLP(sinusoid(sigma))) [B or 1, cond_dim] (2.4); None without AdaLN.

        ``sigma`` [B] (or [1]); None is sigma = 0, what every model here feeds. A nonzero
        sigma serves time-conditioned models (SEDD-, DUO-style) and the parity checks."""
        if self.sigma_embed is None:
            if sigma is not None:
                raise ConfigError("this backbone has no AdaLN (adaln=False), so it takes no sigma; drop sigma=")
            return None
        device = self.head.weight.device
        sigma = torch.zeros(1, device=device) if sigma is None else sigma.reshape(-1).to(device)
        return self.sigma_embed(sigma)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty KV cache for ``batch`` rows of up to ``max_len`` slots, in the compute dtype."""
        p = self.head.weight
        return KVCache(self.cfg.n_layers, batch, max_len, self.cfg.n_heads, self.cfg.head_dim,
                       compute_dtype(p), p.device)

    @contextmanager
    def inference(self):
        """The inference mode: autograd off, and the measured CPU fast paths of InferenceMode
        (the same logits as the plain forward up to float rounding; tested equal).

        Entering folds AdaLN from the weights as they are then; every entry, nested ones too,
        folds afresh, so a weight changed inside the mode is seen from the next entry on. The
        sampling and likelihood entry points (``nll``, ``sample``, the clip search, through
        ``in_inference_mode``) run in it; training runs the plain forward."""
        outer = self._inference
        with torch.no_grad():
            self._inference = InferenceMode(self)
            try:
                yield self
            finally:
                self._inference = outer

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
        sigma: time conditioning [B] (or [1]) for the AdaLN embedding; None is sigma = 0 (2.4).
        """
        if self._inference is not None and self._inference.serves(tokens, sigma):
            return self._inference.forward(tokens, positions, mask, cache, last, at)
        x = self.embed(tokens)
        cos, sin = self.rotary.tables(positions, compute_dtype(x))
        c = self.conditioning(sigma)
        for i, block in enumerate(self.blocks):
            x = block(x, c, cos, sin, mask, cache, i)
        h = self.norm_final(select(x, last, at))
        if self.final_adaln is not None:
            h = modulate(h, *self.final_adaln(c)[:, None].chunk(2, dim=-1))
        return finish_logits(self.head(h), self.cfg.mask_id)


def in_inference_mode(method):
    """Decorator for a model method (``nll``, ``sample``): run it in ``self.backbone.inference()``."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self.backbone.inference():
            return method(self, *args, **kwargs)
    return run


# ----------------------------------------------------------- inference mode (8.6)
SMALL_ROWS = 8  # rows (batch x tokens fed) of a batch-1 sampling step: AR 1, Eso-LM 2, BD3-LM L'


def small_batch_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
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


class InferenceMode:
    """Backbone.forward for ``Backbone.inference()``: the same ladder with three measured CPU
    fast paths, for calls without autograd or autocast at sigma = 0 (any other call, inside
    the mode too, runs the plain forward):

    * AdaLN folded into the norms: with sigma = 0, AdaLN's outputs are constants of the
      weights, and LN(x) * (1 + scale) + shift is LayerNorm with weight w * (1 + scale) and
      bias shift; each block gets (w1, b1, gate1, w2, b2, gate2), the final layer (w, b),
      computed once on entry (``fold``) and applied with ``addcmul``;
    * every projection through ``small_batch_linear`` (the batch-1 BLAS layout);
    * dropout skipped outright in eval (a module call per use costs ~5 us, 16 per step of a
      batch-1 sampler).
    """

    def __init__(self, net: Backbone):
        self.net = net
        self.folded = self.fold(net) if net.sigma_embed is not None else None

    @staticmethod
    def fold(net: Backbone) -> list[tuple[torch.Tensor, ...]]:
        """Per block (w1, b1, gate1, w2, b2, gate2), then (w, b) of the final layer (sigma = 0)."""
        dev = net.head.weight.device.type
        with torch.autocast(device_type=dev, enabled=False) if torch.is_autocast_enabled(dev) else nullcontext():
            c = net.conditioning()
            folded = []
            for b in net.blocks:
                shift1, scale1, gate1, shift2, scale2, gate2 = b.adaln(c)[0].chunk(6)
                folded.append((b.norm1.weight * (1 + scale1), shift1, gate1,
                               b.norm2.weight * (1 + scale2), shift2, gate2))
            shift, scale = net.final_adaln(c)[0].chunk(2)
            folded.append((net.norm_final.weight * (1 + scale), shift))
        return folded

    def serves(self, tokens: torch.Tensor, sigma) -> bool:
        return sigma is None and not torch.is_grad_enabled() and not torch.is_autocast_enabled(tokens.device.type)

    def forward(self, tokens, positions, mask, cache, last, at) -> torch.Tensor:
        net = self.net
        x = net.embed(tokens)
        cos, sin = net.rotary.tables(positions, x.dtype)
        for i, block in enumerate(net.blocks):
            x = self.block(block, i, x, cos, sin, mask, cache)
        x = select(x, last, at)
        h = net.norm_final(x) if self.folded is None else net.norm_final(x, *self.folded[-1])
        return finish_logits(small_batch_linear(net.head, h), net.cfg.mask_id)

    def block(self, block: Block, i: int, x, cos, sin, mask, cache) -> torch.Tensor:
        """Block.forward with AdaLN folded in and the small-batch projections."""
        drop, proj = self.drop, small_batch_linear
        if self.folded is None:
            x = x + drop(block, block.attn(block.norm1(x), cos, sin, mask, cache, i, proj))
            return x + drop(block, self.feed_forward(block, block.norm2(x)))
        w1, b1, gate1, w2, b2, gate2 = self.folded[i]
        h = block.attn(block.norm1(x, w1, b1), cos, sin, mask, cache, i, proj)
        x = torch.addcmul(x, gate1, drop(block, h))
        return torch.addcmul(x, gate2, drop(block, self.feed_forward(block, block.norm2(x, w2, b2))))

    @staticmethod
    def drop(block: Block, h: torch.Tensor) -> torch.Tensor:
        return block.dropout(h) if block.training else h

    @staticmethod
    def feed_forward(block: Block, h: torch.Tensor) -> torch.Tensor:
        up, act, down = block.mlp
        return small_batch_linear(down, act(small_batch_linear(up, h)))
