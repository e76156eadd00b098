"""Spec invariants of the shared pieces: backbone, schedules, time sampling, nucleus (spec 11)."""
import math

import pytest
import torch

from esolm import registry
from esolm.backbone import MASK_LOGIT, Backbone
from esolm.config import ConfigError, ModelConfig
from esolm.sampling import nucleus_filter, sample_categorical
from esolm.schedules import LogLinear, stratified_times


def small_backbone(**kw) -> Backbone:
    cfg = ModelConfig(vocab_size=37, length=12, d_model=32, n_layers=2, n_heads=4, cond_dim=16, dropout=0.0, **kw)
    net = Backbone(cfg).double().eval()
    # adaLN-zero and the zero head make a fresh net trivial; randomize so tests have teeth
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net


def test_initial_logits_are_zero_so_initial_loss_is_log_v_minus_1():
    """11.20: zero-initialized AdaLN and head -> logits 0; the mask logit is -1e6 -> ln(V - 1)."""
    for name in ("ar", "mdlm"):
        model = registry.build(name, preset="smoke", vocab_size=101, length=16)
        x = torch.randint(0, 100, (8, 16))
        logits = model.backbone(x, torch.arange(16), None)
        assert torch.all(logits[..., :100] == 0) and torch.all(logits[..., 100] == MASK_LOGIT)
        if name == "ar":
            assert model.loss(x).loss.item() == pytest.approx(math.log(100), abs=1e-5)


def test_adaln_zero_blocks_start_as_identity():
    cfg = ModelConfig(vocab_size=20, length=8, d_model=16, n_layers=2, n_heads=2, cond_dim=8, dropout=0.0)
    net = Backbone(cfg)
    x = net.embed(torch.randint(0, 19, (2, 8)))
    cos, sin = net.rotary.tables(torch.arange(8), x.dtype)
    c = net.sigma_embed(torch.zeros(1))
    assert torch.equal(net.blocks[0](x, c, cos, sin, None), x)


def test_bidirectional_attention_is_permutation_equivariant():
    """11.6: forward(x[pi], rope[pi]) == forward(x, rope)[pi] with a bidirectional mask."""
    net = small_backbone()
    x = torch.randint(0, 36, (3, 12))
    pos = torch.arange(12)
    pi = torch.stack([torch.randperm(12) for _ in range(3)])
    out = net(x, pos, None)
    out_perm = net(torch.gather(x, 1, pi), pi, None)
    expected = torch.gather(out, 1, pi[..., None].expand_as(out))
    assert torch.allclose(out_perm, expected, atol=1e-10)


def test_causal_attention_is_not_permutation_equivariant():
    """The equivariance test has teeth: causal attention breaks it."""
    net = small_backbone()
    x = torch.randint(0, 36, (1, 12))
    pi = torch.randperm(12)[None]
    out = net(x, torch.arange(12), "causal")
    out_perm = net(torch.gather(x, 1, pi), pi, "causal")
    assert not torch.allclose(out_perm, torch.gather(out, 1, pi[..., None].expand_as(out)), atol=1e-6)


def test_rope_is_relative_constant_position_shift_leaves_logits_unchanged():
    """2.3 / 4.3: RoPE is relative, so shifting every position by a constant changes nothing."""
    net = small_backbone()
    x = torch.randint(0, 36, (2, 12))
    assert torch.allclose(net(x, torch.arange(12), "causal"), net(x, torch.arange(12) + 5, "causal"), atol=1e-9)


def test_loglinear_endpoints_and_constant_derivative():
    """11.19: alpha(0) = alpha_0, alpha(1) = alpha_0 * 1e-3, alpha' = -alpha_0 (1 - 1e-3)."""
    for a0 in (1.0, 0.5, 0.125):
        s = LogLinear(a0)
        assert s.alpha(0.0) == pytest.approx(a0)
        assert s.alpha(1.0) == pytest.approx(a0 * 1e-3)
        t = torch.rand(50, dtype=torch.float64)
        assert torch.allclose(s.dalpha(t), torch.full_like(t, -a0 * (1 - 1e-3)))


def test_mdlm_weight_is_one_over_t():
    """11.8: for alpha_0 = 1 the per-masked-token weight is 1/t."""
    t = torch.rand(100, dtype=torch.float64).clamp_min(1e-3)
    assert torch.allclose(LogLinear(1.0).elbo_weight(t), 1 / t)


def test_loss_weight_integral_matches_alpha0_by_monte_carlo():
    """11.8: E_t[w(t) (1 - alpha_t)] = alpha_0 (1 - eps): the weighted count of MDM-scored tokens."""
    g = torch.Generator().manual_seed(0)
    for a0 in (1.0, 0.5, 0.25):
        s = LogLinear(a0)
        t = torch.rand(400_000, dtype=torch.float64, generator=g)
        mc = (s.elbo_weight(t) * (1 - s.alpha(t))).mean().item()
        assert mc == pytest.approx(a0 * (1 - 1e-3), rel=1e-3)


def test_uniform_predictor_nelbo_is_log_v_minus_1_in_expectation():
    """11.8: at initialization (uniform over V - 1 tokens) the expected MDLM NELBO per token is
    ln(V - 1) (1 - eps); estimated by Monte Carlo over many stratified t. The estimator's
    relative spread is about sqrt(ln n / (n L)) (small t carries weight 1/t), ~1% here."""
    model = registry.build("mdlm", preset="smoke", vocab_size=65, length=32).eval()
    x = torch.randint(0, 64, (4096, 32))
    est = model.nll(x, generator=torch.Generator().manual_seed(0)).per_token
    assert est == pytest.approx(math.log(64) * (1 - 1e-3), rel=0.04)


def test_time_stratification_puts_one_t_in_each_stratum():
    """11.18: n rows -> exactly one t in each [eps + (1-eps) i/n, eps + (1-eps)(i+1)/n)."""
    n, eps = 64, 1e-3
    t = stratified_times(n, eps=eps)
    idx = torch.floor((t - eps) / (1 - eps) * n).long()
    assert sorted(idx.tolist()) == list(range(n))
    # ranks of a global batch tile the strata together
    parts = torch.cat([stratified_times(16, offset=r * 16, total=64, eps=eps) for r in range(4)])
    idx = torch.floor((parts - eps) / (1 - eps) * 64).long()
    assert sorted(idx.tolist()) == list(range(64))


def test_nucleus_keeps_the_minimal_prefix_whose_mass_exceeds_p():
    """11.15 / 5.6: kept = smallest top prefix with cumulative mass > p; top token always kept."""
    probs = torch.tensor([0.05, 0.4, 0.3, 0.15, 0.1], dtype=torch.float64)
    logits = probs.log()
    kept = lambda p: set(torch.isfinite(nucleus_filter(logits, p)).nonzero().flatten().tolist())  # noqa: E731
    assert kept(0.5) == {1, 2}  # 0.4 <= 0.5 so 0.3 joins: 0.7 > 0.5
    assert kept(0.7) == {1, 2, 3}  # exactly 0.7 is not > 0.7: keep one more
    assert kept(0.3) == {1}
    assert kept(0.01) == {1}
    assert kept(1.0) == {0, 1, 2, 3, 4}
    out = nucleus_filter(logits, 0.9)
    assert out.dtype == torch.float64


def test_nucleus_sampling_only_draws_kept_tokens():
    logits = torch.tensor([[0.0, 3.0, 2.0, -1.0]]).expand(4000, 4)
    draws = sample_categorical(logits, 0.8, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) <= {1, 2}


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig(d_model=30, n_heads=4)
    with pytest.raises(ConfigError, match="unknown config key"):
        registry.build("ar", preset="smoke", not_a_field=1)
    with pytest.raises(ConfigError, match="available models: .*ar.*mdlm"):
        registry.build("gpt5")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 2, 8, 9])
def test_small_batch_linear_equals_nn_linear_and_follows_weight_updates(rows, bias):
    from esolm.backbone import small_batch_linear as linear
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 24, bias=bias).double()
    x = torch.randn(1, rows, 16, dtype=torch.float64)
    with torch.no_grad():
        y = linear(layer, x)
        assert y.shape == (1, rows, 24) and y.is_contiguous()
        torch.testing.assert_close(y, layer(x), rtol=1e-12, atol=1e-12)
        layer.weight.add_(1.0)  # in place: nothing may be memoized from the old weight
        torch.testing.assert_close(linear(layer, x), layer(x), rtol=1e-12, atol=1e-12)
    y = linear(layer, x.requires_grad_())  # with autograd: nn.Linear itself
    assert y.grad_fn is not None


# ------------------------------------------------------------------ the inference mode (8.6)
def _feeds(net, L=12):
    """(tokens, positions, mask, kwargs) of the call shapes the models make: training-sized,
    batch-1 sampling steps (the small-batch BLAS path), permuted positions, last / at."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 36, (3, L), generator=g)
    pi = torch.stack([torch.randperm(L, generator=g) for _ in range(3)])
    yield x, torch.arange(L), None, {}
    yield x, pi, "causal", {}
    yield x[:1, :2], pi[:1, :2], "causal", {}  # 2 rows: the batch-1 Eso-LM step
    yield x[:1, :1], torch.tensor([4]), None, {}  # 1 row: the AR step
    yield x, torch.arange(L), torch.rand(3, L, L, generator=g) < 0.5, {"last": 3}
    yield x[:2], torch.arange(L), None, {"at": torch.tensor([[0, 5], [11, 2]])}


@pytest.mark.parametrize("adaln", [True, False])
def test_inference_mode_gives_the_logits_of_the_plain_forward(adaln):
    """Backbone.inference() (AdaLN folded into the norms, the small-batch BLAS layout) computes
    what the plain forward computes, on every call shape the models make."""
    net = small_backbone(adaln=adaln)
    for tokens, pos, mask, kw in _feeds(net):
        plain = net(tokens, pos, mask, **kw)
        with net.inference():
            assert net._inference is not None and net._inference.serves(tokens, None)
            fast = net(tokens, pos, mask, **kw)
        assert fast.shape == plain.shape
        torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-12)


def test_inference_mode_with_a_kv_cache_equals_the_plain_cached_forward():
    net = small_backbone()
    x = torch.randint(0, 36, (1, 12))
    plain_cache, fast_cache = net.new_cache(1, 12), net.new_cache(1, 12)
    for i in range(12):
        plain = net(x[:, i:i + 1], torch.tensor([i]), None, cache=plain_cache)
        plain_cache.commit(1)
        with net.inference():
            fast = net(x[:, i:i + 1], torch.tensor([i]), None, cache=fast_cache)
        fast_cache.commit(1)
        torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-12)


def test_inference_mode_folds_the_weights_on_entry_and_every_entry_refolds():
    """The folded AdaLN is read once, when the mode is entered (no version counters): a weight
    changed inside the mode is seen from the next entry on, nested entries included."""
    net = small_backbone()
    x, pos = torch.randint(0, 36, (2, 12)), torch.arange(12)
    with net.inference():
        before = net(x, pos, "causal")
        with torch.no_grad():
            net.blocks[0].adaln.bias.add_(0.5)
            net.norm_final.weight.data.mul_(1.5)  # through .data too: nothing tracks versions
        assert torch.equal(net(x, pos, "causal"), before)  # still the weights of the entry
        with net.inference():  # a nested entry folds afresh
            inner = net(x, pos, "causal")
        assert torch.equal(net(x, pos, "causal"), before)  # the outer mode is restored
    torch.testing.assert_close(inner, net(x, pos, "causal"), rtol=1e-12, atol=1e-12)
    assert (inner - before).abs().max() > 1e-3


def test_inference_mode_is_off_outside_and_runs_without_autograd():
    net = small_backbone()
    x, pos = torch.randint(0, 36, (2, 12)), torch.arange(12)
    with pytest.raises(RuntimeError, match="boom"):
        with net.inference():
            assert not torch.is_grad_enabled()
            raise RuntimeError("boom")
    assert net._inference is None and torch.is_grad_enabled()
    assert net(x, pos, None).grad_fn is not None  # the plain forward: training


def test_time_conditioned_calls_run_the_plain_forward_inside_the_inference_mode():
    """A nonzero sigma cannot use the sigma = 0 folding: inside the mode it takes the plain path."""
    net = small_backbone()
    x, pos, sigma = torch.randint(0, 36, (2, 12)), torch.arange(12), torch.tensor([0.3, 1.2], dtype=torch.float64)
    plain = net(x, pos, None, sigma=sigma)
    with net.inference():
        assert not net._inference.serves(x, sigma)
        assert torch.equal(net(x, pos, None, sigma=sigma), plain)
    assert (plain - net(x, pos, None)).abs().max() > 1e-6


@pytest.mark.parametrize("name", registry.available())
def test_likelihood_and_sampling_entry_points_run_in_the_inference_mode(name):
    """nll and sample are the callers of the fast paths: each runs inside backbone.inference()."""
    model = registry.build(name, preset="smoke", vocab_size=37, length=16)
    seen = []
    model.backbone.register_forward_pre_hook(lambda net, args: seen.append(net._inference is not None))
    x = torch.randint(0, 36, (2, 16))
    model.nll(x)
    model.sample(1, steps=16 if name == "bd3lm" else 4, generator=torch.Generator().manual_seed(0))
    assert seen and all(seen)
    seen.clear()
    model.loss(x).loss.backward()
    assert seen and not any(seen)
