"""A training run named by what defines it: model, run name, corpus and overrides.

``key=value`` overrides go through the one parser (esolm.config.parse_keys) to the section
that owns the key: the model's config (alpha_0, block_size, ...), the run's data (length,
vocab_size, data_seed), backbone (d_model, n_layers, ...) or training (steps, lr, batch_size,
...); a command that takes keys of its own (sampling options, eval settings) puts its sections
first. A key that no section owns is one error listing them all.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

from esolm import registry, runs
from esolm.config import field_names, parse_keys
from esolm.io import content_hash
from esolm.train import TrainConfig

# model fields the corpus decides (the user sets them through the data keys instead) or the
# backbone section owns
DERIVED_MODEL_KEYS = {"vocab_size", "mask_id", "bos_id", "eos_id", "length"}
DEFAULT_RUNS = Path("runs")


def run_sections(model: str) -> dict:
    """The sections that define a training run of ``model``, in the order bare keys resolve."""
    own = set(field_names(registry.model_class(model).config_class))
    model_keys = own - DERIVED_MODEL_KEYS - set(field_names(runs.Backbone))
    return {"model": sorted(model_keys), "data": runs.Data, "backbone": runs.Backbone, "train": TrainConfig}


@dataclass
class RunSpec:
    model: str
    preset: str = "tiny"
    corpus: str | None = None  # None: the run name's corpus
    overrides: dict = field(default_factory=dict)  # section -> {key: value} (the run's own keys)

    @classmethod
    def from_pairs(cls, model: str, preset: str, corpus: str | None, pairs: dict[str, str],
                   first: dict | None = None) -> tuple["RunSpec", dict]:
        """Route ``pairs``: the keys of the ``first`` sections (a command's own) come back as
        section -> {key: value}; the rest define the run."""
        sections = {**(first or {}), **run_sections(model)}
        routed = parse_keys(pairs, sections)
        spec = cls(model, preset, corpus, {s: routed[s] for s in ("model", "data", "backbone", "train") if routed[s]})
        spec.check_model()
        return spec, {s: routed[s] for s in (first or {})}

    def check_model(self) -> None:
        """Build the model's config from the run's keys before any data is read, so that a bad
        model setting (alpha_0=2, a block size that does not divide the length) is one error at
        once; the corpus's own fields (vocabulary, special ids) are checked when it is loaded."""
        registry.build_config(self.model, **self.config.backbone_fields(), length=self.config.data.length,
                              **self.overrides.get("model", {}))

    # -- resolved pieces --------------------------------------------------------------
    @functools.cached_property
    def config(self) -> runs.RunConfig:
        """The run name's config with this run's data, backbone and training keys (built once)."""
        pairs = {f"{s}.{k}": v for s, kv in self.overrides.items() if s != "model" for k, v in kv.items()}
        if self.corpus:
            pairs.setdefault("data.corpus", self.corpus)
        return runs.get(self.preset, pairs)

    @property
    def corpus_name(self) -> str:
        return self.config.data.corpus

    def load_corpus(self):
        from esolm.data import corpus_from_spec

        return corpus_from_spec(self.config.data.corpus_kwargs())

    def build_model(self, corpus):
        return registry.build(self.model, **self.config.backbone_fields(), **corpus.model_fields(),
                              **self.overrides.get("model", {}))

    def train_config(self) -> TrainConfig:
        return self.config.train

    def key(self) -> str:
        blob = json.dumps({"model": self.overrides.get("model", {}), "train": self.overrides.get("train", {}),
                           "data": self.overrides.get("data", {}), "backbone": self.overrides.get("backbone", {})},
                          sort_keys=True)
        return content_hash(blob)[:8]

    def run_dir(self, root: str | Path = DEFAULT_RUNS) -> Path:
        corpus = self.corpus_name.replace(":", "_").replace("/", "_")
        suffix = f"-{self.key()}" if self.overrides else ""
        return Path(root) / f"{self.model}-{corpus}-{self.preset}{suffix}"


