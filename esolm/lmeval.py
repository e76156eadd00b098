"""Conditional log-likelihoods for every model of the registry, and the lm-evaluation-harness
model class that serves them (spec 15.5; docs/conditional.md).

``loglikelihood(context, continuation)`` is always a **sum** of log-probabilities over the
continuation's tokens, in nats (what lm-eval's accuracies and perplexities expect). What it is
depends on the model, and every result says which (:data:`KINDS`):

    AR          exact: one causal pass over (context + continuation)[:-1]
    Eso-LM      exact under the order (context first, continuation left to right): one
                sequential-mode pass; or, with ``num_orders=K``, the importance-weighted
                estimate over K orders that keep the context first (Eso-LM (B))
    MDLM        the conditional NELBO (a bound): only the continuation is noised, the context
                is always clean; ``mc_draws`` stratified t, a fixed seed
    BD3-LM      its conditional NELBO: one t per block, context tokens clean
    UDLM, SEDD  their conditional NELBO (the model's own conditional_loglik: only the continuation
                noised and scored, ``mc_draws`` stratified t, a fixed seed)

Every request runs at its natural length |context| + |continuation| <= L (the context cut from
the left to fit; a continuation longer than L - 1 is scored in rolling windows), except BD3-LM,
whose block-causal 2L pass runs at L with the positions after the continuation masked and not
scored (they are marginalised; later blocks cannot influence earlier ones). Rolling scores use
lm-eval's disjoint windows with max_seq_len = L - 1, so that every window fills L positions.

    import esolm.lmeval                       # registers the lm-eval model "esolm"
    lm = esolm.lmeval.EsolmLM(checkpoint="runs/tiny/train/<key>/checkpoint.safetensors")
    lm_eval.simple_evaluate(model=lm, tasks=["esolm_shakespeare_mc"], task_manager=...)

Nothing in the experiment graph imports this module: its code stales no record.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from esolm.config import ConfigError
from esolm.diffusion import target_logprob

# what a family's loglikelihood is, for the output of every run (the key: registry family)
KINDS = {
    "AR": "exact",
    "Eso-LM": "exact under the order (context first, continuation left to right)",
    "Eso-LM IW": "importance-weighted estimate over {K} orders keeping the context first (a lower bound in expectation)",
    "MDLM": "conditional NELBO (a lower bound on the log-likelihood), {M} Monte Carlo draws, seed {seed}",
    "BD3-LM": "conditional NELBO (a lower bound on the log-likelihood), {M} Monte Carlo draws, seed {seed}",
}


@dataclass
class Scorer:
    """How to score: ``mc_draws`` for the NELBO families, ``num_orders`` for Eso-LM's IW
    estimate (1: the exact order), ``seed`` for every random draw (the same draws for every
    request: common random numbers across the choices of one question)."""

    mc_draws: int = 128
    num_orders: int = 1
    seed: int = 0

    def __post_init__(self):
        if int(self.mc_draws) < 1 or int(self.num_orders) < 1:
            raise ConfigError(f"mc_draws and num_orders must be >= 1; got mc_draws={self.mc_draws}, "
                              f"num_orders={self.num_orders}")

    def generator(self, device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(int(self.seed))


def family(model) -> str:
    """The model's family as KINDS names it (AR, Eso-LM, MDLM, BD3-LM), or "own" for a model that
    scores itself (a ``conditional_loglik(context, continuation, scorer)`` method and an
    ``lmeval_kind`` saying what it returns: UDLM, SEDD, a plugin's model)."""
    if callable(getattr(model, "conditional_loglik", None)) and isinstance(getattr(model, "lmeval_kind", None), str):
        return "own"
    from baselines.ar import AR
    from baselines.bd3lm import BD3LM
    from baselines.mdlm import MDLM
    from esolm.eso.model import EsoLM

    for cls, name in ((AR, "AR"), (EsoLM, "Eso-LM"), (MDLM, "MDLM"), (BD3LM, "BD3-LM")):
        if isinstance(model, cls):
            return name
    raise ConfigError(f"lm-eval scoring knows AR, MDLM, BD3-LM and Eso-LM; {type(model).__name__} is none of them "
                      f"(give its class a conditional_loglik(context, continuation, scorer) method and an "
                      f"lmeval_kind string saying what it returns, to add it)")


def kind(model, scorer: Scorer) -> str:
    """What ``loglikelihood`` returns for this model under these settings, in words."""
    fam = family(model)
    if fam == "Eso-LM" and scorer.num_orders > 1:
        fam = "Eso-LM IW"
    words = model.lmeval_kind if fam == "own" else KINDS[fam]
    return words.format(K=scorer.num_orders, M=scorer.mc_draws, seed=scorer.seed)


def is_exact(model, scorer: Scorer) -> bool:
    return family(model) in ("AR", "Eso-LM") and scorer.num_orders == 1


# --------------------------------------------------------------------- one (context, continuation)
def conditional_loglik(model, context: list[int], continuation: list[int], scorer: Scorer) -> tuple[float, bool]:
    """(sum of log p(continuation | context) in nats, is_greedy) under the model's estimator,
    within its length L (the context cut from the left; a continuation of L tokens or more in
    rolling windows, the first conditioned on the context's last token)."""
    if not continuation:
        return 0.0, True
    if not context:
        raise ConfigError("a conditional log-likelihood needs at least one context token (lm-eval gives the "
                          "prefix token for an empty context)")
    L = model.config.length
    if len(continuation) >= L:
        windows = _disjoint_windows(continuation, context[-1], L - 1)
        parts = [conditional_loglik(model, c, p, scorer) for c, p in windows]
        return math.fsum(p[0] for p in parts), all(p[1] for p in parts)
    context = context[-(L - len(continuation)):]
    own = getattr(model, "conditional_loglik", None)
    if own is not None:
        return own(context, continuation, scorer)
    score = {"AR": _ar, "Eso-LM": _eso, "MDLM": _mdlm, "BD3-LM": _bd3}[family(model)]
    with torch.inference_mode():
        return score(model, context, continuation, scorer)


def rolling_loglik(model, tokens: list[int], prefix: int, scorer: Scorer) -> float:
    """log p(tokens) of a whole document, the sum over lm-eval's disjoint rolling windows of
    max_seq_len = L - 1 (each window fills L positions; every token predicted once)."""
    windows = _disjoint_windows(tokens, prefix, model.config.length - 1)
    return math.fsum(conditional_loglik(model, c, p, scorer)[0] for c, p in windows)


def _disjoint_windows(tokens: list[int], prefix: int, max_seq_len: int) -> list[tuple[list[int], list[int]]]:
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    return [make_disjoint_window(w) for w in get_rolling_token_windows(list(tokens), prefix, max_seq_len, 1)]


def _tensor(model, ids: list[int]) -> torch.Tensor:
    return torch.tensor([ids], dtype=torch.long, device=model.device)


def _ar(model, context, continuation, scorer) -> tuple[float, bool]:
    """Exact: log pi(c_j | ctx, c_<j) from one causal pass (spec 15.5.3)."""
    x = _tensor(model, context + continuation)
    n = x.shape[1]
    logits = model.backbone(x[:, :-1], torch.arange(n - 1, device=x.device), "causal")[:, len(context) - 1:]
    targets = x[:, len(context):]
    lp = target_logprob(logits, targets).double().sum().item()
    return lp, bool((logits.argmax(-1) == targets).all())


def _eso(model, context, continuation, scorer) -> tuple[float, bool]:
    """Exact under sigma* = (context in its natural order, then the continuation left to right):
    one sequential-mode pass whose z half holds the clean context and masks; slot j sees the
    context and c_<j (spec 15.5.4). With num_orders = K > 1, the IW estimate over K orders that
    keep the context first (Eso-LM (B): its one-pass order likelihood)."""
    x = _tensor(model, context + continuation)
    c, n = len(context), x.shape[1]
    if scorer.num_orders == 1:
        return _eso_order(model, x, c, torch.arange(n, device=x.device))
    from esolm.eso.model import EsoLMB
    from esolm.likelihood import iw_nll

    if not isinstance(model, EsoLMB):
        raise ConfigError("the importance-weighted estimate over orders is implemented for Eso-LM (B) (its one-pass "
                          "order likelihood); for Eso-LM (A) use num_orders=1, the exact order")
    gen = scorer.generator("cpu")
    scores = []
    for _ in range(int(scorer.num_orders)):
        scores.append(_eso_order(model, x, c, _context_first_order(c, n, model.config.alpha_0, gen).to(x.device))[0])
    greedy = _eso_order(model, x, c, torch.arange(n, device=x.device))[1]
    return -float(iw_nll(torch.tensor([scores], dtype=torch.float64))[0]), greedy


def _context_first_order(c: int, n: int, alpha_0: float, generator) -> torch.Tensor:
    """The context's slots in their natural order, then the continuation's as in P^{alpha_0}:
    each joins the diffusion part with probability alpha_0, that part in a random order first,
    the rest ascending (spec 15.5.4)."""
    from esolm.likelihood import proposal_order

    return torch.cat([torch.arange(c), c + proposal_order(n - c, alpha_0, generator)])


def _eso_order(model, x: torch.Tensor, c: int, sigma: torch.Tensor) -> tuple[float, bool]:
    from esolm.eso import ordering

    B, n = x.shape
    sig = sigma[None].expand(B, n)
    xs = ordering.gather(x, sig)
    z = xs.clone()
    z[:, c:] = model.config.mask_id
    logits = model.sequential_logits(z, xs, sig, torch.full((B,), c, dtype=torch.long, device=x.device))[:, c:]
    targets = xs[:, c:]
    return target_logprob(logits, targets).double().sum().item(), bool((logits.argmax(-1) == targets).all())


def subset_weights(m: int, mask_prob, weight, t_lo: float, points: int = 200_000) -> list[float]:
    """W[k] = C(m, k) E_{t ~ U[t_lo, 1)} [ p(t)^k (1 - p(t))^(m - k) w(t) ] for k = 0..m: the
    weight of a uniformly chosen k-subset of m continuation tokens in the NELBO once t is
    integrated out (spec 15.5.5: with p = t, w = 1/t it is 1/k; the schedule's epsilon and the
    draw interval make it differ slightly, so it is integrated numerically, midpoint rule)."""
    import numpy as np

    t = t_lo + (1.0 - t_lo) * (np.arange(points) + 0.5) / points
    p, w = mask_prob(t), weight(t)
    return [0.0] + [math.comb(m, k) * float(np.mean(p ** k * (1 - p) ** (m - k) * w)) for k in range(1, m + 1)]


def _k_subsets(m: int, draws: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(k [draws], chosen [draws, m] bool): draw i masks k_i = 1 + (i mod m) of the m tokens,
    a uniformly random k_i-subset (stratified over k: every k equally often when m divides
    draws, each k at least once as draws >= m)."""
    k = 1 + torch.arange(draws) % m
    rank = torch.rand(draws, m, generator=generator, dtype=torch.float64).argsort(1).argsort(1)
    return k, rank < k[:, None]


def _stratified_mean(values: torch.Tensor, k: torch.Tensor, weights: list[float]) -> float:
    """sum_k W[k] mean(values of the draws with k): the NELBO estimate from k-stratified draws."""
    return math.fsum(weights[int(j)] * values[k == j].mean().item() for j in k.unique())


def _mdlm(model, context, continuation, scorer) -> tuple[float, bool]:
    """The conditional NELBO (spec 15.5.5), only the continuation noised, the context clean:
    with t integrated out, sum_k W[k] E_{|S| = k} [sum_{l in S} -log x_theta^l(ctx, c with S
    masked)] (:func:`subset_weights` for MDLM's schedule and t ~ U[1e-3, 1) as its NELBO draws
    t), estimated from max(mc_draws, |c|) draws stratified over k, negated. The same expectation
    as drawing t and Bernoulli masks, with far less variance. is_greedy: one pass with the whole
    continuation masked, argmax at every position (Duo's single-pass rule)."""
    from esolm.schedules import SAMPLING_EPS

    x = _tensor(model, context + continuation)
    c, n = len(context), x.shape[1]
    m, draws = n - c, max(int(scorer.mc_draws), n - c)
    k, chosen = _k_subsets(m, draws, scorer.generator("cpu"))
    masked = torch.cat([torch.zeros(draws, c, dtype=torch.bool), chosen], 1).to(x.device)
    z = torch.where(masked, model.config.mask_id, x.expand(draws, n))
    values = torch.cat([(-target_logprob(model.denoise(z[i:i + 64]), x.expand(len(z[i:i + 64]), n))
                         * masked[i:i + 64]).double().sum(1) for i in range(0, draws, 64)]).cpu()
    sch = model.schedule
    weights = subset_weights(m, lambda t: 1 - sch.alpha(t), sch.elbo_weight, SAMPLING_EPS)
    cont = torch.arange(n, device=x.device) >= c
    greedy = bool((model.denoise(torch.where(cont[None], model.config.mask_id, x))[:, c:].argmax(-1) == x[:, c:]).all())
    return -_stratified_mean(values, k, weights), greedy


def _bd3(model, context, continuation, scorer) -> tuple[float, bool]:
    """BD3-LM's conditional NELBO (spec 15.5.6): a sum over the blocks that hold continuation
    tokens, each block's t ~ U[1e-3, 1] independent, p = t, w = 1/t, integrated out per block as
    in :func:`_mdlm` (block b's term depends on its own masks and the clean blocks before it
    only, so every block is estimated from the same passes). The 2L pass runs at L: positions
    after the continuation are masked and unscored (marginalised), the context clean."""
    from baselines.bd3lm import FULL_INTERVAL

    L, c = model.config.length, len(context)
    n, bs, mid = c + len(continuation), model.block_size, model.config.mask_id
    x = torch.full((1, L), mid, dtype=torch.long, device=model.device)
    x[0, :n] = _tensor(model, context + continuation)[0]
    pos = torch.arange(L, device=x.device)
    draws = max(int(scorer.mc_draws), bs)  # at least one draw per k in every block
    gen = scorer.generator("cpu")
    masked = torch.zeros(draws, L, dtype=torch.bool)
    strata = []
    for b0 in range(c - c % bs, n, bs):  # the blocks that hold continuation tokens
        own = [i for i in range(max(b0, c), min(b0 + bs, n))]
        k, chosen = _k_subsets(len(own), draws, gen)
        masked[:, own] = chosen
        strata.append((own, k, subset_weights(len(own), lambda t: t, lambda t: 1 / t, FULL_INTERVAL[0])))
    masked = masked.to(x.device)
    z = torch.where(masked | (pos >= n)[None], mid, x.expand(draws, L))
    nll = torch.cat([(-target_logprob(model.denoise(z[i:i + 32], x.expand(len(z[i:i + 32]), L)),
                                      x.expand(len(z[i:i + 32]), L)) * masked[i:i + 32]).double()
                     for i in range(0, draws, 32)]).cpu()
    total = math.fsum(_stratified_mean(nll[:, own].sum(1), k, w) for own, k, w in strata)
    logits = model.denoise(torch.where(pos[None] >= c, mid, x), x)
    greedy = bool((logits[0, c:n].argmax(-1) == x[0, c:n]).all())
    return -total, greedy


# ------------------------------------------------------------------------------ lm-eval
def _template_lm():
    try:
        from lm_eval.api.model import TemplateLM
        from lm_eval.api.registry import register_model
    except ImportError as e:  # a dependency of the package: a broken install
        raise ConfigError(f"lm-evaluation-harness is not importable ({e}); run `make setup` (it installs lm_eval)") from e
    return TemplateLM, register_model


TemplateLM, _register = _template_lm()


# model arguments lm-eval itself passes to every model class (not sample options)
LM_EVAL_EXTRAS = {"max_batch_size", "dtype", "trust_remote_code", "pretrained", "parallelize"}


@_register("esolm")
class EsolmLM(TemplateLM):
    """An esolm checkpoint as an lm-eval model: ``lm_eval --model esolm --model_args
    checkpoint=PATH[,mc_draws=128,num_orders=1,seed=0,device=cpu]`` (after ``import
    esolm.lmeval``; ``python experiments/run.py lm-eval`` does both). ``kind`` says what its
    log-likelihoods are (:func:`kind`). ``generate_until`` samples the continuation of each
    context with the model's own conditional sampler (the context a given prefix, spec 15.4) and
    the sample options given as model arguments (``steps=``, ``top_p=``, a model's own, e.g.
    ``alpha_0_eval=``; ``steps`` defaults to one token per step), then cuts it at the first
    stop string or EOS."""

    backend = "causal"

    def __init__(self, checkpoint: str | None = None, model=None, tokenizer=None, mc_draws: int = 128,
                 num_orders: int = 1, seed: int = 0, device: str = "cpu", batch_size=None, **kwargs):
        super().__init__()
        if model is None:
            if not checkpoint:
                raise ConfigError("lm-eval model esolm needs checkpoint=PATH (a trained checkpoint or an authors' release)")
            from esolm.checkpoint import load_model
            from esolm.data import corpus_from_spec
            from esolm.importers import ensure_checkpoint

            model, state = load_model(ensure_checkpoint(checkpoint), device=device)  # hf: and authors' files too
            tokenizer = corpus_from_spec(state["corpus"]).tokenizer
        if tokenizer is None:
            raise ConfigError("EsolmLM(model=...) needs the model's tokenizer too")
        self.model, self.tok = model.eval(), tokenizer
        self.scorer = Scorer(mc_draws=int(mc_draws), num_orders=int(num_orders), seed=int(seed))
        self.kind = kind(model, self.scorer)
        self.checkpoint, self.seed = checkpoint, int(seed)
        from esolm.interface import sample_options

        self.sample_opts = sample_options(model, {k: v for k, v in kwargs.items() if k not in LM_EVAL_EXTRAS})

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tok.bos_id

    @property
    def max_length(self) -> int:
        return self.model.config.length

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, tokens) -> str:
        return self.tok.decode(tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        out = []
        for _pair, context, continuation in requests:
            out.append(conditional_loglik(self.model, list(context), list(continuation), self.scorer))
            self._cache(_pair, out[-1])
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (text,) in (r.args for r in requests):
            out.append(rolling_loglik(self.model, self.tok_encode(text), self.prefix_token_id, self.scorer))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), out[-1])
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            out.append(self.continuation(context, gen_kwargs, seed=self.seed + i))
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), out[-1])
        return out

    def continuation(self, context: str, gen_kwargs: dict, *, seed: int = 0) -> str:
        """One sampled continuation of ``context`` (BOS first; its start dropped when the context
        and ``max_gen_toks`` exceed the model's L), cut at the first of ``until`` and at EOS."""
        from esolm.conditioning import from_ids

        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        L = self.model.config.length
        gen = max(1, min(int(gen_kwargs.get("max_gen_toks", 256)), L - 1))
        ids = [self.tok.bos_id, *self.tok_encode(context)]
        ids = ids if len(ids) <= L - gen else [self.tok.bos_id, *ids[len(ids) - (L - gen - 1):]]
        length = len(ids) + gen
        opts = dict(self.sample_opts)
        opts.setdefault("steps", gen)
        g = torch.Generator(device=self.model.device).manual_seed(seed)
        with torch.no_grad():
            x = self.model.sample(1, generator=g, given=from_ids(ids, length, mask_id=self.tok.mask_id),
                                  length=length, **opts).tokens[0, len(ids):].tolist()
        if self.tok.eos_id in x:
            x = x[:x.index(self.tok.eos_id)]
        text = self.tok_decode(x)
        cuts = [text.index(u) for u in until if u and u in text]
        return text[:min(cuts)] if cuts else text

    def _cache(self, pair, result) -> None:
        if pair is not None:
            self.cache_hook.add_partial("loglikelihood", pair, result)
