"""Sample-quality and speed metrics (spec 8.2-8.6, 11.16, 11.17): entropy, the gen-PPL
target rule, token-weighted aggregation, self-BLEU, timing, and the float64 sampler."""
import math
import random
import time

import numpy as np
import pytest
import torch

from esolm.config import ConfigError
from esolm.interface import SampleOutput
from esolm.metrics import environment_fingerprint, gen_ppl, self_bleu, time_sampler, unigram_entropy
from esolm.metrics.evaluators import Evaluator
from esolm.metrics.genppl import chunk_rows, valid_targets
from esolm.sampling import sample_categorical

EOS = 9


# ------------------------------------------------------------------ entropy (spec 8.3, 11.16)
def test_entropy_of_all_distinct_tokens_is_ln_L_and_of_a_constant_sample_is_zero():
    h = unigram_entropy([list(range(16)), [3] * 16, [1, 1, 2, 2], list(range(1024))])
    assert h == pytest.approx([math.log(16), 0.0, math.log(2), math.log(1024)], abs=1e-12)


def test_entropy_uses_each_samples_own_counts_in_nats():
    row = [0, 0, 0, 1, 2, 2]  # p = 1/2, 1/6, 1/3
    expected = -(0.5 * math.log(0.5) + (1 / 6) * math.log(1 / 6) + (1 / 3) * math.log(1 / 3))
    assert unigram_entropy(torch.tensor([row]))[0] == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------ gen-PPL target rule (spec 8.2, 11.17)
def test_gen_ppl_scores_the_first_eos_and_later_tokens_but_not_later_eos_or_padding():
    a, b = 4, 5
    chunk = torch.tensor([[a, EOS, b, EOS, EOS]])
    padded = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)  # the last EOS is padding
    real = torch.ones_like(padded)  # ... or a real second EOS
    for attention in (padded, real):
        assert valid_targets(chunk, attention, EOS).tolist() == [[True, True, False, False]]


def test_a_leading_bos_equal_to_eos_is_the_chunks_first_eos():
    chunk = torch.tensor([[EOS, 4, EOS, 5]])
    assert valid_targets(chunk, torch.ones_like(chunk, dtype=torch.bool), EOS).tolist() == [[True, False, True]]
    assert valid_targets(chunk, torch.ones_like(chunk, dtype=torch.bool), None).tolist() == [[True, True, True]]


def test_rows_are_truncated_then_cut_into_independent_chunks_without_single_token_leftovers():
    row = list(range(10))
    assert chunk_rows([row], max_length=8, context=3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert chunk_rows([row[:7]], max_length=None, context=3) == [[0, 1, 2], [3, 4, 5]]
    assert chunk_rows([row], max_length=None, context=None) == [row]


class BigramEvaluator(Evaluator):
    """A fake evaluator over ids written as space-separated integers, with a random bigram table."""

    def __init__(self, vocab=10, context=None, seed=0):
        super().__init__("bigram", spec="bigram", num_parameters=vocab * vocab, max_length=context, eos_id=EOS,
                         pad_id=EOS)
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(vocab, vocab, generator=g, dtype=torch.float64).log_softmax(-1)
        self.calls = []

    def encode(self, texts):
        return [[int(w) for w in t.split()] for t in texts]

    def token_logprobs(self, ids, attention):
        self.calls.append(tuple(ids.shape))
        return self.table[ids[:, :-1], ids[:, 1:]]


def _hand_nll(ev, rows, max_length, context):
    """Loop-by-loop reference of spec 8.2 for the bigram evaluator."""
    total, count = 0.0, 0
    for row in rows:
        row = row[:max_length]
        for s in range(0, len(row), context):
            chunk = row[s:s + context]
            seen_eos = chunk[0] == EOS
            for j in range(1, len(chunk)):
                tok = chunk[j]
                if tok == EOS:
                    if seen_eos:
                        continue
                    seen_eos = True
                total -= float(ev.table[chunk[j - 1], tok])
                count += 1
    return total, count


def test_gen_ppl_is_token_weighted_over_all_samples_and_matches_a_hand_computation():
    rng = random.Random(0)
    rows = [[rng.randrange(10) for _ in range(rng.randrange(2, 40))] for _ in range(13)]
    rows[0] = [1, 2, EOS, 3, EOS, EOS, 4]
    texts = [" ".join(map(str, r)) for r in rows]
    ev = BigramEvaluator(context=8)
    res = gen_ppl(texts, ev, max_length=30, batch_size=4)
    total, count = _hand_nll(ev, rows, 30, 8)
    assert res["num_tokens"] == count
    assert res["nll_per_token"] == pytest.approx(total / count, rel=1e-12)
    assert res["gen_ppl"] == pytest.approx(math.exp(total / count), rel=1e-12)
    per_sample = [_hand_nll(ev, [r], 30, 8) for r in rows]
    mean_of_samples = np.mean([t / c for t, c in per_sample if c])
    assert abs(res["nll_per_token"] - mean_of_samples) > 1e-3  # not a per-sample average
    assert max(b for b, _ in ev.calls) <= 4 and res["evaluator"]["name"] == "bigram"


def test_gen_ppl_does_not_depend_on_the_batch_size():
    texts = [" ".join(str(random.Random(i).randrange(10)) for _ in range(5 + 3 * i)) for i in range(9)]
    ppl = {bs: gen_ppl(texts, BigramEvaluator(), max_length=None, batch_size=bs)["gen_ppl"] for bs in (1, 3, 8)}
    assert ppl[1] == pytest.approx(ppl[3], rel=1e-12) and ppl[1] == pytest.approx(ppl[8], rel=1e-12)


def test_reference_padding_rule_scores_the_first_pad_of_a_padded_sample_without_eos_as_eos():
    """gen_ppl_ref_pad (the authors' rule): in a batch padded to its longest sample, a sample with
    no EOS gets one more target, EOS at its first pad; a sample with an EOS, or one its batch
    does not pad (the longest), scores exactly as under our rule. Default: no such key."""
    ev = BigramEvaluator()
    no_eos, with_eos, longest = [1, 2, 3], [1, EOS, 2], [4, 5, 6, 7, 8, 9]
    texts = [" ".join(map(str, r)) for r in (no_eos, with_eos, longest)]
    plain = gen_ppl(texts, ev, max_length=None, batch_size=3)
    assert "gen_ppl_ref_pad" not in plain
    res = gen_ppl(texts, ev, max_length=None, batch_size=3, ref_pad=True)
    assert res["gen_ppl"] == pytest.approx(plain["gen_ppl"], rel=1e-12)
    total, count = _hand_nll(ev, [no_eos, with_eos, longest], None, 100)
    total -= float(ev.table[3, EOS])  # only the padded sample without EOS: -log p(EOS | ..., 3)
    assert res["num_tokens_ref_pad"] == count + 1 == res["num_tokens"] + 1 and res["ref_pad_eos_targets"] == 1
    assert res["gen_ppl_ref_pad"] == pytest.approx(math.exp(total / (count + 1)), rel=1e-12)
    alone = gen_ppl(texts[:1], ev, max_length=None, batch_size=1, ref_pad=True)  # unpadded: nothing added
    assert alone["gen_ppl_ref_pad"] == alone["gen_ppl"] and alone["ref_pad_eos_targets"] == 0


def test_gen_ppl_refuses_texts_with_nothing_to_score():
    with pytest.raises(ConfigError, match="no text has a scorable token"):
        gen_ppl(["1", "2"], BigramEvaluator(), max_length=None)


# ------------------------------------------------------------------ self-BLEU
def test_self_bleu_equals_nltk_sentence_bleu_of_each_sample_against_the_others():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    rng = random.Random(1)
    words = ["a", "b", "c", "d", "e", "f", "g"]
    docs = [[rng.choice(words) for _ in range(rng.randrange(1, 12))] for _ in range(12)]
    texts = [" ".join(d) for d in docs]
    smooth = SmoothingFunction().method1
    expected = np.mean([sentence_bleu(docs[:i] + docs[i + 1:], d, smoothing_function=smooth)
                        for i, d in enumerate(docs)])
    assert self_bleu(texts) == pytest.approx(expected, abs=1e-12)
    two = np.mean([sentence_bleu(docs[:i] + docs[i + 1:], d, weights=(0.5, 0.5), smoothing_function=smooth)
                   for i, d in enumerate(docs)])
    assert self_bleu(texts, n_gram=2) == pytest.approx(two, abs=1e-12)


def test_self_bleu_is_one_for_copies_and_high_for_repetitive_samples():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(500)]
    diverse = [" ".join(rng.choice(vocab) for _ in range(30)) for _ in range(20)]
    repetitive = [" ".join(["the cat sat on the mat"] * 5) + f" w{i}" for i in range(20)]
    assert self_bleu(["the cat sat on the mat"] * 5) == pytest.approx(1.0)
    assert self_bleu(repetitive) > 0.8
    assert self_bleu(diverse) < 0.1
    assert self_bleu(diverse, max_samples=10) == self_bleu(diverse, max_samples=10)  # seeded subset
    with pytest.raises(ConfigError, match="at least 2"):
        self_bleu(["only one"])


# ------------------------------------------------------------------ timing (spec 8.5, 8.6)
def test_timing_excludes_warmup_synchronizes_every_trial_and_reports_median_mean_std(monkeypatch):
    synced = []
    monkeypatch.setattr("esolm.metrics.timing.sync", lambda device: synced.append(str(device)))
    durations = iter([0.3, 0.01, 0.02, 0.01])

    def fn():
        time.sleep(next(durations))

    res = time_sampler(fn, warmup=1, trials=3, device="cpu")
    assert res["num_trials"] == 3 and len(res["trials"]) == 3 and res["warmup"] == 1
    assert max(res["trials"]) < 0.2  # the slow first (warm-up) call is not among the trials
    assert res["median"] == pytest.approx(sorted(res["trials"])[1])
    assert res["mean"] == pytest.approx(np.mean(res["trials"]))
    assert res["std"] == pytest.approx(np.std(res["trials"], ddof=1))
    assert len(synced) == 1 + 2 * 3  # after the warm-up, and before and after each trial
    assert res["environment"]["torch"] == torch.__version__


def test_profile_timing_reports_the_samplers_network_seconds_with_throughput():
    out = SampleOutput(tokens=torch.zeros(4, 16, dtype=torch.long), nfe=15, seconds=0.5)
    res = time_sampler(lambda: out, warmup=0, trials=2, profile=True)
    assert res["trials"] == [0.5, 0.5] and res["mode"].startswith("profile")
    assert res["nfe"] == 15 and res["samples_per_second"] == pytest.approx(8.0)
    assert res["tokens_per_second"] == pytest.approx(128.0)
    with pytest.raises(ConfigError, match="profile=True"):
        time_sampler(lambda: None, trials=1, profile=True)


def test_environment_fingerprint_names_cpu_threads_torch_python_and_commit():
    env = environment_fingerprint()
    assert env["cpu"] and env["torch_threads"] == torch.get_num_threads() and env["python"]
    assert env["torch"] == torch.__version__ and "git_sha" in env
    assert ("gpu" in env) == torch.cuda.is_available()


# ------------------------------------------------------------------ the float64 categorical sampler
def _peaked(V=50257):
    """One dominant token, a Zipf body and a deep tail: a peaked distribution over a GPT-2-sized vocabulary."""
    ranks = torch.arange(V, dtype=torch.float64)
    logits = -1.2 * torch.log1p(ranks) - 1e-4 * ranks
    logits[0] = 4.0
    return logits


def _draw(sampler, logits, n, chunk=256, generator=None):
    return torch.cat([sampler(logits.expand(min(chunk, n - s), -1), generator)
                      for s in range(0, n, chunk)])


def _float32_gumbel(logits, generator):
    """The biased variant: float32 logits plus float32 Gumbel noise from 24-bit uniforms."""
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float32, device=logits.device)
    return (logits.float() - torch.log(-torch.log(u))).argmax(-1)


def _entropy_z(logits, draws):
    """z-score of the cross-entropy estimate mean(-log p(x)) (unbiased for H) against the true H."""
    logp = logits.log_softmax(-1)
    true_h = float(-(logp.exp() * logp).sum())
    nll = -logp[draws]
    return (float(nll.mean()) - true_h) / (float(nll.std()) / math.sqrt(len(draws))), true_h


@pytest.mark.parametrize("method", ["inverse_cdf", "gumbel"])
def test_float64_categorical_draws_reproduce_the_true_entropy_of_a_peaked_distribution(method):
    logits = _peaked()
    g = torch.Generator().manual_seed(0)
    draws = _draw(lambda x, gen: sample_categorical(x, 1.0, gen, method), logits, 1024, generator=g)
    z, true_h = _entropy_z(logits, draws)
    assert abs(z) < 4, (z, true_h)
    p_top = float(logits.softmax(-1)[0])
    freq = float((draws == 0).double().mean())
    assert abs(freq - p_top) < 4 * math.sqrt(p_top * (1 - p_top) / len(draws))


def test_inverse_cdf_draw_matches_the_probabilities_and_never_draws_a_zero_probability_entry(monkeypatch):
    """The default draw: frequencies of 200,000 draws over 6 categories (two of probability 0,
    one of them the last, like the mask logit at -1e6) agree with softmax within 4 sigma, and
    the extreme uniforms 0 and 1 - 2^-53 land on the first and last entry of positive probability."""
    from esolm import sampling
    logits = torch.tensor([float("-inf"), 0.0, -1.0, 2.0, -3.0, -1e6], dtype=torch.float64)
    p = logits.softmax(-1)
    n = 200_000
    draws = sampling.draw(logits.expand(n, -1), torch.Generator().manual_seed(0), "inverse_cdf")
    counts = torch.bincount(draws, minlength=6).double()
    assert counts[0] == 0 and counts[5] == 0
    sd = (n * p * (1 - p)).sqrt()
    assert bool(((counts - n * p).abs() <= 4 * sd + 1e-9).all()), (counts, n * p)

    for u, expected in ((0.0, 1), (1.0 - 2.0**-53, 4)):  # first and last entry of positive probability
        monkeypatch.setattr(torch, "rand", lambda shape, u=u, **kw: torch.full(shape, u, dtype=kw.get("dtype")))
        assert int(sampling.draw(logits, None, "inverse_cdf")) == expected, u
    monkeypatch.undo()
    with pytest.raises(ValueError, match="inverse_cdf"):
        sampling.draw(logits, None, "nope")


@pytest.mark.slow
def test_float32_gumbel_measurably_under_samples_the_tail_where_float64_does_not():
    """Float32 uniforms have 24 bits, so Gumbel noise stops near 16.6 and tokens ~e^-17 below
    the winner are (almost) never drawn: the entropy of samples drops. About 2e9 noise
    draws per sampler are needed to see it at ~5 sigma (minutes on CPU, a second on GPU)."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    V = 50257
    logits = torch.full((V,), -18.0, dtype=torch.float64, device=dev)
    logits[0] = 0.0
    q = float(logits.softmax(-1)[1:].sum())  # true tail mass, about 7.6e-4
    n = 40_000
    g = torch.Generator(device=dev).manual_seed(0)
    tail64 = int((_draw(lambda x, gen: sample_categorical(x, 1.0, gen), logits, n, 512, g) != 0).sum())
    tail32 = int((_draw(_float32_gumbel, logits, n, 512, g) != 0).sum())
    sd = math.sqrt(n * q * (1 - q))
    assert abs(tail64 - n * q) < 4 * sd, (tail64, n * q)
    assert tail32 < n * q - 4 * sd, (tail32, n * q)  # expected: about 8% of n * q
