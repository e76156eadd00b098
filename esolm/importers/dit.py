"""The authors' DiT weights -> ``esolm.backbone.Backbone`` (spec 2; fixture README section 1).

MDLM, BD3-LM and Eso-LMs share one DiT whose parameters are named ``backbone.<name>``. This
module renames them, infers the architecture from their shapes, checks every shape and refuses
any key it does not know, so no weight is dropped and none is left at its initial value.

    authors' name (after ``backbone.``)      esolm name
    vocab_embed.embedding                    embed.weight
    sigma_map.mlp.{0,2}.*                    sigma_embed.mlp.{0,2}.*
    blocks.i.attn_qkv / attn_out             blocks.i.attn.qkv / attn.out
    blocks.i.adaLN_modulation                blocks.i.adaln
    blocks.i.norm{1,2}, blocks.i.mlp.*       unchanged
    output_layer.norm_final                  norm_final
    output_layer.linear                      head
    output_layer.adaLN_modulation            final_adaln
    rotary_emb.inv_freq                      checked against base 10000, then dropped
"""
from __future__ import annotations

import re

import torch

from esolm.config import ConfigError

FREQ_DIM = 256  # sigma_map's sinusoidal features (cos, sin of 128 frequencies)
ROPE_BASE = 10000.0

_RULES = [  # (authors' regex, esolm template)
    (r"vocab_embed\.embedding", "embed.weight"),
    (r"sigma_map\.mlp\.([02])\.(weight|bias)", r"sigma_embed.mlp.\1.\2"),
    (r"blocks\.(\d+)\.norm([12])\.weight", r"blocks.\1.norm\2.weight"),
    (r"blocks\.(\d+)\.attn_qkv\.weight", r"blocks.\1.attn.qkv.weight"),
    (r"blocks\.(\d+)\.attn_out\.weight", r"blocks.\1.attn.out.weight"),
    (r"blocks\.(\d+)\.mlp\.([02])\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"blocks\.(\d+)\.adaLN_modulation\.(weight|bias)", r"blocks.\1.adaln.\2"),
    (r"output_layer\.norm_final\.weight", "norm_final.weight"),
    (r"output_layer\.linear\.(weight|bias)", r"head.\1"),
    (r"output_layer\.adaLN_modulation\.(weight|bias)", r"final_adaln.\1"),
]
_RULES = [(re.compile(p + r"\Z"), t) for p, t in _RULES]
INV_FREQ = "rotary_emb.inv_freq"


def strip_prefixes(state: dict, source: str, extras: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """(backbone weights without ``backbone.`` / ``_orig_mod.``, extra top-level entries).

    ``_orig_mod.`` appears when a model was saved after ``torch.compile`` (bd3lms strips it too).
    Top-level entries named in ``extras`` are returned apart; any other non-backbone key is an error."""
    backbone, other = {}, {}
    for key, value in state.items():
        k = key.replace("_orig_mod.", "")
        if k.startswith("backbone."):
            backbone[k[len("backbone."):]] = value
        elif k in extras:
            other[k] = value
        else:
            raise ConfigError(f"{source}: unexpected key {key!r}: not part of the authors' DiT backbone "
                              f"(expected backbone.* names); is this an MDLM / BD3-LM / Eso-LM checkpoint?")
    if not backbone:
        raise ConfigError(f"{source}: no backbone.* weights found; this is not an MDLM / BD3-LM / Eso-LM "
                          f"checkpoint")
    return backbone, other


def rename(weights: dict, source: str) -> dict:
    """Authors' names -> Backbone names; ``inv_freq`` is checked and dropped; unknown keys are errors."""
    out = {}
    for key, value in weights.items():
        if key == INV_FREQ:
            continue
        for pattern, template in _RULES:
            if pattern.match(key):
                out[pattern.sub(template, key)] = value
                break
        else:
            raise ConfigError(f"{source}: unrecognised weight 'backbone.{key}' {tuple(value.shape)}: the "
                              f"importer knows the DiT of MDLM / BD3-LM / Eso-LMs (fixture README, section 2) "
                              f"and leaves nothing unmapped")
    return out


def infer_architecture(weights: dict, source: str, n_heads: int | None = None) -> dict:
    """d_model, n_layers, n_heads, cond_dim, mlp_ratio, vocab_size from the weights' shapes;
    ``n_heads`` (from the config) must agree with the RoPE buffer when both are there."""
    def need(key):
        if key not in weights:
            raise ConfigError(f"{source}: missing weight 'backbone.{key}'; the file is incomplete or not a DiT")
        return weights[key]

    V, d = need("vocab_embed.embedding").shape
    cond, freq = need("sigma_map.mlp.0.weight").shape
    if freq != FREQ_DIM:
        raise ConfigError(f"{source}: backbone.sigma_map.mlp.0.weight has {freq} inputs; the DiT's timestep "
                          f"embedding has {FREQ_DIM} sinusoidal features")
    layers = sorted({int(m.group(1)) for k in weights if (m := re.match(r"blocks\.(\d+)\.", k))})
    if not layers or layers != list(range(len(layers))):
        raise ConfigError(f"{source}: transformer blocks {layers} are not numbered 0..n-1; blocks are missing")
    hidden = need("blocks.0.mlp.0.weight").shape[0]
    if hidden % d:
        raise ConfigError(f"{source}: backbone.blocks.0.mlp.0.weight is {hidden} x {d}, not a multiple of d={d}")
    heads = n_heads
    if INV_FREQ in weights:
        inv = weights[INV_FREQ].float()
        head_dim = 2 * inv.numel()
        if d % head_dim:
            raise ConfigError(f"{source}: backbone.{INV_FREQ} has {inv.numel()} entries (head_dim {head_dim}), "
                              f"which does not divide d={d}")
        want = ROPE_BASE ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        if not torch.allclose(inv, want, rtol=1e-5, atol=1e-7):
            raise ConfigError(f"{source}: backbone.{INV_FREQ} is not the base-{ROPE_BASE:g} RoPE of head_dim "
                              f"{head_dim}; the harness recomputes RoPE with base 10000 and cannot take it")
        if heads is not None and heads != d // head_dim:
            raise ConfigError(f"{source}: the config says n_heads={heads} but backbone.{INV_FREQ} implies "
                              f"{d // head_dim} heads of dimension {head_dim}")
        heads = d // head_dim
    if heads is None:
        raise ConfigError(f"{source}: cannot tell the number of heads (no n_heads in the config and no "
                          f"backbone.{INV_FREQ}); pass n_heads=H")
    return dict(vocab_size=int(V), d_model=int(d), n_layers=len(layers), n_heads=int(heads),
                cond_dim=int(cond), mlp_ratio=hidden // d)


def load_into(backbone: torch.nn.Module, mapped: dict, source: str) -> None:
    """Copy ``mapped`` into ``backbone``: every key present, every shape equal, nothing left over."""
    target = backbone.state_dict()
    inverse = _authors_names(target)
    for key, value in mapped.items():
        if key not in target:
            raise ConfigError(f"{source}: weight {key!r} has no place in the harness backbone")
        if tuple(value.shape) != tuple(target[key].shape):
            raise ConfigError(f"{source}: backbone.{inverse.get(key, key)} has shape {tuple(value.shape)} but the "
                              f"inferred architecture needs {tuple(target[key].shape)}")
    missing = [k for k in target if k not in mapped]
    if missing:
        names = ", ".join(f"backbone.{inverse.get(k, k)}" for k in missing[:5])
        raise ConfigError(f"{source}: missing weight(s) {names}{' ...' if len(missing) > 5 else ''}; the file "
                          f"is incomplete; nothing is left at its initial value")
    backbone.load_state_dict({k: v.to(target[k].dtype) for k, v in mapped.items()}, strict=True)
    if hasattr(backbone, "_cond_memo"):
        backbone._cond_memo = None


def _authors_names(target: dict) -> dict:
    """esolm name -> the authors' name, for error messages."""
    back = {}
    for key in target:
        for a, e in [("embed.weight", "vocab_embed.embedding"), ("sigma_embed.", "sigma_map."),
                     (".attn.qkv.", ".attn_qkv."), (".attn.out.", ".attn_out."), (".adaln.", ".adaLN_modulation."),
                     ("norm_final.", "output_layer.norm_final."), ("head.", "output_layer.linear."),
                     ("final_adaln.", "output_layer.adaLN_modulation.")]:
            if key.startswith(a) or (a.startswith(".") and a in key):
                back[key] = key.replace(a, e, 1)
                break
    return back
