"""Corpora, tokenizers and packing (spec 1).

    from esolm.data import load_corpus
    corpus = load_corpus("shakespeare", length=128)          # BPE-2048, cached on disk
    model = registry.build("ar", preset="smoke", **corpus.model_fields())
    batch = corpus.splits["train"][:32]                        # [32, 128] LongTensor

Corpora: "synthetic" (exact entropy known), "shakespeare" (default real text),
"text:PATH" (local files), "owt" and "lm1b" (the paper's, through ``datasets``), "zeroshot:NAME" (Table 5's evaluation sets).
See docs/data.md.
"""
from __future__ import annotations

from pathlib import Path

from esolm.config import ConfigError
from esolm.data.corpus import Corpus
from esolm.data.synthetic import SyntheticSource
from esolm.data.tokenizer import Tokenizer, load_tokenizer

__all__ = ["load_corpus", "available_corpora", "load_tokenizer", "Corpus", "Tokenizer", "SyntheticSource"]

_CORPORA = ("synthetic", "shakespeare", "text:PATH", "owt", "lm1b", "zeroshot:NAME")


def available_corpora() -> list[str]:
    """Names that :func:`load_corpus` accepts (``text:PATH`` takes any local path)."""
    return list(_CORPORA)


def load_corpus(name: str, *, length: int, vocab_size: int | None = None, tokenizer: str | None = None,
                seed: int = 0, cache_dir: str | Path | None = None, **options) -> Corpus:
    """Build (or load from the cache) corpus ``name`` packed into sequences of ``length`` ids.

    ``vocab_size`` sizes the BPE of text corpora (ignored by fixed tokenizers); ``tokenizer``
    None picks the corpus default; ``seed`` seeds the synthetic source; ``options`` are
    corpus-specific (listed in the error for an unknown one) and recorded in ``spec()``.
    """
    kwargs = dict(length=int(length), vocab_size=vocab_size, tokenizer=tokenizer, seed=int(seed),
                  cache_dir=cache_dir, **options)
    if name == "synthetic":
        from esolm.data import synthetic

        return synthetic.build(**kwargs)
    if name == "shakespeare":
        from esolm.data import text

        return text.build("shakespeare", text.shakespeare_documents(), **kwargs)
    if name.startswith("text:"):
        from esolm.data import text

        path = name[len("text:"):]
        if not path:
            raise ConfigError("text:PATH needs a path, e.g. text:./my_books or text:notes.txt")
        docs = text.path_documents(path)
        return text.build(f"text:{Path(path).expanduser().resolve()}", docs, **kwargs)
    if name.startswith("zeroshot:"):
        from esolm.data import zeroshot

        return zeroshot.build(name[len("zeroshot:"):], **kwargs)
    if name in ("owt", "lm1b"):
        from esolm.data import hub

        return hub.build(name, **kwargs)
    raise ConfigError(f"unknown corpus {name!r}; available corpora: {', '.join(_CORPORA)}")


def corpus_from_spec(spec: dict) -> Corpus:
    """The corpus a spec names: ``{"name": ..., "length": ..., ...}`` as ``Corpus.spec()``,
    ``esolm.runs.Data.corpus_kwargs()`` and the records write it (the one constructor from a spec)."""
    kwargs = dict(spec)
    return load_corpus(kwargs.pop("name"), **kwargs)
