"""SEDD with the absorbing graph (spec 15.2) against the spec: the score of 15.2.2 and the DWDSE
of 15.2.3 written out from their definitions, the bound of 15.2.4 (MDLM's NELBO of the normalised
score plus a non-negative penalty; equal to MDLM's loss at zero logits), the estimator against
its expectation enumerated over every mask pattern, and the samplers of 15.2.6 against the exact
law of their chains (Tweedie tau-leaping, Euler, the final denoiser), conditioned by projection."""
import math

import pytest
import torch

from baselines.sedd import dwdse, step_probs
from baselines.time_conditioned import sampling_times
from esolm import registry
from esolm.conditioning import Given
from esolm.config import ConfigError
from esolm.sampling import nucleus_filter
from test_udlm import (all_states, assert_law, assert_the_family_contract, count_calls, gauss_nodes, kernel, law,
                       logits_at, randomized, training_lowers_the_loss)

EPS = 1e-3  # LogLinear's epsilon: sigma(t) = -log(1 - (1 - eps) t)


# --------------------------------------------------------------- 15.2 written out in sigma
def sigma(t):
    return -math.log(1 - (1 - EPS) * t)


def dsigma(t):
    return (1 - EPS) / (1 - (1 - EPS) * t)


def score(h: torch.Tensor, t: float) -> torch.Tensor:
    """s_y = exp(h_y - log(e^sigma - 1) - log(V - 1)) at y != mask (15.2.2); [..., V - 1]."""
    V = h.shape[-1]
    return torch.exp(h[..., :-1] - math.log(math.expm1(sigma(t))) - math.log(V - 1))


def score_entropy(h: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """The denoising score entropy of a masked position from its definition: sigma'(t) sum_{y != m}
    [s_y - r_y log s_y + r_y (log r_y - 1)], with the ratios of q_t(. | x): r_y = 1 / (e^sigma - 1)
    at y = x and 0 elsewhere (0 log 0 = 0)."""
    s = score(h, t)
    r = torch.zeros_like(s).scatter(-1, x[..., None], 1 / math.expm1(sigma(t)))
    safe = torch.where(r > 0, r, 1.0)
    return dsigma(t) * (s - r * torch.log(s) + torch.where(r > 0, r * (torch.log(safe) - 1), 0.0)).sum(-1)


def sedd_kernels(model, states, times, predictor, top_p=1.0):
    """Per-step transition matrices of 15.2.6 over the states (mask id = last): masked positions
    move by the Tweedie / Euler step (the final one: the denoiser), clean ones stay. The nucleus
    (the harness's choice) keeps the score's total S and filters the normalised score."""
    V = model.config.vocab_size
    logits = logits_at(model, states, times[:-1])
    out = []
    for i, (t, s) in enumerate(zip(times[:-1], times[1:])):
        sc = score(logits[i], t)
        sc = sc.sum(-1, keepdim=True) * nucleus_filter(logits[i], top_p).softmax(-1)[..., :-1]
        if s == 0.0:
            move = torch.cat([sc, torch.zeros_like(sc[..., :1])], -1)
        else:
            rate = math.expm1(sigma(t) - sigma(s)) if predictor == "analytic" else (t - s) * dsigma(t)
            move = torch.cat([rate * sc, (1 - rate * sc.sum(-1, keepdim=True)).clamp_min(0)], -1)
        move = move / move.sum(-1, keepdim=True)
        stay = torch.nn.functional.one_hot(states, V).double()
        per = torch.where((states == V - 1)[..., None], move, stay)
        out.append(kernel(per, states))
    return out


# ------------------------------------------------------------------------------- the loss
def test_dwdse_is_the_score_entropy_of_its_definition():
    h = torch.randn(6, 5, 9, dtype=torch.float64)
    h[..., -1] = -1e6  # the backbone's mask logit
    x = torch.randint(0, 8, (6, 5))
    for t in (0.002, 0.3, 0.97):
        a = torch.tensor(1 - (1 - EPS) * t, dtype=torch.float64)
        got = dwdse(h, x, a.expand(6, 5), torch.tensor(-(1 - EPS), dtype=torch.float64).expand(6, 5))
        assert torch.allclose(got, score_entropy(h, x, t), rtol=1e-10, atol=1e-10)


def test_the_bound_is_mdlms_nelbo_of_the_normalised_score_plus_a_penalty_that_vanishes_at_the_exact_total():
    """15.2.4: DWDSE = w (-log p_hat_x) + w (S/r - 1 - log(S/r)), w = 1/t, p_hat = softmax(h)."""
    h = 2 * torch.randn(4, 6, 9, dtype=torch.float64)
    h[..., -1] = -1e6
    x = torch.randint(0, 8, (4, 6))
    for t in (0.01, 0.5, 0.9):
        a = torch.full((4, 6), 1 - (1 - EPS) * t, dtype=torch.float64)
        w = torch.full_like(a, (1 - EPS) / (1 - a[0, 0]))  # -alpha' / (1 - alpha) = 1 / t
        mdlm = -w * h.log_softmax(-1).gather(-1, x[..., None])[..., 0]
        ratio = score(h, t).sum(-1) * math.expm1(sigma(t))  # S / r
        penalty = w * (ratio - 1 - ratio.log())
        got = dwdse(h, x, a, torch.full_like(a, -(1 - EPS)))
        assert torch.allclose(got, mdlm + penalty, rtol=1e-10) and torch.all(penalty > 0)
        exact_total = h - ratio.log()[..., None]  # the same p_hat with S = r
        assert torch.allclose(dwdse(exact_total, x, a, torch.full_like(a, -(1 - EPS))), mdlm, rtol=1e-10)


def test_at_zero_logits_the_loss_is_mdlms_draw_for_draw():
    """15.2.4: h = 0 gives s_y = r / (V - 1), so DWDSE = (1/t) ln(V - 1) per masked token: the
    loss of MDLM at initialisation, with the same t and masks; its mean is (1 - eps) ln(V - 1)."""
    sedd = registry.build("sedd", preset="smoke", vocab_size=30, length=16).double()
    mdlm = registry.build("mdlm", preset="smoke", vocab_size=30, length=16).double()
    x = torch.randint(0, 29, (256, 16))
    torch.manual_seed(3)
    a = sedd.loss(x)
    torch.manual_seed(3)
    b = mdlm.loss(x)
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-10)
    assert a.nll_sum.item() == pytest.approx(b.nll_sum.item(), rel=1e-10)
    t = torch.linspace(0.01, 0.99, 256, dtype=torch.float64)
    noisy = torch.ones_like(x, dtype=torch.bool)
    per = sedd.token_loss(x, t, noisy, torch.Generator().manual_seed(1))
    ref, _ = mdlm._masked_nll(x, noisy, t, "elbo", torch.Generator().manual_seed(1))
    assert torch.allclose(per, ref, rtol=1e-10) and (per > 0).any()
    nll = sedd.nll(x, generator=torch.Generator().manual_seed(0)).per_sequence / 16
    assert float(nll.mean()) == pytest.approx((1 - EPS) * math.log(29), abs=4 * float(nll.std()) / 16)


def expected_dwdse(model, x: torch.Tensor, context: int = 0) -> float:
    """E_{t ~ U[1e-3, 1)} sum over mask patterns M of P(M | t) sum_{l in M} DWDSE_l, by enumeration of
    M and Gauss-Legendre in t, with the DWDSE of its definition; the first ``context`` positions clean."""
    L, m = len(x), model.config.mask_id
    patterns = all_states(2, L).bool()
    patterns = patterns[~patterns[:, :context].any(-1)]
    z = torch.where(patterns, m, x)
    nodes, weights = gauss_nodes(1e-3, 1.0)
    logits = logits_at(model, z, nodes)
    total = 0.0
    for n, (t, w) in enumerate(zip(nodes, weights)):
        moved = 1 - (1 - EPS) * t
        prob = torch.where(patterns, 1 - moved, moved)[:, context:].prod(-1)
        loss = (score_entropy(logits[n], x.expand(len(z), -1), t) * patterns).sum(-1)
        total += w * float((prob * loss).sum())
    return total / (1 - EPS)


def test_the_nll_estimator_meets_its_expectation_enumerated_over_every_mask_pattern():
    model = randomized("sedd", scale=0.1, vocab_size=5, length=4)
    x = torch.tensor([3, 0, 2, 1])
    exact = expected_dwdse(model, x)
    got = model.nll(x.expand(3000, -1), generator=torch.Generator().manual_seed(0)).per_sequence
    mean, se = float(got.mean()), float(got.std()) / math.sqrt(len(got))
    assert abs(mean - exact) < 4 * se, (mean, exact, se)


def test_the_conditional_loglik_is_minus_the_dwdse_of_the_continuation_with_the_context_clean():
    """15.5.8: only the continuation masked and scored; a sum over its tokens."""
    from esolm.lmeval import Scorer

    model = randomized("sedd", scale=0.1, vocab_size=5, length=4)
    x = torch.tensor([3, 0, 2, 1])
    exact = expected_dwdse(model, x, context=1)
    got, greedy = model.conditional_loglik([3], [0, 2, 1], Scorer(mc_draws=4000, seed=1))
    assert got == pytest.approx(-exact, rel=0.02) and not greedy


# ----------------------------------------------------------------------------- the samplers
def test_tweedie_tau_leaping_with_the_exact_score_is_the_mdlm_ancestral_step():
    """15.2.6: s_y = p_y / (e^sigma_t - 1) gives P(y) = p_y (alpha_s - alpha_t) / (1 - alpha_t) and
    P(m) = (1 - alpha_s) / (1 - alpha_t); h = log p + log(V - 1) is that score."""
    p = torch.rand(3, 7, dtype=torch.float64).softmax(-1)
    h = torch.cat([p.log() + math.log(7), torch.full((3, 1), -1e6, dtype=torch.float64)], -1)
    t, s = 0.6, 0.45
    a_t, a_s = 1 - (1 - EPS) * t, 1 - (1 - EPS) * s
    got = step_probs(h, a_t, a_s / a_t - 1, 7, 1.0)
    assert torch.allclose(got[:, :7], p * (a_s - a_t) / (1 - a_t), atol=1e-12)
    assert torch.allclose(got[:, 7], torch.full((3,), (1 - a_s) / (1 - a_t), dtype=torch.float64), atol=1e-12)
    assert torch.allclose(step_probs(h, a_t, None, 7, 1.0)[:, :7], p, atol=1e-12)


@pytest.mark.parametrize("predictor,steps,top_p", [("analytic", 1, 1.0), ("analytic", 3, 1.0), ("euler", 3, 1.0),
                                                   ("analytic", 2, 0.6)])
def test_the_samplers_draw_the_law_of_their_chain_enumerated_over_every_state(predictor, steps, top_p):
    """All-mask start, T steps, the final denoiser; V = 3 (two tokens and the mask), L = 2."""
    model = randomized("sedd", vocab_size=3, length=2)
    states = all_states(3, 2)
    out = model.sample(8000, steps=steps, predictor=predictor, top_p=top_p, generator=torch.Generator().manual_seed(6))
    assert not (out.tokens == 2).any()
    start = (states == 2).all(-1).double()
    assert_law(law(start, sedd_kernels(model, states, sampling_times(steps), predictor, top_p), states), out.tokens,
               states)


def test_with_a_tiny_top_p_every_position_unmasks_to_the_top_token_of_its_step():
    """The nucleus filters the normalised score at every step, the final denoiser included (a flat
    score, so that positions unmask over several steps and not always to the top token)."""
    model = randomized("sedd", scale=0.1, vocab_size=20, length=8)
    logits, zs = [], []
    model.backbone.register_forward_hook(lambda net, args, out: logits.append(out))
    model.sample(16, steps=4, top_p=1e-9, generator=torch.Generator().manual_seed(2),
                 hooks=dict(on_step=lambda i, t, s, z: zs.append(z.clone())))
    prev, early = torch.full_like(zs[0], 19), 0
    for n, (out, z) in enumerate(zip(logits, zs)):
        new = (prev == 19) & (z != 19)
        assert torch.equal(z[new], out.argmax(-1)[new])
        early += int(new.sum()) if n < 4 else 0
        prev = z
    assert early > 0 and not (prev == 19).any()


@pytest.mark.parametrize("predictor", ["analytic", "euler"])
def test_a_decoded_token_never_changes_again(predictor):
    """Absorbing graph (15.2.6): P = delta_z at a clean position, at every step."""
    model = randomized("sedd", scale=0.1, vocab_size=20, length=8)
    zs = []
    model.sample(16, steps=6, predictor=predictor, generator=torch.Generator().manual_seed(5),
                 hooks=dict(on_step=lambda i, t, s, z: zs.append(z.clone())))
    for prev, z in zip(zs, zs[1:]):
        decoded = prev != 19
        assert torch.equal(z[decoded], prev[decoded])
    assert 0 < int((zs[2] != 19).sum()) < zs[2].numel()


def test_under_loglinear_the_euler_step_is_the_tweedie_step():
    """alpha_t is linear in t, so dt sigma'_t = (1 - eps) dt / alpha_t = alpha_s / alpha_t - 1 =
    e^{sigma_t - sigma_s} - 1: the two predictors of 15.2.6 draw the same samples here."""
    model = randomized("sedd", vocab_size=20, length=8)
    a = model.sample(8, steps=5, predictor="euler", generator=torch.Generator().manual_seed(3)).tokens
    b = model.sample(8, steps=5, predictor="analytic", generator=torch.Generator().manual_seed(3)).tokens
    assert torch.equal(a, b)
    for t, s in zip(sampling_times(5)[:-2], sampling_times(5)[1:-1]):
        assert (t - s) * dsigma(t) == pytest.approx(math.expm1(sigma(t) - sigma(s)), rel=1e-12)


def test_the_conditional_sampler_draws_the_law_of_the_projected_chain():
    """15.4.6: for the absorbing graph the projection is carry-over: the given token is clean."""
    model = randomized("sedd", vocab_size=3, length=2)
    states = all_states(3, 2)
    given = Given(torch.tensor([[1, 2]]), torch.tensor([[True, False]]))
    start = (states == 2).all(-1).double()
    exact = law(start, sedd_kernels(model, states, sampling_times(2), "analytic"), states, given.place)
    out = model.sample(8000, steps=2, given=given, generator=torch.Generator().manual_seed(7))
    assert torch.all(out.tokens[:, 0] == 1)
    assert_law(exact, out.tokens, states)


def test_the_final_denoiser_step_leaves_no_mask_and_nfe_is_steps_plus_one():
    """A score far below its exact total (h = -8) unmasks almost nothing in T steps: the final
    denoiser does the rest. NFE = T + 1 network calls."""
    model = registry.build("sedd", preset="smoke", vocab_size=20, length=12)
    with torch.no_grad():
        model.backbone.head.bias.fill_(-8.0)
    calls = count_calls(model)
    masks = []
    out = model.sample(4, steps=5, generator=torch.Generator().manual_seed(0),
                       hooks=dict(on_step=lambda i, t, s, z: masks.append(int((z == 19).sum()))))
    assert out.nfe == len(calls) == 6 and out.tokens.shape == (4, 12)
    assert masks[-2] > 40 and masks[-1] == 0 and not (out.tokens == 19).any()
    assert model.sample(1, **model.capabilities.nfe_equals_l, generator=torch.Generator().manual_seed(0)).nfe == 12


@pytest.mark.parametrize("mask", [[1, 1, 0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 1, 1, 0]], ids=["prefix", "infill"])
def test_given_tokens_are_in_every_network_input_and_in_the_output(mask):
    model = randomized("sedd", vocab_size=20, length=8)
    mask = torch.tensor([mask], dtype=torch.bool).expand(4, -1)
    given = Given(torch.randint(0, 19, (1, 8)).expand(4, -1), mask)
    calls = count_calls(model)
    out = model.sample(4, steps=3, predictor="euler", given=given, generator=torch.Generator().manual_seed(1))
    assert len(calls) == 4 and all(given.preserved(z) for z in calls) and given.preserved(out.tokens)
    empty = Given(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.bool))
    plain = model.sample(3, steps=4, generator=torch.Generator().manual_seed(7)).tokens
    assert torch.equal(model.sample(3, steps=4, given=empty, generator=torch.Generator().manual_seed(7)).tokens, plain)


# ------------------------------------------------------------------------ contract and training
def test_sedd_is_the_papers_sedd_absorb_row_and_refuses_an_unknown_predictor():
    assert_the_family_contract("sedd", "SEDD", "SEDD Absorb", "#8c564b")
    with pytest.raises(ConfigError, match="predictor"):
        registry.build("sedd", preset="smoke").sample(1, steps=2, predictor="leap")


def test_sedd_trains_and_its_loss_falls():
    training_lowers_the_loss("sedd")
