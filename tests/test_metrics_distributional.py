"""The distributional metric (1 - JSD of pooled byte k-grams) and the calibration null samplers
(issue 25, items 5 and 6), on the byte-level Shakespeare corpus of the `tiny` / `cpu` presets."""
import numpy as np
import pytest

from esolm.config import ConfigError
from esolm.data import load_corpus
from esolm.metrics.calibration import NULL_SAMPLERS, REFERENCE_ROWS, most_frequent_kgram, null_samples
from esolm.metrics.distributional import bootstrap, byte_kgrams, distributional_score
from esolm.metrics.entropy import unigram_entropy


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("shakespeare", length=128, vocab_size=258)  # the presets' corpus (docs/metrics.md)


@pytest.fixture(scope="module")
def references(corpus):
    return corpus.texts("test", REFERENCE_ROWS)


def _texts(corpus, rows):
    return corpus.tokenizer.decode_batch(rows, skip_special=True)


def test_byte_kgrams_code_each_run_of_k_bytes_within_one_text():
    assert byte_kgrams("ab", 1).tolist() == [97, 98]
    assert byte_kgrams("abc", 2).tolist() == [97 * 256 + 98, 98 * 256 + 99]
    assert byte_kgrams("ab", 3).tolist() == []
    assert len(byte_kgrams("é", 2)) == 1  # two UTF-8 bytes


def test_real_held_out_text_scores_high_and_random_bytes_near_zero(corpus, references):
    real = distributional_score(_texts(corpus, null_samples("real text", corpus, 64, 0)), references)
    rng = np.random.default_rng(0)
    random_rows = [[0] + row for row in rng.integers(1, 257, size=(64, 127)).tolist()]
    noise = distributional_score(_texts(corpus, random_rows), references)
    # measured: 0.78 [0.77, 0.80] and 0.058 [0.056, 0.060] (docs/metrics.md)
    assert real["score"] > 0.7 and real["score_lo"] > 0.7
    assert noise["score"] < 0.1 and noise["score_hi"] < 0.1


def test_worse_imitations_score_between_real_text_and_noise_beyond_their_intervals(corpus, references):
    real = distributional_score(_texts(corpus, null_samples("real text", corpus, 64, 0)), references)
    uni = distributional_score(_texts(corpus, null_samples("unigram", corpus, 64, 0)), references)
    assert 0.1 < uni["score"] < real["score"]
    assert uni["score_hi"] < real["score_lo"]


def test_identical_sets_score_one_and_disjoint_alphabets_score_zero():
    texts = ["to be or not to be", "that is the question", "whether tis nobler"]
    assert distributional_score(texts, texts)["score"] == pytest.approx(1.0)
    assert distributional_score(["aaaa-bbbb"], ["xyz xyz"], draws=0)["score"] == pytest.approx(0.0)


def test_score_is_symmetric_in_samples_and_references(references):
    other = ["Enter KING HENRY, with his train.\nKING. Now, lords, to France!", "Exeunt all but HAMLET"]
    a = distributional_score(other, references, draws=0)["score"]
    b = distributional_score(references, other, draws=0)["score"]
    assert a == pytest.approx(b, abs=1e-12) and 0.0 < a < 1.0


def test_score_and_interval_are_deterministic_given_the_seed(corpus, references):
    samples = _texts(corpus, null_samples("unigram", corpus, 32, 3))
    first, again = distributional_score(samples, references), distributional_score(samples, references)
    assert first == again
    assert bootstrap(samples, references, draws=50, seed=1) == bootstrap(samples, references, draws=50, seed=1)
    assert bootstrap(samples, references, draws=50, seed=1) != bootstrap(samples, references, draws=50, seed=2)


def test_interval_contains_the_score_and_reports_its_settings(corpus, references):
    r = distributional_score(_texts(corpus, null_samples("real text", corpus, 64, 1)), references, orders=(1, 2))
    assert r["score_lo"] <= r["score"] <= r["score_hi"]
    assert r["orders"] == [1, 2] and set(r["per_order"]) == {"k=1", "k=2"}
    assert r["num_samples"] == 64 and r["num_references"] == REFERENCE_ROWS and r["empty_samples"] == 0
    assert distributional_score(["abcde"], ["abdce"], draws=0)["score_lo"] is None


def test_empty_samples_share_nothing_with_the_references(references):
    r = distributional_score(["", ""], references)
    assert r["score"] == 0.0 and r["empty_samples"] == 2 and r["score_hi"] == 0.0


@pytest.mark.parametrize("samples, references, kwargs, words", [
    ([], ["a text"], {}, "needs samples and references"),
    ([[1, 2, 3]], ["a text"], {}, "decode token ids first"),
    (["a text"], ["ab"], {}, "no 4-gram"),
    (["a text"], ["a text"], dict(orders=(0,)), "orders must be"),
])
def test_bad_input_is_a_config_error_naming_the_fix(samples, references, kwargs, words):
    with pytest.raises(ConfigError, match=words):
        distributional_score(samples, references, **kwargs)


@pytest.mark.parametrize("name", list(NULL_SAMPLERS))
def test_each_null_sampler_gives_n_bos_led_rows_of_length_l_that_decode(corpus, name):
    rows = null_samples(name, corpus, 5, seed=0)
    tok = corpus.tokenizer
    assert len(rows) == 5 and all(len(r) == corpus.length for r in rows)
    assert all(r[0] == tok.bos_id for r in rows)
    assert all(0 <= i < tok.vocab_size and i != tok.mask_id for r in rows for i in r)
    assert all(isinstance(t, str) for t in tok.decode_batch(rows, skip_special=True))
    assert null_samples(name, corpus, 5, seed=0) == rows


def test_real_text_never_draws_a_reference_row(corpus):
    refs = {tuple(r) for r in corpus.splits["test"][:REFERENCE_ROWS].tolist()}
    rows = null_samples("real text", corpus, 200, seed=4)
    assert not refs & {tuple(r) for r in rows} and len({tuple(r) for r in rows}) == 200
    assert null_samples("real text", corpus, 20, seed=5) != null_samples("real text", corpus, 20, seed=6)


def test_unigram_rows_hold_no_special_id_after_bos(corpus):
    rows = np.array(null_samples("unigram", corpus, 64, seed=0))
    assert not np.isin(rows[:, 1:], sorted(corpus.tokenizer.special_ids)).any()


def test_repeater_entropy_is_far_below_real_text(corpus):
    gram = most_frequent_kgram(corpus)
    assert corpus.tokenizer.decode(gram) == " the"  # Shakespeare's most frequent 4 bytes
    real = unigram_entropy(null_samples("real text", corpus, 64, 0)).mean()
    rep = unigram_entropy(null_samples("repeater", corpus, 64, 0))
    assert rep.max() < 0.5 * real  # measured: 1.42 against 3.07 nats


def test_all_eos_rows_are_all_eos(corpus):
    rows = null_samples("all-EOS", corpus, 3, seed=0)
    assert all(i == corpus.tokenizer.eos_id for r in rows for i in r)
    assert corpus.tokenizer.decode_batch(rows, skip_special=True) == ["", "", ""]


def test_unknown_null_sampler_or_bad_n_is_a_config_error(corpus):
    with pytest.raises(ConfigError, match="unknown null sampler 'zeros'; choose one of: real text"):
        null_samples("zeros", corpus, 4)
    with pytest.raises(ConfigError, match="n >= 1"):
        null_samples("unigram", corpus, 0)
    with pytest.raises(ConfigError, match="held-out test rows"):
        null_samples("real text", corpus, 10**6)
