"""The zero-shot corpora of Table 5 (spec 10.5): an OWT model's test perplexity on PTB,
Wikitext, LM1B, Lambada, AG News, PubMed and ArXiv, each tokenized with the model's tokenizer.

    corpus = load_corpus("zeroshot:wikitext", length=1024)                   # through datasets
    corpus = load_corpus("zeroshot:ptb", length=16, tokenizer="synthetic-48",
                         data_dir="tests/data/zeroshot")                       # a local stand-in

Preprocessing (spec 1.2, 10.5): the test split of each dataset, its text field detokenized with
the dataset's detokenizer (PTB, Wikitext, LM1B, Lambada), tokenized without special tokens, with
no EOS between documents (``insert_valid_eos=False``), concatenated and cut into L - 2 chunks
framed by BOS ... EOS (``insert_valid_special=True``); the remainder is dropped. The spec confirms
only these two flags; the dataset ids, fields and detokenizer rules below are INFERRED.
Local stand-ins: ``data_dir`` (default: ``$ESOLM_ZEROSHOT``, the way to name it from the command
line) holding ``<name>.jsonl`` (one JSON object per line with the text field or "text") or a
``datasets.save_to_disk`` folder ``<name>/``.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from esolm.config import ConfigError, coerce
from esolm.data.cache import FORMAT_VERSION, cache_root, digest, log
from esolm.data.corpus import Corpus, load_splits, save_splits
from esolm.data.hub import hub_reachable, lm1b_detokenize
from esolm.data.tokenizer import load_tokenizer

# name -> Hugging Face dataset, config, split and text field (INFERRED ids)
DATASETS = {
    "ptb": dict(repo="ptb_text_only", config=None, split="test", field="sentence"),
    "wikitext": dict(repo="wikitext", config="wikitext-103-raw-v1", split="test", field="text"),
    "lm1b": dict(repo="billion-word-benchmark/lm1b", config=None, split="test", field="text"),
    "lambada": dict(repo="EleutherAI/lambada_openai", config="en", split="test", field="text"),
    "ag_news": dict(repo="fancyzhx/ag_news", config=None, split="test", field="text"),
    "pubmed": dict(repo="armanc/scientific_papers", config="pubmed", split="test", field="article"),
    "arxiv": dict(repo="armanc/scientific_papers", config="arxiv", split="test", field="article"),
}
OPTIONS = dict(data_dir=None, max_documents=None)


# ------------------------------------------------------------------ detokenizers
def _sub(text: str, rules) -> str:
    for pattern, repl in rules:
        text = re.sub(pattern, repl, text)
    return text


_WIKITEXT = [(r" @(.)@ ", r"\1"),  # "1 @,@ 000" -> "1,000"; "well @-@ known" -> "well-known"
             (r" ([.,;:!?)\]}])", r"\1"), (r"([(\[{]) ", r"\1"),
             (r"= = = ", "=== "), (r" = = =", " ==="), (r"= = ", "== "), (r" = =", " =="),
             (r" (n't|'s|'re|'ve|'m|'ll|'d)\b", r"\1"), (r" \n", "\n"), (r"\n ", "\n")]
_PTB = [(r" (n't|'s|'re|'ve|'m|'ll|'d)\b", r"\1"), (r"s ' ", "s' "), (r"\\/", "/"),
        (r" ([.,;:!?)\]}])", r"\1"), (r"([(\[{$]) ", r"\1"), (r" \n", "\n")]


def detokenize(name: str, text: str) -> str:
    """Undo the dataset's tokenized spacing (Wikitext's @-@, PTB's "do n't", LM1B, Lambada quotes)."""
    if name == "wikitext":
        return _sub(text, _WIKITEXT)
    if name == "ptb":
        return _sub(text, _PTB)
    if name == "lm1b":
        return lm1b_detokenize(text)
    if name == "lambada":
        return "\n" + text.replace("\u201c", '"').replace("\u201d", '"').strip()
    return text


# ------------------------------------------------------------------ reading the texts
def _fetch_message(name: str) -> str:
    d = DATASETS[name]
    cfg = f", '{d['config']}'" if d["config"] else ""
    return (f"zero-shot corpus {name!r} needs the Hugging Face dataset {d['repo']!r}{cfg} (split {d['split']}), "
            f"and the hub cannot be reached from here (offline). On a machine with internet run\n"
            f"    python -c \"import datasets; datasets.load_dataset('{d['repo']}'{cfg}, split='{d['split']}')"
            f".save_to_disk('zeroshot/{name}')\"\n"
            f"then copy the folder zeroshot/ here and set ESOLM_ZEROSHOT to its path (every command and preset "
            f"reads it; in Python, load_corpus(..., data_dir=PATH) does the same); the folder may instead hold "
            f"{name}.jsonl with one {{\"{d['field']}\": ...}} object per line")


def _fetch_hint(name: str) -> str:
    d = DATASETS[name]
    return f"put one there (datasets' save_to_disk of {d['repo']!r}, or {name}.jsonl with a {d['field']!r} per line)"


def _jsonl_rows(path: Path) -> list[dict]:
    """The JSON objects of a JSONL file, one per non-empty line; a ConfigError naming a bad line."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ConfigError(f"{path} line {n} is not JSON ({e}); fix or re-create the file") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path} line {n} is not a JSON object; each line must be one object")
            rows.append(row)
    return rows


def read_texts(name: str, data_dir=None, max_documents: int | None = None) -> list[str]:
    d = DATASETS[name]
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        jsonl, saved = folder / f"{name}.jsonl", folder / name
        if jsonl.is_file():
            texts = [r.get(d["field"], r.get("text")) for r in _jsonl_rows(jsonl)]
        elif saved.is_dir():
            import datasets

            ds = datasets.load_from_disk(str(saved))
            ds = ds[d["split"]] if isinstance(ds, datasets.DatasetDict) else ds
            texts = list(ds[d["field"]])
        else:
            raise ConfigError(f"the zero-shot data folder {str(data_dir)!r} (data_dir, else $ESOLM_ZEROSHOT) holds "
                              f"neither {name}.jsonl nor a saved dataset {name}/; {_fetch_hint(name)}")
    else:
        if not hub_reachable():
            raise ConfigError(_fetch_message(name))
        import datasets

        try:
            ds = datasets.load_dataset(d["repo"], d["config"], split=d["split"])
        except Exception as e:  # noqa: BLE001 - same fix whatever failed
            raise ConfigError(f"{_fetch_message(name)}\n(loading failed with {type(e).__name__}: {e})") from None
        texts = list(ds[d["field"]])
    if any(t is None for t in texts):
        raise ConfigError(f"zero-shot corpus {name!r}: some rows have no {d['field']!r} (or 'text') field")
    return texts[:max_documents] if max_documents else texts


def pack_framed(docs: list[list[int]], length: int, bos_id: int, eos_id: int) -> np.ndarray:
    """No EOS between documents; chunks of L - 2 framed by BOS ... EOS; the remainder dropped."""
    stream = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs]) if docs else np.zeros(0, np.int64)
    n = len(stream) // (length - 2)
    body = stream[: n * (length - 2)].reshape(n, length - 2)
    return np.concatenate([np.full((n, 1), bos_id, np.int64), body, np.full((n, 1), eos_id, np.int64)], 1)


def build(name: str, *, length: int, vocab_size=None, tokenizer: str | None = None, seed: int = 0,
          cache_dir=None, **options) -> Corpus:
    """The packed zero-shot corpus ``zeroshot:<name>`` (test = valid = train: evaluation only)."""
    if name not in DATASETS:
        raise ConfigError(f"unknown zero-shot corpus {name!r}; choose one of {', '.join(DATASETS)}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for zeroshot:{name}; options: {', '.join(OPTIONS)}")
    if length < 3:
        raise ConfigError(f"length must be >= 3 (BOS, a token, EOS); got {length}")
    opts = {**OPTIONS, **options}
    opts["data_dir"] = opts["data_dir"] or os.environ.get("ESOLM_ZEROSHOT") or None  # the CLI's way to name it
    opts["max_documents"] = coerce(opts["max_documents"], int | None, "max_documents")
    tok_name = tokenizer or "gpt2"
    key = digest(FORMAT_VERSION, "zeroshot", name, DATASETS[name], tok_name, length, opts["max_documents"],
                 str(opts["data_dir"]))
    folder = cache_root(cache_dir) / "corpora" / f"zeroshot-{name}-L{length}-{tok_name}-{key[:12]}"
    loaded = None if opts["data_dir"] else load_splits(folder)  # local stand-ins are re-read (they may change)
    if loaded is None:
        texts = [detokenize(name, t) for t in read_texts(name, opts["data_dir"], opts["max_documents"])]
        tok = load_tokenizer(tok_name, cache_dir)  # after the data is known to be there (a slow import)
        arr = pack_framed(tok.encode_batch(texts), length, tok.bos_id, tok.eos_id)
        if len(arr) == 0:
            raise ConfigError(f"zeroshot:{name} is shorter than one sequence of length {length}")
        if opts["data_dir"]:
            t = torch.from_numpy(arr)
            splits = {"train": t, "valid": t, "test": t}
        else:
            save_splits(folder, {"train": arr, "valid": arr, "test": arr}, tok.vocab_size,
                        dict(corpus=f"zeroshot:{name}", tokenizer=tok.name, length=length,
                             same_as={"valid": "train", "test": "train"}, fingerprint=key))
            log(f"cached zeroshot:{name}: {len(arr)}x{length} at {folder}")
            splits = load_splits(folder)[0]
    else:
        splits, tok = loaded[0], load_tokenizer(tok_name, cache_dir)
    settings = dict(vocab_size=None, tokenizer=tok_name, seed=int(seed), **opts)
    return Corpus(f"zeroshot:{name}", tok, length, splits, key, settings=settings)
