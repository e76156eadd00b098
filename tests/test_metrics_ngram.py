"""The Kneser-Ney n-gram judge (esolm/metrics/ngram.py): a proper distribution over the whole
vocabulary, equal to a slow textbook implementation, usable as a gen-PPL evaluator and a
second judge; and the per-sample sums of gen PPL that bootstrap intervals are drawn from."""
import json
import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from esolm.config import ConfigError
from esolm.metrics import gen_ppl, load_evaluator, score_samples
from esolm.metrics import ngram
from esolm.metrics.ngram import MIN_DISCOUNT, KneserNey

L = 16


@pytest.fixture(scope="module")
def corpus():
    from esolm.data import load_corpus

    return load_corpus("synthetic", length=L, num_train=64, num_valid=64, num_test=64)


def _tiny_rows(seed=0, num_rows=7, length=11, symbols=5):
    """Rows as the packer writes them: BOS (id 0) first, a skewed choice of ids after it."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(symbols, size=(num_rows, length), p=[0.1, 0.4, 0.3, 0.15, 0.05])
    rows[:, 0] = 0
    return rows


# ------------------------------------------------------------------ a slow reference, from the formulas
class ReferenceKN:
    """Interpolated modified Kneser-Ney written from Chen & Goodman (1998) with plain dicts:
    raw counts at the top order, continuation counts N1+(. h w) below it, discounts
    D_c = c - (c+1) Y n_{c+1}/n_c, gamma(h) = (D1 N1(h.) + D2 N2(h.) + D3+ N3+(h.)) / C(h.),
    the uniform 1/V under the unigrams. Same conventions as the module: windows inside rows,
    the position-0 unigram is not a target, and near the row start the top order is len(context)+1."""

    def __init__(self, rows, vocab_size, order):
        self.V, self.N = vocab_size, order
        windows = [set() for _ in range(order + 2)]
        self.raw = [defaultdict(int) for _ in range(order + 1)]
        for row in rows.tolist():
            for k in range(1, order + 1):
                for j in range(len(row) - k + 1):
                    gram = tuple(row[j:j + k])
                    windows[k].add(gram)
                    if k > 1 or j >= 1:
                        self.raw[k][gram] += 1
        self.cont = [defaultdict(int) for _ in range(order + 1)]
        for k in range(2, order + 1):
            for gram in windows[k]:
                self.cont[k - 1][gram[1:]] += 1

    @staticmethod
    def discount(table):
        n = [sum(1 for v in table.values() if v == c) for c in range(1, 5)]
        y = n[0] / (n[0] + 2 * n[1]) if n[0] + 2 * n[1] > 0 else 0.5
        out = []
        for c in (1, 2, 3):
            d = c - (c + 1) * y * n[c] / n[c - 1] if n[c - 1] > 0 and y > 0 else y
            out.append(min(max(d, MIN_DISCOUNT), c))
        return out

    def prob(self, w, context, k, top):
        if k == 0:
            return 1.0 / self.V
        lower = self.prob(w, context, k - 1, top)
        h = tuple(context[len(context) - (k - 1):]) if k > 1 else ()
        table = self.raw[k] if k == top else self.cont[k]
        rows = {g: c for g, c in table.items() if g[:-1] == h and c > 0}
        total = sum(rows.values())
        if total == 0:
            return lower
        d = self.discount(table)
        gamma = sum(d[min(c, 3) - 1] for c in rows.values()) / total
        c = rows.get(h + (w,), 0)
        own = max(c - d[min(c, 3) - 1], 0.0) if c else 0.0
        return own / total + gamma * lower

    def row_logprobs(self, row):
        out = []
        for i in range(1, len(row)):
            context = row[max(0, i - self.N + 1):i]
            out.append(math.log(self.prob(row[i], context, len(context) + 1, len(context) + 1)))
        return out


# ------------------------------------------------------------------ the model itself
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_context_length_gives_a_distribution_over_the_whole_vocabulary(order):
    vocab = 7  # two ids (5, 6: think EOT and mask) never occur in the data
    model = KneserNey.fit(_tiny_rows(), vocab, order)
    rng = np.random.default_rng(order)
    for length in range(order):
        for _ in range(4):
            p = model.distribution(rng.integers(0, vocab, size=length).tolist())
            assert p.shape == (vocab,) and p.sum() == pytest.approx(1.0, abs=1e-12)
            assert p.min() > 0  # unseen ids, the mask id included, keep mass from the uniform


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_vectorised_probabilities_equal_the_textbook_reference(order):
    rows = _tiny_rows(seed=1)
    model, ref = KneserNey.fit(rows, 6, order), ReferenceKN(rows, 6, order)
    queries = np.concatenate([rows[:3], _tiny_rows(seed=9, num_rows=3)])  # seen and unseen contexts
    got = model.token_logprobs(queries)
    want = np.array([ref.row_logprobs(q) for q in queries.tolist()])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_the_top_context_uses_raw_counts_and_lower_orders_continuation_counts():
    """'c' is frequent but only ever follows 'a'; 'b' is rarer but follows many distinct ids.
    The raw unigram (the top order at a row start) prefers 'c'; the back-off of an unseen
    context (continuation counts N1+(. w)) prefers 'b'."""
    a, b, c, unseen = 1, 2, 3, 11
    rows = np.random.default_rng(0).integers(4, 11, size=(20, 12))
    rows[:, 0] = 0
    rows[:10, 1:] = [a, c] * 5 + [a]
    rows[10:, 3] = b
    model = KneserNey.fit(rows, 12, 2)
    assert (rows == c).sum() == 50 and (rows == b).sum() == 10
    raw, backoff = model.distribution([]), model.distribution([unseen])
    assert raw[c] > 2 * raw[b] and backoff[b] > 2 * backoff[c]


def test_order_one_without_data_is_the_uniform_distribution():
    model = KneserNey.fit(np.zeros((0, 8), dtype=np.int64), 9, 1)
    np.testing.assert_allclose(model.distribution([]), np.full(9, 1 / 9), rtol=1e-15)
    assert model.num_entries == 0


def test_ids_outside_the_vocabulary_are_refused():
    model = KneserNey.fit(_tiny_rows(), 6, 2)
    with pytest.raises(ConfigError, match=r"token ids must lie in \[0, 6\)"):
        model.token_logprobs(np.array([[0, 1, 6]]))


# ------------------------------------------------------------------ the evaluator
def test_text_from_the_train_split_scores_better_than_its_shuffle(corpus):
    ev = load_evaluator("ngram:3", corpus=corpus)
    tok = corpus.tokenizer
    rows = corpus.splits["train"][:16]
    perm = torch.randperm(L - 1, generator=torch.Generator().manual_seed(0)) + 1
    shuffled = torch.cat([rows[:, :1], rows[:, perm]], 1)  # the same ids after BOS, in another order
    real = gen_ppl(tok.decode_batch(rows), ev, max_length=L)["gen_ppl"]
    worse = gen_ppl(tok.decode_batch(shuffled), ev, max_length=L)["gen_ppl"]
    assert real < 0.8 * worse
    d = ev.describe()
    assert d["kind"] == "ngram" and d["order"] == 3 and d["params"] == ev.model.num_entries > 0
    assert ev.name == f"KN 3-gram on {corpus.name} train ({tok.name})"


def test_the_default_order_and_bad_specs(corpus):
    assert ngram.parse_order("ngram") == ngram.DEFAULT_ORDER and ngram.parse_order("ngram:10") == 10
    for spec in ("ngram:0", "ngram:11", "ngram:x", "ngram:"):
        with pytest.raises(ConfigError, match="order must be an integer in 1..10") as e:
            load_evaluator(spec, corpus=corpus)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="no corpus was given"):
        load_evaluator("ngram:2")


def test_fitted_tables_are_cached_on_disk_and_reload_identically(corpus, monkeypatch):
    ev = load_evaluator("ngram:4", corpus=corpus)
    path = ngram.cache_file(corpus, 4)
    assert path.is_file()
    monkeypatch.setattr(ngram, "_FITTED", {})  # a new process: only the file is left
    monkeypatch.setattr(KneserNey, "fit", None)  # must not fit again
    again = load_evaluator("ngram:4", corpus=corpus)
    rows = corpus.splits["test"][:8]
    np.testing.assert_array_equal(again.model.token_logprobs(rows), ev.model.token_logprobs(rows))


def test_test_ppl_is_measured_through_the_base_class(corpus):
    ev = load_evaluator("ngram:2", corpus=corpus)
    texts = corpus.texts("test", 32, skip_special=False)
    ppl = ev.measure_test_ppl(texts, max_length=L)
    nll = -ev.model.token_logprobs(corpus.splits["test"][:32]).sum()  # no EOS inside the synthetic rows
    assert ppl == pytest.approx(math.exp(nll / (32 * (L - 1))), rel=1e-9)
    assert ev.describe()["test_ppl"] == ppl


# ------------------------------------------------------------------ per-sample sums of gen PPL
def test_per_sample_sums_add_up_to_the_totals_for_any_batch_size(corpus):
    ev = load_evaluator("ngram:3", corpus=corpus)
    tok = corpus.tokenizer
    texts = tok.decode_batch(corpus.splits["test"][:9]) + ["<bos> s1 s2 <bos> s3"]
    ev.max_length = 6  # a 16-id text becomes chunks of 6, 6 and 4 ids
    runs = [gen_ppl(texts, ev, max_length=L, batch_size=bs) for bs in (1, 3, 8)]
    for res in runs:
        per = res["per_sample"]
        assert len(per["nll"]) == len(per["count"]) == len(texts)
        assert sum(per["count"]) == res["num_tokens"]
        assert sum(per["nll"]) / res["num_tokens"] == pytest.approx(res["nll_per_token"], rel=1e-12)
        assert per["count"][:9] == [5 + 5 + 3] * 9  # three chunks summed
        assert per["count"][9] == 3  # the second <bos> is not the first EOS: not scored
        assert res["scored_fraction"] == pytest.approx(res["num_tokens"] / (9 * 15 + 4))
    for res in runs[1:]:
        np.testing.assert_allclose(res["per_sample"]["nll"], runs[0]["per_sample"]["nll"], rtol=1e-12)
        assert res["per_sample"]["count"] == runs[0]["per_sample"]["count"]


def test_scored_fraction_is_one_without_eos_or_chunking(corpus):
    ev = load_evaluator("ngram:2", corpus=corpus)
    res = gen_ppl(corpus.tokenizer.decode_batch(corpus.splits["test"][:5]), ev, max_length=L)
    assert res["scored_fraction"] == 1.0 and res["per_sample"]["count"] == [L - 1] * 5


# ------------------------------------------------------------------ a second judge in score_samples
def _write_samples(path, corpus, n=12):
    tok = corpus.tokenizer
    x = corpus.source.sample(n, L, torch.Generator().manual_seed(0))
    records = [dict(text=tok.decode(row), tokens=row, nfe=L - 1, seconds=0.5, batch_size=n, model="ar",
                    config={"length": L}, tokenizer=tok.name, tokenizer_fingerprint=tok.fingerprint,
                    corpus=corpus.spec(), steps=L, top_p=1.0, seed=0) for row in x.tolist()]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_score_samples_reports_a_second_judge(tmp_path, corpus):
    path = _write_samples(tmp_path / "s.jsonl", corpus)
    plain = score_samples(path, evaluator="source", corpus=corpus, mauve=False, progress=False,
                          out=tmp_path / "plain.json")
    assert "gen_ppl_judge2" not in plain and "second_evaluator" not in plain["inputs"]
    res = score_samples(path, evaluator="source", second_evaluator="ngram:3", corpus=corpus, mauve=False,
                        progress=False)
    two = res["gen_ppl_judge2"]
    assert res["inputs"]["second_evaluator"] == "ngram:3"
    assert res["gen_ppl"]["gen_ppl"] == plain["gen_ppl"]["gen_ppl"]
    assert two["evaluator"]["kind"] == "ngram" and two["num_tokens"] == res["gen_ppl"]["num_tokens"]
    assert math.isfinite(two["evaluator"]["test_ppl"]) and "measured" in two["evaluator"]["test_ppl_source"]
    # the true source is the best possible judge of its own samples
    assert res["gen_ppl"]["nll_per_token"] < two["nll_per_token"]
    with pytest.raises(ConfigError, match="different inputs .*second_evaluator"):
        score_samples(path, evaluator="source", second_evaluator="ngram:2", corpus=corpus, mauve=False,
                      progress=False)
