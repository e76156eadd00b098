"""The paper's Table 16 (XSum; spec 10.10, 15.6; docs/conditional.md "Table 16 (XSum)"): MDLM and
Eso-LM (B) at alpha_0 = 1, from the authors' OWT releases, each finetuned 10K steps on XSum, then
summarising XSum test documents over a sweep of T, scored by rescaled BERTScore F1 and timed.

    python experiments/run.py tables --preset paper-xsum --cluster slurm

The graph (experiments/graph.py ``_summarize_graph``): each release's import job (stage "train",
as in experiments/presets_released.py), each finetune entry's job (stage "finetune": the XSum rows
of esolm/data/xsum.py, from the import's weights), and one "summarize" job per sweep point of a
finetune entry (esolm/metrics/summarize.py). Weights come from $ESOLM_CHECKPOINTS (a downloaded
checkpoints/ORG_NAME folder) or the hub; XSum from $ESOLM_XSUM (data_dir), the local copy or the
hub; the featurizer (roberta-large) from the Hugging Face cache or the hub. ``preflight()`` names
every missing piece in one ConfigError before anything runs.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from esolm.config import ConfigError
from experiments.presets import ModelEntry
from experiments.presets_released import (ESO_RELEASES, ReleasedEntry, ReleasedPreset, _missing_weights, released,
                                          resolve)

MDLM_STEPS = (1, 2, 4, 8, 16, 32)  # the paper's T = 1, 4, 8 and three more along the curve
ESO_STEPS = (4, 8, 16, 32, 64)  # the paper's T = 8, 16, 32, then 4 and 64 (one summary token per step at S = 64)
# summarize jobs: the first num_examples XSum test documents, batch_size per sampling call (1: the time of
# one example is the time of its call), warmup untimed calls, rounds timed passes, the BERTScore featurizer
SUMMARIZE = dict(num_examples=1000, batch_size=1, warmup=2, rounds=1, featurizer="roberta-large")
# the finetune (spec 15.6 confirms only "10K steps"): 32 rows a step (10K x 32 = 320K rows, 1.6 epochs of
# XSum's 204,045 training examples), lr 1e-4 after 500 warmup steps, constant; the paper's EMA 0.9999
FINETUNE = dict(steps=10_000, batch_size=32, lr=1e-4, warmup=500, decay="constant", ema=0.9999, weight_decay=0.0,
                grad_clip=1.0, eval_every=1000, eval_batches=8, log_every=50, checkpoint_every=1000)


@dataclass
class FinetuneEntry(ModelEntry):
    """An entry finetuned on a summarisation data set (``finetune_on``: the esolm.data.xsum spec)
    from the weights of an earlier entry (``init_from``): a "finetune" job, then one "summarize"
    job per sweep point."""

    finetune_on: dict = field(default_factory=dict)


@dataclass
class SummarizePreset(ReleasedPreset):
    """A Table 16 preset: released entries imported, finetune entries trained on XSum from them,
    their sweeps summarised (``summarize``: settings of SUMMARIZE)."""

    summarize: dict = field(default_factory=dict)

    def preflight(self) -> None:
        """One ConfigError listing everything this machine lacks: weights, XSum, the featurizer, the GPU."""
        from esolm.data.hub import hub_reachable
        from esolm.data.xsum import missing_reason
        from esolm.metrics import bertscore

        settings = summarize_settings(self)
        online = hub_reachable()
        sources = [m for m in self.models if isinstance(m, ReleasedEntry)]
        data = {str(m.finetune_on.get("data_dir")): m.finetune_on for m in self.models if isinstance(m, FinetuneEntry)}
        missing = [*_missing_weights(sources, online),
                   *[f"XSum data: {r}" for spec in data.values() if (r := missing_reason(spec.get("data_dir"),
                                                                                          online=online))],
                   *[r for r in (bertscore.missing(settings["featurizer"], online),) if r]]
        if self.require_gpu:
            import torch

            if not torch.cuda.is_available():
                missing.append("a CUDA GPU (Table 16: 10K finetuning steps per model at L = 1024, timed sampling)")
        if missing:
            raise ConfigError(f"preset {self.name} cannot run here; missing: " + "; ".join(missing)
                              + ". See docs/conditional.md (\"Table 16 (XSum)\") for what to download and where to "
                                "put it.")


def summarize_settings(preset) -> dict:
    """The preset's summarize settings over SUMMARIZE; one ConfigError naming an unknown key."""
    settings = dict(getattr(preset, "summarize", None) or {})
    unknown = sorted(set(settings) - set(SUMMARIZE))
    if unknown:
        raise ConfigError(f"preset {preset.name}: unknown summarize setting(s) {unknown}; settings: "
                          f"{', '.join(SUMMARIZE)}")
    return {**SUMMARIZE, **settings}


def xsum_data(length: int, data_dir: str | None = None, **spec) -> dict:
    """The esolm.data.xsum spec of a preset: GPT-2 ids (the OWT releases'), ``data_dir`` from
    $ESOLM_XSUM unless given (None: the local copy or the hub)."""
    return dict(name="xsum", length=length, tokenizer="gpt2", summary_budget=None,
                data_dir=data_dir or os.environ.get("ESOLM_XSUM") or None, **spec)


def xsum_preset(name: str, description: str, *, models: list[ModelEntry], data: dict, summarize: dict | None = None,
                require_gpu: bool = True, **sections) -> SummarizePreset:
    """A Table 16 preset on ``data`` (the import jobs' load check reads it too); ``sections``
    override RunConfig sections (train=dict(...): the finetune, sampling=dict(top_p=...), slurm=...)."""
    sections = dict(sections)
    sections["train"] = dict(FINETUNE, **sections.get("train", {}))
    sections.setdefault("sampling", dict(top_p=0.9))  # the nucleus of the paper's OWT sampling (UNCONFIRMED here)
    base = released(name, description, corpus="xsum", length=data["length"], models=models, corpus_spec=data,
                    evaluator="source", featurizer="minilm", require_gpu=require_gpu, **sections)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    return SummarizePreset(**dict(fields, needs={}), summarize=dict(summarize or {}))


def paper_xsum() -> SummarizePreset:
    """v4 Table 16: MDLM and Eso-LM (B) alpha_0 = 1 from the OWT releases, finetuned 10K steps on XSum
    (L = 1024, GPT-2 ids, summary budget 64), then T in MDLM_STEPS / ESO_STEPS on 1000 test documents."""
    data = xsum_data(1024)
    mdlm = ReleasedEntry("mdlm owt", "mdlm", {}, [], source=resolve("hf:kuleshov-group/mdlm-owt"))
    eso = ReleasedEntry("esolm-b a0=1 owt", "esolm-b", {"alpha_0": 1.0}, [], source=resolve(ESO_RELEASES[1.0]))
    models = [mdlm, eso,
              FinetuneEntry("mdlm xsum", "mdlm", {}, [dict(steps=t) for t in MDLM_STEPS], init_from=mdlm.label,
                            finetune_on=data),
              FinetuneEntry("esolm-b a0=1 xsum", "esolm-b", {"alpha_0": 1.0}, [dict(steps=t) for t in ESO_STEPS],
                            init_from=eso.label, finetune_on=data)]
    return xsum_preset("paper-xsum", "Table 16: the OWT releases of MDLM and Eso-LM (B) a0=1 finetuned 10K steps on "
                       "XSum, rescaled BERTScore against time per example (GPU)", models=models, data=data,
                       summarize=SUMMARIZE)


PRESETS = {"paper-xsum": paper_xsum}
