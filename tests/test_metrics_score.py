"""``score_samples`` (the ``run.py score`` command): one metrics JSON beside the samples, and
one clear ConfigError for inputs it cannot score."""
import json
import math

import pytest
import torch

from esolm.config import ConfigError
from esolm.metrics import metrics_path, score_samples, unigram_entropy

L = 16


@pytest.fixture(scope="module")
def corpus():
    from esolm.data import load_corpus

    return load_corpus("synthetic", length=L, num_train=64, num_valid=64, num_test=64)


def write_samples(path, corpus, n=20, batch_size=10, seed=0, corpus_spec=None, **changes):
    """A samples JSONL as ``run.py sample`` writes it, drawn from the true source."""
    tok = corpus.tokenizer
    x = corpus.source.sample(n, L, torch.Generator().manual_seed(seed))
    records = []
    for i, row in enumerate(x.tolist()):
        records.append(dict(text=tok.decode(row), tokens=row, nfe=L - 1, seconds=0.5 + i // batch_size,
                            batch_size=batch_size, model="ar", config={"length": L}, tokenizer=tok.name,
                            tokenizer_fingerprint=tok.fingerprint, corpus=corpus_spec or corpus.spec(), steps=L, top_p=1.0,
                            seed=seed, **changes))
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, x


def test_score_writes_every_metric_beside_the_samples(tmp_path, corpus):
    path, x = write_samples(tmp_path / "samples-steps16-seed0.jsonl", corpus, n=24, batch_size=8)
    res = score_samples(path, evaluator="source", corpus=corpus, progress=False)
    out = tmp_path / "samples-steps16-seed0.metrics.json"
    assert metrics_path(path) == out and res["path"] == str(out)
    saved = json.loads(out.read_text())
    assert saved["gen_ppl"]["gen_ppl"] == pytest.approx(res["gen_ppl"]["gen_ppl"])
    ppl = res["gen_ppl"]
    exact = corpus.source.entropy(L) / (L - 1)
    assert ppl["num_tokens"] == 24 * (L - 1) and abs(ppl["nll_per_token"] - exact) < 0.3
    assert ppl["evaluator"]["name"].startswith("true source") and ppl["evaluator"]["params"] > 0
    assert math.isfinite(ppl["evaluator"]["test_ppl"])
    assert res["entropy"]["mean"] == pytest.approx(unigram_entropy(x).mean())
    assert 0 <= res["self_bleu"]["self_bleu"] <= 1
    assert 0 < res["mauve"]["mauve"] <= 1 and res["mauve"]["num_references"] == 24
    assert res["nfe"]["mean"] == L - 1
    timing = res["timing"]
    assert timing["seconds_per_batch"]["trials"] == [0.5, 1.5, 2.5] and timing["mean_excluding_first"] == 2.0
    assert timing["samples_per_second"] == pytest.approx(24 / 4.5)
    assert res["environment"]["torch"] == torch.__version__ and res["model"] == "ar"
    assert saved["inputs"]["samples_sha256"] == res["inputs"]["samples_sha256"]


def test_score_defaults_to_the_true_source_on_the_synthetic_corpus(tmp_path, corpus):
    path, _ = write_samples(tmp_path / "s.jsonl", corpus)
    res = score_samples(path, corpus=corpus, mauve=False, progress=False)
    assert res["gen_ppl"]["evaluator"]["kind"] == "source" and res["mauve"] is None


def test_score_never_silently_replaces_a_result_computed_from_other_inputs(tmp_path, corpus):
    path, _ = write_samples(tmp_path / "s.jsonl", corpus)
    first = score_samples(path, evaluator="source", corpus=corpus, mauve=False, progress=False)
    again = score_samples(path, evaluator="source", corpus=corpus, mauve=False, progress=False)
    assert again["gen_ppl"] == first["gen_ppl"]  # same inputs: recomputed in place
    with pytest.raises(ConfigError, match="different inputs .*max_length"):
        score_samples(path, evaluator="source", corpus=corpus, mauve=False, max_length=8, progress=False)
    other = score_samples(path, evaluator="source", corpus=corpus, mauve=False, max_length=8, overwrite=True,
                          progress=False)
    assert json.loads(metrics_path(path).read_text())["inputs"]["max_length"] == 8 == other["inputs"]["max_length"]


def _refusal(path, corpus, match, **kwargs):
    with pytest.raises(ConfigError, match=match) as e:
        score_samples(path, corpus=corpus, mauve=False, progress=False, **kwargs)
    assert "\n" not in str(e.value)  # one clear message
    return str(e.value)


def test_score_refuses_a_missing_or_empty_samples_file(tmp_path, corpus):
    _refusal(tmp_path / "absent.jsonl", corpus, "does not exist", evaluator="source")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    _refusal(empty, corpus, "is empty", evaluator="source")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "s1", "tokens": [1]}\n{"text": \n')
    _refusal(broken, corpus, "line 2 is not JSON", evaluator="source")


def test_score_refuses_samples_that_mix_tokenizers(tmp_path, corpus):
    path, _ = write_samples(tmp_path / "s.jsonl", corpus)
    lines = path.read_text().splitlines()
    rec = json.loads(lines[-1])
    rec["tokenizer"], rec["tokenizer_fingerprint"] = "gpt2", "0123abcd"
    path.write_text("\n".join(lines[:-1] + [json.dumps(rec)]) + "\n")
    _refusal(path, corpus, "mixes samples with different tokenizer", evaluator="source")


def test_score_refuses_samples_from_another_tokenizer(tmp_path, corpus):
    from esolm.data import load_corpus

    other = load_corpus("synthetic", length=L, symbols=32, num_train=64, num_valid=64, num_test=64)
    path, _ = write_samples(tmp_path / "other.jsonl", other, corpus_spec=corpus.spec())  # claims `corpus`
    _refusal(path, None, "another tokenizer", evaluator="source")  # its tokenizer fingerprint differs
    path, _ = write_samples(tmp_path / "edited.jsonl", corpus)
    lines = [json.loads(s) for s in path.read_text().splitlines()]
    lines[3]["tokens"] = lines[4]["tokens"]  # ids that do not decode to the text
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    _refusal(path, corpus, "sample 4: its tokens do not decode", evaluator="source")
    lines[3]["tokens"] = [corpus.tokenizer.vocab_size + 5] * L  # out of the vocabulary
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    _refusal(path, corpus, "outside", evaluator="source")


def test_score_refuses_an_evaluator_that_cannot_be_loaded_offline(tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, _ = write_samples(tmp_path / "s.jsonl", corpus)
    message = _refusal(path, corpus, "cannot load evaluator", evaluator="nobody-esolm/gpt2-large-not-cached")
    assert "offline" in message and not metrics_path(path).exists()


def test_score_refuses_an_ar_evaluator_trained_on_another_tokenizer(tmp_path, corpus):
    from esolm import registry
    from esolm.checkpoint import save_checkpoint
    from esolm.data import load_corpus

    other = load_corpus("synthetic", length=L, symbols=32, num_train=64, num_valid=64, num_test=64)
    model = registry.build("ar", preset="smoke", **other.model_fields())
    ckpt = tmp_path / "ar.safetensors"
    save_checkpoint(ckpt, dict(model_name="ar", model_config=model.config.to_dict(), model=model.state_dict(),
                               ema=None, corpus=other.spec(), metrics={}))
    path, _ = write_samples(tmp_path / "s.jsonl", corpus)
    _refusal(path, corpus, "must be trained on the samples' corpus", evaluator=str(ckpt))


def test_score_with_an_ar_checkpoint_reports_its_stored_test_ppl(tmp_path, corpus):
    from esolm import registry
    from esolm.checkpoint import save_checkpoint

    model = registry.build("ar", preset="smoke", **corpus.model_fields())
    ckpt = tmp_path / "ar.safetensors"
    save_checkpoint(ckpt, dict(model_name="ar", model_config=model.config.to_dict(), model=model.state_dict(),
                               ema=None, corpus=corpus.spec(), metrics={"test_ppl": 42.0}))
    path, _ = write_samples(tmp_path / "s.jsonl", corpus)
    res = score_samples(path, evaluator=str(ckpt), corpus=corpus, featurizer="evaluator", progress=False)
    ev = res["gen_ppl"]["evaluator"]
    assert res["mauve"]["featurizer"].startswith("evaluator") and res["mauve"]["feature_dim"] == model.config.d_model
    assert ev["test_ppl"] == 42.0 and ev["params"] == model.num_parameters() and ev["kind"] == "checkpoint"
    # zero-initialized head: uniform over the V - 1 non-mask tokens (spec 11.20)
    assert res["gen_ppl"]["nll_per_token"] == pytest.approx(math.log(corpus.tokenizer.vocab_size - 1), rel=1e-5)


def test_score_refuses_a_corpus_other_than_the_samples_own(tmp_path, corpus):
    from esolm.data import load_corpus

    reseeded = load_corpus("synthetic", length=L, seed=1, num_train=64, num_valid=64, num_test=64)
    path, _ = write_samples(tmp_path / "s.jsonl", corpus)  # same tokenizer, another source
    _refusal(path, reseeded, "is not the one the samples", evaluator="source")


def test_score_refuses_fewer_mauve_references_than_samples_before_scoring(tmp_path, corpus):
    path, _ = write_samples(tmp_path / "s.jsonl", corpus)
    with pytest.raises(ConfigError, match="one reference per sample"):
        score_samples(path, corpus=corpus, references=["s1 s2"] * 5, progress=False)
    assert not metrics_path(path).exists()


def test_score_measures_the_test_ppl_of_an_ar_checkpoint_that_stored_none(tmp_path, corpus):
    from esolm import registry
    from esolm.checkpoint import save_checkpoint

    model = registry.build("ar", preset="smoke", **corpus.model_fields())
    ckpt = tmp_path / "ar.safetensors"
    save_checkpoint(ckpt, dict(model_name="ar", model_config=model.config.to_dict(), model=model.state_dict(),
                               ema=None, corpus=corpus.spec(), metrics={"valid": {"ppl": 3.0}}))
    path, _ = write_samples(tmp_path / "s.jsonl", corpus)
    ev = score_samples(path, evaluator=str(ckpt), corpus=corpus, mauve=False, progress=False)["gen_ppl"]["evaluator"]
    assert ev["test_ppl"] == pytest.approx(corpus.tokenizer.vocab_size - 1, rel=1e-5)  # uniform head (spec 11.20)
    assert "test sequences" in ev["test_ppl_source"]
