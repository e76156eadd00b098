"""ReMDM (spec 15.3) against its derivation: the remasking step keeps the forward marginal, sigma = 0
is MDLM's sampler draw for draw, every schedule stays within sigma_max, NFE is what runs, given
tokens are never remasked, and ``remdm`` goes through the command line."""
import itertools
import json
import math
from types import SimpleNamespace

import pytest
import torch

from baselines import remdm
from baselines.remdm import RemaskPlan, loop_alpha, sigma_max, step_probs
from esolm import registry
from esolm.conditioning import Given
from esolm.config import ConfigError
from esolm.schedules import LogLinear

V, M = 4, 3  # three tokens and the mask (id 3)


def randomized(name, seed=0, **kw):
    """A float64 model with seeded, mildly perturbed weights (fresh ones are trivial: adaLN-zero,
    zero head); mild, so that it draws many different tokens."""
    torch.manual_seed(seed)
    model = registry.build(name, preset="smoke", dropout=0.0, **kw).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def one_step_law(z_t: torch.Tensor, p_x0: torch.Tensor, alpha_t, alpha_s, sigma) -> torch.Tensor:
    """q(z_s | z_t) [B, L, V] of the sampler's own kernel, normalised."""
    r = (1 - alpha_s - sigma * alpha_t) / (1 - alpha_t)
    q = step_probs(p_x0, z_t, M, V, r, sigma)
    assert (q >= -1e-15).all(), "the kernel has a negative probability"
    return q / q.sum(-1, keepdim=True)


STEPS = [(0.0, 0.3), (0.2, 0.5), (0.5, 0.55), (0.9, 1.0), (0.7, 0.7)]  # (alpha_t, alpha_s); the last: a loop step


@pytest.mark.parametrize("alpha_t,alpha_s", STEPS)
def test_remasking_step_keeps_the_forward_marginal_by_exact_enumeration(alpha_t, alpha_s):
    """15.3.1: sum_{z_t} q_sigma(z_s | z_t, x) q_t(z_t | x) = q_s(z_s | x) for every x in V^2 and every
    admissible sigma, enumerating z_t in {x_l, m}^2 and z_s in (V + m)^2 exactly."""
    for x in itertools.product(range(M), repeat=2):
        x = torch.tensor(x)
        want = torch.zeros(2, V, dtype=torch.float64)
        want[:, M] = 1 - alpha_s
        want[torch.arange(2), x] = alpha_s
        for sigma in (0.0, 0.5 * sigma_max(alpha_t, alpha_s), sigma_max(alpha_t, alpha_s)):
            joint = joint_after_step(x, alpha_t, alpha_s, sigma)
            assert torch.allclose(joint, want[0][:, None] * want[1][None, :], atol=1e-12), (x.tolist(), sigma)


def joint_after_step(x: torch.Tensor, alpha_t, alpha_s, sigma) -> torch.Tensor:
    """P(z_s) [V, V] of two positions: sum over z_t in {x_l, m}^2 of q_t(z_t | x) times the kernel
    with the exact denoiser p_x0 = one-hot(x)."""
    p_x0 = torch.nn.functional.one_hot(x, V).double()
    joint = torch.zeros(V, V, dtype=torch.float64)
    for hidden in itertools.product((False, True), repeat=2):
        z_t = torch.where(torch.tensor(hidden), M, x)
        weight = math.prod((1 - alpha_t) if h else alpha_t for h in hidden)
        q = one_step_law(z_t[None], p_x0[None], alpha_t, alpha_s, sigma)[0]
        joint += weight * q[0][:, None] * q[1][None, :]
    return joint


def test_remasking_step_keeps_the_data_marginal_with_the_true_denoiser():
    """One position, data law p: with x_theta = p (the true posterior of a masked token), z_s has law
    alpha_s p + (1 - alpha_s) m for every sigma; MDLM's r with remasking (a wrong kernel) would not."""
    p = torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64)
    alpha_t, alpha_s = 0.4, 0.6
    want = torch.cat([alpha_s * p[:M], torch.tensor([1 - alpha_s], dtype=torch.float64)])
    for sigma in (0.0, 0.2, sigma_max(alpha_t, alpha_s)):
        law = torch.zeros(V, dtype=torch.float64)
        for x in range(M):
            for hidden in (False, True):
                z_t = torch.tensor([[M if hidden else x]])
                weight = p[x] * ((1 - alpha_t) if hidden else alpha_t)
                law += weight * one_step_law(z_t, p[None, None], alpha_t, alpha_s, sigma)[0, 0]
        assert torch.allclose(law, want, atol=1e-12), sigma


class Oracle:
    """A fake MDLM whose x_theta is a fixed sequence x whatever its input (a perfect denoiser of x)."""

    def __init__(self, x: torch.Tensor):
        self.x = x
        self.config = SimpleNamespace(mask_id=M, vocab_size=V)
        self.calls = 0

    def denoise(self, z):
        self.calls += 1
        logits = torch.full((*z.shape, V), -1e6, dtype=torch.float64)
        return logits.scatter(-1, self.x.expand(z.shape)[..., None], 0.0)


def test_a_complete_sequence_is_still_remasked_until_the_last_remasking_step():
    """The chain stops early only when no mask is left and no later step remasks (MDLM stops at the
    first complete sequence; ReMDM's corrector steps go on)."""
    plan = RemaskPlan("cap", 0.5, 40, LogLinear(1.0, 0.0).alpha)
    masked = []
    remdm.chain(Oracle(torch.tensor([0, 1])), torch.full((1, 2), M), plan, generator=torch.Generator().manual_seed(0),
                on_step=lambda i, z: masked.append(bool((z == M).any())))
    complete = masked.index(False)
    assert complete < 30 and any(masked[complete:]) and len(masked) >= 39


@pytest.mark.parametrize("remask,eta", [("cap", 0.5), ("rescale", 0.4), ("loop", 0.1)])
def test_the_chain_keeps_the_forward_marginal_at_every_step(remask, eta):
    """Law test of the sampler's chain with a perfect denoiser: after step i each position is masked
    with probability 1 - alpha_{s_i} (independently), and decoded positions hold x, although tokens
    are remasked all along."""
    B, L, T = 1500, 6, 10
    x = torch.tensor([0, 1, 2, 0, 1, 2])
    plan = RemaskPlan(remask, eta, T, LogLinear(1.0, 0.0).alpha, (0.65, 0.25, 0.8))  # alpha_1 = 0: z_1 all masks
    seen = []
    nfe, remasked = remdm.chain(Oracle(x), torch.full((B, L), M), plan, generator=torch.Generator().manual_seed(0),
                                on_step=lambda i, z: seen.append(z.clone()))
    assert remasked > 0.01 * B * L
    for i, z in enumerate(seen):
        alpha_s = plan.step(i)[1]
        masked = (z == M).double().mean().item()
        sd = math.sqrt(alpha_s * (1 - alpha_s) / (B * L))
        assert abs(masked - (1 - alpha_s)) <= 5 * sd + 1e-12, (i, masked, 1 - alpha_s)
        assert torch.equal(torch.where(z == M, x, z), x.expand(B, L))
    assert len(seen) == T and not (seen[-1] == M).any()


def test_with_sigma_zero_the_sampler_is_mdlms_draw_for_draw():
    """eta = 0 (cap, rescale): the same tokens, NFE and generator state after sampling as MDLM's
    ancestral sampler (5.5), nucleus included; remask=none on remdm is MDLM's default sampler."""
    mdlm = randomized("mdlm", vocab_size=30, length=16)
    ours = registry.build("remdm", preset="smoke", vocab_size=30, length=16, dropout=0.0).double().eval()
    ours.load_state_dict(mdlm.state_dict())
    for top_p in (0.8, 1.0):
        g0 = torch.Generator().manual_seed(5)
        ref = mdlm.sample(3, steps=24, sampler="ancestral", top_p=top_p, generator=g0)
        assert len(ref.tokens.unique()) > 10  # a model that draws many tokens
        for remask in ("cap", "rescale"):
            g = torch.Generator().manual_seed(5)
            out = mdlm.sample(3, steps=24, top_p=top_p, remask=remask, eta=0.0, generator=g)
            assert torch.equal(out.tokens, ref.tokens) and out.nfe == ref.nfe, (remask, top_p)
            assert torch.equal(g.get_state(), g0.get_state())
            assert out.extra["remasked"] == 0
    plain = mdlm.sample(3, steps=24, generator=torch.Generator().manual_seed(2))
    none = ours.sample(3, steps=24, remask="none", generator=torch.Generator().manual_seed(2))
    assert torch.equal(plain.tokens, none.tokens) and plain.nfe == none.nfe
    remasking = mdlm.sample(3, steps=24, sampler="ancestral", remask="cap", eta=0.3,
                            generator=torch.Generator().manual_seed(5))
    assert remasking.extra["remasked"] > 0 and not torch.equal(remasking.tokens, ref.tokens)


@pytest.mark.parametrize("steps", [1, 2, 7, 64, 1000])
def test_each_schedule_stays_within_sigma_max(steps):
    """15.3.2: 0 <= sigma_t <= sigma_max at every step; cap = min(eta, sigma_max), rescale = eta sigma_max
    (ReMDM's, not Duo's eta min(eta, .), 15.7), loop = eta on its plateau alpha_on and 0 elsewhere; the
    last step reaches alpha = 1 with sigma = 0 (so every mask is filled without a noise-removal pass)."""
    alpha = LogLinear(1.0, 1e-3).alpha
    for remask, eta in [("cap", 0.008), ("cap", 1.0), ("rescale", 0.015), ("rescale", 1.0), ("loop", 0.02),
                        ("loop", (1 - LOOP[2]) / LOOP[2])]:
        plan = RemaskPlan(remask, eta, steps, alpha, LOOP)
        for i in range(steps):
            alpha_t, alpha_s, sigma = plan.step(i)
            assert 0.0 <= sigma <= sigma_max(alpha_t, alpha_s) and alpha_s >= alpha_t, (remask, eta, i)
            r = (1 - alpha_s - sigma * alpha_t) / (1 - alpha_t)
            assert -1e-12 <= r <= 1 + 1e-12, (remask, eta, i, r)
            assert sigma == pytest.approx(expected_sigma(plan, i), abs=1e-15), (remask, i)
        assert plan.step(steps - 1)[1:] == (1.0, 0.0)
    first = RemaskPlan("rescale", 0.05, 4, alpha).step(0)  # sigma_max = 1 at t = 1
    assert first[2] == 0.05 != 0.05 * min(0.05, 1.0)
    assert loop_alpha(1.0, *LOOP) == 0.0 and loop_alpha(0.3, *LOOP) == LOOP[2]


LOOP = (0.55, 0.05, 0.9)  # ReMDM-loop's (t_on, t_off, alpha_on) defaults


def expected_sigma(plan: RemaskPlan, i: int) -> float:
    """sigma_t of step i as 15.3.2 writes each schedule."""
    alpha_t, alpha_s, _ = plan.step(i)
    bound = sigma_max(alpha_t, alpha_s)
    t, s = 1 - i / plan.steps, 1 - (i + 1) / plan.steps
    t_on, t_off, _ = plan.loop
    return {"cap": min(plan.eta, bound), "rescale": plan.eta * bound,
            "loop": plan.eta if t_off <= s and t <= t_on else 0.0}[plan.remask]


def test_nfe_is_the_number_of_network_calls_and_about_t():
    """15.3.4: NFE counts the backbone calls (no final noise-removal pass), at most T; remasking makes
    almost every step a call, so one sample's NFE exceeds L, which MDLM's never does (each of its
    calls decodes a token)."""
    model = randomized("remdm", vocab_size=30, length=16)
    calls = []
    model.backbone.register_forward_hook(lambda *a: calls.append(1))
    for remask, eta in (("cap", 0.5), ("rescale", 0.5), ("loop", 0.05), ("cap", 0.0)):
        calls.clear()
        out = model.sample(1, steps=48, sampler="ancestral", remask=remask, eta=eta,
                           generator=torch.Generator().manual_seed(1))
        assert out.nfe == len(calls) <= 48 and not (out.tokens == model.config.mask_id).any()
        if eta > 0.1:
            assert out.nfe > 16, (remask, out.nfe)
    mdlm = model.sample(1, steps=48, remask="none", generator=torch.Generator().manual_seed(1))
    assert mdlm.nfe <= 16
    timed = model.sample(2, steps=48, eta=0.5, profile=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(timed.tokens, model.sample(2, steps=48, eta=0.5, generator=torch.Generator().manual_seed(1)).tokens)
    assert timed.seconds > 0


def test_given_tokens_are_never_masked_nor_remasked():
    """15.4: the given tokens of an infill stay in place at every step of the chain, while free
    tokens are remasked; through sample(given=...) they come out unchanged."""
    model = randomized("remdm", vocab_size=30, length=12)
    tokens = torch.randint(0, 29, (1, 12))
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, [0, 1, 5, 6, 11]] = True
    given = Given(tokens, mask).checked(model, 4, 12)
    options = model.options(dict(steps=32, eta=0.5))
    z = given.place(torch.full((4, 12), model.config.mask_id))

    def check(i, z):
        assert given.preserved(z), f"step {i} changed a given token"

    _, remasked = remdm.chain(model, z, remdm.plan(options, model.schedule.alpha, 32),
                              generator=torch.Generator().manual_seed(0), free=(~given.mask).double(),
                              on_step=check)
    assert remasked > 0 and given.preserved(z)
    for remask in ("cap", "rescale", "loop"):
        out = model.sample(4, steps=32, remask=remask, eta=0.1, given=Given(tokens, mask),
                           generator=torch.Generator().manual_seed(3))
        assert given.preserved(out.tokens) and not (out.tokens == model.config.mask_id).any()
        assert out.extra["remasked"] > 0
    prompt = torch.arange(12)[None] < 4
    out = model.sample(2, steps=16, given=Given(tokens, prompt), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.tokens[:, :4], tokens[:, :4].expand(2, 4))


def test_remdm_is_mdlm_with_remdm_cap_by_default():
    """The registry model: cap with eta = 0.008 by default, MDLM's likelihoods, conditioning, NFE = L
    options at T = L."""
    model = registry.build("remdm", preset="smoke", vocab_size=30, length=16)
    options = model.options({})
    assert options.remask == "cap" and remdm.resolved_eta(options) == 0.008
    assert remdm.resolved_eta(model.options(dict(remask="rescale"))) == 0.015
    assert remdm.resolved_eta(model.options(dict(remask="loop"))) == 0.02
    assert registry.build("mdlm", preset="smoke").options({}).remask == "none"
    caps = type(model).capabilities_for(model.config)
    assert caps.nfe_equals_l == {"steps": 16} and set(caps.conditioning) == {"prefix", "infill"}
    assert caps.exact_likelihood and not caps.kv_cache


def test_remdm_has_its_own_display_and_a_colour_no_other_model_uses():
    model = registry.build("remdm", preset="smoke", vocab_size=30, length=16)
    display = type(model).display(model.config)
    assert (display.family, display.label) == ("ReMDM", "ReMDM")
    for name in registry.available():
        if name != "remdm":
            cls = registry.model_class(name)
            other = cls.display(registry.build_config(name, preset="smoke"))
            assert other.colour.lower() != display.colour.lower(), name


@pytest.mark.parametrize("options,words", [
    (dict(remask="cut"), "remask"),
    (dict(eta=1.5), "eta"),
    (dict(eta=-0.1), "eta"),
    (dict(remask="loop", t_on=0.1, t_off=0.3), "t_off < t_on"),
    (dict(remask="loop", alpha_on=1.0), "alpha_on"),
    (dict(remask="loop", eta=0.2), "(1 - alpha_on) / alpha_on"),
])
def test_options_that_make_no_sampler_are_refused_with_one_message(options, words):
    model = registry.build("remdm", preset="smoke", vocab_size=30, length=16)
    with pytest.raises(ConfigError) as err:
        model.options(options)
    assert words in str(err.value)


def test_remdm_through_the_command_line(tmp_path):
    """train -> sample with ``remdm``: its options (the loop schedule here) typed from the command line."""
    from test_cli import run

    out = tmp_path / "run"
    run("train", "--model", "remdm", "--corpus", "synthetic", "--preset", "smoke", "--out", str(out),
        "--no-progress", "steps=2", "length=16")
    ckpt = str(out / "checkpoint.safetensors")
    samples = tmp_path / "s.jsonl"
    run("sample", "--checkpoint", ckpt, "--num-samples", "3", "--out", str(samples), "steps=8", "seed=1",
        "remask=loop", "eta=0.05", "t_on=0.7")
    recs = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(recs) == 3
    for r in recs:
        assert r["model"] == "remdm" and len(r["tokens"]) == 16 and 1 <= r["nfe"] <= 8
        assert r["options"]["remask"] == "loop" and r["options"]["eta"] == 0.05
