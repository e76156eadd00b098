"""Gen-PPL evaluators (spec 8.2): a transformers causal LM from a local folder, an AR
checkpoint of this harness, and the true synthetic source (the exact answer)."""
import base64
import importlib.util
import math
from pathlib import Path

import pytest
import torch

from esolm import registry
from esolm.checkpoint import save_checkpoint
from esolm.config import ConfigError
from esolm.metrics import gen_ppl, load_evaluator

CONTEXT = 64  # n_positions of the tiny GPT-2


# ------------------------------------------------------------------ a tiny GPT-2 saved to a folder
def _gpt2_ranks() -> dict[bytes, int]:
    """GPT-2's exact BPE ranks, shipped offline by openai-whisper (assets/gpt2.tiktoken)."""
    spec = importlib.util.find_spec("whisper")
    path = Path(spec.origin).parent / "assets" / "gpt2.tiktoken" if spec and spec.origin else None
    if path is None or not path.is_file():
        pytest.skip("the GPT-2 BPE ranks come from the openai-whisper package, which is not installed")
    ranks = {}
    for line in path.read_text().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _byte_to_char() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (vocab.json / merges form)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _merge_of(token: bytes, rank: int, ranks: dict) -> list[bytes]:
    """The two parts whose merge creates ``token``: replay BPE on its bytes with lower ranks only."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        _, i = min((ranks[parts[i] + parts[i + 1]], i) for i in range(len(parts) - 1)
                   if ranks.get(parts[i] + parts[i + 1], rank) < rank)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    ranks = _gpt2_ranks()
    char = _byte_to_char()
    def enc(token: bytes) -> str:
        return "".join(char[b] for b in token)

    vocab = {enc(t): r for t, r in ranks.items()}
    vocab["<|endoftext|>"] = len(ranks)
    merges = [tuple(enc(p) for p in _merge_of(t, r, ranks))
              for t, r in sorted(ranks.items(), key=lambda kv: kv[1]) if len(t) > 1]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<|endoftext|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  unk_token="<|endoftext|>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50257, n_positions=CONTEXT))
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tok.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


TEXTS = [
    "<|endoftext|>The quick brown fox jumps over the lazy dog.<|endoftext|>A second document<|endoftext|>",
    "Short one.",
    "Numbers 12345 and   spaces,\nnew lines and ünïcödé " * 6,  # longer than the 64-token context
    "a<|endoftext|>b<|endoftext|><|endoftext|>c",
]


def _hand_gen_nll(model, tok, texts, max_length, context, eos):
    """Spec 8.2 by hand: one chunk at a time (no padding), first-EOS rule in a Python loop."""
    total, count = 0.0, 0
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"][:max_length]
        for s in range(0, len(ids), context):
            chunk = ids[s:s + context]
            if len(chunk) < 2:
                continue
            with torch.no_grad():
                logp = model(torch.tensor([chunk])).logits[0].double().log_softmax(-1)
            seen_eos = chunk[0] == eos
            for j in range(1, len(chunk)):
                if chunk[j] == eos:
                    if seen_eos:
                        continue
                    seen_eos = True
                total -= float(logp[j - 1, chunk[j]])
                count += 1
    return total, count


def test_gpt2_tokenizer_rebuilt_from_tiktoken_ranks_matches_tiktoken(gpt2_folder):
    import tiktoken
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gpt2_folder)
    ref = tiktoken.Encoding("gpt2", pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
                            mergeable_ranks=_gpt2_ranks(), special_tokens={"<|endoftext|>": 50256})
    for text in TEXTS:
        assert tok(text, add_special_tokens=False)["input_ids"] == ref.encode(text, allowed_special="all")


def test_transformers_evaluator_matches_a_hand_computed_token_weighted_nll(gpt2_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ev = load_evaluator(str(gpt2_folder))
    assert ev.max_length == CONTEXT and ev.eos_id == 50256
    model = AutoModelForCausalLM.from_pretrained(gpt2_folder).eval()
    tok = AutoTokenizer.from_pretrained(gpt2_folder)
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in TEXTS]
    assert max(lengths) > 100  # exercises truncation at 100 and a second chunk
    res = gen_ppl(TEXTS, ev, max_length=100, batch_size=3)
    total, count = _hand_gen_nll(model, tok, TEXTS, 100, CONTEXT, 50256)
    assert res["num_tokens"] == count
    assert res["nll_per_token"] == pytest.approx(total / count, rel=1e-5)
    assert res["gen_ppl"] == pytest.approx(math.exp(total / count), rel=1e-5)
    info = res["evaluator"]
    assert info["name"] == str(gpt2_folder) and info["params"] == sum(p.numel() for p in model.parameters())
    assert "test_ppl" in info


def test_transformers_evaluator_features_are_the_last_tokens_final_hidden_state(gpt2_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ev = load_evaluator(str(gpt2_folder))
    feats = ev.hidden_features(TEXTS[:2], max_text_length=32, batch_size=2)
    model = AutoModelForCausalLM.from_pretrained(gpt2_folder).eval()
    ids = AutoTokenizer.from_pretrained(gpt2_folder)(TEXTS[1], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        h = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]
    assert feats.shape == (2, 32)
    assert torch.allclose(torch.from_numpy(feats[1]), h, atol=1e-5)


def test_hub_name_fails_fast_offline_with_one_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="offline") as e:
        load_evaluator("nobody-esolm/not-a-cached-model")
    assert "\n" not in str(e.value) and "save_pretrained" in str(e.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_evaluator("./missing/evaluator.pt")


def test_an_encoder_folder_is_refused_as_a_gen_ppl_evaluator():
    from esolm.metrics.mauve import minilm_folder

    with pytest.raises(ConfigError, match="not a causal LM"):
        load_evaluator(str(minilm_folder()))


# ------------------------------------------------------------------ harness checkpoints
@pytest.fixture(scope="module")
def synthetic32():
    from esolm.data import load_corpus

    return load_corpus("synthetic", length=32, num_train=64, num_valid=64, num_test=64)


def _checkpoint(tmp_path, corpus, name="ar", test_ppl=7.5):
    torch.manual_seed(1)
    model = registry.build(name, preset="smoke", **corpus.model_fields())
    for p in model.parameters():  # random, non-zero head: the initial logits are all zero
        torch.nn.init.normal_(p, std=0.2)
    path = tmp_path / f"{name}.safetensors"
    save_checkpoint(path, dict(model_name=name, model_config=model.config.to_dict(), model=model.state_dict(),
                               ema=None, corpus=corpus.spec(), metrics={"test_ppl": test_ppl}))
    return path, model.eval()


def test_ar_checkpoint_evaluator_scores_with_next_token_logprobs_and_reports_its_test_ppl(tmp_path, synthetic32):
    path, model = _checkpoint(tmp_path, synthetic32)
    ev = load_evaluator(str(path), corpus=synthetic32)
    rows = synthetic32.splits["test"][:6]
    texts = synthetic32.tokenizer.decode_batch(rows)
    res = gen_ppl(texts, ev, max_length=32, batch_size=4)
    with torch.no_grad():
        hand = -model.next_token_logprobs(rows).double()  # BOS = EOS is the first EOS; no EOS target follows
    assert res["num_tokens"] == rows.shape[0] * 31
    assert res["nll_per_token"] == pytest.approx(float(hand.mean()), rel=1e-6)
    assert res["evaluator"]["test_ppl"] == 7.5 and res["evaluator"]["params"] == model.num_parameters()
    assert ev.hidden_features(texts[:3], batch_size=2).shape == (3, model.config.d_model)


def test_a_non_ar_checkpoint_is_refused_as_an_evaluator(tmp_path, synthetic32):
    path, _ = _checkpoint(tmp_path, synthetic32, name="mdlm")
    with pytest.raises(ConfigError, match="must be an AR checkpoint"):
        load_evaluator(str(path), corpus=synthetic32)


# ------------------------------------------------------------------ the true synthetic source
def test_gen_ppl_under_the_true_source_matches_its_entropy_and_shuffling_raises_it_sharply():
    from esolm.data import load_corpus

    L = 64
    corpus = load_corpus("synthetic", length=L, num_train=64, num_valid=64, num_test=256)
    src, tok = corpus.source, corpus.tokenizer
    ev = load_evaluator("source", corpus=corpus)
    x = src.sample(400, L, torch.Generator().manual_seed(123))
    res = gen_ppl(tok.decode_batch(x), ev, max_length=L, batch_size=64)
    assert res["num_tokens"] == 400 * (L - 1)  # BOS is context, never a target
    per_seq = -src.log_prob(x) / (L - 1)
    se = float(per_seq.std()) / math.sqrt(len(per_seq))
    exact = src.entropy(L) / (L - 1)
    assert abs(res["nll_per_token"] - exact) < 4 * se, (res["nll_per_token"], exact, se)
    assert abs(math.log(ev.test_ppl) - exact) < 0.05  # its own test PPL, exact on the test split
    g = torch.Generator().manual_seed(0)
    shuffled = torch.cat([x[:, :1], torch.stack([r[torch.randperm(L - 1, generator=g)] for r in x[:, 1:]])], 1)
    worse = gen_ppl(tok.decode_batch(shuffled), ev, max_length=L, batch_size=64)["gen_ppl"]
    assert worse > 2 * res["gen_ppl"]
