"""The Corpus a model trains and is evaluated on, sequence packing (spec 1.2), and the
on-disk form of tokenized splits."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from esolm.config import ConfigError
from esolm.data.cache import (FORMAT_VERSION, CorruptCache, load_json, read_cached, save_array, save_json,
                              storage_dtype)
from esolm.data.tokenizer import Tokenizer

SPLITS = ("train", "valid", "test")


@dataclass
class Corpus:
    """Packed token ids per split ([N, length] LongTensors) with their tokenizer.

    ``settings`` holds the other keyword arguments of ``load_corpus`` (vocab_size,
    tokenizer, seed, options), so ``load_corpus(**corpus.spec())`` rebuilds this corpus.
    """

    name: str
    tokenizer: Tokenizer
    length: int
    splits: dict[str, torch.Tensor]
    fingerprint: str
    source: object = None  # SyntheticSource for "synthetic", else None
    settings: dict = field(default_factory=dict)
    documents: dict[str, list[str]] | None = None  # document names per split (text corpora)
    cache_path: Path | None = None

    def spec(self) -> dict:
        """The kwargs of ``load_corpus`` (including ``name``) that rebuild this exact corpus."""
        return {"name": self.name, "length": self.length, **self.settings}

    def model_fields(self) -> dict:
        """Data geometry for ``registry.build``: V (incl. mask), mask / BOS / EOS ids, L."""
        t = self.tokenizer
        return dict(vocab_size=t.vocab_size, mask_id=t.mask_id, bos_id=t.bos_id, eos_id=t.eos_id,
                    length=self.length)

    def true_nll_per_sequence(self) -> float | None:
        """Exact H(X_1..X_L) in nats for the synthetic source; None for real text."""
        return None if self.source is None else self.source.entropy(self.length)

    def texts(self, split: str, n: int | None = None, skip_special: bool = True) -> list[str]:
        """Decoded sequences of ``split`` (the first ``n``), e.g. MAUVE references (spec 8.4)."""
        if split not in self.splits:
            raise ConfigError(f"unknown split {split!r}; splits: {', '.join(self.splits)}")
        rows = self.splits[split] if n is None else self.splits[split][:n]
        return self.tokenizer.decode_batch(rows, skip_special=skip_special)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in self.splits.items())
        return f"Corpus({self.name}, {self.tokenizer.name}, L={self.length}: {sizes})"


# ---------------------------------------------------------------------- packing (1.2)
def pack_with_bos(docs: list[list[int]], length: int, bos_id: int, eos_id: int) -> np.ndarray:
    """Local text corpora: each document then EOS, concatenated, cut into ``length - 1``
    chunks, each prefixed by BOS (so every sequence starts like a sample); the remainder
    is dropped."""
    stream = _stream(docs, eos_id)
    n = len(stream) // (length - 1)
    body = stream[: n * (length - 1)].reshape(n, length - 1)
    return np.concatenate([np.full((n, 1), bos_id, dtype=np.int64), body], axis=1)


def wrap_batch(docs: list[list[int]], length: int, eos_id: int, edge_id: int | None = None) -> np.ndarray:
    """Spec 1.2 "wrap" of one processing batch: the doc + EOS stream cut into ``length``
    chunks (OWT: no specials at the edges), or into ``length - 2`` chunks framed by
    ``edge_id`` on both sides (LM1B: [CLS] ... [CLS]); the batch's remainder is dropped."""
    stream = _stream(docs, eos_id)
    size = length if edge_id is None else length - 2
    n = len(stream) // size
    body = stream[: n * size].reshape(n, size)
    if edge_id is None:
        return body
    edge = np.full((n, 1), edge_id, dtype=np.int64)
    return np.concatenate([edge, body, edge], axis=1)


def _stream(docs: list[list[int]], eos_id: int) -> np.ndarray:
    if not docs:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.asarray([*d, eos_id], dtype=np.int64) for d in docs])


# ---------------------------------------------------------------------- cached splits
def save_splits(folder: Path, splits: dict[str, np.ndarray], vocab_size: int, meta: dict) -> None:
    """One .npy per split in the smallest id dtype; meta.json is written last (the done marker).
    A split listed in ``meta["same_as"]`` is not stored twice."""
    aliases = meta.get("same_as", {})
    for name, array in splits.items():
        if name not in aliases:
            save_array(folder / f"{name}.npy", array.astype(storage_dtype(vocab_size)))
    shapes = {k: list(v.shape) for k, v in splits.items()}
    save_json(folder / "meta.json", dict(meta, format_version=FORMAT_VERSION, shapes=shapes))


def load_splits(folder: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The cached splits as LongTensors, or None when the folder is absent, incomplete or corrupt
    (a corrupt file is named in a warning line; the caller rebuilds the folder)."""
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    return read_cached(folder, _read_splits, "corpus")


def _read_splits(folder: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The splits of a complete cache folder; an exception naming the file when one is corrupt."""
    try:
        meta = load_json(folder / "meta.json")
    except ValueError as e:
        raise CorruptCache(f"meta.json: {e}") from None
    if not isinstance(meta, dict):
        raise CorruptCache("meta.json is not a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        return None
    aliases = meta.get("same_as", {})
    splits = {}
    for name in SPLITS:
        if name in aliases:
            continue
        path = folder / f"{name}.npy"
        if not path.exists():
            return None
        splits[name] = torch.from_numpy(_read_split(path, meta.get("shapes", {}).get(name)))
    for name, target in aliases.items():
        splits[name] = splits[target]
    return {k: splits[k] for k in SPLITS}, meta


def _read_split(path: Path, shape) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy's errors for a torn file do not name it
        raise CorruptCache(f"{path.name}: {e}") from None
    if array.dtype.kind not in "iu" or array.ndim != 2 or (shape is not None and list(array.shape) != list(shape)):
        raise CorruptCache(f"{path.name} holds {array.dtype} {list(array.shape)}, not the ids of shape {shape}")
    return array.astype(np.int64)


def check_splits(name: str, splits: dict[str, np.ndarray], length: int) -> None:
    """Every split must hold at least one full sequence."""
    for split, array in splits.items():
        if len(array) == 0:
            raise ConfigError(f"the {split} split of corpus {name!r} is shorter than one sequence of "
                              f"length {length}; use a smaller length or more text")
