"""UDLM (spec 15.1) against the spec: the NELBO integrand in both forms of 15.1.4, as the limit of the
discrete-time ELBO enumerated over every latent state, its estimator against the enumerated
expectation, the closed forms of 15.1.5, the sampler's exact law (posterior 15.1.6, final step
15.1.7) and its conditioning by projection (15.4.6).

The helpers at the top (randomized models, the enumeration of states, the total-variation check,
a few training steps) serve tests/test_sedd.py too."""
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.time_conditioned import sampling_times
from baselines.udlm import prior_kl, uniform_nelbo, uniform_posterior
from esolm import registry
from esolm.conditioning import Given
from esolm.config import ConfigError

ANCHORS = Path(__file__).resolve().parent.parent / "results" / "paper_anchors.json"


# ------------------------------------------------------------------ shared with test_sedd.py
def randomized(name, scale=0.3, **kw):
    """A float64 model of the smoke backbone with perturbed weights (a fresh one is trivial:
    adaLN-zero and a zero head give logits 0)."""
    model = registry.build(name, preset="smoke", dropout=0.0, **kw).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def all_states(values: int, length: int) -> torch.Tensor:
    """Every sequence of ``length`` ids in [0, values): [values ** length, length]."""
    return torch.tensor(list(itertools.product(range(values), repeat=length)))


def gauss_nodes(lo: float, hi: float, order: int = 16):
    """Gauss-Legendre nodes and weights on [lo, hi] over panels graded geometrically, two per
    decade (the NELBO integrands have a log singularity at t = 0); lo = 0 is taken as 1e-14."""
    lo = max(lo, 1e-14)
    edges = np.geomspace(lo, hi, max(2, round(2 * math.log10(hi / lo))) + 1)
    u, w = np.polynomial.legendre.leggauss(order)
    nodes = [(a + b) / 2 + (b - a) / 2 * u for a, b in zip(edges[:-1], edges[1:])]
    weights = [(b - a) / 2 * w for a, b in zip(edges[:-1], edges[1:])]
    return np.concatenate(nodes), np.concatenate(weights)


def logits_at(model, states: torch.Tensor, times) -> torch.Tensor:
    """The denoiser's logits for every state at every time: [len(times), S, L, V]."""
    t = torch.as_tensor(np.asarray(times), dtype=torch.float64).repeat_interleave(len(states))
    with torch.no_grad():
        out = model.denoise(states.repeat(len(times), 1), t)
    return out.view(len(times), len(states), *out.shape[1:])


def law(start: torch.Tensor, kernels: list[torch.Tensor], states: torch.Tensor, project=None) -> torch.Tensor:
    """The exact law of a chain over ``states``: ``start`` [S] through the [S, S] ``kernels``, each
    preceded and the end followed by the projection ``project`` (a map of states, or None)."""
    index = {tuple(s.tolist()): i for i, s in enumerate(states)}
    P = torch.eye(len(states), dtype=torch.float64)
    if project is not None:
        P = torch.zeros_like(P)
        for i, s in enumerate(states):
            P[i, index[tuple(project(s[None])[0].tolist())]] = 1
    p = start
    for M in kernels:
        p = p @ P @ M
    return p @ P


def kernel(per_position: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """[S, S] transition matrix from per-position next-state laws [S, L, values]."""
    L = states.shape[1]
    return torch.stack([per_position[:, l].gather(1, states[:, l][None].expand(len(states), -1)) for l in range(L)]
                       ).prod(0)


def empirical(samples: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    index = {tuple(s.tolist()): i for i, s in enumerate(states)}
    counts = torch.zeros(len(states), dtype=torch.float64)
    for row in samples.tolist():
        counts[index[tuple(row)]] += 1
    return counts / len(samples)


def assert_law(exact: torch.Tensor, samples: torch.Tensor, states: torch.Tensor) -> None:
    """Total variation below sqrt(outcomes / N): about 3 times its expected size for these N."""
    got = empirical(samples, states)
    tv = 0.5 * float((got - exact).abs().sum())
    assert abs(float(exact.sum()) - 1) < 1e-9
    assert tv < math.sqrt(len(states) / len(samples)), (tv, exact.tolist(), got.tolist())


def count_calls(model) -> list:
    calls = []
    model.backbone.register_forward_pre_hook(lambda net, args: calls.append(args[0].clone()))
    return calls


def training_lowers_the_loss(name: str) -> None:
    """60 Adam steps on 16 fixed sequences (33 arithmetic progressions mod 11 are possible) lower
    the NELBO by 0.15 nats per token at least (about 0.3 here), measured with the same t and noise
    before and after."""
    torch.manual_seed(0)
    model = registry.build(name, preset="smoke", vocab_size=12, length=16)
    x = (torch.arange(16)[None] * torch.randint(1, 4, (16, 1)) + torch.randint(0, 11, (16, 1))) % 11
    before = model.nll(x.repeat(8, 1), generator=torch.Generator().manual_seed(1)).per_token
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        opt.zero_grad()
        model.loss(x.repeat(4, 1)).loss.backward()
        opt.step()
    after = model.nll(x.repeat(8, 1), generator=torch.Generator().manual_seed(1)).per_token
    assert after < before - 0.15, (before, after)


def assert_the_backbone_sees_sigma_minus_log_alpha(name: str) -> None:
    """15.1.3, 15.2.5: sigma_t = -log alpha_t, one scalar per sequence, in the loss and every sampling step."""
    model = registry.build(name, preset="smoke", vocab_size=20, length=8).double()
    seen = []
    model.backbone.register_forward_pre_hook(lambda net, args, kwargs: seen.append(kwargs["sigma"]), with_kwargs=True)
    t = torch.tensor([0.1, 0.5, 0.95], dtype=torch.float64)
    model.token_loss(torch.randint(0, 19, (3, 8)), t, torch.ones(3, 8, dtype=torch.bool))
    assert torch.allclose(seen.pop(), -torch.log(1 - 0.999 * t), rtol=1e-12)
    model.sample(2, steps=4, generator=torch.Generator().manual_seed(0))
    expected = torch.tensor([[-math.log(1 - 0.999 * t)] * 2 for t in sampling_times(4)[:-1]], dtype=torch.float64)
    assert torch.allclose(torch.stack(seen), expected, rtol=1e-12)


def paper_rows() -> set:
    return {a["method"] for a in json.loads(ANCHORS.read_text())["anchors"] if a["table"] == "1"}


def assert_the_family_contract(name: str, family: str, label: str, colour: str) -> None:
    """Display: the paper's Table 1 row, a marker and a colour no other model of the registry uses;
    capabilities: a NELBO bound, no KV cache, prefix and infill, NFE = L at steps = L - 1; AdaLN
    required; the backbone sees sigma = -log alpha_t."""
    cls = registry.model_class(name)
    config = registry.build_config(name, preset="smoke")
    display = cls.display(config)
    assert (display.family, display.label, display.colour) == (family, label, colour)
    assert display.label in paper_rows()
    others = [registry.model_class(n).display(registry.build_config(n, preset="smoke"))
              for n in registry.available() if n != name]
    assert display.marker not in {d.marker for d in others} and display.colour not in {d.colour for d in others}
    caps = cls.capabilities_for(config)
    assert not caps.kv_cache and not caps.exact_likelihood and set(caps.conditioning) == {"prefix", "infill"}
    assert caps.nfe_equals_l == dict(steps=config.length - 1)
    with pytest.raises(ConfigError, match="adaln=True"):
        registry.build(name, preset="smoke", adaln=False)
    assert_the_backbone_sees_sigma_minus_log_alpha(name)


# ---------------------------------------------------------------------- UDLM's own helpers
K = 3  # token classes of the enumeration tests (vocab 4: the mask id 3 is no class)


def bayes_posterior(x_theta: torch.Tensor, z: torch.Tensor, alpha_t: float, alpha_s: float) -> torch.Tensor:
    """p(z_s | z_t) over K classes by Bayes' rule with transition matrices, x drawn from its
    posterior w(x) ~ x_theta(x) q(z_t | x): independent of the closed form of 15.1.6."""
    k = x_theta.shape[-1]
    eye = torch.eye(k, dtype=torch.float64)
    step = alpha_t / alpha_s * eye + (1 - alpha_t / alpha_s) / k  # q(z_t = col | z_s = row)
    marg_s = alpha_s * eye + (1 - alpha_s) / k  # q(z_s = col | x = row)
    marg_t = alpha_t * eye + (1 - alpha_t) / k
    lik = step[:, z].movedim(0, -1)  # q(z_t | z_s) [..., z_s]
    post_x = marg_s * lik[..., None, :]  # [..., x, z_s] prop. to q(z_s | x) q(z_t | z_s)
    post_x = post_x / post_x.sum(-1, keepdim=True)
    w = x_theta * marg_t[:, z].movedim(0, -1)
    w = w / w.sum(-1, keepdim=True)
    return (w[..., None] * post_x).sum(-2)


def udlm_kernels(model, states, times, top_p=1.0, greedy=False):
    """The sampler's per-step transition matrices by Bayes' rule (the last step to t = 0)."""
    from esolm.sampling import nucleus_filter

    logits = logits_at(model, states, times[:-1])
    out = []
    for i, (t, s) in enumerate(zip(times[:-1], times[1:])):
        x_theta = nucleus_filter(logits[i], top_p).softmax(-1)[..., :K]
        if greedy and s == 0.0:
            per = torch.nn.functional.one_hot(x_theta.argmax(-1), K).double()
        else:
            per = bayes_posterior(x_theta, states, model.schedule.alpha(t), model.schedule.alpha(s))
        out.append(kernel(per, states))
    return out


def expected_nelbo(model, x: torch.Tensor, lo: float, hi: float = 1.0, context: int = 0) -> float:
    """int_lo^hi E_{z_t ~ q_t(. | x)} sum_l loss_l dt by enumeration of z_t (Gauss-Legendre in t), the
    first ``context`` positions clean and not scored."""
    states = all_states(K, len(x))
    states = states[(states[:, :context] == x[:context]).all(-1)]
    nodes, weights = gauss_nodes(lo, hi)
    x_theta = logits_at(model, states, nodes).softmax(-1)
    alpha = torch.tensor(model.schedule.alpha(nodes), dtype=torch.float64)[:, None, None]
    q = torch.where(states == x, alpha + (1 - alpha) / K, (1 - alpha) / K)[..., context:].prod(-1)  # [n, S]
    z = states.expand(len(nodes), -1, -1)
    loss = uniform_nelbo(x_theta, x.expand_as(z), z, alpha, torch.full_like(alpha, model.schedule.dalpha(0.5)),
                         model.config.mask_id)
    return float((torch.tensor(weights) * (q * loss[..., context:].sum(-1)).sum(-1)).sum())


# --------------------------------------------------------------------------------- the NELBO
def duo_form(x_theta, x, i, a, da):
    """15.1.4 as Duo computes it, one position, K classes."""
    Kx = len(x_theta)
    xb = (1 - a) + Kx * a * (torch.arange(Kx) == x).double()
    xbt = Kx * a * x_theta + (1 - a)
    c = (1 - a) / (Kx * a + 1 - a)
    s = Kx * torch.log(xbt[i]) - torch.log(xbt).sum()
    if x == i:
        term2 = c * s + (Kx - 1) * c * math.log(c)
    else:
        term2 = s - (Kx * a / (1 - a)) * (torch.log(xbt[x]) - torch.log(xbt[i])) - math.log(c) / c
    return da / (Kx * a) * (Kx * (1 / xb[i] - 1 / xbt[i]) - term2)


def paper_form(x_theta, x, i, a, da):
    """15.1.4 as the original UDLM code writes it."""
    Kx = len(x_theta)
    xb = (1 - a) + Kx * a * (torch.arange(Kx) == x).double()
    xbt = Kx * a * x_theta + (1 - a)
    return da / (Kx * a) * (Kx / xb[i] - Kx / xbt[i] - (xb / xb[i] * torch.log(xbt[i] * xb / (xbt * xb[i]))).sum())


def test_the_nelbo_integrand_equals_both_forms_of_15_1_4_for_every_clean_and_noisy_token():
    Kx = 7  # the mask id 7 is no class
    for _ in range(4):
        a, da = float(torch.rand(1)) * 0.98 + 0.01, -0.999
        x_theta = torch.rand(Kx, dtype=torch.float64).softmax(-1)
        padded = torch.cat([x_theta, torch.zeros(1, dtype=torch.float64)])
        for x, i in itertools.product(range(Kx), repeat=2):
            got = uniform_nelbo(padded, torch.tensor(x), torch.tensor(i), torch.tensor(a, dtype=torch.float64),
                                torch.tensor(da, dtype=torch.float64), Kx)
            assert float(got) == pytest.approx(float(duo_form(x_theta, x, i, a, da)), abs=1e-9)
            assert float(got) == pytest.approx(float(paper_form(x_theta, x, i, a, da)), abs=1e-9)
            assert float(got) >= 0


def discrete_elbo(model, x: torch.Tensor, steps: int) -> float:
    """The T-step ELBO -log p(x) <= KL(q_1 || U) + sum_i E_{z_{t_i}} KL(q(z_{t_(i-1)} | z_{t_i}, x) ||
    p_theta(z_{t_(i-1)} | z_{t_i})), t_i = i / T, every latent state enumerated (the last step to t = 0
    is the reconstruction -log p_theta(x | z_{1/T}))."""
    states = all_states(K, len(x))
    times = [i / steps for i in range(1, steps + 1)]
    x_theta = logits_at(model, states, times).softmax(-1)[..., :K]
    onehot = torch.nn.functional.one_hot(x, K).double().expand(len(states), -1, -1)
    total = len(x) * prior_kl(K, model.schedule.alpha(1.0))
    for n, t in enumerate(times):
        a_t, a_s = model.schedule.alpha(t), model.schedule.alpha(t - 1 / steps)
        q = torch.where(states == x, a_t + (1 - a_t) / K, (1 - a_t) / K).prod(-1)
        target = bayes_posterior(onehot, states, a_t, a_s)
        model_post = bayes_posterior(x_theta[n], states, a_t, a_s)
        kl = torch.where(target > 0, target * (target.log() - model_post.log()), 0.0).sum((-1, -2))
        total += float((q * kl).sum())
    return total


def test_the_continuous_nelbo_is_the_limit_of_the_discrete_elbo_enumerated_over_every_latent_state():
    """15.1.4 as T -> infinity of the T-step ELBO (K = 3, L = 2: nine latent states per step);
    the ELBO gap halves with T (first order), so its Richardson extrapolation meets the integral."""
    model = randomized("udlm", scale=0.1, vocab_size=K + 1, length=2)
    x = torch.tensor([0, 2])
    continuous = expected_nelbo(model, x, 0.0) + 2 * model.prior_nats
    coarse, fine = discrete_elbo(model, x, 200), discrete_elbo(model, x, 400)
    assert abs(fine - continuous) < abs(coarse - continuous) < 2e-3
    assert 2 * fine - coarse == pytest.approx(continuous, abs=2e-5)


def test_the_nll_estimator_meets_its_expectation_enumerated_over_every_latent_state():
    """nll: one stratified t in [1e-3, 1) per row, the prior term added: its mean over 3000 rows
    against (1 / (1 - 1e-3)) int_{1e-3}^1 E[sum_l loss_l] dt + L KL_prior, within 4 standard errors."""
    model = randomized("udlm", scale=0.1, vocab_size=K + 1, length=3)
    x = torch.tensor([1, 0, 2])
    exact = expected_nelbo(model, x, 1e-3) / (1 - 1e-3) + 3 * model.prior_nats
    got = model.nll(x.expand(3000, -1), generator=torch.Generator().manual_seed(0))
    assert torch.all(got.num_tokens == 3)
    mean, se = float(got.per_sequence.mean()), float(got.per_sequence.std()) / math.sqrt(3000)
    assert abs(mean - exact) < 4 * se, (mean, exact, se)


def test_the_conditional_loglik_noises_and_scores_only_the_continuation_and_sums_its_bound():
    """15.5.7: one stratified t per draw, only the continuation noised and scored, its prior terms
    added, a sum over its tokens (a perfect denoiser: exactly -|c| KL_prior). The estimator itself
    is the nll's, checked against enumeration above (its t -> 0 tail is too heavy for a tight check
    of a 2-token sum here)."""
    from esolm.lmeval import Scorer

    model = randomized("udlm", scale=0.1, vocab_size=K + 1, length=4)
    seen, token_loss = {}, model.token_loss
    model.token_loss = lambda tokens, t, noisy, generator=None: (
        seen.update(tokens=tokens, t=t, noisy=noisy) or token_loss(tokens, t, noisy, generator))
    got, greedy = model.conditional_loglik([1, 0], [2, 2], Scorer(mc_draws=64, seed=1))
    assert seen["tokens"].tolist() == [[1, 0, 2, 2]] * 64
    assert seen["noisy"].tolist() == [[False, False, True, True]] * 64
    assert sorted((seen["t"] - 1e-3) / (1 - 1e-3) * 64 // 1) == list(range(64)) and not greedy and got < 0
    model.denoise = lambda z, t: torch.nn.functional.one_hot(seen["tokens"][:1], K + 1).double() * 1e6 - 1e6
    assert model.conditional_loglik([1, 0], [2, 2], Scorer(mc_draws=8))[0] == pytest.approx(-2 * model.prior_nats,
                                                                                            abs=1e-15)


def test_a_perfect_denoiser_scores_only_the_prior_term_on_every_draw():
    """15.1.5: x_theta = e_x gives loss 0 for every z_t and every t; what is left is the prior term
    KL(q_1(. | x) || Uniform(K)) = sum_j q_j log(K q_j), q = eps e_x + (1 - eps) / K (K = 8 here)."""
    model = registry.build("udlm", preset="smoke", vocab_size=9, length=8, schedule_eps=0.2).double()
    x = torch.randint(0, 8, (64, 8))
    model.denoise = lambda z, t: torch.nn.functional.one_hot(x, 9).double() * 1e6 - 1e6
    per_token = model.nll(x).per_sequence / 8
    q = torch.full((8,), 0.8 / 8, dtype=torch.float64)
    q[0] += 0.2
    kl = float((q * torch.log(8 * q)).sum())
    assert kl > 0.01 and model.prior_nats == pytest.approx(kl, rel=1e-12)
    assert torch.allclose(per_token, torch.full_like(per_token, kl), atol=1e-12, rtol=0)


def uniform_expected_loss(Kx: int, a: float) -> float:
    """15.1.5: E[loss | alpha] of the uniform denoiser, with alpha' = -(1 - eps), eps = 1e-3."""
    return 0.999 * (Kx - 1) / Kx * math.log((1 + (Kx - 1) * a) / (1 - a))


def test_a_uniform_denoiser_meets_the_closed_forms_of_15_1_5_and_the_prior_term_makes_the_bound_ln_K():
    Kx, eps = 7, 1e-3
    uniform = torch.cat([torch.full((Kx,), 1 / Kx, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    for a in (0.01, 0.3, 0.9, 0.999):
        q = torch.full((Kx,), (1 - a) / Kx, dtype=torch.float64)
        q[2] += a
        z = torch.arange(Kx)
        loss = uniform_nelbo(uniform.expand(Kx, -1), torch.full((Kx,), 2), z, torch.tensor(a, dtype=torch.float64),
                             torch.tensor(-0.999, dtype=torch.float64), Kx)
        assert float((q * loss).sum()) == pytest.approx(uniform_expected_loss(Kx, a), rel=1e-10)
    nodes, weights = gauss_nodes(0.0, 1.0)
    D = sum(w * uniform_expected_loss(Kx, 1 - 0.999 * t) for t, w in zip(nodes, weights))
    assert D == pytest.approx(1.945907154, abs=1e-8)
    assert prior_kl(Kx, eps) == pytest.approx(2.995e-6, rel=1e-3)
    assert D + prior_kl(Kx, eps) == pytest.approx(math.log(Kx), abs=1e-8)
    assert prior_kl(50257, eps) == pytest.approx(0.0030156, rel=1e-4)


def test_a_fresh_model_is_the_uniform_denoiser_and_its_nll_approaches_the_restricted_closed_form():
    """Zero logits are x_theta = 1 / K: the estimator's mean over t in [1e-3, 1) is D restricted
    to that interval (rescaled by 1 / (1 - 1e-3)) plus the prior term."""
    model = registry.build("udlm", preset="smoke", vocab_size=8, length=4).double()
    nodes, weights = gauss_nodes(1e-3, 1.0)
    restricted = sum(w * uniform_expected_loss(7, 1 - 0.999 * t) for t, w in zip(nodes, weights)) / 0.999
    got = model.nll(torch.randint(0, 7, (4000, 4)), generator=torch.Generator().manual_seed(2)).per_sequence / 4
    se = float(got.std()) / math.sqrt(len(got))
    assert abs(float(got.mean()) - restricted - model.prior_nats) < 4 * se


# ------------------------------------------------------------------------------ the sampler
def test_the_posterior_of_15_1_6_is_bayes_rule_and_at_alpha_s_1_the_clean_token_posterior():
    x_theta = torch.rand(5, 4, K, dtype=torch.float64).softmax(-1)
    z = torch.randint(0, K, (5, 4))
    padded = torch.cat([x_theta, torch.zeros(5, 4, 1, dtype=torch.float64)], -1)
    for a_t, a_s in ((0.2, 0.5), (0.7, 0.71), (0.4, 1.0)):
        q = uniform_posterior(padded, z, a_t, a_s, K)
        assert torch.all(q[..., K] == 0)
        assert torch.allclose(q[..., :K] / q.sum(-1, keepdim=True), bayes_posterior(x_theta, z, a_t, a_s), atol=1e-12)
    onehot = torch.nn.functional.one_hot(z, K).double()
    clean = x_theta * (K * 0.4 * onehot + 0.6)
    q = uniform_posterior(padded, z, 0.4, 1.0, K)[..., :K]
    assert torch.allclose(q / q.sum(-1, keepdim=True), clean / clean.sum(-1, keepdim=True), atol=1e-12)


@pytest.mark.parametrize("steps,top_p,removal", [(1, 1.0, "ancestral"), (2, 1.0, "ancestral"), (2, 0.7, "ancestral"),
                                                 (2, 1.0, "greedy")])
def test_the_sampler_draws_the_law_of_its_chain_enumerated_over_every_state(steps, top_p, removal):
    """z_1 uniform, T posterior steps with x_theta(z_t, sigma_t), then the final step: the product of
    the enumerated kernels against 8000 samples (K = 3, L = 2)."""
    model = randomized("udlm", vocab_size=K + 1, length=2)
    states = all_states(K, 2)
    kernels = udlm_kernels(model, states, sampling_times(steps), top_p, removal == "greedy")
    exact = law(torch.full((len(states),), 1 / len(states), dtype=torch.float64), kernels, states)
    out = model.sample(8000, steps=steps, top_p=top_p, noise_removal=removal,
                       generator=torch.Generator().manual_seed(4))
    assert_law(exact, out.tokens, states)


def test_the_nucleus_filters_x_theta_so_a_tiny_top_p_makes_the_final_step_greedy():
    """Nucleus on x_theta before the posterior (15.1.7, Duo's main branch): with only the top token
    kept, the final posterior x_theta (K alpha_t e_z + (1 - alpha_t) 1) is the argmax, the greedy tail."""
    model = randomized("udlm", vocab_size=20, length=8)
    a = model.sample(16, steps=3, top_p=1e-9, generator=torch.Generator().manual_seed(2)).tokens
    b = model.sample(16, steps=3, top_p=1e-9, noise_removal="greedy", generator=torch.Generator().manual_seed(2)).tokens
    c = model.sample(16, steps=3, generator=torch.Generator().manual_seed(2)).tokens
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_the_conditional_sampler_draws_the_law_of_the_projected_chain():
    """15.4.6: the given token written in before every network call and after the end."""
    model = randomized("udlm", vocab_size=K + 1, length=2)
    states = all_states(K, 2)
    given = Given(torch.tensor([[0, 1]]), torch.tensor([[False, True]]))
    exact = law(torch.full((len(states),), 1 / len(states), dtype=torch.float64),
                udlm_kernels(model, states, sampling_times(2)), states, given.place)
    out = model.sample(8000, steps=2, given=given, generator=torch.Generator().manual_seed(5))
    assert torch.all(out.tokens[:, 1] == 1)
    assert_law(exact, out.tokens, states)


def test_nfe_is_the_steps_plus_the_final_step_which_goes_to_t_0_and_ends_noise_free():
    """15.1.7: T steps from t = 1 to 1e-5 and one more to t = 0 (alpha_s = 1): NFE = T + 1 network
    calls. A denoiser certain of y leaves exactly y, whatever the start."""
    model = registry.build("udlm", preset="smoke", vocab_size=20, length=12)
    calls = count_calls(model)
    seen = []
    out = model.sample(3, steps=5, generator=torch.Generator().manual_seed(0),
                       hooks=dict(on_step=lambda i, t, s, z: seen.append((t, s))))
    assert out.nfe == len(calls) == len(seen) == 6 and out.tokens.shape == (3, 12)
    assert seen[0][0] == 1.0 and seen[-2][1] == pytest.approx(1e-5) and seen[-1] == (pytest.approx(1e-5), 0.0)
    assert not (out.tokens == model.config.mask_id).any()
    y = torch.randint(0, 19, (12,))
    model.denoise = lambda z, t: torch.nn.functional.one_hot(y, 20).expand(z.shape[0], -1, -1).float() * 1e6 - 1e6
    for steps, removal in ((1, "ancestral"), (4, "ancestral"), (2, "greedy")):
        out = model.sample(32, steps=steps, noise_removal=removal, generator=torch.Generator().manual_seed(steps))
        assert torch.all(out.tokens == y)


def test_the_nfe_equals_l_options_give_l_network_calls():
    model = registry.build("udlm", preset="smoke", vocab_size=20, length=12)
    options = model.capabilities_for(model.config).nfe_equals_l
    assert options == dict(steps=11) and model.capabilities.nfe_equals_l == options
    assert model.sample(1, **options, generator=torch.Generator().manual_seed(0)).nfe == 12


@pytest.mark.parametrize("mask", [[1, 1, 1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 1, 1, 0, 0]], ids=["prefix", "infill"])
def test_given_tokens_are_in_every_network_input_and_in_the_output(mask):
    model = randomized("udlm", vocab_size=20, length=8)
    mask = torch.tensor([mask], dtype=torch.bool)
    given = Given(torch.randint(0, 19, (1, 8)).expand(4, -1), mask.expand(4, -1))
    calls = count_calls(model)
    out = model.sample(4, steps=3, given=given, generator=torch.Generator().manual_seed(1))
    assert given.form == ("prefix" if mask[0, 0] else "infill")
    assert len(calls) == 4 and all(given.preserved(z) for z in calls) and given.preserved(out.tokens)


def test_without_given_tokens_the_sampler_is_the_unconditional_one_draw_for_draw():
    model = randomized("udlm", vocab_size=20, length=8)
    plain = model.sample(3, steps=4, generator=torch.Generator().manual_seed(7)).tokens
    none = Given(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.bool))
    assert torch.equal(model.sample(3, steps=4, given=none, generator=torch.Generator().manual_seed(7)).tokens, plain)
    assert torch.equal(model.sample(3, steps=4, given=None, generator=torch.Generator().manual_seed(7)).tokens, plain)


# ------------------------------------------------------------------------ contract and training
def test_udlm_is_the_papers_udlm_row_with_the_capabilities_of_a_time_conditioned_nelbo_model():
    assert_the_family_contract("udlm", "UDLM", "UDLM", "#9467bd")


def test_udlm_trains_and_its_loss_falls():
    training_lowers_the_loss("udlm")


def test_udlm_refuses_what_it_cannot_do_with_one_message_each():
    with pytest.raises(ConfigError, match="schedule_eps"):
        registry.build("udlm", preset="smoke", schedule_eps=0.0)
    model = registry.build("udlm", preset="smoke", vocab_size=20, length=8)
    with pytest.raises(ConfigError, match="no exact likelihood"):
        model.nll(torch.zeros(1, 8, dtype=torch.long), exact=True)
    with pytest.raises(ConfigError, match="steps=T"):
        model.sample(1)
