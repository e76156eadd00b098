"""Eso-LM (A) and (B) training and evaluation against the spec: config (7.2), carry-over
(11.13), sequential mode (11.2, 11.3), the hybrid NELBO's normalization (7.3), the limits
(11.7) and the exact likelihood (7.10, 11.10). Orders and masks: test_esolm_masks.py."""
import pytest
import torch

from esolm import masks, registry
from esolm.config import ConfigError
from esolm.eso import ordering as order
from esolm.eso.model import EsoConfig, EsoLMA, EsoLMB
from esolm.eso.sampler import decode
from esolm.likelihood import iw_nll
from esolm.schedules import stratified_times

VARIANTS = ["esolm-b", "esolm-a"]


def randomized(name, **kw):
    """A float64 eval-mode model with perturbed weights (fresh ones are trivial: adaLN-zero,
    zero head); 0.1 keeps attention soft, so every token really depends on its context."""
    model = registry.build(name, preset="smoke", dropout=0.0, **kw).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


# ----------------------------------------------------------------------------- config
def test_alpha_0_outside_unit_interval_is_a_config_error():
    with pytest.raises(ConfigError, match="alpha_0"):
        registry.build("esolm-b", preset="smoke", alpha_0=2)
    with pytest.raises(ConfigError, match="alpha_0"):
        EsoConfig(alpha_0=-0.1)
    with pytest.raises(ConfigError, match="alpha_0_eval"):
        EsoConfig(alpha_0=0.5, alpha_0_eval=1.5)


@pytest.mark.parametrize("alpha_0, kappa", [(1.0, 1.0), (0.0, 0.0), (0.5, 0.5), (0.25, 0.5), (0.0625, 0.5)])
def test_batch_split_defaults_follow_spec_7_2(alpha_0, kappa):
    assert EsoConfig(alpha_0=alpha_0).batch_split == kappa
    assert registry.build("esolm-a", preset="smoke", alpha_0=alpha_0).config.batch_split == kappa


@pytest.mark.parametrize("alpha_0, kappa", [(1.0, 0.5), (0.0, 0.5), (0.5, 1.0), (0.5, 0.0)])
def test_batch_split_that_drops_a_needed_term_is_rejected(alpha_0, kappa):
    with pytest.raises(ConfigError, match="batch_split"):
        EsoConfig(alpha_0=alpha_0, batch_split=kappa)


def test_batch_too_small_for_both_halves_names_the_fix():
    model = registry.build("esolm-b", preset="smoke", vocab_size=20, length=8, alpha_0=0.5, batch_split=0.25)
    with pytest.raises(ConfigError, match="at least 4 rows"):
        model.loss(torch.randint(0, 19, (2, 8)))


def test_variants_declare_their_capabilities():
    assert EsoLMB.capabilities.as_dict() == {"kv_cache": True, "exact_likelihood": True,
                                             "single_pass_likelihood": True, "next_token_scoring": False,
                                             "nfe_equals_l": {"steps": 10**6}, "conditioning": ("prefix", "infill")}
    # (A)'s diffusion-phase conditionals see their clean set bidirectionally: one pass each
    assert EsoLMA.capabilities.kv_cache and not EsoLMA.capabilities.single_pass_likelihood


# -------------------------------------------------------------------------- carry-over (11.13)
@pytest.mark.parametrize("name", VARIANTS)
def test_carry_over_gives_zero_loss_gradient_at_clean_slots(name):
    """11.13: clean slots of z_t and of the z0 half get zero logit gradient; clean tokens
    still get gradient through attention."""
    model = randomized(name, vocab_size=30, length=12, alpha_0=0.5)
    outputs = []

    def keep(module, inputs, out):
        out.retain_grad()
        outputs.append(out)
    model.backbone.head.register_forward_hook(keep)
    x = torch.randint(0, 29, (4, 12))
    valid = torch.ones_like(x, dtype=torch.bool)
    nll_d, w, zd = model.diffusion_term(x, valid, torch.full((4,), 0.5, dtype=torch.float64))
    nll_s, zs = model.sequential_term(x, valid)
    ((nll_d * w).sum() + nll_s.sum()).backward()
    m = model.config.mask_id
    for logits, z in zip(outputs, (zd, zs)):
        grad = logits.grad.abs().sum(-1)
        assert torch.all(grad[z != m] == 0) and torch.all(grad[z == m] > 0)
    clean_ids = torch.unique(torch.cat([zd[zd != m], zs[zs != m]]))
    assert torch.all(model.backbone.embed.weight.grad[clean_ids].abs().sum(-1) > 0)


# ------------------------------------------------------------------ sequential mode (11.2, 11.3)
def test_sequential_mode_equals_one_mask_at_a_time_causal_prediction():
    """11.2 for (B): the 2L pass's logits at mask slot i equal a causal pass on [x~_{<i} ; m]."""
    model = randomized("esolm-b", vocab_size=30, length=12, alpha_0=0.5)
    m, x = model.config.mask_id, torch.randint(0, 29, (2, 12))
    z0 = torch.where(torch.rand(2, 12) < 0.5, m, x)
    pi = order.ordering(z0 == m, order.SHUFFLE_CLEAN)
    zs, xs = order.gather(z0, pi), order.gather(x, pi)
    seq = model.sequential_logits(zs, xs, pi, (zs != m).sum(1))
    for b in range(2):
        for i in (zs[b] == m).nonzero()[:, 0].tolist():
            tokens = torch.cat([xs[b, :i], torch.tensor([m])])[None]
            one = model.backbone(tokens, pi[b, :i + 1], "causal", last=1)[0, 0]
            assert torch.allclose(seq[b, i], one, atol=1e-10), (b, i)


def test_eso_a_sequential_mode_equals_one_mask_at_a_time_with_a_bidirectional_clean_prefix():
    model = randomized("esolm-a", vocab_size=30, length=12, alpha_0=0.5)
    m, x = model.config.mask_id, torch.randint(0, 29, (2, 12))
    z0 = torch.where(torch.rand(2, 12) < 0.5, m, x)
    pi = order.ordering(z0 == m, order.NATURAL)
    zs, xs = order.gather(z0, pi), order.gather(x, pi)
    c = (zs != m).sum(1)
    seq = model.sequential_logits(zs, xs, pi, c)
    for b in range(2):
        for i in range(int(c[b]), 12):
            tokens = torch.cat([xs[b, :i], torch.tensor([m])])[None]
            one = model.backbone(tokens, pi[b, :i + 1], masks.prefix_lm(i + 1, c[b:b + 1]), last=1)[0, 0]
            assert torch.allclose(seq[b, i], one, atol=1e-10), (b, i)


def test_two_masks_decoded_in_one_step_do_not_get_one_at_a_time_logits():
    """11.3: the later mask sees that the earlier position is still masked."""
    model = randomized("esolm-b", vocab_size=30, length=8)
    m, x = model.config.mask_id, torch.randint(0, 29, (1, 8))
    pos = torch.randperm(8)
    xs = order.gather(x, pos[None])
    parallel = torch.cat([xs[:, :4], torch.full((1, 2), m)], 1)  # slots 4 and 5 in one step
    one_at_a_time = torch.cat([xs[:, :5], torch.full((1, 1), m)], 1)
    a = model.backbone(parallel, pos[:6], "causal")[0, 5]
    b = model.backbone(one_at_a_time, pos[:6], "causal")[0, 5]
    assert (a - b).abs().max() > 1e-3


# ------------------------------------------------------------------------ the loss (7.3)
def test_loss_adds_the_two_halves_each_normalized_by_its_own_valid_tokens():
    model = randomized("esolm-b", vocab_size=30, length=10, alpha_0=0.5)
    x = torch.randint(0, 29, (6, 10))
    valid = torch.rand(6, 10) < 0.8
    out = model.loss(x, valid, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the same draws, in the same order
    t = stratified_times(3, generator=g)
    nll_d, w, _ = model.diffusion_term(x[:3], valid[:3], t, g)
    nll_s, _ = model.sequential_term(x[3:], valid[3:], g)
    D = (nll_d * w).sum() / valid[:3].sum()
    R = nll_s.sum() / valid[3:].sum()
    assert out.loss.item() == pytest.approx((R + D).item(), rel=1e-12)
    assert out.num_tokens.item() == valid[:3].sum().item()
    assert out.nll_sum.item() == pytest.approx(out.loss.item() * valid[:3].sum().item(), rel=1e-12)


def test_nelbo_per_sequence_is_each_rows_own_mdm_plus_ar_term():
    """Every row carries both terms of its own hybrid NELBO (7.1): its MDM term at its own
    stratified t plus its AR term at its own z0, not its half plus the other half's mean."""
    model = randomized("esolm-a", vocab_size=30, length=10, alpha_0=0.25)
    x = torch.randint(0, 29, (8, 10))
    valid = torch.ones_like(x, dtype=torch.bool)
    nll = model.nll(x, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)  # the same draws, in the same order
    nll_d, w, _ = model.diffusion_term(x, valid, stratified_times(8, generator=g), g)
    nll_s, _ = model.sequential_term(x, valid, g)
    own = (nll_d * w).double().sum(1) + nll_s.double().sum(1)
    assert torch.allclose(nll.per_sequence, own, rtol=1e-12, atol=0)
    assert torch.all(nll.num_tokens == 10)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("alpha_0", [0.5, 1.0])
def test_a_sequences_nelbo_does_not_depend_on_the_other_sequences_of_its_batch(name, alpha_0):
    """With the seed fixed, changing every other row of the batch leaves row 0's NELBO as it was."""
    model = randomized(name, vocab_size=30, length=10, alpha_0=alpha_0)
    x = torch.randint(0, 29, (6, 10))
    y = x.clone()
    y[1:] = torch.randint(0, 29, (5, 10))
    a = model.nll(x, generator=torch.Generator().manual_seed(4)).per_sequence
    b = model.nll(y, generator=torch.Generator().manual_seed(4)).per_sequence
    assert a[0].item() == pytest.approx(b[0].item(), rel=1e-12)
    assert not torch.allclose(a[1:], b[1:])


def test_low_var_weights_apply_only_while_training():
    lv = randomized("esolm-b", vocab_size=30, length=10, alpha_0=1.0, loss_type="low_var")
    elbo = randomized("esolm-b", vocab_size=30, length=10, alpha_0=1.0)
    elbo.load_state_dict(lv.state_dict())
    x = torch.randint(0, 29, (4, 10))
    run = lambda model: model.loss(x, generator=torch.Generator().manual_seed(1))
    evaluated, reference = run(lv), run(elbo)
    assert evaluated.loss.item() == pytest.approx(reference.loss.item(), rel=1e-12)
    lv.train()
    trained = run(lv)
    assert abs(trained.loss.item() - reference.loss.item()) > 1e-3
    assert trained.nll_sum.item() == pytest.approx(reference.nll_sum.item(), rel=1e-12)  # logged: ELBO


def test_diffusion_rows_take_this_ranks_stratum_of_the_global_t():
    model = randomized("esolm-b", vocab_size=30, length=8, alpha_0=0.5)
    model.rank, model.world_size = 1, 2
    seen = []
    original = model.diffusion_term
    model.diffusion_term = lambda x, valid, t, g=None: (seen.append(t), original(x, valid, t, g))[1]
    model.loss(torch.randint(0, 29, (4, 8)))
    (t,) = seen
    eps = 1e-3  # global n = 4 diffusion rows; this rank holds rows 2 and 3
    lo = eps + (1 - eps) * torch.tensor([2, 3]) / 4
    assert torch.all(t >= lo - 1e-12) and torch.all(t < lo + (1 - eps) / 4)


# ---------------------------------------------------------------------- limits (11.7)
@pytest.mark.parametrize("name", VARIANTS)
def test_alpha_0_zero_is_exact_ar_and_its_likelihood_equals_the_nelbo_for_every_k(name):
    model = randomized(name, vocab_size=30, length=8, alpha_0=0.0)
    model.diffusion_term = None  # alpha_0 = 0 must never touch the diffusion term
    m, x = model.config.mask_id, torch.randint(0, 29, (3, 8))
    ar = torch.zeros(3, dtype=torch.float64)
    for i in range(8):  # -log p(x_i | x_{<i}) with one mask at i, natural order
        logits = model.backbone(torch.cat([x[:, :i], torch.full((3, 1), m)], 1), torch.arange(i + 1),
                                "causal", last=1)
        ar -= torch.log_softmax(logits[:, 0], -1).gather(1, x[:, i:i + 1])[:, 0]
    assert model.loss(x).loss.item() == pytest.approx(ar.sum().item() / 24, rel=1e-12)
    nelbo = model.nll(x).per_sequence
    assert torch.allclose(nelbo, ar, rtol=1e-12)
    for k in (1, 3, 8):
        exact = model.nll(x, exact=True, num_orders=k, generator=torch.Generator().manual_seed(k))
        assert torch.allclose(exact.per_sequence, nelbo, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("name", VARIANTS)
def test_alpha_0_one_has_no_sequential_term(name):
    model = randomized(name, vocab_size=30, length=8, alpha_0=1.0)
    assert model.config.batch_split == 1.0
    model.sequential_term = None  # must never be called
    x = torch.randint(0, 29, (4, 8))
    out = model.loss(x, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    nll, w, _ = model.diffusion_term(x, torch.ones_like(x, dtype=torch.bool), stratified_times(4, generator=g), g)
    assert out.loss.item() == pytest.approx(((nll * w).sum() / 32).item(), rel=1e-12)
    assert torch.isfinite(model.nll(x).per_sequence).all()
    s = model.sample(2, steps=3, generator=torch.Generator().manual_seed(0))
    assert s.extra["n_mdm"] == 8 and s.nfe <= 3


# ------------------------------------------------------------------ exact likelihood (7.10)
@pytest.mark.parametrize("name", VARIANTS)
def test_order_likelihood_is_the_samplers_one_token_per_step_likelihood(name):
    """7.10: log p(x | sigma) is what the sampler assigns x when it decodes one token per step."""
    model = randomized(name, vocab_size=30, length=10, alpha_0=0.5)
    x = torch.randint(0, 29, (3, 10))
    sigma, c = order.proposal(10, 0.5, torch.Generator().manual_seed(4))
    assert 0 < c < 10
    teacher = order.gather(x, sigma.expand(3, 10))
    total = torch.zeros(3, dtype=torch.float64)
    for step in decode(model, sigma.expand(3, 10), [1] * 10, c, teacher=teacher):
        total += torch.log_softmax(step.logits[:, 0], -1).gather(1, teacher[:, step.start, None])[:, 0]
    assert torch.allclose(model.order_logliks(x, sigma, c), total, atol=1e-10)


def test_exact_likelihood_is_the_iw_bound_over_the_drawn_orders():
    model = randomized("esolm-b", vocab_size=30, length=10, alpha_0=0.5)
    x = torch.randint(0, 29, (3, 10))
    k5 = model.nll(x, exact=True, num_orders=5, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)  # the same five orders, one call each
    singles = torch.stack([model.nll(x, exact=True, num_orders=1, generator=g).per_sequence for _ in range(5)], 1)
    assert torch.allclose(k5.per_sequence, iw_nll(-singles), rtol=1e-12)
    assert torch.all(k5.per_sequence <= singles.mean(1) + 1e-12)  # Jensen: never above the K = 1 mean
    assert torch.all(k5.num_tokens == 10)


def test_proposal_orders_have_a_binomial_clean_set_and_an_ascending_tail():
    g = torch.Generator().manual_seed(0)
    cs = []
    for _ in range(400):
        sigma, c = order.proposal(20, 0.25, g)
        assert sorted(sigma.tolist()) == list(range(20))
        assert torch.all(sigma[c + 1:] > sigma[c:-1])
        cs.append(c)
    assert sum(cs) / len(cs) == pytest.approx(5.0, abs=0.35)  # E[c] = alpha_0 L, sd/sqrt(n) ~ 0.1


# ------------------------------------------------------------------ trained on synthetic (11.10)
@pytest.mark.slow
@pytest.mark.parametrize("alpha_0", [1.0, 0.25])
def test_exact_likelihood_never_beats_the_true_entropy_and_falls_with_k(alpha_0, tmp_path):
    """11.10 on the synthetic Markov source (true H known): every IW estimate stays above
    H(X_1..X_L), and the mean over independent draws falls with K. Each K uses 64 orders in
    all (64 / K independent estimates), so the means are equally well determined."""
    from esolm.data import load_corpus
    from esolm.train import fit, train_config

    corpus = load_corpus("synthetic", length=16, num_train=8192, num_test=64)
    model = registry.build("esolm-b", preset="smoke", alpha_0=alpha_0, **corpus.model_fields())
    cfg = train_config(steps=1200, batch_size=32, lr=3e-3, warmup=50, ema=0.0, eval_every=0,
                       checkpoint_every=10**6, device="cpu")
    fit("esolm-b", model, corpus, cfg, tmp_path, progress=False, log=lambda *a: None)
    model.eval()
    x = corpus.splits["test"]
    true_nll = corpus.true_nll_per_sequence()
    nelbo = model.nll(x, generator=torch.Generator().manual_seed(0)).per_sequence.mean().item()
    assert true_nll < nelbo < true_nll + 10  # trained: within 10 nats of the floor, never below it
    means = {}
    for k in (1, 4, 16):
        runs = [model.nll(x, exact=True, num_orders=k, generator=torch.Generator().manual_seed(1000 * k + r))
                .per_sequence.mean().item() for r in range(64 // k)]
        assert min(runs) >= true_nll, (k, min(runs), true_nll)
        means[k] = sum(runs) / len(runs)
    assert means[1] >= means[4] >= means[16], means
    assert means[1] - means[16] > 0.5, means
