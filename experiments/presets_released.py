"""Presets that evaluate the authors' released checkpoints instead of training (docs/checkpoints.md).

    python experiments/run.py tables --preset paper-owt-released --cluster slurm

Same job graph as the training presets: each model's "train" job imports its release
(esolm.importers) into the work folder, then eval (Table 1, Tables 6-8), zero-shot eval
(Table 5), sample + score (Tables 13-15) and timing (Table 11) run on it as on a trained model.
Sources come from $ESOLM_CHECKPOINTS (default checkpoints/): an ``hf:ORG/NAME`` resolves to a
downloaded folder checkpoints/ORG_NAME when it is there. OWT Eso-LM (B) at alpha_0 = 1 and 0.25 are
the authors' hub releases sahoo-diffusion/Eso-LM-B-alpha-{1,0_25} (alpha_0 from the repository
name); other Eso-LM files are checkpoints/esolm-b-<corpus>-a0=<alpha_0>.ckpt. Zero-shot data:
$ESOLM_ZEROSHOT (folders written by datasets' save_to_disk, or <name>.jsonl) or the hub.

``preflight()`` runs before anything is submitted and fails at once with one message naming
every missing weight file, data set, evaluator and the GPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from esolm import runs
from esolm.config import ConfigError
from experiments.presets import ModelEntry, Preset, _eso_sweep

ZERO_SHOT = ("ptb", "wikitext", "lm1b", "lambada", "ag_news", "pubmed", "arxiv")
# the authors' Eso-LM (B) OWT releases (HF layout of fixture esolm-b-hf; alpha_0 is in the name only)
ESO_RELEASES = {1.0: "hf:sahoo-diffusion/Eso-LM-B-alpha-1", 0.25: "hf:sahoo-diffusion/Eso-LM-B-alpha-0_25"}
ESO_UNRELEASED = (0.5, 0.125)  # the paper's other OWT alpha_0^train: no release; local Lightning files if any


@dataclass
class ReleasedEntry(ModelEntry):
    """A model of a released preset: ``source`` replaces training (see esolm.importers)."""

    source: str = ""
    ema: bool | None = None  # None: EMA when the file has one (the authors' choice)


@dataclass
class ReleasedPreset(Preset):
    corpus_spec: dict | None = None  # load_corpus kwargs of the test data (None: corpus + data)
    zero_shot: dict = field(default_factory=dict)  # Table 5 column -> load_corpus kwargs (length: the model's)
    needs: dict = field(default_factory=dict)  # hub models the scoring needs (evaluator, featurizer)
    require_gpu: bool = True

    def preflight(self) -> None:
        """One ConfigError listing everything this machine lacks to run the preset."""
        from esolm.data.hub import hub_reachable

        online = hub_reachable()
        missing = [*_missing_weights(self.models, online), *self._missing_data(online),
                   *_missing_hub_models(self.needs, online)]
        if self.require_gpu:
            missing += _missing_gpu()
        if missing:
            raise ConfigError(f"preset {self.name} cannot run here; missing: " + "; ".join(missing)
                              + ". See docs/checkpoints.md for what to download and where to put it.")

    def _missing_data(self, online: bool) -> list[str]:
        """The test and zero-shot corpora that cannot be loaded here."""
        specs = [("test data", self.corpus_spec or dict(name=self.corpus))]
        specs += [(f"zero-shot data {k}", v) for k, v in self.zero_shot.items()]
        reasons = [(what, _data_missing(spec, online)) for what, spec in specs]
        return [f"{what}: {reason}" for what, reason in reasons if reason]


def _missing_weights(models, online: bool) -> list[str]:
    """The release files of ``models`` that are absent (an ``hf:`` source counts only offline)."""
    missing = []
    for m in models:
        s = getattr(m, "source", "")
        if s.startswith("hf:") and not online:
            missing.append(f"weights of {m.label}: {s} (offline; download it to "
                           f"{_checkpoints() / s[3:].replace('/', '_')})")
        elif not s.startswith("hf:") and not Path(s).exists():
            missing.append(f"weights of {m.label}: {s} (no such file)")
    return missing


def _missing_hub_models(needs: dict, online: bool) -> list[str]:
    """The hub models in ``needs`` (evaluator, featurizer) that cannot be had offline."""
    return [f"{what}: {name} (offline and not in the Hugging Face cache)" for what, name in needs.items()
            if not online and not _hub_model_cached(name) and not Path(name).exists()]


def _missing_gpu() -> list[str]:
    import torch

    if torch.cuda.is_available():
        return []
    return ["a CUDA GPU (the paper's protocols: 5120 samples of L = 1024, K = 1000 orders)"]


def _checkpoints() -> Path:
    return Path(os.environ.get("ESOLM_CHECKPOINTS", "checkpoints"))


def resolve(source: str) -> str:
    """``hf:ORG/NAME`` -> checkpoints/ORG_NAME when that folder was downloaded, else unchanged."""
    if source.startswith("hf:"):
        local = _checkpoints() / source[3:].replace("/", "_")
        return str(local) if (local / "config.json").is_file() else source
    return source


def _hub_model_cached(name: str) -> bool:
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    hub = Path(os.environ.get("HF_HUB_CACHE", home / "hub")).expanduser()
    return (hub / f"models--{name.replace('/', '--')}").is_dir()


def _data_missing(spec: dict, online: bool) -> str | None:
    """Why the corpus ``spec`` cannot be loaded here (None when it can, or probably can)."""
    name = spec["name"]
    if spec.get("data_dir"):
        return None if Path(spec["data_dir"]).exists() else f"data_dir {spec['data_dir']} does not exist"
    if name in ("owt", "lm1b") or name.startswith("zeroshot:"):
        if online:
            return None
        from esolm.data import hub

        if name in hub.HUB_CORPORA and hub._in_hf_cache(hub.HUB_CORPORA[name]["repo"]):
            return None
        return f"{name} (the Hugging Face hub is unreachable and the data is not cached here)"
    return None


def released(name: str, description: str, *, corpus: str, length: int, models: list[ReleasedEntry],
             corpus_spec: dict | None = None, zero_shot: dict | None = None, evaluator="gpt2-large",
             featurizer: str = "answerdotai/ModernBERT-large", backbone: dict | None = None,
             require_gpu: bool = True, **sections) -> ReleasedPreset:
    """A released preset: the paper's evaluation protocols (esolm.runs.paper) on the test data of
    ``corpus``; ``backbone`` (fields) sizes the latency models (default: the paper's); ``sections``
    override RunConfig sections by field values (sampling=dict(...), eval=dict(...), slurm=..., threads=...)."""
    import dataclasses

    from esolm.config import make_config

    run = dataclasses.replace(
        runs.paper("owt"), name=name, description=description, data=runs.Data(corpus, length=length, vocab_size=None),
        mauve=runs.Mauve(featurizer=featurizer, max_text_length=512),
        # no "train" resources: a released preset's train jobs import a file
        slurm={"default": dict(time_min=24 * 60, gpus_per_node=1, cpus_per_task=8, mem_gb=64)})
    if backbone:
        run.backbone = make_config(runs.Backbone, dataclasses.asdict(run.backbone), **backbone)
    for section, values in sections.items():
        current = getattr(run, section)
        setattr(run, section, make_config(type(current), dataclasses.asdict(current), **values)
                if dataclasses.is_dataclass(current) else values)
    needs = {}
    if isinstance(evaluator, str) and evaluator not in ("source",):
        needs["gen PPL evaluator"] = evaluator
    if run.mauve.featurizer not in ("minilm", "evaluator"):
        needs["MAUVE featurizer"] = run.mauve.featurizer
    return ReleasedPreset(run, models=models, evaluator=evaluator, corpus_spec=corpus_spec,
                          zero_shot=zero_shot or {}, needs=needs, require_gpu=require_gpu)


def _zero_shot() -> dict:
    data = os.environ.get("ESOLM_ZEROSHOT")
    return {n: dict(name=f"zeroshot:{n}", **({"data_dir": data} if data else {})) for n in ZERO_SHOT}


def _eso_owt_sources() -> dict[float, str]:
    """alpha_0 -> source of the OWT Eso-LM (B) rows, largest alpha_0 first: the two hub releases,
    plus the unreleased alpha_0 of the paper where checkpoints/esolm-b-owt-a0=A.ckpt is there."""
    out = {a: resolve(s) for a, s in ESO_RELEASES.items()}
    for a in ESO_UNRELEASED:
        local = _checkpoints() / f"esolm-b-owt-a0={a:g}.ckpt"
        if local.is_file():
            out[a] = str(local)
    return dict(sorted(out.items(), reverse=True))


def paper_owt_released() -> ReleasedPreset:
    """The OWT releases from the hub: MDLM, BD3-LM L' = 4/8/16 and Eso-LM (B) at alpha_0 = 1 and 0.25
    (with 0.5 / 0.125 from local .ckpt files when they are there)."""
    eso = _eso_sweep([16, 128, 1024], [32, 64, 256, 4096], [1.0, 0.5, 0.25, 0.0625])
    bd3 = [ReleasedEntry(f"bd3lm L'={b}", "bd3lm", {"block_size": b},
                         [dict(steps=t) for t in (256, 512, 1024, 2048, 4096)], nfe_equals_l=True,
                         source=resolve(f"hf:kuleshov-group/bd3lm-owt-block_size{b}")) for b in (4, 8, 16)]
    mdlm_steps = (8, 16, 32, 48, 64, 128, 256, 1024, 4096)
    models = [ReleasedEntry("mdlm", "mdlm", {}, [dict(steps=t) for t in mdlm_steps],
                            nfe_equals_l=True, source=resolve("hf:kuleshov-group/mdlm-owt")),
              *bd3,
              *[ReleasedEntry(f"esolm-b a0={a:g}", "esolm-b", {"alpha_0": a}, eso, nfe_equals_l=i == 0,
                              source=source)
                for i, (a, source) in enumerate(_eso_owt_sources().items())]]
    return released("paper-owt-released", "the authors' OWT releases through the paper's evaluation protocols (GPU)",
                    corpus="owt", length=1024, models=models, zero_shot=_zero_shot())


def paper_lm1b_released() -> ReleasedPreset:
    """LM1B: Eso-LM (B) and MDLM Lightning checkpoints from local files (no hub release is known
    to the harness); Tables 1 and 6-7. Gen PPL is not a paper metric on LM1B: no sampling sweep."""
    models = [ReleasedEntry("mdlm", "mdlm", {}, [], source=str(_checkpoints() / "mdlm-lm1b.ckpt")),
              *[ReleasedEntry(f"esolm-b a0={a:g}", "esolm-b", {"alpha_0": a}, [],
                              source=str(_checkpoints() / f"esolm-b-lm1b-a0={a:g}.ckpt"))
                for a in (1.0, 0.5, 0.25, 0.125, 0.0625)]]
    return released("paper-lm1b-released", "the authors' LM1B checkpoints: test PPL, NELBO and IW (GPU)",
                    corpus="lm1b", length=128, models=models, evaluator="source", featurizer="minilm",
                    long_context=dict(lengths=[], trials=5, warmup=1))


PRESETS = {"paper-owt-released": paper_owt_released, "paper-lm1b-released": paper_lm1b_released}
