"""Conditional sampling (spec 15.4): each sampler under given tokens draws from the law its
factorisation defines (brute-force enumeration on tiny models, 15.4.7), given tokens survive every
network call of every sampler, NFE counts the calls made, caches stay exact, given=None and an
empty Given are the unconditional samplers draw for draw, and bad input is one clear error."""
from __future__ import annotations

import functools
import itertools
import math
from collections import defaultdict

import pytest
import torch

from esolm import masks, registry
from esolm.conditioning import Given, by_count, from_ids, from_text, stack, template_ids
from esolm.config import ConfigError
from esolm.eso import ordering as order
from esolm.eso.sampler import decode, plan
from esolm.sampling import nucleus_filter
from baselines.bd3lm_sampler import filtered_logits

V, M = 5, 4  # four real tokens (0..3, BOS = 0) and the mask
N = 40000  # draws per law
FAR = 0.3  # every law tested lies at least this far (TV) from uniform, so a wrong sampler fails


# --------------------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=None)
def tiny(name: str, length: int = 5, **kw):
    """A float64 2-layer model of width 16 with perturbed weights: fresh ones are uniform
    (adaLN-zero, zero head); at 0.2 the laws below lie 0.5-0.75 (TV) from uniform with no cell
    above 0.4."""
    torch.manual_seed(0)
    model = registry.build(name, preset="smoke", vocab_size=V, length=length, dropout=0.0, d_model=16, n_heads=2,
                           cond_dim=16, **kw).double().eval()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def given(tokens: list[int], at: list[int], length: int) -> Given:
    """A one-row Given holding ``tokens`` at positions ``at``."""
    t = torch.full((1, length), M)
    t[0, at] = torch.tensor(tokens)
    mask = torch.zeros(1, length, dtype=torch.bool)
    mask[0, at] = True
    return Given(t, mask)


def outcomes(base: Given, free: list[int]) -> torch.Tensor:
    """Every completion [K, L] of ``base`` (one row): the free positions over the real tokens,
    outcome i = sum_k digit_k (V-1)^k."""
    K = (V - 1) ** len(free)
    x = base.tokens[0].repeat(K, 1)
    for k, pos in enumerate(free):
        x[:, pos] = (torch.arange(K) // (V - 1) ** k) % (V - 1)
    return x


def empirical(tokens: torch.Tensor, free: list[int]) -> torch.Tensor:
    assert int(tokens[:, free].max()) < V - 1, "a mask survived sampling"
    index = sum(tokens[:, pos] * (V - 1) ** k for k, pos in enumerate(free))
    return torch.bincount(index, minlength=(V - 1) ** len(free)).double() / len(tokens)


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


def assert_law(samples: torch.Tensor, free: list[int], law: torch.Tensor, *wrong: torch.Tensor) -> None:
    """The empirical law of ``samples`` at ``free`` matches ``law``: TV below the sum of the
    cells' standard errors (about 2.5 times the expected TV of an exact sampler). The check has
    power: ``law`` lies far from uniform, and each ``wrong`` law (what a plausible bug would
    draw from) 1.5 tolerances away or more (a sampler of it lands about that far minus its noise)."""
    assert float(law.sum()) == pytest.approx(1.0, abs=1e-9)
    assert tv(law, torch.full_like(law, 1 / len(law))) > FAR, "the test law is too flat to catch a wrong sampler"
    tol = float((law * (1 - law) / len(samples)).sqrt().sum())
    for other in wrong:
        assert tv(law, other) > 1.5 * tol, "a wrong law lies too close to tell apart"
    emp = empirical(samples, free)
    assert tv(emp, law) <= tol, (tv(emp, law), tol)


def draws(model, given_: Given, n: int = N, seed: int = 0, **options) -> torch.Tensor:
    return model.sample(n, generator=torch.Generator().manual_seed(seed), given=given_, **options).tokens


def masked_chain(dist: dict, region: list[int], kernels, probs_fn) -> dict:
    """Push the law ``dist`` (state tuple -> probability) through one kernel per step on the
    positions ``region``: ``kernel(masked, probs)`` lists (assignment, weight) over the masked
    positions, ``probs_fn(states [S, L]) -> [S, L, V]`` the network's filtered p(x0)."""
    for kernel in kernels:
        states = list(dist)
        probs = probs_fn(torch.tensor(states)).tolist()
        out = defaultdict(float)
        for si, state in enumerate(states):
            masked = [pos for pos in region if state[pos] == M]
            for assign, w in kernel(masked, probs[si]):
                if w == 0:
                    continue
                new = list(state)
                for pos, v in zip(masked, assign):
                    new[pos] = v
                out[tuple(new)] += dist[state] * w
        dist = out
    return dist


def ancestral_kernel(r: float):
    """15.4.2: each mask stays w.p. r, else takes v w.p. (1 - r) p(x0)[v]."""
    def kernel(masked, probs):
        options = [[(M, r)] + [(v, (1 - r) * probs[pos][v]) for v in range(V - 1)] for pos in masked]
        for combo in itertools.product(*options):
            yield tuple(v for v, _ in combo), math.prod(w for _, w in combo)
    return kernel


def first_hitting_kernel(masked, probs):
    """One uniformly chosen mask takes v w.p. p(x0)[v] (6.4 first hitting)."""
    for j, pos in enumerate(masked):
        for v in range(V - 1):
            yield tuple(v if i == j else M for i in range(len(masked))), probs[pos][v] / len(masked)
    if not masked:
        yield (), 1.0


def law_of(dist: dict, base: Given, free: list[int]) -> torch.Tensor:
    """``dist`` over final states as the outcome vector of ``outcomes(base, free)``."""
    law = torch.zeros((V - 1) ** len(free), dtype=torch.float64)
    for state, p in dist.items():
        assert all(state[pos] != M for pos in free), "the chain left a mask"
        law[sum(state[pos] * (V - 1) ** k for k, pos in enumerate(free))] += p
    return law


class Calls:
    """Counts the backbone's forward calls and checks every fed token at a given position."""

    def __init__(self, model, given_: Given | None = None):
        self.count, self.given, self.fed_given = 0, given_, 0
        self.forward = model.backbone.forward

    def __call__(self, x, positions, *args, **kw):
        self.count += 1
        if self.given is not None:
            pos = positions.expand(x.shape) if positions.dim() == 1 else positions
            row_given = self.given.mask.gather(1, pos.cpu())
            expected = self.given.tokens.gather(1, pos.cpu())
            assert torch.equal(x.cpu()[row_given], expected[row_given]), "a given token was changed before a call"
            self.fed_given += int(row_given.sum())
        return self.forward(x, positions, *args, **kw)


def counted(monkeypatch, model, given_=None) -> Calls:
    calls = Calls(model, given_)
    monkeypatch.setattr(model.backbone, "forward", calls)
    return calls


# ------------------------------------------------------------------------------ AR (15.4.1)
@torch.no_grad()
def ar_law(model, base: Given, g: int, top_p: float) -> torch.Tensor:
    """prod_{i >= g} pi(x_i | x_<i), nucleus-filtered, for every completion of the prompt."""
    x = outcomes(base, list(range(g, x_len(base))))
    L = x.shape[1]
    logits = model.backbone(x[:, :-1], torch.arange(L - 1), "causal")
    logp = nucleus_filter(logits, top_p).log_softmax(-1).gather(2, x[:, 1:, None])[..., 0]
    return logp[:, g - 1:].sum(1).exp()


def x_len(base: Given) -> int:
    return base.tokens.shape[1]


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_ar_prefix_law_is_the_product_of_next_token_conditionals_with_mixed_prompt_lengths(top_p):
    model = tiny("ar")
    short, long = given([0, 2], [0, 1], 5), given([0, 2, 1], [0, 1, 2], 5)
    batch = stack([short] * (N // 2) + [long] * (N // 2))
    out = draws(model, batch, top_p=top_p)
    blind_short, blind_long = given([0, 1], [0, 1], 5), given([0, 2, 3], [0, 1, 2], 5)  # other prompt values
    assert_law(out[:N // 2], [2, 3, 4], ar_law(model, short, 2, top_p), ar_law(model, blind_short, 2, top_p))
    assert_law(out[N // 2:], [3, 4], ar_law(model, long, 3, top_p), ar_law(model, blind_long, 3, top_p))


# ---------------------------------------------------------------------------- MDLM (15.4.2)
@torch.no_grad()
def mdlm_law(model, base: Given, free: list[int], steps: int, top_p: float = 1.0) -> torch.Tensor:
    alpha = model.schedule.alpha
    rs = [(1 - alpha(1 - (i + 1) / steps)) / (1 - alpha(1 - i / steps)) for i in range(steps)]

    def probs(states):
        return nucleus_filter(model.denoise(states), top_p).softmax(-1)

    state = tuple(base.tokens[0].tolist())
    dist = masked_chain({state: 1.0}, free, [ancestral_kernel(r) for r in rs], probs)
    return law_of(dist, base, free)


MDLM_GIVEN = {"prefix": ([0, 3], [0, 1]), "infill": ([0, 1], [0, 4])}
OTHER = {"prefix": [0, 1], "infill": [0, 3]}  # other given values at the same positions


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("form", ["prefix", "infill"])
@pytest.mark.parametrize("sampler", ["schedule", "ancestral"])
def test_mdlm_law_is_the_carry_over_chain_over_the_free_positions(steps, form, sampler):
    model = tiny("mdlm")
    tokens, at = MDLM_GIVEN[form]
    base = given(tokens, at, 5)
    free = [p for p in range(5) if p not in at]
    law = mdlm_law(model, base, free, steps)
    wrong = [mdlm_law(model, given(OTHER[form], at, 5), free, steps)]  # blind to the given values
    if steps == 4:
        wrong.append(mdlm_law(model, base, free, 1))  # the law depends on T: a wrong grid fails
    assert_law(draws(model, base, steps=steps, sampler=sampler), free, law, *wrong)


def test_mdlm_nucleus_law_filters_only_the_free_positions():
    model = tiny("mdlm")
    base = given([0, 1], [0, 4], 5)
    law = mdlm_law(model, base, [1, 2, 3], 2, top_p=0.8)
    assert_law(draws(model, base, steps=2, top_p=0.8), [1, 2, 3], law)


# -------------------------------------------------------------------------- BD3-LM (15.4.3)
@torch.no_grad()
def bd3_law(model, base: Given, free: list[int], steps_per_block: int, sampler: str) -> torch.Tensor:
    """Blocks left to right: each block's chain on its own free positions, the network seeing the
    blocks before it and the block (prefix_logits: no cache), so later given tokens are unseen."""
    bs, L = model.block_size, x_len(base)
    dist = {tuple(base.tokens[0].tolist()): 1.0}
    for b in range(L // bs):
        region = [p for p in range(b * bs, (b + 1) * bs) if p in free]
        if not region:
            continue
        end = (b + 1) * bs

        def probs(states, end=end):
            out = torch.zeros(len(states), L, V, dtype=torch.float64)
            out[:, end - bs:end] = filtered_logits(model.prefix_logits(states[:, :end]), 1.0, "bd3").softmax(-1)
            return out

        if sampler == "first_hitting":
            kernels = [first_hitting_kernel] * len(region)
        else:
            kernels = [ancestral_kernel((1 - (i + 1) / steps_per_block) / (1 - i / steps_per_block))
                       for i in range(steps_per_block)]
        dist = masked_chain(dist, region, kernels, probs)
    return law_of(dist, base, free)


BD3_CASES = [
    ("prefix", [0, 2, 1], [0, 1, 2], 2, "ancestral"),  # block 0 stored, block 1 half given
    ("prefix", [0, 2, 1], [0, 1, 2], 1, "ancestral"),
    ("infill", [0, 3], [0, 5], 2, "ancestral"),  # position 5 is seen by block 2 only
    ("infill", [0, 2, 3], [0, 1, 5], 2, "first_hitting"),
]


@pytest.mark.parametrize("form, tokens, at, steps_per_block, sampler", BD3_CASES)
def test_bd3lm_law_is_the_block_order_chain(form, tokens, at, steps_per_block, sampler):
    model = tiny("bd3lm", length=6, block_size=2)
    base = given(tokens, at, 6)
    free = [p for p in range(6) if p not in at]
    law = bd3_law(model, base, free, steps_per_block, sampler)
    blind = bd3_law(model, given([0] + [3 - t for t in tokens[1:]], at, 6), free, steps_per_block, sampler)
    out = draws(model, base, steps=3 * steps_per_block, steps_per_block=steps_per_block, sampler=sampler)
    assert_law(out, free, law, blind)


# -------------------------------------------------------------------------- Eso-LM (15.4.4-5)
ESO = ["esolm-b", "esolm-a"]


@torch.no_grad()
def order_law(model, base: Given, free: list[int], sigma: torch.Tensor, num_clean: int) -> torch.Tensor:
    """P(x_F | x_G, sigma, all-singleton steps) from the model's exact order likelihood (one
    sequential-mode pass for (B), 7.10): the given part is the same for every completion, so
    normalising over the completions leaves the conditional."""
    x = outcomes(base, free)
    return model.order_logliks(x, sigma, num_clean).softmax(0)


def natural_sigma(at: list[int], free: list[int]) -> torch.Tensor:
    return torch.tensor(sorted(at) + sorted(free))


@pytest.mark.parametrize("name", ESO)
def test_eso_sequential_law_with_given_tokens_first_is_the_order_likelihood(name):
    """alpha_0_eval = 0: sigma = (given, free ascending), one token per step, for a batch that
    mixes prompt lengths (one sampler call per length)."""
    model = tiny(name, alpha_0=0.5)
    short, long = given([0, 2], [0, 1], 5), given([0, 2, 1], [0, 1, 2], 5)
    out = model.sample(N, generator=torch.Generator().manual_seed(0), steps=4, alpha_0_eval=0.0,
                       given=stack([short] * (N // 2) + [long] * (N // 2)))
    assert [grp["given"] for grp in out.extra["groups"]] == [2, 3]
    for rows, base, blind, at, free in [(slice(0, N // 2), short, given([0, 1], [0, 1], 5), [0, 1], [2, 3, 4]),
                                        (slice(N // 2, N), long, given([0, 2, 3], [0, 1, 2], 5), [0, 1, 2], [3, 4])]:
        sigma = natural_sigma(at, free)
        assert_law(out.tokens[rows], free, order_law(model, base, free, sigma, len(at)),
                   order_law(model, blind, free, sigma, len(at)))


@pytest.mark.parametrize("name", ESO)
def test_eso_diffusion_law_is_the_uniform_mixture_of_order_likelihoods_over_the_free_orders(name):
    """alpha_0_eval = 1, T = 10^6 (one token per step): sigma_F uniform over the free positions,
    the given ones first; the law is the mean over the 3! orders."""
    model = tiny(name, alpha_0=0.5)
    at, free = [0, 4], [1, 2, 3]
    base = given([0, 1], at, 5)
    laws = [order_law(model, base, free, torch.tensor(at + list(p)), 5) for p in itertools.permutations(free)]
    law = torch.stack(laws).mean(0)
    other = given([0, 3], at, 5)  # a sampler blind to the given values would draw near this
    blind = torch.stack([order_law(model, other, free, torch.tensor(at + list(p)), 5)
                         for p in itertools.permutations(free)]).mean(0)
    assert_law(draws(model, base, steps=10**6, alpha_0_eval=1.0), free, law, blind)


@torch.no_grad()
def eso_product_law(model, base: Given, free: list[int], sigma: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """15.4.4's product for fixed (sigma, k), recomputed without cache: step j feeds the given
    and earlier steps' tokens clean and its own slots as masks ((B): causal in sigma; (A): the
    clean slots bidirectional, 7.5.2)."""
    x = outcomes(base, free)
    K, L = x.shape
    xs = order.gather(x, sigma.expand(K, L))
    logp = torch.zeros(K, dtype=torch.float64)
    start = L - sum(sizes)
    for k in sizes:
        end = start + k
        z = xs[:, :end].clone()
        z[:, start:] = M
        mask = "causal" if model.registry_name == "esolm-b" else masks.prefix_lm(end, torch.tensor([start]))
        logits = model.backbone(z, sigma[:end].expand(K, end), mask)[:, start:end]
        logp += logits.log_softmax(-1).gather(2, xs[:, start:end, None])[..., 0].sum(1)
        start = end
    return logp.exp()


@pytest.mark.parametrize("name", ESO)
def test_eso_law_for_a_fixed_order_and_parallel_steps_is_the_product_formula(name):
    """Masks of one step see each other as masks, never their sampled values (15.4.4)."""
    model = tiny(name, alpha_0=0.5)
    at, free = [0, 3], [1, 2, 4]
    base = given([0, 2], at, 5)
    sigma = torch.tensor([0, 3, 1, 4, 2])
    law = eso_product_law(model, base, free, sigma, [2, 1])
    blind = eso_product_law(model, given([0, 1], at, 5), free, sigma, [2, 1])
    singleton = eso_product_law(model, base, free, sigma, [1, 1, 1])  # masks seeing their step's draws
    g = torch.Generator().manual_seed(3)
    sig = sigma.expand(N, 5)
    for step in decode(model, sig, [2, 1], 5, generator=g, prefix=base.tokens[:, at].expand(N, 2)):
        pass
    assert_law(order.ungather(step.tokens, sig), free, law, blind, singleton)


@pytest.mark.parametrize("name", ESO)
def test_eso_plan_puts_the_given_positions_first_in_every_order(name):
    model = tiny(name, length=16, alpha_0=0.5)
    mask = torch.zeros(6, 16, dtype=torch.bool)
    for b in range(6):
        mask[b, torch.randperm(16)[:5]] = True
    base = Given(torch.zeros(6, 16, dtype=torch.long), mask)
    sigma, sizes, n_mdm = plan(model, 6, 16, 4, 0.5, "binomial", None, True, torch.Generator().manual_seed(0), base)
    assert sum(sizes) == 11 and 5 <= n_mdm <= 16
    for b in range(6):
        assert sigma[b, :5].tolist() == mask[b].nonzero()[:, 0].tolist()  # given first, natural order
        assert sorted(sigma[b].tolist()) == list(range(16))
        tail = sigma[b, n_mdm:]
        assert torch.all(tail[1:] > tail[:-1])  # the sequential tail stays left to right


# ------------------------------------------------------------------- invariants, every model
def models_and_givens():
    """(name, build kwargs, sample options, givens) covering every family and form. Eso-LM runs one
    call per prompt length, so its givens share their count (the mixed case is tested below)."""
    tokens = torch.randint(0, V - 1, (4, 16), generator=torch.Generator().manual_seed(5))
    pre16 = by_count(tokens, torch.tensor([1, 3, 6, 9]))
    inf_mask = torch.zeros(4, 16, dtype=torch.bool)
    inf_mask[:, [0, 5, 6, 15]] = True
    inf16 = Given(tokens, inf_mask.index_put((torch.tensor([2]), torch.tensor([11])), torch.tensor(True)))
    eso = [by_count(tokens, 6), Given(tokens, torch.stack([inf_mask[0].roll(b) for b in range(4)]))]
    eso_options = [dict(steps=4), dict(steps=4, kv_cache=False, top_p=0.7), dict(steps=10**6, alpha_0_eval=1.0),
                   dict(steps=3, alpha_0_eval=0.0)]
    return [
        ("ar", {}, [dict(), dict(top_p=0.7), dict(kv_cache=False)], [pre16]),
        ("mdlm", {}, [dict(steps=6), dict(steps=10**6), dict(steps=5, sampler="ancestral", top_p=0.7),
                      dict(steps=5, sampler="ancestral", reuse_px0=False)], [pre16, inf16]),
        ("bd3lm", dict(block_size=4), [dict(steps=8), dict(steps=8, kv_cache=False),
                                       dict(steps=8, top_p=0.7, nucleus="eso"),
                                       dict(steps=4, steps_per_block=4, sampler="first_hitting"),
                                       dict(steps=4, steps_per_block=5, reference_grid=True, top_p=0.7)],
         [pre16, inf16]),
        ("esolm-b", dict(alpha_0=0.5), eso_options, eso),
        ("esolm-a", dict(alpha_0=0.5), eso_options, eso),
    ]


CASES = [(name, kw, opts, g) for name, kw, optss, gs in models_and_givens() for opts in optss for g in gs]


@pytest.mark.parametrize("name, kw, options, given_", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_given_tokens_survive_every_network_call_and_nfe_counts_the_calls(monkeypatch, name, kw, options, given_):
    model = tiny(name, length=16, **kw)
    calls = counted(monkeypatch, model, given_)
    out = model.sample(4, generator=torch.Generator().manual_seed(1), given=given_, **options)
    assert given_.preserved(out.tokens)
    assert int((out.tokens == M).sum()) == 0
    assert out.nfe == calls.count > 0
    assert calls.fed_given > 0  # the check above saw given tokens


@pytest.mark.parametrize("name", ESO)
def test_eso_mixed_prompt_lengths_run_one_call_each_and_count_every_pass(monkeypatch, name):
    model = tiny(name, length=16, alpha_0=0.5)
    base = by_count(torch.randint(0, V - 1, (5, 16), generator=torch.Generator().manual_seed(5)),
                    torch.tensor([4, 1, 4, 9, 1]))
    calls = counted(monkeypatch, model)
    out = model.sample(5, generator=torch.Generator().manual_seed(1), given=base, steps=4)
    assert base.preserved(out.tokens) and int((out.tokens == M).sum()) == 0
    assert [(grp["given"], grp["rows"]) for grp in out.extra["groups"]] == [(1, 2), (4, 2), (9, 1)]
    assert out.nfe == sum(grp["nfe"] for grp in out.extra["groups"]) == calls.count


@pytest.mark.parametrize("name, kw, options", [
    ("ar", {}, {}), ("mdlm", {}, dict(steps=4)), ("bd3lm", dict(block_size=4), dict(steps=8)),
    ("esolm-b", dict(alpha_0=0.5), dict(steps=4)), ("esolm-a", dict(alpha_0=0.5), dict(steps=4)),
])
def test_a_fully_given_sequence_costs_no_network_call(monkeypatch, name, kw, options):
    model = tiny(name, length=16, **kw)
    full = from_ids([0, 1, 2, 3] * 4, 16)
    calls = counted(monkeypatch, model)
    out = model.sample(2, given=full, **options)
    assert out.nfe == calls.count == 0 and torch.equal(out.tokens, full.tokens.expand(2, 16))


def test_bd3lm_stores_the_whole_prompt_blocks_in_one_pass(monkeypatch):
    model = tiny("bd3lm", length=16, block_size=4)
    base = from_ids([0, 1, 2, 3, 0, 1, 2, 3, 1, 2], 16)  # blocks 0 and 1 given, block 2 half given
    steps = []
    out = model.sample(3, generator=torch.Generator().manual_seed(0), given=base, steps=8,
                       hooks=dict(on_step=lambda b, z, logits: steps.append(b)))
    assert out.extra["store_passes"] == 2  # the prompt's two blocks at once, then block 2
    assert min(steps) == 2  # no denoising of the given blocks
    assert torch.equal(out.tokens[:, :10], base.tokens[:, :10].expand(3, 10))


def test_eso_prefill_is_fused_into_the_first_step():
    model = tiny("esolm-b", length=16, alpha_0=0.5)
    base = from_ids([0, 1, 2, 3, 2], 16)
    sigma, sizes, n_mdm = plan(model, 2, 16, 4, 0.5, "binomial", None, True, torch.Generator().manual_seed(0),
                               base.checked(model, 2, 16))
    steps = decode(model, sigma, sizes, n_mdm, prefix=base.tokens[:, :5].expand(2, 5))
    first = next(steps)
    assert first.fed == (0, 5 + sizes[0])  # the given tokens ride with the first masks
    assert first.cache.length == 5  # and are committed by that same call
    assert 1 + len(list(steps)) == len(sizes) and sum(sizes) == 11


# ------------------------------------------------------------------- caches stay exact
@pytest.mark.parametrize("name", ESO)
def test_eso_cached_logits_equal_uncached_under_given_tokens(name):
    model = tiny(name, length=16, alpha_0=0.5)
    base = template_given(16)
    g = torch.Generator().manual_seed(2)
    sigma, sizes, n_mdm = plan(model, 3, 16, 5, 0.5, "binomial", None, True, g, base.checked(model, 3, 16))
    teacher = order.gather(torch.randint(0, V - 1, (3, 16), generator=g), sigma)
    prefix = order.gather(base.tokens.expand(3, 16), sigma[:, :5])
    teacher[:, :5] = prefix
    runs = [[s.logits.clone() for s in decode(model, sigma, sizes, n_mdm, kv_cache=kv, teacher=teacher, prefix=prefix)]
            for kv in (True, False)]
    for cached, full in zip(*runs):
        torch.testing.assert_close(cached, full, rtol=1e-9, atol=1e-9)


def template_given(length: int) -> Given:
    mask = torch.zeros(1, length, dtype=torch.bool)
    mask[0, [0, 1, 7, 8, 15]] = True
    return Given(torch.tensor([[0, 2, 3, 3, 3, 3, 3, 1, 2, 3, 3, 3, 3, 3, 3, 1]]), mask)


@pytest.mark.parametrize("name, kw, options", [
    ("ar", {}, dict()),
    ("bd3lm", dict(block_size=4), dict(steps=8)),
    ("bd3lm", dict(block_size=4), dict(steps=4, steps_per_block=4, sampler="first_hitting")),
    ("esolm-b", dict(alpha_0=0.5), dict(steps=5)),
    ("esolm-a", dict(alpha_0=0.5), dict(steps=5)),
])
def test_cached_samples_equal_uncached_samples_under_a_prompt(name, kw, options):
    model = tiny(name, length=16, **kw)
    base = by_count(torch.randint(0, V - 1, (3, 16), generator=torch.Generator().manual_seed(4)),
                    torch.tensor([10, 10, 10]))
    a, b = (model.sample(3, generator=torch.Generator().manual_seed(6), given=base, kv_cache=kv, **options)
            for kv in (True, False))
    assert torch.equal(a.tokens, b.tokens)


def test_bd3lm_cached_logits_equal_uncached_after_the_prompt_store_pass():
    model = tiny("bd3lm", length=16, block_size=4)
    base = from_ids([0, 1, 2, 3, 0, 1, 2, 3, 1, 2], 16)
    seen = {True: [], False: []}
    for kv in (True, False):
        model.sample(2, generator=torch.Generator().manual_seed(0), given=base, steps=8, kv_cache=kv,
                     hooks=dict(on_step=lambda b, z, logits, kv=kv: seen[kv].append(logits.clone())))
    assert len(seen[True]) == len(seen[False]) > 0
    for cached, full in zip(seen[True], seen[False]):
        torch.testing.assert_close(cached, full, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------- given=None: draw for draw
@pytest.mark.parametrize("name, kw, options", [
    ("ar", {}, dict()), ("mdlm", {}, dict(steps=5)), ("mdlm", {}, dict(steps=5, sampler="ancestral")),
    ("bd3lm", dict(block_size=4), dict(steps=8)),
    ("bd3lm", dict(block_size=4), dict(steps=4, steps_per_block=4, sampler="first_hitting")),
    ("esolm-b", dict(alpha_0=0.5), dict(steps=5)), ("esolm-a", dict(alpha_0=0.5), dict(steps=5)),
    ("esolm-b", dict(alpha_0=0.5), dict(steps=3, sampler="block")),
])
def test_an_empty_given_reproduces_the_unconditional_sampler_draw_for_draw(name, kw, options):
    model = tiny(name, length=16, **kw)
    empty = Given(torch.zeros(1, 16, dtype=torch.long), torch.zeros(1, 16, dtype=torch.bool))
    outs = []
    for g_ in (None, empty):
        gen = torch.Generator().manual_seed(9)
        out = model.sample(4, generator=gen, given=g_, **options)
        outs.append((out.tokens, out.nfe, torch.rand(1, generator=gen)))  # the generator's state too
    assert torch.equal(outs[0][0], outs[1][0]) and outs[0][1] == outs[1][1]
    assert torch.equal(outs[0][2], outs[1][2])


# -------------------------------------------------------------------------------- errors
def test_ar_refuses_an_infill_with_one_clear_error():
    model = tiny("ar", length=16)
    with pytest.raises(ConfigError, match="prompt \\(prefix\\) only, not an infill"):
        model.sample(2, given=template_given(16))


def test_eso_block_sampler_refuses_given_tokens():
    model = tiny("esolm-b", length=16, alpha_0=0.5)
    with pytest.raises(ConfigError, match="block \\(subcontext\\) sampler .* sampler='binomial'"):
        model.sample(2, steps=4, sampler="block", given=from_ids([0, 1], 16))


@pytest.mark.parametrize("bad, message", [
    (lambda: Given(torch.zeros(2, 16, dtype=torch.long), torch.zeros(2, 16, dtype=torch.bool)), "2 rows but 3 samples"),
    (lambda: from_ids([0, 1], 12), "cover 12 positions but .* length=16"),
    (lambda: from_ids([0, 9], 16), r"ids must lie in \[0, 5\)"),
    (lambda: from_ids([0, M], 16), "is the mask id"),
    (lambda: Given(torch.zeros(1, 16), torch.ones(1, 16, dtype=torch.bool)), "must be integer ids"),
    (lambda: Given(torch.zeros(1, 16, dtype=torch.long), torch.ones(1, 15, dtype=torch.bool)), "one shape"),
    (lambda: from_ids(list(range(4)) * 5, 16), "20 tokens but samples have length=16"),
    (lambda: by_count(torch.zeros(2, 16, dtype=torch.long), [3, 17]), r"prefix lengths must lie in \[0, 16\]"),
])
def test_bad_given_tokens_are_one_clear_error(bad, message):
    model = tiny("mdlm", length=16)
    with pytest.raises(ConfigError, match=message):
        model.sample(3, steps=4, given=bad())


def test_a_model_without_conditioning_forms_refuses_any_given(monkeypatch):
    model = tiny("mdlm", length=16)
    caps = model.capabilities_for(model.config)
    monkeypatch.setattr(type(model), "capabilities", type(caps)(**dict(caps.as_dict(), conditioning=())))
    with pytest.raises(ConfigError, match="does not sample under given tokens"):
        model.sample(1, steps=4, given=from_ids([0, 1], 16))


def test_a_sampler_that_changes_given_tokens_is_caught(monkeypatch):
    """The preservation check of sample() can fail: a sampler that ignores ``given`` trips it."""
    model = tiny("mdlm", length=16)
    real = type(model).generate
    monkeypatch.setattr(type(model), "generate",
                        lambda self, n, opts, given=None, **kw: real(self, n, opts, **kw))
    with pytest.raises(AssertionError, match="changed given tokens"):
        model.sample(2, steps=4, given=from_ids([0, 1, 2, 3, 1, 2, 3, 1], 16))


# ----------------------------------------------------------------------- text and templates
class CharTokenizer:
    """Characters a..c -> 1..3; BOS 0; mask 4 (a stand-in with the Tokenizer interface)."""

    bos_id, eos_id, mask_id = 0, 0, M

    def encode(self, text):
        return [ord(c) - ord("a") + 1 for c in text]


def test_templates_and_prompts_encode_given_and_free_positions():
    tok = CharTokenizer()
    g = template_ids("ab[MASK]c[MASK:2]a", tok, 10)
    assert g.tokens[0, :8].tolist() == [0, 1, 2, M, 3, M, M, 1]
    assert g.mask[0].tolist() == [True, True, True, False, True, False, False, True, False, False]
    assert g.form == "infill"
    assert template_ids("ab[MASK:3]", tok, 8).form == "prefix"  # free only after the text
    p = from_text("abc", tok, 8)
    assert p.form == "prefix" and p.prefixes().tolist() == [4] and p.tokens[0, :4].tolist() == [0, 1, 2, 3]
    assert from_text("", tok, 8).prefixes().tolist() == [1]  # BOS alone
    with pytest.raises(ConfigError, match="template spans 12 tokens"):
        template_ids("abc[MASK:8]", tok, 10)
    with pytest.raises(ConfigError, match="is an infill|these are an infill"):
        g.prefixes()


# ------------------------------------------------------------------------------ the CLI
BOS, MASK = 64, 65  # of the synthetic corpus's 64 symbols
CLI_MODELS = {"ar": {}, "mdlm": {}, "bd3lm": dict(block_size=4), "esolm-a": dict(alpha_0=0.5),
              "esolm-b": dict(alpha_0=0.5)}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A 2-step checkpoint of every family on the synthetic corpus (L = 16), built on demand."""
    from esolm.data import load_corpus
    from esolm.train import fit, seed_everything, train_config

    corpus, made = load_corpus("synthetic", length=16), {}

    def get(name):
        if name not in made:
            cfg = train_config("smoke", steps=2)
            seed_everything(cfg.seed)
            model = registry.build(name, preset="smoke", **corpus.model_fields(), **CLI_MODELS[name])
            folder = tmp_path_factory.mktemp(name)
            fit(name, model, corpus, cfg, folder, progress=False)
            made[name] = folder / "checkpoint.safetensors"
        return made[name]
    return get


def cli(capsys, *args):
    from experiments.run import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def read(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def only_file(folder, pattern):
    files = sorted(folder.glob(pattern))
    assert len(files) == 1, files
    return files[0]


@pytest.mark.parametrize("name", list(CLI_MODELS))
def test_cli_samples_under_a_prompt_and_an_infill_template_beside_the_unconditional_samples(capsys, checkpoints, name):
    ckpt = checkpoints(name)
    steps = "steps=8"
    folder = ckpt.parent / "samples"
    assert cli(capsys, "sample", "--checkpoint", ckpt, "--num-samples", 3, steps)[0] == 0
    assert cli(capsys, "sample", "--checkpoint", ckpt, "--num-samples", 3, "--prompt", "s1 s2 s3", steps)[0] == 0
    plain, prompted = only_file(folder, "*-n3.jsonl"), only_file(folder, "*-n3-prompt*.jsonl")
    assert "condition" not in read(plain)[0]
    for r in read(prompted):
        assert r["condition"] == "s1 s2 s3" and r["tokens"][:4] == [BOS, 1, 2, 3]
        assert r["conditioning"]["kind"] == "prompt" and r["text"].startswith("<bos> s1 s2 s3")
    check_infill(capsys, ckpt, name)


def check_infill(capsys, ckpt, name):
    """`sample --infill`: the template's text kept, its [MASK] slots filled; AR refuses at once."""
    folder = ckpt.parent / "samples"
    code, err = cli(capsys, "sample", "--checkpoint", ckpt, "--num-samples", 3, "--infill", "s4 [MASK:2] s5 [MASK] s6",
                    "steps=8")
    if name == "ar":  # refused at once, before any file is written
        assert code == 2 and "prompt (prefix) only, not an infill" in err
        assert not list(folder.glob("*-infill*"))
        return
    assert code == 0, err
    recs = read(only_file(folder, "*-n3-infill*.jsonl"))
    assert {r["condition"] for r in recs} == {"s4 [MASK:2] s5 [MASK] s6"}
    assert {tuple(r["tokens"][i] for i in (0, 1, 4, 6)) for r in recs} == {(BOS, 4, 5, 6)}  # given kept
    assert all(MASK not in r["tokens"] for r in recs)


def test_cli_prompt_file_mixes_prompt_lengths_in_a_batch_and_names_its_file_by_digest(capsys, checkpoints, tmp_path):
    ckpt = checkpoints("esolm-b")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("s1\n\ns2 s3 s4 s5\n")  # the blank line is skipped
    args = ["sample", "--checkpoint", ckpt, "--num-samples", 2, "--prompt-file", prompts, "steps=4", "batch_size=3"]
    assert cli(capsys, *args)[0] == 0
    first = only_file(ckpt.parent / "samples", "*-n2-prompt*.jsonl")
    recs = read(first)
    assert [r["condition"] for r in recs] == ["s1", "s1", "s2 s3 s4 s5", "s2 s3 s4 s5"]
    assert [r["batch_size"] for r in recs] == [3, 3, 3, 1]  # batch 1 holds both prompt lengths
    assert all(r["tokens"][:2] == [BOS, 1] for r in recs[:2])
    assert all(r["tokens"][:5] == [BOS, 2, 3, 4, 5] for r in recs[2:])
    prompts.write_text("s1\ns2 s3 s4 s6\n")  # other prompts: another file, not a refusal
    assert cli(capsys, *args)[0] == 0
    assert len(list((ckpt.parent / "samples").glob("*-n2-prompt*.jsonl"))) == 2
    assert read(first) == recs


@pytest.mark.parametrize("flags, message", [
    (["--prompt", "s1 s99"], "prompt 1 ('s1 s99'): 's99' is not a symbol"),
    (["--infill", "s1 [MASK:20]"], "template spans 22 tokens"),
    (["--prompt-file", "/nonexistent/prompts.txt"], "cannot read --prompt-file"),
])
def test_cli_bad_conditions_are_one_clear_error(capsys, checkpoints, flags, message):
    code, err = cli(capsys, "sample", "--checkpoint", checkpoints("mdlm"), *flags)
    assert code == 2 and message in err, err
