"""BD3-LM against spec 6 (and 3.2, 5.5, 5.6, 8.6, 11.5): the block-diffusion mask, exact KV
cache, the limits L' = L (MDLM) and L' = 1 (AR), the NELBO, the clipped schedule, the sampler."""
import itertools
import math

import pytest
import torch

from baselines.bd3lm_sampler import (REFERENCE_FILL_TOKEN, _ancestral, bd3_nucleus, filtered_logits, reference_fill,
                                     reference_unmask_probs)
from esolm import masks, registry
from esolm.config import ConfigError
from esolm.sampling import nucleus_filter

V = 40


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices: one thread is faster, and much faster on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomized(**kw):
    """A float64 BD3-LM with perturbed weights (fresh ones are trivial: adaLN-zero, zero head)."""
    kw = {"vocab_size": V, "length": 16, "block_size": 4, **kw}
    model = registry.build("bd3lm", preset="smoke", dropout=0.0, **kw).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def clean(b, L, vocab=V):
    x = torch.randint(1, vocab - 1, (b, L))
    x[:, 0] = 0  # BOS
    return x


# ------------------------------------------------------------------------------ the mask (6.2)
SPEC_GRID_L6_BLOCK2 = """
X X . . . . . . . . . .
X X . . . . . . . . . .
. . X X . . X X . . . .
. . X X . . X X . . . .
. . . . X X X X X X . .
. . . . X X X X X X . .
. . . . . . X X . . . .
. . . . . . X X . . . .
. . . . . . X X X X . .
. . . . . . X X X X . .
. . . . . . X X X X X X
. . . . . . X X X X X X
"""


def three_part(L, bs):
    """Spec 6.2 step 5 read literally: M_BD | M_OBC | M_BC, one (query, key) pair at a time."""
    out = torch.zeros(2 * L, 2 * L, dtype=torch.bool)
    for q in range(2 * L):
        for k in range(2 * L):
            q_x, k_x = q >= L, k >= L
            bq, bk = (q % L) // bs, (k % L) // bs
            m_bd = q_x == k_x and bq == bk
            m_obc = not q_x and k_x and bq > bk
            m_bc = q_x and k_x and bq >= bk
            out[q, k] = m_bd or m_obc or m_bc
    return out


def test_block_diffusion_mask_reproduces_the_spec_grid_for_L6_block2():
    grid = torch.tensor([[c == "X" for c in row.split()] for row in SPEC_GRID_L6_BLOCK2.strip().splitlines()])
    assert torch.equal(masks.block_diffusion(6, 2), grid), "\n" + masks.render(masks.block_diffusion(6, 2))
    assert torch.equal(three_part(6, 2), grid)


@pytest.mark.parametrize("L,bs", [(8, 1), (8, 2), (8, 4), (8, 8), (12, 3), (12, 6), (16, 4)])
def test_model_trains_under_the_three_part_mask_for_every_block_size(L, bs):
    model = registry.build("bd3lm", preset="smoke", vocab_size=V, length=L, block_size=bs)
    assert torch.equal(model.train_mask, three_part(L, bs))


def test_block_size_must_divide_the_length():
    with pytest.raises(ConfigError, match=r"block_size=5 does not divide length=12.*1, 2, 3, 4, 6, 12"):
        registry.build("bd3lm", preset="smoke", vocab_size=V, length=12, block_size=5)
    for bs in (4, 8, 16):
        assert registry.build("bd3lm", preset="smoke", vocab_size=V, length=32, block_size=bs).n_blocks == 32 // bs


# ---------------------------------------------------------------------------- KV cache (11.5)
def test_cached_block_logits_equal_the_xt_half_of_the_2L_training_pass():
    """11.5: a block's logits against the cache of the clean blocks before it equal its x_t-half
    logits in the 2L pass, whatever the other x_t blocks and the later x blocks hold."""
    model = randomized()
    x = clean(3, 16)
    cache = model.new_cache(3)
    for b in range(model.n_blocks):
        s, e = 4 * b, 4 * b + 4
        z_block = x[:, s:e].clone()
        z_block[torch.rand(z_block.shape) < 0.5] = model.config.mask_id
        cached = model.block_logits(z_block, s, cache)
        z = torch.where(torch.rand(3, 16) < 0.5, model.config.mask_id, clean(3, 16))  # junk elsewhere
        z[:, s:e] = z_block
        x_later_junk = torch.cat([x[:, :e], clean(3, 16)[:, e:]], 1)
        full = model.denoise(z, x_later_junk)[:, s:e]
        assert torch.allclose(cached, full, atol=1e-10, rtol=0), f"block {b}: {(cached - full).abs().max()}"
        assert torch.allclose(model.prefix_logits(torch.cat([x[:, :s], z_block], 1)), full, atol=1e-10, rtol=0)
        model.store_block(x[:, s:e], s, cache)
    assert cache.length == 16


@pytest.mark.parametrize("kv_cache", [True, False])
@pytest.mark.parametrize("sampler", ["ancestral", "first_hitting"])
def test_every_sampler_step_sees_the_logits_of_the_training_pass(kv_cache, sampler):
    """The logits the sampler uses at each step equal the x_t-half logits of the 2L pass on
    (current state, final clean sequence) for the current block."""
    model = randomized()
    seen = []
    out = model.sample(2, steps=16, top_p=0.9, kv_cache=kv_cache, sampler=sampler,
                       generator=torch.Generator().manual_seed(1), hooks=dict(on_step=lambda b, z, lg: seen.append((b, z, lg))))
    assert len(seen) == out.extra["denoise_passes"] > 0
    for b, z, logits in seen:
        s, e = 4 * b, 4 * b + 4
        assert torch.equal(z[:, :s], out.tokens[:, :s]) and bool((z[:, e:] == model.config.mask_id).all())
        full = model.denoise(z, out.tokens)[:, s:e]
        assert torch.allclose(logits, full, atol=1e-10, rtol=0), f"block {b}"


@pytest.mark.parametrize("sampler,top_p,nucleus", [("ancestral", 1.0, "bd3"), ("ancestral", 0.9, "bd3"),
                                                    ("ancestral", 0.9, "eso"), ("first_hitting", 0.9, "bd3")])
def test_kv_cache_and_recomputation_sample_identical_tokens(sampler, top_p, nucleus):
    model = randomized(length=24)
    kw = {"steps": 24, "top_p": top_p, "sampler": sampler, "nucleus": nucleus}
    a = model.sample(3, kv_cache=True, generator=torch.Generator().manual_seed(5), **kw)
    b = model.sample(3, kv_cache=False, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a.tokens, b.tokens)
    assert a.extra["denoise_passes"] == b.extra["denoise_passes"]
    assert a.extra["store_passes"] == model.n_blocks - 1 and b.extra["store_passes"] == 0
    assert bool((a.tokens[:, 0] == model.config.bos_id).all()) and not bool((a.tokens == model.config.mask_id).any())


# ---------------------------------------------------------------------------- limits (6.1, 6.2)
def test_block_size_L_predicts_exactly_like_mdlm_with_the_same_weights():
    """One block of size L: the x_t half attends only to itself, bidirectionally, as MDLM does."""
    bd3 = randomized(block_size=16)
    mdlm = registry.build("mdlm", preset="smoke", vocab_size=V, length=16, dropout=0.0).double().eval()
    mdlm.load_state_dict(bd3.state_dict())
    x = clean(3, 16)
    z = torch.where(torch.rand(3, 16) < 0.5, bd3.config.mask_id, x)
    assert torch.allclose(bd3.denoise(z, x), mdlm.denoise(z), atol=1e-10, rtol=0)
    cache = bd3.new_cache(3)
    assert torch.allclose(bd3.block_logits(z, 0, cache), mdlm.denoise(z), atol=1e-10, rtol=0)


def test_block_size_1_is_causal_as_in_ar():
    """L' = 1: the clean half is a causal transformer, and the x_t token at i predicts x_i from
    x_<i alone (the mask at i plus the causal prefix), like AR's next-token prediction."""
    model = randomized(block_size=1)
    L, m = 16, model.config.mask_id
    x = clean(2, L)
    z = torch.full_like(x, m)
    z[:, 0] = x[:, 0]
    out = model.denoise(z, x)
    for i in range(1, L):
        alone = model.backbone(torch.cat([x[:, :i], z[:, i:i + 1]], 1), torch.arange(i + 1), "causal", last=1)
        assert torch.allclose(out[:, i], alone[:, 0], atol=1e-10, rtol=0), f"position {i}"
    later = x.clone()
    later[:, 8:] = clean(2, L)[:, 8:]  # changing x_{>=8} leaves the predictions of positions <= 8 alone
    assert torch.allclose(model.denoise(z, later)[:, :9], out[:, :9], atol=1e-12, rtol=0)
    assert not torch.allclose(model.denoise(z, later)[:, 9:], out[:, 9:])
    assert torch.equal(model.train_mask[L:, L:], masks.causal(L))


# ------------------------------------------------------------------------ NELBO (6.2, 8.1)
def test_first_token_is_never_masked_and_not_counted():
    model = registry.build("bd3lm", preset="smoke", vocab_size=V, length=16)
    x = clean(64, 16)
    z, masked = model.corrupt(x, torch.full((64, 4), 0.999))
    assert not bool(masked[:, 0].any()) and bool((z[:, 0] == x[:, 0]).all()) and masked[:, 1:].float().mean() > 0.99
    out = model.loss(x)
    assert int(out.num_tokens) == 64 * 15
    assert torch.allclose(out.loss, out.nll_sum / (64 * 15))
    assert model.nll(x).num_tokens.tolist() == [15] * 64
    keep = registry.build("bd3lm", preset="smoke", vocab_size=V, length=16, ignore_bos=False)
    assert int(keep.loss(x).num_tokens) == 64 * 16 and keep.corrupt(x, torch.ones(64, 4))[1].all()


def test_nelbo_of_a_uniform_predictor_is_log_of_the_vocabulary():
    """Fresh weights predict uniformly over the V - 1 real tokens; with weight 1/t and masking
    probability t the NELBO per scored token is ln(V - 1) * (1 - 1e-3)  (cf. 11.8, 11.20)."""
    model = registry.build("bd3lm", preset="smoke", vocab_size=V, length=32, block_size=4).eval()
    out = model.nll(clean(256, 32), generator=torch.Generator().manual_seed(0))
    assert out.per_token == pytest.approx(math.log(V - 1) * (1 - 1e-3), rel=0.03)
    with pytest.raises(ConfigError, match="no exact likelihood"):
        model.nll(clean(2, 32), exact=True)


def test_times_are_one_per_block_stratified_over_all_blocks_of_the_global_batch():
    model = registry.build("bd3lm", preset="smoke", vocab_size=V, length=16)
    g = torch.Generator().manual_seed(0)
    parts = []
    for rank in range(3):  # three ranks (or micro-steps) of 5 sequences each
        model.rank, model.world_size = rank, 3
        parts.append(model.block_times(5, distributed=True, generator=g))
    t = torch.cat(parts)
    assert t.shape == (15, 4) and bool(((t >= 1e-3) & (t < 1)).all())
    e = (t.flatten() - 1e-3) / (1 - 1e-3)
    assert torch.equal(torch.sort((e * 60).floor().long()).values, torch.arange(60))  # one per stratum (11.18)
    rows = model.block_times(2000, generator=g)  # a row's strata are shuffled over its blocks:
    first_is_lowest = (rows.argmin(1) == 0).double().mean()  # block 0 is not always the least noisy
    assert 0.2 < float(first_is_lowest) < 0.3


# --------------------------------------------------------------------- clipped schedule (6.3)
def test_clipped_training_draws_t_in_the_interval_and_evaluation_never_does():
    model = registry.build("bd3lm", preset="smoke", vocab_size=V, length=16, clip=True,
                           clip_beta=0.3, clip_omega=0.8, resample=True)
    assert model.train_interval == (0.3, 0.8)
    x = clean(8, 16)
    seen = {}
    original = model.nelbo_terms

    def spy(tokens, t, valid, **kw):
        seen["t"], seen["resample"] = t, kw.get("resample_in")
        return original(tokens, t, valid, **kw)

    model.nelbo_terms = spy
    model.train()
    model.loss(x)
    assert bool(((seen["t"] >= 0.3) & (seen["t"] <= 0.8)).all()) and seen["resample"] == (0.3, 0.8)
    model.eval()
    model.loss(x)
    assert seen["resample"] is None and float(seen["t"].min()) < 0.3 and float(seen["t"].max()) > 0.8


def test_resampling_keeps_every_block_masked_fraction_inside_the_interval():
    model = registry.build("bd3lm", preset="smoke", vocab_size=V, length=32, block_size=8)
    x = clean(64, 32)
    t = torch.rand(64, 4) * 0.5 + 0.3
    _, masked = model.corrupt(x, t, resample_in=(0.3, 0.8))
    frac = masked.view(64, 4, 8).sum(-1).double() / torch.tensor([7.0, 8, 8, 8])  # block 0 keeps BOS
    assert bool(((frac >= 0.3) & (frac <= 0.8)).all())
    _, plain = model.corrupt(x, t)
    f = plain.view(64, 4, 8).sum(-1).double() / torch.tensor([7.0, 8, 8, 8])
    assert bool(((f < 0.3) | (f > 0.8)).any())  # without resampling some blocks fall outside


def test_clip_search_tries_the_paper_widths_and_trains_with_the_lowest_variance_interval():
    model = registry.build("bd3lm", preset="smoke", vocab_size=V, length=16, clip=True, clip_search_batches=2)
    cands = model.clip_candidates()
    assert cands[0] == (1e-3, 1.0)
    widths = sorted({round(o - max(b, 0.0), 6) for b, o in cands[1:] if b > 1e-3})
    assert widths == [0.5, 0.6, 0.7, 0.8, 0.9]
    assert (0.05, 0.55) in cands and (0.5, 1.0) in cands and (0.1, 1.0) in cands
    assert len(cands) == 1 + 11 + 9 + 7 + 5 + 3
    result = model.after_validation([clean(4, 16) for _ in range(3)])
    assert set(result.variances) == set(cands)
    assert result.variances[result.interval] == min(result.variances.values())
    assert model.train_interval == result.interval
    assert all(v > 0 for v in result.variances.values())
    assert registry.build("bd3lm", preset="smoke", vocab_size=V, length=16).after_validation([clean(2, 16)]) is None


# --------------------------------------------------------------------------- sampler (6.4, 5.6)
def test_one_step_per_block_costs_one_denoise_and_one_store_pass_per_block():
    """T' = 1: the paper's L' = 4, T' = 1 accounting (6.4): a denoise pass per block plus the
    store passes (the last block is never stored: nothing reads it)."""
    model = registry.build("bd3lm", preset="smoke", vocab_size=V, length=32, block_size=4)
    out = model.sample(2, steps=8)
    assert out.extra["denoise_passes"] == 8 and out.extra["store_passes"] == 7 and out.nfe == 15
    assert not bool((out.tokens == model.config.mask_id).any())


def test_ancestral_passes_follow_uniform_unmasking_steps():
    """With p_t = t every mask's unmasking step is uniform on the T' steps, and the p(x0) reuse
    costs a pass only per step that changes something in the batch: with n masks in the
    batch's block, E[passes] = T'(1 - (1 - 1/T')^n) (without reuse it would be T')."""
    m, steps, g = V - 1, 8, torch.Generator().manual_seed(0)
    logits = torch.zeros(2, 4, V)
    logits[..., m] = -1e6
    passes = []
    for _ in range(3000):
        block = torch.full((2, 4), m)
        block[:, 0] = 7  # one clean position per row: 6 masks in the batch
        calls = []

        def denoise(block=block, calls=calls):
            calls.append(block.clone())
            return logits

        _ancestral(block, m, steps, denoise, 1.0, "bd3", g, False)
        passes.append(len(calls))
        assert not bool((block == m).any()) and bool((block[:, 0] == 7).all())
        masks_left = [int((c == m).sum()) for c in calls] + [0]
        for a, b in itertools.pairwise(masks_left):
            assert a > b, "a pass was spent on a state the previous pass already saw"
    expected = steps * (1 - (1 - 1 / steps) ** 6)
    assert sum(passes) / len(passes) == pytest.approx(expected, abs=0.06)


def test_reference_grid_fills_the_masks_left_at_t0_with_one_fixed_token():
    """reference_grid=True (the authors' t = linspace(1, 0, T'), s = t - 1/T'): a mask reaches
    the last step (t = 0) with probability prod r_i (1/2 at T' = 2, 2/9 at T' = 3) and is then
    filled with REFERENCE_FILL_TOKEN, not drawn; at T' = 1 (grid [1]) and on the default grid
    every token is drawn."""
    assert reference_unmask_probs(2).tolist() == [0.5, 0.5]
    assert reference_unmask_probs(3)[-1].item() == pytest.approx(2 / 9)
    assert reference_unmask_probs(1).tolist() == [1.0]
    m, g = V - 1, torch.Generator().manual_seed(0)
    logits = torch.full((64, 8, V), -1e6)
    logits[..., 5] = 0.0  # every draw gives token 5, so a REFERENCE_FILL_TOKEN can only be the fill
    for steps, grid, expected in ((2, reference_unmask_probs(2), 0.5), (3, reference_unmask_probs(3), 2 / 9),
                                  (1, reference_unmask_probs(1), 0.0), (2, None, 0.0)):
        block = torch.full((64, 8), m)
        calls = []
        _ancestral(block, m, steps, lambda: calls.append(1) or logits, 1.0, "bd3", g, False, grid=grid)
        assert not bool((block == m).any())
        assert set(block.unique().tolist()) <= {5, REFERENCE_FILL_TOKEN}
        assert (block == REFERENCE_FILL_TOKEN).double().mean().item() == pytest.approx(expected, abs=0.04)
        assert len(calls) == steps  # the t = 0 step still costs its network pass, as in the reference


@pytest.mark.parametrize("top_p,nucleus", [(1.0, "bd3"), (0.9, "bd3"), (0.5, "bd3"), (0.9, "spec")])
def test_the_reference_fill_at_t0_is_the_authors_nan_argmax_not_a_fixed_id(top_p, nucleus):
    """The authors' update at t = 0, written out literally: weight p(x0) * (1 - s/t) with
    s = -1/T', t = 0 (inf, or NaN = 0 * inf outside the nucleus), the mask's weight -inf, then
    argmax of weight / Exp(1) noise. reference_fill gives the same id on every row: the lowest
    zero-probability id other than the mask, or id 0 where the filtered p(x0) has no zero."""
    g = torch.Generator().manual_seed(3)
    m = V - 1
    logits = torch.randn(200, V, generator=g, dtype=torch.float64) * 3
    logits[:50] = logits[:50].clamp(-2, 2)  # no zero probability at top_p = 1 on these rows
    logits[150:, :4] = -1e4  # ids 0-3 underflow to exactly zero probability
    logits[:, m] = float("-inf")  # the model never predicts the mask
    p_x0 = filtered_logits(logits, top_p, nucleus).softmax(dim=-1)
    with torch.no_grad():
        s, t = torch.tensor(-1 / 2, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
        weight = p_x0 * (1 - s / t)
        weight[:, m] = float("-inf")
        expo = 1e-10 - (torch.rand(weight.shape, generator=g, dtype=torch.float64) + 1e-10).log()
        authors = (weight / expo).argmax(dim=-1)
    ours = reference_fill(logits, top_p, nucleus, m)
    assert torch.equal(ours, authors)
    if top_p == 1.0:
        assert set(ours[:50].tolist()) == {REFERENCE_FILL_TOKEN} and set(ours[150:].tolist()) == {0}
    else:
        assert len(set(ours.tolist())) > 1  # a property of each row, not one fixed id


def test_reference_grid_is_a_sample_option_off_by_default_and_ancestral_only():
    model = randomized()
    a = model.sample(3, steps=8, generator=torch.Generator().manual_seed(1))
    b = model.sample(3, steps=8, generator=torch.Generator().manual_seed(1), reference_grid=False)
    assert torch.equal(a.tokens, b.tokens) and a.extra["reference_grid"] is False
    out = model.sample(3, steps=8, generator=torch.Generator().manual_seed(1), reference_grid=True)
    assert out.extra["reference_grid"] is True and not bool((out.tokens == model.config.mask_id).any())
    from esolm.interface import sample_options
    assert sample_options(model, {"reference_grid": "true"}) == {"reference_grid": True}
    with pytest.raises(ConfigError, match="ancestral"):
        model.sample(1, steps=16, sampler="first_hitting", reference_grid=True)


def test_first_hitting_unmasks_exactly_one_position_per_row_and_step():
    model = randomized()
    counts = []
    model.sample(3, steps=16, sampler="first_hitting", generator=torch.Generator().manual_seed(0),
                 hooks=dict(on_step=lambda b, z, lg: counts.append((b, (z[:, 4 * b:4 * b + 4] == model.config.mask_id).sum(1)))))
    per_block = {}
    for b, c in counts:
        per_block.setdefault(b, []).append(c)
    assert sorted(per_block) == [0, 1, 2, 3]
    for b, seq in per_block.items():
        start = 3 if b == 0 else 4  # block 0 starts with BOS
        assert [int(c[0]) for c in seq] == list(range(start, 0, -1)) and all(bool((c == c[0]).all()) for c in seq)
    with pytest.raises(ConfigError, match="steps_per_block >= block_size"):
        model.sample(1, steps=8, sampler="first_hitting")


def test_bd3_nucleus_keeps_mass_at_most_p_while_the_eso_filter_keeps_the_crossing_token():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64)
    kept = lambda lg: torch.isfinite(lg)[0].tolist()
    assert kept(bd3_nucleus(probs.log(), 0.85)) == [True, True, False, False]
    assert kept(nucleus_filter(probs.log(), 0.85)) == [True, True, True, False]
    assert kept(bd3_nucleus(probs.log(), 0.3)) == [True, False, False, False]  # top-1 always kept
    assert kept(bd3_nucleus(probs.log(), 1.0)) == [True] * 4
    assert bd3_nucleus(probs.float().log(), 0.85).dtype == torch.float64


def test_sample_arguments_are_checked_with_the_fix_in_the_message():
    model = registry.build("bd3lm", preset="smoke", vocab_size=V, length=16)
    with pytest.raises(ConfigError, match="multiple of the number of blocks"):
        model.sample(1, steps=6)
    with pytest.raises(ConfigError, match="multiple of block_size"):
        model.sample(1, length=10, steps=10)
    with pytest.raises(ConfigError, match="sampler must be one of"):
        model.sample(1, steps=8, sampler="greedy")
    with pytest.raises(ConfigError, match="steps_per_block must be >= 1; got 0"):
        model.options(dict(steps_per_block="0"))  # refused when the options are made, typed from the CLI string
    assert model.sample(1, length=8, steps_per_block=3).extra["steps_per_block"] == 3


def test_profile_times_only_the_network_passes():
    model = registry.build("bd3lm", preset="smoke", vocab_size=V, length=32, block_size=4)
    out = model.sample(2, steps=8, profile=True)
    assert out.nfe == 15 and out.seconds > 0
    assert bool((out.tokens[:, 1:] == model.config.mask_id).all())  # no sampling work was done


# ------------------------------------------------------------------- synthetic corpus (8.1)
@pytest.mark.slow
def test_trained_bd3lm_never_reports_a_nelbo_below_the_true_entropy():
    """A NELBO is an upper bound: after every stretch of training, the test-split NELBO per
    sequence stays above the source's exact entropy, while falling well below uniform."""
    data = pytest.importorskip("esolm.data")
    corpus = data.load_corpus("synthetic", length=32)
    train = torch.as_tensor(corpus.splits["train"])
    test = torch.as_tensor(corpus.splits["test"])[:512]
    entropy = float(corpus.true_nll_per_sequence())
    fields = {**corpus.model_fields(), "length": 32}
    model = registry.build("bd3lm", preset="smoke", block_size=4, **fields)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    uniform = (32 - 1) * math.log(model.config.vocab_size - 1)
    reports = []
    for _ in range(6):
        model.train()
        for _ in range(100):
            batch = train[torch.randint(0, train.shape[0], (32,))]
            out = model.loss(batch)
            opt.zero_grad()
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        model.eval()
        g = torch.Generator().manual_seed(1)
        nelbo = sum(float(model.nll(b, generator=g).per_sequence.sum()) for b in test.split(128)) / test.shape[0]
        reports.append(nelbo)
    assert all(r >= entropy for r in reports), f"NELBO per sequence {reports} vs entropy {entropy}"
    assert reports[-1] < 0.5 * uniform, f"did not learn: {reports[-1]} vs uniform {uniform}"
