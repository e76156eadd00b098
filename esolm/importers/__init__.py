"""Import the authors' released checkpoints (MDLM, BD3-LM, Eso-LM) as harness checkpoints.

    from esolm.importers import import_checkpoint, save_imported
    state, info = import_checkpoint("esolm-b.ckpt")            # EMA weights by default
    save_imported(state, info, "runs/imported/esolm-b")        # checkpoint.safetensors (+ .json) + import.json

Sources: a Lightning ``.ckpt``, a Hugging Face folder, or ``hf:ORG/NAME`` (see ``sources``).
The Lightning pickles are read by a restricted unpickler (``safe_pickle``): no omegaconf, no
transformers, no code from the file runs. The architecture comes from the weights' shapes
(checked against the file's config), the weights are mapped onto ``esolm.backbone.Backbone``
(``dit``) and every key must be used. docs/checkpoints.md lists the releases and what parity
was proven against the authors' outputs.
"""
from __future__ import annotations

import math
from pathlib import Path

from esolm.config import ConfigError
from esolm.importers.dit import infer_architecture, load_into, rename
from esolm.importers.sources import Raw, alpha_0_from_name, read_source

GPT2_V, BERT_V = 50258, 30522  # OWT (GPT-2 + appended mask) and LM1B (bert-base-uncased) vocabularies
# which harness models the fixtures prove parity for (tests/test_import_parity.py)
PARITY = {key: f"proven for this format on fixture {fixture} (tests/test_import_parity.py)"
          for key, fixture in {("lightning", "esolm-b"): "esolm-b", ("lightning", "esolm-a"): "esolm-a",
                               ("lightning", "mdlm"): "mdlm", ("hf", "bd3lm"): "bd3lm-hf",
                               ("hf", "esolm-b"): "esolm-b-hf"}.items()}
CONVENTIONS = [
    "parameter names: the authors' DiT names mapped onto esolm.backbone.Backbone (esolm/importers/dit.py)",
    "EMA: ema.shadow_params (backbone.parameters() order) matched to names; chosen unless --no-ema",
    "RoPE: rotary_emb.inv_freq checked equal to base-10000 frequencies, then recomputed by the harness",
    "mask logit: the authors' backbones return it raw; the harness sets it to -1e6 (only post-processing differs)",
    "sigma: the authors feed sigma = 0 (time_conditioning=False); so do the harness models",
    "vocabulary: [MASK] = V - 1 and BOS = EOS = V - 2 (GPT-2 layout); LM1B: [MASK] = 103, BOS = EOS = [CLS] = 101",
    "_orig_mod. prefixes (torch.compile) are stripped",
    "Eso-LM HF (sahoo-diffusion/Eso-LM-B-*): model_type EsoLM is Eso-LM (B); hidden_size is the width (hidden_dim "
    "an unused extra key); alpha_0 (not in its config) from alpha_0= or the repository / folder name",
]


def vocabulary(V: int) -> dict:
    """Special ids and the data a model of vocabulary V was trained on (spec 1.1)."""
    if V == BERT_V:
        return dict(mask_id=103, bos_id=101, eos_id=101)
    return dict(mask_id=V - 1, bos_id=V - 2, eos_id=V - 2)


def default_corpus(V: int, length: int) -> dict:
    """The corpus spec (load_corpus kwargs) an imported model is evaluated on: OWT for the GPT-2
    vocabulary, LM1B for bert-base-uncased, else a local stand-in with the same id layout (the
    synthetic Markov source with V - 2 symbols: BOS = V - 2, mask = V - 1), e.g. for the fixtures.
    Specs are in ``Corpus.spec()``'s full form, which samples record and scoring compares."""
    hub = dict(vocab_size=None, seed=0, data_dir=None, max_documents=None)
    if V == GPT2_V:
        return dict(name="owt", length=length, tokenizer="gpt2", **hub)
    if V == BERT_V:
        return dict(name="lm1b", length=length, tokenizer="bert-base-uncased", **hub)
    return dict(name="synthetic", length=length, vocab_size=None, tokenizer=None, seed=0, symbols=V - 2,
                branching=4, zipf=1.0, num_train=256, num_valid=64, num_test=64)


def _choose(raw: Raw, ema: bool | None) -> tuple[dict, str]:
    if raw.fmt == "hf":
        return raw.live, "published (the authors copied the EMA weights in before pushing; no separate EMA)"
    if ema is False:
        return raw.live, "live (state_dict, --no-ema)"
    if raw.meta.get("ema_error"):
        raise ConfigError(raw.meta["ema_error"])
    if raw.ema is None:
        if ema is True:
            raise ConfigError(f"{raw.source}: --ema asked for, but the checkpoint has no ema.shadow_params; "
                              f"pass --no-ema to import the live weights")
        return raw.live, "live (the checkpoint has no EMA)"
    return raw.ema, "ema (ema.shadow_params, as the authors evaluate)"


def _cross_check(raw: Raw, arch: dict) -> None:
    m = raw.meta.get("config_model") or {}
    width = "hidden_size"
    if raw.fmt == "hf":  # BD3-LM / MDLM: hidden_dim; EsoLMConfig reads hidden_size (hidden_dim an unused extra)
        width = "hidden_size" if raw.family == "esolm-b" else "hidden_dim"
        m = {k: raw.meta.get(k) for k in (width, "n_blocks", "cond_dim")}
    pairs = [(width, "d_model"), ("n_blocks", "n_layers"), ("cond_dim", "cond_dim")]
    for theirs, ours in pairs:
        if isinstance(m.get(theirs), int) and m[theirs] != arch[ours]:
            raise ConfigError(f"{raw.source}: the config says {theirs}={m[theirs]} but the weights have "
                              f"{ours}={arch[ours]}; the file is inconsistent")
    V = raw.meta.get("hp_vocab_size")
    if isinstance(V, int) and V != arch["vocab_size"]:
        raise ConfigError(f"{raw.source}: the config says vocab_size={V} but backbone.vocab_embed.embedding has "
                          f"{arch['vocab_size']} rows")


def _alpha_0_source(raw: Raw, overrides: dict, fields: dict) -> str | None:
    """Where an Eso-LM's alpha_0 comes from (None for other families): the ``alpha_0=`` option,
    the Lightning config, or (the HF releases' config has none) the release's name, which then
    sets ``fields["alpha_0"]``; with none of them, one error naming the fix."""
    if not raw.family.startswith("esolm"):
        return None
    named = alpha_0_from_name(raw.source) if raw.fmt == "hf" else None
    if "alpha_0" in overrides:
        given = _number(overrides["alpha_0"])
        said = [f"the config's {fields['alpha_0']:g}"] if fields.get("alpha_0", given) != given else []
        said += [f"{named[0]:g} from the {named[1]}"] if named and named[0] != given else []
        return f"option alpha_0={overrides['alpha_0']}" + (f" (instead of {'; '.join(said)})" if said else "")
    if "alpha_0" in fields:
        return "the checkpoint's config (algo.alpha_0)"
    if named is None:
        raise ConfigError(f"{raw.source}: an Eso-LM Hugging Face release's config holds no alpha_0, and the name "
                          f"does not say it (sahoo-diffusion/Eso-LM-B-alpha-1 = 1, ...-alpha-0_25 = 0.25); pass "
                          f"alpha_0=A (run.py import SOURCE alpha_0=A --out DIR), or keep the release's name in the "
                          f"source (hf:ORG/NAME, or a folder named like checkpoints/sahoo-diffusion_Eso-LM-B-alpha-0_25)")
    fields["alpha_0"] = named[0]
    return f"the {named[1]}"


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None  # the model's config rejects it, naming the field


def _alpha_0_record(cfg, source: str | None) -> dict:
    """The import record's ``alpha_0`` entry: the value the model got and where it came from."""
    return {"alpha_0": dict(value=cfg.alpha_0, source=source)} if source else {}


def _model_fields(raw: Raw, arch: dict, overrides: dict) -> tuple[dict, str | None]:
    """(the model config fields, where an Eso-LM's alpha_0 came from): the architecture, the
    vocabulary, the file's fields, then ``overrides``."""
    fields = {**arch, **vocabulary(arch["vocab_size"]), **raw.fields}
    if raw.family == "bd3lm" and {"sampling_eps_min", "sampling_eps_max"} <= set(raw.extras):
        fields.update(clip_beta=raw.extras["sampling_eps_min"], clip_omega=raw.extras["sampling_eps_max"])
    alpha_from = _alpha_0_source(raw, overrides, fields)
    fields.update(overrides)  # key=value from the command line wins (typed by the model's config)
    if "length" not in fields:
        raise ConfigError(f"{raw.source}: the file does not record the sequence length; pass length=L")
    return fields, alpha_from


def import_checkpoint(source: str, *, model: str | None = None, ema: bool | None = None,
                      corpus: dict | None = None, overrides: dict | None = None) -> tuple[dict, dict]:
    """(harness checkpoint dict, import record) of ``source``.

    model: the expected registry name (an error when the file holds another family);
    ema: None = EMA when present (the authors' choice), True = EMA or error, False = live;
    corpus: load_corpus kwargs the model is evaluated on (default ``default_corpus``);
    overrides: model config fields to set (e.g. length=, n_heads= where the file lacks them; alpha_0=
        for an Eso-LM HF release, else taken from its name). The record's ``alpha_0`` says which
        source gave an Eso-LM's alpha_0."""
    from esolm import registry

    raw = read_source(str(source))
    if model is not None and model != raw.family:
        raise ConfigError(f"{raw.source} holds a {raw.family} checkpoint ({raw.fmt}), not {model}; pass "
                          f"--model {raw.family} or the right file")
    weights, chosen = _choose(raw, ema)
    overrides = dict(overrides or {})
    arch = infer_architecture(weights, raw.source, int(overrides.pop("n_heads")) if "n_heads" in overrides
                              else raw.n_heads)
    _cross_check(raw, arch)
    fields, alpha_from = _model_fields(raw, arch, overrides)
    net = registry.build(raw.family, **fields)
    load_into(net.backbone, rename(weights, raw.source), raw.source)
    cfg = net.config
    spec = dict(corpus) if corpus else default_corpus(cfg.vocab_size, cfg.length)
    info = dict(source=str(source), format=raw.fmt, family=raw.family, weights=chosen,
                ema_in_file=raw.ema is not None, architecture=arch, extras=raw.extras,
                **_alpha_0_record(cfg, alpha_from),
                parity=PARITY.get((raw.fmt, raw.family), "unproven: no fixture of this format"),
                conventions=CONVENTIONS, meta={k: v for k, v in raw.meta.items() if k != "config_json"})
    state = dict(model_name=raw.family, model_config=cfg.to_dict(), model=net.state_dict(), ema=None,
                 optimizer=None, step=int(raw.meta.get("global_step") or 0), rng=None, data_position=None,
                 corpus=spec, train_config={}, metrics={}, imported=info)
    return state, info


def save_imported(state: dict, info: dict, out: str | Path) -> Path:
    """Write ``out/checkpoint.safetensors`` (with its JSON) and ``out/import.json`` atomically;
    returns the checkpoint path."""
    from esolm.checkpoint import NAME, save_checkpoint
    from esolm.io import atomic_write_json

    out = Path(out)
    path = save_checkpoint(out / NAME, state)
    atomic_write_json(out / "import.json", info)
    return path


def is_external(source: str | Path) -> bool:
    """Does ``--checkpoint`` name an authors' file (imported on the fly) rather than a harness checkpoint?"""
    s = str(source)
    p = Path(s)
    from esolm.checkpoint import checkpoint_in

    return s.startswith("hf:") or s.endswith(".ckpt") or (p.is_dir() and checkpoint_in(p) is None)


def ensure_checkpoint(source: str | Path, *, ema: bool | None = None, root: str | Path = "runs/imported",
                      log=print) -> Path:
    """A harness checkpoint path for ``source``: itself, or (for an authors' file) the import of it
    under ``root/<name>-<weights>/``, reused when it was imported from the same file before."""
    import json

    from esolm.checkpoint import NAME, checkpoint_in
    from esolm.data.cache import digest

    if not is_external(source):
        return checkpoint_in(source) if Path(source).is_dir() else Path(source)
    s = str(source)
    stem = s[3:].replace("/", "_") if s.startswith("hf:") else Path(s).name.removesuffix(".ckpt")
    p = Path(s)
    stamp = (p.stat().st_size, p.stat().st_mtime_ns) if p.exists() and p.is_file() else None
    out = Path(root) / f"{stem}-{'live' if ema is False else 'ema'}-{digest(s, stamp)[:8]}"
    ckpt = out / NAME
    if ckpt.is_file() and (out / "import.json").is_file():
        log(f"using the import of {s} at {ckpt} ({json.loads((out / 'import.json').read_text())['weights']})")
        return ckpt
    state, info = import_checkpoint(s, ema=ema)
    save_imported(state, info, out)
    log(f"imported {s} ({info['family']}, {info['weights']}) -> {ckpt}")
    return ckpt


def load_check(model, corpus_spec: dict, *, batches: int = 2, batch_size: int = 8, seed: int = 1) -> dict:
    """NELBO PPL of the imported model on the first ``batches`` test batches of the data it will be
    evaluated on, beside the uniform value ln V; ``warning`` is set when it is near uniform
    (weights not loaded, or a model of other data). Data that cannot be loaded here is reported
    as skipped (e.g. OWT offline), not an error. ``spec``: the loaded corpus's full spec."""
    from esolm.data import corpus_from_spec
    from esolm.evaluate import evaluate

    try:
        corpus = corpus_from_spec(corpus_spec)
    except ConfigError as e:
        return dict(skipped=f"the evaluation data is not available here: {e}")
    fields, cfg = corpus.model_fields(), model.config
    for k in ("vocab_size", "mask_id", "length"):
        if fields[k] != getattr(cfg, k):
            return dict(skipped=f"corpus {corpus.name} has {k}={fields[k]} but the model {getattr(cfg, k)}")
    r = evaluate(model, corpus, "test", batch_size=batch_size, max_batches=batches, seed=seed, progress=False)
    uniform = math.log(cfg.vocab_size)
    out = dict(corpus=corpus.name, spec=corpus.spec(), sequences=r["num_sequences"],
               nll_per_token=r["nll_per_token"], ppl=r["ppl"],
               uniform_nll=uniform, uniform_ppl=float(cfg.vocab_size))
    if r["nll_per_token"] >= 0.9 * uniform:
        out["warning"] = (f"NELBO {r['nll_per_token']:.3f} nats/token is near or above the uniform value "
                          f"ln V = {uniform:.3f}: the weights look untrained or not loaded (or the model "
                          f"belongs to other data)")
    return out
