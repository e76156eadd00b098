"""Compare an imported model with the authors' recorded outputs (``*.expected.json`` fixtures).

    from esolm.importers.parity import compare
    diffs = compare(model, json.load(open("esolm-b.expected.json")))   # {output: max |diff|}

Each fixture output is recomputed through the harness model's own entry points (the paths its
likelihoods and samplers use) and compared at every column except [MASK], which both sides set
near -1e6 by different rules (fixture README, section 6). Tolerances there: 1e-5 on logits and
log-probabilities, 1e-4 on per-sequence sums.

``esolm-b-hf`` (README section 7: the sahoo-diffusion/Eso-LM-B-* layout) records cd85265's
forward, which draws its orders itself and returns the diffusion / sequential logits in original
positions; the fixture stores the orders it drew, so they are used here (checked to be orders
of the authors' kind: clean tokens first) and the logits scattered back to original positions.
"""
from __future__ import annotations

import torch

from esolm.eso import sampler as eso_sampler

LOGIT_ATOL, SUM_ATOL = 1e-5, 1e-4


def tensor(spec: dict) -> torch.Tensor:
    dtype = {"int64": torch.long, "float32": torch.float32}[spec["dtype"]]
    return torch.tensor(spec["data"], dtype=dtype).reshape(spec["shape"])


def _diff(ours: torch.Tensor, theirs: torch.Tensor, mask_id: int | None) -> float:
    ours, theirs = ours.double(), theirs.double()
    if ours.shape != theirs.shape:
        raise ValueError(f"shape {tuple(ours.shape)} vs the fixture's {tuple(theirs.shape)}")
    if mask_id is not None:
        keep = torch.ones(ours.shape[-1], dtype=torch.bool)
        keep[mask_id] = False
        ours, theirs = ours[..., keep], theirs[..., keep]
    return float((ours - theirs).abs().max())


def subs(logits: torch.Tensor, z: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS log-probabilities (spec 5.2): normalised, and carry-over (0 at the observed token,
    -1e6 elsewhere) at unmasked positions, as MDLM and BD3-LM post-process."""
    lp = logits.double().log_softmax(-1)
    clean = z != mask_id
    carry = torch.full_like(lp, -1e6).scatter_(-1, z[..., None], 0.0)
    return torch.where(clean[..., None], carry, lp)


@torch.no_grad()
def compare(model, fixture: dict) -> dict[str, float]:
    """{output name: max |ours - theirs|} over every output of ``fixture``."""
    model.eval()
    kind = fixture["fixture"]
    inp = {k: tensor(v) for k, v in fixture["inputs"].items()}
    out = {k: tensor(v) for k, v in fixture["outputs"].items()}
    m = model.config.mask_id
    if kind == "mdlm":
        ours = _mdlm(model, inp)
    elif kind == "bd3lm-hf":
        ours = _bd3(model, inp)
    elif kind in ("esolm-a", "esolm-b"):
        ours = _eso(model, inp, fixture)
    elif kind == "esolm-b-hf":
        ours = _eso_hf(model, inp, fixture)
    else:
        raise ValueError(f"unknown fixture {kind!r}")
    return {name: _diff(ours[name], out[name], None if out[name].dim() == 1 else m) for name in out}


def _mdlm(model, inp):
    xt, L = inp["xt"], inp["xt"].shape[1]
    raw = model.denoise(xt)
    return dict(raw=raw, raw_sigma=model.backbone(xt, torch.arange(L), None, sigma=inp["sigma"]),
                logprobs=subs(raw, xt, model.config.mask_id))


def _bd3(model, inp):
    x0, xt = inp["x0"], inp["xt"]
    B, L = x0.shape
    bs, k = model.block_size, int(inp["sample_prefix_blocks"])
    raw = model.denoise(xt, x0)
    res = dict(train_raw=raw, train_logprobs=subs(raw, xt, model.config.mask_id))
    e = (k + 1) * bs  # no cache: the clean prefix and the noisy block k under the block-causal mask
    prefix = torch.cat([x0[:, :k * bs], xt[:, k * bs:e]], 1)
    full = model.backbone(prefix, model.positions[:e], model.train_mask[L:L + e, L:L + e][None])
    res["sample_nocache_raw"] = full
    # the sampler's path reads the last block; equal up to float rounding (a BLAS may block the
    # shorter product differently: bit-equal on one CPU, 1e-7 apart on another)
    torch.testing.assert_close(model.prefix_logits(prefix), full[:, -bs:], rtol=1e-5, atol=1e-5)
    cache = model.new_cache(B)
    for j in range(L // bs):
        sl = slice(j * bs, (j + 1) * bs)
        res[f"sample_kv_block{j}_raw"] = model.block_logits(xt[:, sl], j * bs, cache)
        model.store_block(x0[:, sl], j * bs, cache)
    return res


def _eso(model, inp, fixture):
    m = model.config.mask_id
    zs, sd = inp["zt_sorted"], inp["sort_idx_diffusion"]
    B, L = zs.shape
    clean = (zs != m).sum(1)
    mask = model.diffusion_mask(clean, L)
    raw = model.backbone(zs, sd, mask)
    res = dict(diffusion_raw=raw, diffusion_logprobs=raw.double().log_softmax(-1),
               diffusion_raw_sigma=model.backbone(zs, sd, mask, sigma=inp["sigma"]))
    z0 = inp["z0_sorted"]
    seq = model.sequential_logits(z0, inp["x0_sorted_sequential"], inp["sort_idx_sequential"], (z0 != m).sum(1))
    res.update(sequential_raw=seq, sequential_logprobs=seq.double().log_softmax(-1))
    if "sort_idx_iw" in inp:
        xs, sig = inp["x0_sorted_iw"], inp["sort_idx_iw"]
        z = torch.full_like(xs, m)
        iw = model.sequential_logits(z, xs, sig, torch.zeros(B, dtype=torch.long))
        res["iw_logprobs"] = iw.double().log_softmax(-1)
        res["iw_logp_per_seq"] = model.order_logliks(inp["x0"], sig[:1], int(inp["iw_num_diffusion"]))
    if "kv_sort_idx" in inp:
        sizes = inp["kv_unmask_k_tokens"].tolist()
        res.update(_kv_steps(model, inp, fixture, sum(sizes)))
    return res


def _kv_steps(model, inp, fixture, n_mdm: int) -> dict:
    """Teacher-forced KV-cached decoding through the sampler's own step loop: {kv_step<i>_raw: logits}."""
    sizes = inp["kv_unmask_k_tokens"].tolist()
    res = {}
    for step in eso_sampler.decode(model, inp["kv_sort_idx"], sizes, n_mdm=n_mdm, teacher=inp["kv_fill_sorted"]):
        want = fixture["kv_steps"][step.index]
        assert step.fed == tuple(want["fed_sorted_slots"]), (step.fed, want)
        res[f"kv_step{step.index}_raw"] = step.logits.clone()
    return res


def _unsort(sorted_logits: torch.Tensor, sort_idx: torch.Tensor) -> torch.Tensor:
    """Sorted-slot logits [B, L, V] -> original positions (slot j holds position sort_idx[b, j])."""
    idx = sort_idx[..., None].expand_as(sorted_logits)
    return torch.empty_like(sorted_logits).scatter_(1, idx, sorted_logits)


def _drawn_order(tokens: torch.Tensor, sort_idx: torch.Tensor, mask_id: int, masks_ascending: bool):
    """``tokens`` in the order ``sort_idx`` after checking it is one the authors' forward draws: a
    permutation putting the clean tokens first (and, in the sequential phase, masks left to right)."""
    B, L = tokens.shape
    if not torch.equal(sort_idx.sort(1).values, torch.arange(L).expand(B, L)):
        raise ValueError("the fixture's order is not a permutation of the positions")
    z = tokens.gather(1, sort_idx)
    masked = (z == mask_id).long()
    if (masked.diff(dim=1) < 0).any():
        raise ValueError("the fixture's order does not put the clean tokens first")
    if masks_ascending and any((sort_idx[b][masked[b].bool()].diff() <= 0).any() for b in range(B)):
        raise ValueError("the fixture's sequential order does not keep the masks left to right")
    return z


def _eso_hf(model, inp, fixture):
    """cd85265's ``EsoLMDiT`` outputs (README section 7) through the Eso-LM (B) entry points."""
    m = model.config.mask_id
    sd, ss = inp["sort_idx_diffusion"], inp["sort_idx_sequential"]
    zs = _drawn_order(inp["zt"], sd, m, masks_ascending=False)
    L = zs.shape[1]
    mask = model.diffusion_mask((zs != m).sum(1), L)
    res = dict(diffusion_raw=_unsort(model.backbone(zs, sd, mask), sd),
               diffusion_raw_sigma=_unsort(model.backbone(zs, sd, mask, sigma=inp["sigma"]), sd))
    z0 = _drawn_order(inp["z0"], ss, m, masks_ascending=True)
    seq = model.sequential_logits(z0, inp["x0"].gather(1, ss), ss, (z0 != m).sum(1))
    res["sequential_raw"] = _unsort(seq, ss)
    res.update(_kv_steps(model, inp, fixture, int(inp["kv_num_diffusion_tokens"])))
    # the uncached pass over every sorted slot, with the buffer as it stands before step nocache_step
    step = fixture["kv_steps"][int(inp["nocache_step"])]
    order, start = inp["kv_sort_idx"], step["curr_k_start"]
    buf = torch.full_like(order, m)
    buf[:, :start] = inp["kv_fill_sorted"][:, :start]
    full = model.backbone(buf, order, model.diffusion_mask((buf != m).sum(1), L))
    res["sample_nocache_raw"] = full
    # the sampler's uncached path reads the same slots (equal up to float rounding)
    sizes = inp["kv_unmask_k_tokens"].tolist()
    for s in eso_sampler.decode(model, order, sizes, n_mdm=int(inp["kv_num_diffusion_tokens"]), kv_cache=False,
                                teacher=inp["kv_fill_sorted"]):
        if s.index == int(inp["nocache_step"]):
            torch.testing.assert_close(s.logits, full[:, start:step["curr_k_end"]], rtol=1e-5, atol=1e-5)
    return res


def passes(diffs: dict[str, float]) -> bool:
    return all(v <= (SUM_ATOL if k.endswith("per_seq") else LOGIT_ATOL) for k, v in diffs.items())
