"""A training run named by what defines it: model, preset, corpus and overrides.

``key=value`` overrides are routed to the one config that owns the key: the model's config
(alpha_0, block_size, n_layers, ...), the training config (steps, lr, batch_size, ...) or the
data (length, vocab_size, data_seed). A key that no config owns is an error listing them all.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from esolm import registry
from esolm.config import ConfigError, field_names
from esolm.train import TrainConfig, train_config

# Data geometry per preset: the sequence length and the BPE vocabulary of the corpus.
DATA_PRESETS: dict[str, dict] = {
    "smoke": dict(length=32, vocab_size=512),
    "tiny": dict(length=128, vocab_size=2048),
    "small": dict(length=1024, vocab_size=None),  # the corpus's own tokenizer (gpt2 on owt)
    "medium": dict(length=1024, vocab_size=None),
}
DATA_KEYS = {"length", "vocab_size", "data_seed", "tokenizer"}
# model fields the corpus decides; the user sets them through the data keys instead
DERIVED_MODEL_KEYS = {"vocab_size", "mask_id", "bos_id", "eos_id", "length"}
DEFAULT_RUNS = Path("runs")


@dataclass
class RunSpec:
    model: str
    preset: str = "tiny"
    corpus: str = "shakespeare"
    model_overrides: dict = field(default_factory=dict)
    train_overrides: dict = field(default_factory=dict)
    data_overrides: dict = field(default_factory=dict)

    @classmethod
    def from_pairs(cls, model: str, preset: str, corpus: str, pairs: dict[str, str],
                   extra_keys: set[str] = frozenset()) -> tuple["RunSpec", dict]:
        """Route ``pairs``; returns the spec and the leftover pairs that are in ``extra_keys``."""
        model_keys = set(field_names(registry.model_class(model).config_class)) - DERIVED_MODEL_KEYS
        train_keys = set(field_names(TrainConfig))
        spec, rest = cls(model, preset, corpus), {}
        for k, v in pairs.items():
            if k in DATA_KEYS:
                spec.data_overrides[k] = v
            elif k in model_keys:
                spec.model_overrides[k] = v
            elif k in train_keys:
                spec.train_overrides[k] = v
            elif k in extra_keys:
                rest[k] = v
            else:
                valid = sorted(model_keys | train_keys | DATA_KEYS | set(extra_keys))
                raise ConfigError(f"unknown key {k!r} for model {model!r}; valid keys: {', '.join(valid)}")
        return spec, rest

    # -- resolved pieces --------------------------------------------------------------
    def corpus_kwargs(self) -> dict:
        if self.preset not in DATA_PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; presets: {', '.join(DATA_PRESETS)}")
        d = dict(DATA_PRESETS[self.preset])
        d.update(self.data_overrides)
        kwargs = {"name": self.corpus, "length": int(d["length"])}
        if d.get("vocab_size") not in (None, "None", "none"):
            kwargs["vocab_size"] = int(d["vocab_size"])
        if "data_seed" in d:
            kwargs["seed"] = int(d["data_seed"])
        if d.get("tokenizer"):
            kwargs["tokenizer"] = d["tokenizer"]
        return kwargs

    def load_corpus(self):
        from esolm.data import load_corpus

        kw = self.corpus_kwargs()
        return load_corpus(kw.pop("name"), **kw)

    def build_model(self, corpus):
        return registry.build(self.model, preset=self.preset, **corpus.model_fields(), **self.model_overrides)

    def train_config(self) -> TrainConfig:
        return train_config(self.preset, **self.train_overrides)

    def key(self) -> str:
        blob = json.dumps({"model": self.model_overrides, "train": self.train_overrides,
                           "data": self.data_overrides}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    def run_dir(self, root: str | Path = DEFAULT_RUNS) -> Path:
        corpus = self.corpus.replace(":", "_").replace("/", "_")
        suffix = f"-{self.key()}" if (self.model_overrides or self.train_overrides or self.data_overrides) else ""
        return Path(root) / f"{self.model}-{corpus}-{self.preset}{suffix}"
