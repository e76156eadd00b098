"""Imported releases reproduce the authors' own outputs (tests/fixtures/official/README.md).

Every fixture is a tiny random-weight model in the authors' on-disk format together with the
logits / log-probabilities the authors' code computed from it (EMA weights swapped in, sigma = 0
and a nonzero sigma). The imported harness model must match every output within the README's
tolerances (1e-5 on logits and log-probs, 1e-4 on per-sequence sums; the mask column excluded)
through its own likelihood and sampler entry points; live or perturbed weights must not.
"""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from esolm import registry
from esolm.config import ConfigError
from esolm.importers import import_checkpoint
from esolm.importers.parity import LOGIT_ATOL, SUM_ATOL, compare, passes
from esolm.importers.safe_pickle import load_lightning, plain

FIXTURES = Path(os.environ.get("ESOLM_FIXTURES", Path(__file__).parent / "fixtures" / "official"))
SOURCES = {"esolm-b": "esolm-b.ckpt", "esolm-a": "esolm-a.ckpt", "mdlm": "mdlm.ckpt", "bd3lm-hf": "bd3lm-hf",
           "esolm-b-hf": "esolm-b-hf"}
FAMILY = {"esolm-b": "esolm-b", "esolm-a": "esolm-a", "mdlm": "mdlm", "bd3lm-hf": "bd3lm", "esolm-b-hf": "esolm-b"}
OPTIONS = {"esolm-b-hf": dict(overrides={"alpha_0": "0.25"})}  # its folder name does not say alpha_0
ESO_HF = "sahoo-diffusion/Eso-LM-B-alpha-0_25"  # the release the fixture's config names


def expected(name):
    return json.loads((FIXTURES / f"{name}.expected.json").read_text())


def build(state):
    model = registry.build(state["model_name"], **state["model_config"])
    model.load_state_dict(state["model"])
    return model.eval()


def imported(source, **kw):
    state, info = import_checkpoint(str(source), **kw)
    return build(state), info


@pytest.mark.parametrize("name", list(SOURCES))
def test_imported_model_matches_every_recorded_output_of_the_authors(name):
    model, info = imported(FIXTURES / SOURCES[name], **OPTIONS.get(name, {}))
    fx = expected(name)
    diffs = compare(model, fx)
    assert set(diffs) == set(fx["outputs"])  # every output is compared, nonzero-sigma ones included
    for key, d in diffs.items():
        assert d <= (SUM_ATOL if key.endswith("per_seq") else LOGIT_ATOL), (key, d)
    assert info["family"] == FAMILY[name]
    assert info["weights"].startswith("published" if name.endswith("-hf") else "ema")
    assert info["parity"].startswith(f"proven for this format on fixture {name} ")


def test_the_fixtures_cover_each_attention_mode_of_the_issue():
    assert {"diffusion_raw", "sequential_raw", "iw_logp_per_seq", "kv_step4_raw", "diffusion_raw_sigma"} \
        <= set(expected("esolm-b")["outputs"])
    assert {"raw", "raw_sigma", "logprobs"} <= set(expected("mdlm")["outputs"])
    assert {"train_raw", "sample_nocache_raw", "sample_kv_block3_raw"} <= set(expected("bd3lm-hf")["outputs"])
    assert {"diffusion_raw", "diffusion_raw_sigma", "sequential_raw", "sample_nocache_raw", "kv_step4_raw"} \
        <= set(expected("esolm-b-hf")["outputs"])


@pytest.mark.parametrize("name", ["esolm-b", "esolm-a", "mdlm"])
def test_live_weights_are_a_visible_choice_and_miss_the_authors_outputs(name):
    model, info = imported(FIXTURES / SOURCES[name], ema=False)
    assert info["weights"].startswith("live") and info["ema_in_file"]
    assert min(compare(model, expected(name)).values()) > 0.1  # the README: >= 2.8 max abs on each output


def _rewrite_lightning(tmp_path, name, edit) -> Path:
    """The fixture re-saved after ``edit(state)``; the config is stored as plain dicts."""
    state = load_lightning(FIXTURES / SOURCES[name])
    state["hyper_parameters"] = dict(state["hyper_parameters"], config=plain(state["hyper_parameters"]["config"]),
                                     tokenizer=None)
    edit(state)
    path = tmp_path / f"{name}-edited.ckpt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("name", ["esolm-b", "mdlm"])
def test_a_perturbed_ema_weight_fails_parity(tmp_path, name):
    def perturb(state):
        state["ema"]["shadow_params"][3] = state["ema"]["shadow_params"][3] + 1e-3  # sigma_map.mlp.2.weight
    model, _ = imported(_rewrite_lightning(tmp_path, name, perturb))
    assert not passes(compare(model, expected(name)))
    unchanged, _ = imported(_rewrite_lightning(tmp_path, name, lambda s: None))
    assert passes(compare(unchanged, expected(name)))  # the round trip itself is exact


def _hf_copy(folder: Path, name: str, edit=None, config=None) -> Path:
    """The HF fixture ``name`` re-saved into ``folder`` after ``edit(weights)`` / ``config(cfg)``."""
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True)
    cfg = json.loads((FIXTURES / name / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config(cfg) if config else cfg))
    w = load_file(str(FIXTURES / name / "model.safetensors"))
    save_file(edit(w) if edit else w, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("name,key", [("bd3lm-hf", "backbone.blocks.1.attn_out.weight"),
                                      ("esolm-b-hf", "backbone.blocks.0.mlp.2.bias")])
def test_a_perturbed_hf_weight_fails_parity(tmp_path, name, key):
    def perturb(w):
        w[key] = w[key] * 1.001
        return w
    folder = ESO_HF.replace("/", "_") if name == "esolm-b-hf" else name  # the folder name gives alpha_0
    model, _ = imported(_hf_copy(tmp_path / "bad" / folder, name, perturb))
    assert not passes(compare(model, expected(name)))
    unchanged, _ = imported(_hf_copy(tmp_path / "good" / folder, name))
    assert passes(compare(unchanged, expected(name)))  # the round trip itself is exact


def _hub_standin(monkeypatch) -> list:
    """``hf:`` downloads answered by the esolm-b-hf fixture folder; the repositories asked for."""
    asked = []

    def snapshot_download(repo, **kw):
        asked.append(repo)
        return str(FIXTURES / "esolm-b-hf")
    monkeypatch.setattr("esolm.data.hub.hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    return asked


@pytest.mark.parametrize("release,alpha_0", [("sahoo-diffusion/Eso-LM-B-alpha-1", 1.0), (ESO_HF, 0.25)])
def test_the_eso_lm_hub_releases_import_through_hf_with_alpha_0_from_the_repository_name(monkeypatch, release,
                                                                                          alpha_0):
    asked = _hub_standin(monkeypatch)
    state, info = import_checkpoint(f"hf:{release}", model="esolm-b")
    assert asked == [release] and info["source"] == f"hf:{release}" and info["format"] == "hf"
    assert info["alpha_0"] == dict(value=alpha_0, source=f"the repository name {release}")
    assert state["model_config"]["alpha_0"] == alpha_0
    assert state["model_config"]["batch_split"] == (1.0 if alpha_0 == 1 else 0.5)  # the spec's kappa (7.2)
    assert passes(compare(build(state), expected("esolm-b-hf")))  # the network does not depend on alpha_0


def test_an_explicit_alpha_0_wins_over_the_name_and_the_record_says_so(monkeypatch):
    _hub_standin(monkeypatch)
    state, info = import_checkpoint("hf:sahoo-diffusion/Eso-LM-B-alpha-1", overrides={"alpha_0": "0.25"})
    assert state["model_config"]["alpha_0"] == 0.25 and info["alpha_0"]["value"] == 0.25
    assert info["alpha_0"]["source"] == ("option alpha_0=0.25 (instead of 1 from the repository name "
                                         "sahoo-diffusion/Eso-LM-B-alpha-1)")
    _, info = import_checkpoint("hf:sahoo-diffusion/Eso-LM-B-alpha-1", overrides={"alpha_0": "1.0"})
    assert info["alpha_0"] == dict(value=1.0, source="option alpha_0=1.0")  # the name agrees
    _, info = import_checkpoint(str(FIXTURES / "esolm-b.ckpt"))
    assert info["alpha_0"] == dict(value=0.25, source="the checkpoint's config (algo.alpha_0)")
    _, info = import_checkpoint(str(FIXTURES / "esolm-b.ckpt"), overrides={"alpha_0": "0.5"})
    assert info["alpha_0"] == dict(value=0.5, source="option alpha_0=0.5 (instead of the config's 0.25)")
    _, info = import_checkpoint(str(FIXTURES / "mdlm.ckpt"))
    assert "alpha_0" not in info


def test_an_eso_lm_hf_folder_without_alpha_0_is_one_error_naming_the_fix():
    with pytest.raises(ConfigError, match=r"holds no alpha_0.*pass alpha_0=A"):
        import_checkpoint(str(FIXTURES / "esolm-b-hf"))


def test_alpha_0_is_read_from_release_names_with_underscore_as_decimal_point(tmp_path):
    from esolm.importers.sources import alpha_0_from_name

    assert alpha_0_from_name("hf:sahoo-diffusion/Eso-LM-B-alpha-0_25") == (
        0.25, "repository name sahoo-diffusion/Eso-LM-B-alpha-0_25")
    assert alpha_0_from_name("checkpoints/sahoo-diffusion_Eso-LM-B-alpha-1")[0] == 1.0
    snapshot = tmp_path / "hub" / "models--sahoo-diffusion--Eso-LM-B-alpha-0_25" / "snapshots" / "0123abcd"
    assert alpha_0_from_name(str(snapshot)) == (0.25, "hub cache name sahoo-diffusion/Eso-LM-B-alpha-0_25")
    assert alpha_0_from_name("runs/esolm-b-hf") is None and alpha_0_from_name("hf:org/mdlm-owt") is None
    assert alpha_0_from_name("runs/gamma-0_5") is None  # "alpha" must stand alone
    with pytest.raises(ConfigError, match="outside"):
        alpha_0_from_name("hf:org/Eso-LM-B-alpha-25")


def test_the_eso_lm_hf_width_is_hidden_size_and_the_mask_is_the_last_id(tmp_path):
    def cfg_with(**kw):
        return lambda cfg: dict(cfg, **kw)
    name = ESO_HF.replace("/", "_")
    _, info = imported(_hf_copy(tmp_path / "a" / name, "esolm-b-hf", config=cfg_with(hidden_dim=768)))
    assert info["architecture"]["d_model"] == 32  # hidden_dim is an unused extra key of EsoLMConfig
    with pytest.raises(ConfigError, match="hidden_size=64"):
        import_checkpoint(str(_hf_copy(tmp_path / "b" / name, "esolm-b-hf", config=cfg_with(hidden_size=64))))
    with pytest.raises(ConfigError, match="mask_index=0"):
        import_checkpoint(str(_hf_copy(tmp_path / "c" / name, "esolm-b-hf", config=cfg_with(mask_index=0))))


def test_a_missing_weight_is_an_error_naming_the_key(tmp_path):
    def drop(state):
        key = "backbone.blocks.1.norm2.weight"
        params = [k for k in state["state_dict"] if not k.endswith("inv_freq")]  # backbone.parameters() order
        state["ema"]["shadow_params"].pop(params.index(key))
        del state["state_dict"][key]
    with pytest.raises(ConfigError, match=r"backbone\.blocks\.1\.norm2\.weight"):
        import_checkpoint(str(_rewrite_lightning(tmp_path, "mdlm", drop)))


def test_a_shape_that_does_not_fit_is_an_error_naming_the_key(tmp_path):
    def widen(state):
        sd = state["state_dict"]
        key = "backbone.blocks.0.attn_out.weight"
        params = [k for k in sd if not k.endswith("inv_freq")]
        sd[key] = torch.zeros(32, 40)
        state["ema"]["shadow_params"][params.index(key)] = torch.zeros(32, 40)
    with pytest.raises(ConfigError, match=r"backbone\.blocks\.0\.attn_out\.weight"):
        import_checkpoint(str(_rewrite_lightning(tmp_path, "mdlm", widen)))


def test_an_unknown_weight_is_refused_not_dropped(tmp_path):
    def add(state):
        state["state_dict"]["backbone.blocks.0.extra_gate"] = torch.zeros(3)
    with pytest.raises(ConfigError, match="extra_gate"):
        import_checkpoint(str(_rewrite_lightning(tmp_path, "mdlm", add)), ema=False)


def test_a_wrong_family_lightning_checkpoint_is_refused(tmp_path):
    def ar(state):
        cfg = state["hyper_parameters"]["config"]
        cfg["parameterization"] = "ar"
    with pytest.raises(ConfigError, match="not supported"):
        import_checkpoint(str(_rewrite_lightning(tmp_path, "mdlm", ar)))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch " + str(Path(os.environ["ESOLM_EVIL_MARK"])),))


def test_the_restricted_unpickler_runs_no_code_from_the_file(tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("ESOLM_EVIL_MARK", str(mark))
    path = tmp_path / "evil.ckpt"
    torch.save({"payload": _Evil(), "state_dict": {}}, path)
    state = load_lightning(path)
    assert not mark.exists()
    assert type(state["payload"]).__name__ == "system"  # a stub that recorded the call
    with pytest.raises(ConfigError):
        import_checkpoint(str(path))
    assert not mark.exists()


def test_the_lightning_reader_needs_neither_omegaconf_nor_transformers():
    before = set(sys.modules)
    state = load_lightning(FIXTURES / "esolm-b.ckpt")
    new = set(sys.modules) - before
    assert not any(m.split(".")[0] in ("omegaconf", "transformers", "tokenizers", "lightning") for m in new)
    cfg = plain(state["hyper_parameters"]["config"])
    assert cfg["algo"]["alpha_0"] == 0.25 and cfg["model"]["hidden_size"] == 32


def test_the_hf_mdlm_format_is_read_by_its_key_layout_and_marked_unproven(tmp_path):
    """kuleshov-group/mdlm-owt has the bd3lm key layout without block_size: built here from the
    BD3-LM fixture's weights, the MDLM import runs the same network (parity of the real format
    against the authors' MDLM HF code is not proven: no fixture)."""
    from safetensors.torch import load_file, save_file

    cfg = json.loads((FIXTURES / "bd3lm-hf" / "config.json").read_text())
    cfg = {k: v for k, v in cfg.items() if k not in ("block_size", "cross_attn", "sampling_eps_min",
                                                      "sampling_eps_max", "var_min", "attn_backend")}
    cfg.update(model_type="mdlm", architectures=["MDLM"])
    folder = tmp_path / "mdlm-hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    w = load_file(str(FIXTURES / "bd3lm-hf" / "model.safetensors"))
    save_file({k: v for k, v in w.items() if k.startswith("backbone.")}, str(folder / "model.safetensors"))
    mdlm, info = imported(folder)
    bd3, _ = imported(FIXTURES / "bd3lm-hf")
    assert info["family"] == "mdlm" and info["parity"].startswith("unproven")
    x = torch.tensor(expected("bd3lm-hf")["inputs"]["xt"]["data"])
    assert torch.equal(mdlm.denoise(x), bd3.backbone(x, torch.arange(16), None))


def test_the_backbone_sigma_input_changes_nothing_at_none_and_conditions_otherwise():
    model, _ = imported(FIXTURES / "mdlm.ckpt")
    x = torch.tensor(expected("mdlm")["inputs"]["xt"]["data"])
    pos = torch.arange(16)
    base = model.backbone(x, pos, None)
    assert torch.allclose(model.backbone(x, pos, None, sigma=torch.zeros(2)), base, atol=1e-6)
    assert (model.backbone(x, pos, None, sigma=torch.tensor([0.5, 1.0])) - base).abs().max() > 1e-3


def test_a_checkpoint_without_ema_imports_its_live_weights_and_says_so(tmp_path):
    def no_ema(state):
        state["ema"] = {"decay": 0.0, "num_updates": 0, "shadow_params": []}  # EMA off in training
    path = _rewrite_lightning(tmp_path, "mdlm", no_ema)
    _, info = import_checkpoint(str(path))
    assert info["weights"] == "live (the checkpoint has no EMA)" and not info["ema_in_file"]
    with pytest.raises(ConfigError, match="--no-ema"):
        import_checkpoint(str(path), ema=True)


def test_a_harness_checkpoint_is_not_mistaken_for_a_release(tmp_path):
    state, _ = import_checkpoint(str(FIXTURES / "mdlm.ckpt"))
    renamed = tmp_path / "harness.ckpt"
    torch.save(state, renamed)  # the one-file harness checkpoint of earlier versions (now .safetensors + .json)
    with pytest.raises(ConfigError, match="already a harness checkpoint"):
        import_checkpoint(str(renamed))
