"""Reading the authors' published formats into one neutral record (no harness types here).

    Lightning ``.ckpt`` (Eso-LMs, MDLM, bd3lms trainers): ``state_dict`` = live weights,
        ``ema.shadow_params`` = EMA weights in ``backbone.parameters()`` order, the Hydra config
        under ``hyper_parameters.config`` (read through the restricted unpickler).
    Hugging Face folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``):
        ``model_type`` "bd3lm" (kuleshov-group/bd3lm-*), "mdlm" (kuleshov-group/mdlm-owt) or
        "EsoLM" (sahoo-diffusion/Eso-LM-B-alpha-{1,0_25}: Eso-LM (B), ``hidden_size`` the width,
        no alpha_0 in the config: ``alpha_0_from_name`` reads it from the repository / folder name);
        the weights are the EMA weights the authors copied in before pushing; there is no EMA entry.
    ``hf:ORG/NAME``: such a folder fetched through huggingface_hub (online only).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from esolm.config import ConfigError
from esolm.importers.dit import INV_FREQ, strip_prefixes
from esolm.importers.safe_pickle import load_lightning, plain
from esolm.io import file_hash

HF_EXTRAS = ("sampling_eps_min", "sampling_eps_max")  # BD3-LM's clipped noise interval (0-dim buffers)
# config.json model_type -> registry name; the EsoLM class of sahoo-diffusion/Eso-LM-B-* holds no
# variant field, and both releases are Eso-LM (B) (fixture README, section 7)
HF_FAMILIES = {"bd3lm": "bd3lm", "mdlm": "mdlm", "EsoLM": "esolm-b"}
_ALPHA_NAME = re.compile(r"(?:^|[^a-z0-9])alpha-(\d+(?:[._]\d+)?)(?![\d.])", re.IGNORECASE)


@dataclass
class Raw:
    """What a file holds, in the authors' terms."""

    source: str
    fmt: str  # "lightning" | "hf"
    family: str  # registry name: mdlm | bd3lm | esolm-a | esolm-b
    fields: dict  # model config fields read from the file's config (length, alpha_0, block_size, ...)
    n_heads: int | None
    live: dict  # backbone weights (authors' names, without "backbone.")
    ema: dict | None  # the same names, EMA values; None when the file has none
    extras: dict = field(default_factory=dict)  # values with no backbone counterpart
    meta: dict = field(default_factory=dict)  # step, versions, config excerpt, sha256


# ------------------------------------------------------------------------------ Lightning
def _get(cfg: dict, dotted: str, default=None):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _family_lightning(cfg: dict, source: str) -> tuple[str, dict]:
    """(registry name, model fields) from the Hydra config of the three trainers."""
    algo = cfg.get("algo") if isinstance(cfg.get("algo"), dict) else None
    name = algo.get("name") if algo else None
    tc = _get(cfg, "algo.time_conditioning", cfg.get("time_conditioning", False))
    if tc is True:
        raise ConfigError(f"{source}: time_conditioning=True; the harness models feed sigma = 0 as the authors' "
                          f"released models do, so a time-conditioned checkpoint is not supported")
    if name == "esolm":
        return _esolm_family(algo, source)
    if name == "bd3lm":
        return _bd3lm_family(cfg, source)
    if name == "mdlm" or (name is None and cfg.get("parameterization") == "subs"
                          and cfg.get("backbone", "dit") == "dit"):
        return _mdlm_family(cfg, source)
    what = name or cfg.get("parameterization") or "unknown"
    raise ConfigError(f"{source}: a Lightning checkpoint of algorithm {what!r}; the importer reads MDLM, BD3-LM "
                      f"and Eso-LM (A)/(B) checkpoints (AR, SEDD and others are not supported)")


def _esolm_family(algo: dict, source: str) -> tuple[str, dict]:
    """Eso-LM (A) or (B) from the two attention modes, with alpha_0, batch_split and the loss."""
    modes = (algo.get("diffusion_attn_mode"), algo.get("sequential_attn_mode"))
    family = {("causal", "causal"): "esolm-b", ("mixed2", "mixed"): "esolm-a"}.get(modes)
    if family is None:
        raise ConfigError(f"{source}: Eso-LM attention modes (diffusion, sequential) = {modes}; the harness has "
                          f"(B) = ('causal', 'causal') and (A) = ('mixed2', 'mixed')")
    fields = {"alpha_0": float(algo["alpha_0"])}
    if algo.get("batch_split") is not None:
        fields["batch_split"] = float(algo["batch_split"])
    if algo.get("loss_type") in ("elbo", "low_var"):
        fields["loss_type"] = algo["loss_type"]
    return family, fields


def _bd3lm_family(cfg: dict, source: str) -> tuple[str, dict]:
    block = cfg.get("block_size", _get(cfg, "algo.block_size"))
    if not isinstance(block, int):
        raise ConfigError(f"{source}: a BD3-LM config without an integer block_size (got {block!r})")
    return "bd3lm", dict(block_size=block)


def _mdlm_family(cfg: dict, source: str) -> tuple[str, dict]:
    """MDLM, only in continuous time (T = 0) with the log-linear schedule."""
    T = cfg.get("T", _get(cfg, "algo.T", 0))
    if T not in (0, None):
        raise ConfigError(f"{source}: MDLM with T={T} (discrete time); the harness's MDLM is the "
                          f"continuous-time (T = 0) model the authors released")
    noise = _get(cfg, "noise.type", "loglinear")
    if noise != "loglinear":
        raise ConfigError(f"{source}: MDLM with noise {noise!r}; the harness implements the log-linear schedule")
    return "mdlm", {}


def read_lightning(path: Path) -> Raw:
    state = load_lightning(path)
    src = str(path)
    hp, cfg = _lightning_config(state, src)
    family, fields = _family_lightning(cfg, src)
    model = cfg["model"]
    fields.update(_model_fields(model, src))
    live_all = dict(state["state_dict"])
    live, _ = strip_prefixes(live_all, src)
    ema, ema_error = _lightning_ema(state, live_all, src)
    for key, value in list(fields.items()):
        if isinstance(value, str) and value.startswith("${"):
            raise ConfigError(f"{src}: config field {key} is an unresolved interpolation {value!r}; pass {key}=VALUE")
    meta = dict(global_step=state.get("global_step"), epoch=state.get("epoch"),
                lightning_version=state.get("pytorch-lightning_version"),
                ema_decay=(state.get("ema") or {}).get("decay"), config_model=model,
                config_algo=cfg.get("algo") or {k: cfg.get(k) for k in ("backbone", "parameterization", "T")},
                hp_vocab_size=hp.get("vocab_size"), ema_error=ema_error)
    return Raw(src, "lightning", family, fields, model.get("n_heads"), live, ema, {}, meta)


def _lightning_config(state: dict, src: str) -> tuple[dict, dict]:
    """(hyper_parameters, plain Hydra config) of an authors' Lightning checkpoint; a clear error otherwise."""
    if {"model_name", "model_config", "model"} <= set(state):
        raise ConfigError(f"{src} is already a harness checkpoint (written by run.py train / import); pass it to "
                          f"eval / sample with --checkpoint as it is")
    if "state_dict" not in state or "hyper_parameters" not in state:
        raise ConfigError(f"{src}: not a Lightning checkpoint of the authors' trainers (no state_dict / "
                          f"hyper_parameters); pass a .ckpt from the Eso-LMs, mdlm or bd3lms repositories")
    hp = state["hyper_parameters"]
    cfg = plain(hp.get("config")) if isinstance(hp, dict) else None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise ConfigError(f"{src}: hyper_parameters has no Hydra config with a model group; not a checkpoint of "
                          f"the MDLM / BD3-LM / Eso-LMs trainers")
    return hp, cfg


def _model_fields(model: dict, src: str) -> dict:
    """length and dropout from the config's model group (an untied head only)."""
    if model.get("tie_word_embeddings"):
        raise ConfigError(f"{src}: tie_word_embeddings=True; the harness's head is untied")
    fields = {}
    if isinstance(model.get("length"), int):
        fields["length"] = model["length"]
    if isinstance(model.get("dropout"), (int, float)):
        fields["dropout"] = float(model["dropout"])
    return fields


def _lightning_ema(state: dict, live_all: dict, src: str) -> tuple[dict | None, str | None]:
    """(EMA weights by name, None) or (None, why they cannot be matched); (None, None) with EMA off."""
    if not (isinstance(state.get("ema"), dict) and state["ema"].get("shadow_params")):  # EMA off: absent or []
        return None, None
    try:  # an EMA that cannot be matched is an error only when it is asked for
        return _shadow_to_names(live_all, list(state["ema"]["shadow_params"]), src), None
    except ConfigError as e:
        return None, str(e)


def _shadow_to_names(state_dict: dict, shadow: list, source: str) -> dict:
    """EMA shadow params follow ``backbone.parameters()``: the state_dict order minus buffers."""
    names = [k for k in state_dict if not k.endswith(INV_FREQ)]
    if len(shadow) != len(names):
        raise ConfigError(f"{source}: ema.shadow_params holds {len(shadow)} tensors but state_dict has "
                          f"{len(names)} parameters; the EMA cannot be matched to names (use --no-ema for the "
                          f"live weights)")
    named = {}
    for key, value in zip(names, shadow):
        if tuple(value.shape) != tuple(state_dict[key].shape):
            raise ConfigError(f"{source}: ema.shadow_params entry for {key} has shape {tuple(value.shape)}, the "
                              f"live weight {tuple(state_dict[key].shape)}; the EMA is not in parameter order")
        named[key] = value
    for key in state_dict:
        if key.endswith(INV_FREQ):
            named[key] = state_dict[key]
    ema, _ = strip_prefixes(named, source)
    return ema


# ------------------------------------------------------------------------------ Hugging Face
def read_hf_folder(folder: Path) -> Raw:
    src = str(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{src}: no config.json; a Hugging Face checkpoint folder holds config.json and "
                          f"model.safetensors (or pytorch_model.bin)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise ConfigError(f"{cfg_path} is not valid JSON ({e}); re-download it") from None
    family, fields = _hf_family(cfg, src)
    weights = _hf_weights(folder)
    live, extras = strip_prefixes(weights, src, HF_EXTRAS)
    extras = {k: float(f"{float(v):.7g}") for k, v in extras.items()}  # float32 buffers: 0.001, not 0.0010000000475
    meta = dict(config_json={k: v for k, v in cfg.items() if k != "auto_map"},
                name_or_path=cfg.get("_name_or_path"), hp_vocab_size=cfg.get("vocab_size"))
    for key in ("hidden_dim", "hidden_size", "n_blocks", "cond_dim"):
        meta[key] = cfg.get(key)
    return Raw(src, "hf", family, fields, cfg.get("n_heads"), live, None, extras, meta)


def _hf_family(cfg: dict, src: str) -> tuple[str, dict]:
    """(registry name, model fields) of a Hugging Face config.json; one error for what the harness lacks."""
    kind = cfg.get("model_type")
    if kind not in HF_FAMILIES:
        raise ConfigError(f"{src}: model_type {kind!r}; the importer reads the authors' Hugging Face formats "
                          f"'bd3lm' (kuleshov-group/bd3lm-*), 'mdlm' (kuleshov-group/mdlm-owt) and 'EsoLM' "
                          f"(sahoo-diffusion/Eso-LM-B-*)")
    if cfg.get("time_conditioning"):
        raise ConfigError(f"{src}: time_conditioning=true; the harness models feed sigma = 0")
    if cfg.get("adaln") is False:
        raise ConfigError(f"{src}: adaln=false; the released DiT models are AdaLN models")
    fields = {"length": int(cfg["model_length"])} if "model_length" in cfg else {}
    if "dropout" in cfg:
        fields["dropout"] = float(cfg["dropout"])
    if kind == "bd3lm":
        fields["block_size"] = _hf_block_size(cfg, src)
    if kind == "EsoLM":
        _check_mask_index(cfg, src)
    return HF_FAMILIES[kind], fields


def _check_mask_index(cfg: dict, src: str) -> None:
    """EsoLMConfig stores ``mask_index``; the releases (and the harness) put [MASK] at V - 1."""
    V, mask = cfg.get("vocab_size"), cfg.get("mask_index")
    if isinstance(V, int) and isinstance(mask, int) and mask != V - 1:
        raise ConfigError(f"{src}: mask_index={mask} with vocab_size={V}; the Eso-LM releases (and the harness) "
                          f"put [MASK] at vocab_size - 1 = {V - 1}")


def _hf_block_size(cfg: dict, src: str) -> int:
    """BD3-LM's block size L' from its config.json (the vectorised cross-attention model only)."""
    if "block_size" not in cfg:
        raise ConfigError(f"{src}: a bd3lm config.json without block_size")
    if cfg.get("cross_attn") is False:
        raise ConfigError(f"{src}: cross_attn=false; the harness's BD3-LM is the vectorised 2L model "
                          f"(cross_attn=true)")
    return int(cfg["block_size"])


def alpha_0_from_name(source: str) -> tuple[float, str] | None:
    """(alpha_0, what said it) from a release's name, or None when the name does not say it.

    The Eso-LM HF configs hold no alpha_0; the repository name does, with ``_`` as the decimal
    point: ``Eso-LM-B-alpha-1`` -> 1.0, ``Eso-LM-B-alpha-0_25`` -> 0.25. Read from ``hf:ORG/NAME``,
    else from the folder's own name (``checkpoints/sahoo-diffusion_Eso-LM-B-alpha-0_25``) or, for a
    huggingface_hub cache snapshot (``models--ORG--NAME/snapshots/REV``), from NAME."""
    if source.startswith("hf:"):
        names = [("repository name", source[3:].strip("/"))]
    else:
        path = Path(os.path.expanduser(source))
        names = [("folder name", path.name)]
        if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
            names.append(("hub cache name", path.parent.parent.name[len("models--"):].replace("--", "/")))
    for what, name in names:
        m = _ALPHA_NAME.search(name)
        if m:
            value = float(m.group(1).replace("_", "."))
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{source}: the {what} {name!r} says alpha_0 = {value:g}, outside [0, 1]; pass "
                                  f"alpha_0=A")
            return value, f"{what} {name}"
    return None


def _hf_weights(folder: Path) -> dict:
    st = sorted(folder.glob("*.safetensors"))
    if st:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        out = {}
        for f in st:
            try:
                out.update(load_file(str(f)))
            except (SafetensorError, OSError, ValueError) as e:
                raise ConfigError(f"{f} is not a readable safetensors file ({e}); it may be truncated: "
                                  f"re-download it") from None
        return out
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:
        out = {}
        for f in bins:
            try:  # plain tensors only: weights_only refuses anything that would run code
                out.update(torch.load(f, map_location="cpu", weights_only=True))
            except Exception as e:
                raise ConfigError(f"{f} is not a readable weights file ({type(e).__name__}: {e}); it may be "
                                  f"truncated: re-download it") from None
        return out
    raise ConfigError(f"{folder}: no model.safetensors or pytorch_model.bin beside config.json")


def fetch_hf(repo: str) -> Path:
    """Download ``config.json`` and the weights of ``repo`` through huggingface_hub; offline, one
    message saying what to download and where to put it."""
    from esolm.data.hub import hub_reachable

    how = (f"on a machine with internet run `huggingface-cli download {repo} config.json model.safetensors "
           f"--local-dir checkpoints/{repo.replace('/', '_')}`, copy that folder here and pass it as the source "
           f"(python experiments/run.py import checkpoints/{repo.replace('/', '_')} --out DIR)")
    if not hub_reachable():  # False at once in offline mode
        raise ConfigError(f"cannot fetch hf:{repo}: the Hugging Face hub is unreachable (offline); {how}")
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo, allow_patterns=["config.json", "*.safetensors", "pytorch_model*.bin"])
    except Exception as e:
        raise ConfigError(f"cannot fetch hf:{repo} ({type(e).__name__}: {e}); {how}") from None
    return Path(path)


def read_source(source: str) -> Raw:
    """Dispatch on what ``source`` is: ``hf:ORG/NAME``, a HF folder or a Lightning ``.ckpt``."""
    if source.startswith("hf:"):
        repo = source[3:].strip("/")
        if repo.count("/") != 1:
            raise ConfigError(f"hf: sources are hf:ORG/NAME (e.g. hf:kuleshov-group/bd3lm-owt-block_size4); "
                              f"got {source!r}")
        raw = read_hf_folder(fetch_hf(repo))
        raw.source = source
        return raw
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        return read_hf_folder(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint source {source} does not exist; pass a Lightning .ckpt, a Hugging Face "
                          f"folder (config.json + model.safetensors) or hf:ORG/NAME")
    raw = read_lightning(path)
    raw.meta["sha256"] = file_hash(path)
    return raw
