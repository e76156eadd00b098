"""The released-checkpoint presets: offline they fail at once naming what is missing; on local
stand-ins (the official-format fixtures as models, a saved tiny dataset per zero-shot corpus)
their job graph imports instead of training and produces every table."""
import json
import os
import random
import shutil
from pathlib import Path

import pytest

from esolm.config import ConfigError
from esolm.data import load_corpus
from esolm.data.zeroshot import DATASETS, detokenize
from esolm.importers import default_corpus, import_checkpoint
from experiments import presets as P
from experiments import run
from experiments.presets_released import ESO_RELEASES, ZERO_SHOT, ReleasedEntry, released, resolve

FIXTURES = Path(os.environ.get("ESOLM_FIXTURES", Path(__file__).parent / "fixtures" / "official"))


def _zero_shot_standins(folder: Path) -> dict:
    """A tiny dataset per zero-shot corpus, in the synthetic-48 vocabulary of the fixtures."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ZERO_SHOT:
        field = DATASETS[name]["field"]
        with open(folder / f"{name}.jsonl", "w") as f:
            for _ in range(8):
                f.write(json.dumps({field: " ".join(f"s{rng.randrange(48)}" for _ in range(30))}) + "\n")
    return {n: dict(name=f"zeroshot:{n}", tokenizer="synthetic-48", data_dir=str(folder)) for n in ZERO_SHOT}


def _downloaded_releases(folder: Path) -> Path:
    """checkpoints/ORG_NAME folders of both Eso-LM (B) hub releases, as `huggingface-cli download
    --local-dir` leaves them (the esolm-b-hf fixture, the tiny stand-in of their layout)."""
    for source in ESO_RELEASES.values():
        shutil.copytree(FIXTURES / "esolm-b-hf", folder / source[3:].replace("/", "_"))
    return folder


def standin_preset(tmp: Path):
    """The fixtures as models; Eso-LM (B) is the HF release resolved from a downloaded folder
    ($ESOLM_CHECKPOINTS must be ``tmp / "checkpoints"``), its alpha_0 from the folder's name."""
    folder = _downloaded_releases(tmp / "checkpoints") / "sahoo-diffusion_Eso-LM-B-alpha-0_25"
    eso = resolve(ESO_RELEASES[0.25])
    assert eso == str(folder)
    models = [
        ReleasedEntry("mdlm", "mdlm", {}, [dict(steps=4)], source=str(FIXTURES / "mdlm.ckpt")),
        ReleasedEntry("bd3lm L'=4", "bd3lm", {"block_size": 4}, [dict(steps=8)], source=str(FIXTURES / "bd3lm-hf")),
        ReleasedEntry("esolm-b a0=0.25", "esolm-b", {"alpha_0": 0.25}, [dict(steps=4, alpha_0_eval=0.25)],
                      nfe_equals_l=True, source=eso),
    ]
    return released("released-standin", "the released-preset graph on the fixtures", corpus="synthetic", length=16,
                    models=models, corpus_spec=default_corpus(50, 16), zero_shot=_zero_shot_standins(tmp / "zs"),
                    evaluator="source", featurizer="minilm",
                    backbone=dict(d_model=32, n_layers=2, n_heads=4, cond_dim=16, dropout=0.0), require_gpu=False,
                    sampling=dict(num_samples=4, batch_size=4),
                    eval=dict(batch_size=8, max_batches=1, exact_orders=[1, 2], exact_max_sequences=8),
                    timing=dict(batch_size=2, trials=2, warmup=1),
                    long_context=dict(lengths=[16], trials=2, warmup=1),
                    mauve=dict(featurizer="minilm", max_text_length=32),
                    slurm={"default": dict(time_min=20, cpus_per_task=1)}, threads=1)


def test_paper_owt_released_offline_fails_at_once_naming_the_missing_weights_and_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ESOLM_CHECKPOINTS", str(tmp_path / "none"))
    rc = run.main(["tables", "--preset", "paper-owt-released", "--cluster", "debug",
                   "--results", str(tmp_path / "r"), "--work", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert rc == 2
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    for what in ("hf:kuleshov-group/mdlm-owt", "bd3lm-owt-block_size16", "hf:sahoo-diffusion/Eso-LM-B-alpha-1",
                 "hf:sahoo-diffusion/Eso-LM-B-alpha-0_25", "test data: owt", "zeroshot:wikitext", "gpt2-large",
                 "ModernBERT"):
        assert what in line, what
    assert "esolm-b-owt-a0=" not in line  # the unreleased alpha_0 join only when their files are there
    assert not (tmp_path / "w").exists()  # nothing was submitted


def _eso_rows() -> list:
    return [m for m in P.get("paper-owt-released").models if m.model == "esolm-b"]


def test_paper_owt_released_takes_eso_lm_b_from_the_authors_hub_releases(tmp_path, monkeypatch):
    monkeypatch.setenv("ESOLM_CHECKPOINTS", str(tmp_path / "checkpoints"))
    assert {m.label: m.source for m in _eso_rows()} == {"esolm-b a0=1": "hf:sahoo-diffusion/Eso-LM-B-alpha-1",
                                                        "esolm-b a0=0.25": "hf:sahoo-diffusion/Eso-LM-B-alpha-0_25"}


def test_downloaded_eso_lm_releases_import_with_the_presets_alpha_0_and_local_files_join(tmp_path, monkeypatch):
    """Downloaded folders replace the hf: sources and import with the alpha_0 the preset expects
    (the release job's check); an unreleased alpha_0 joins when its local Lightning file is there."""
    monkeypatch.setenv("ESOLM_CHECKPOINTS", str(tmp_path / "checkpoints"))
    _downloaded_releases(tmp_path / "checkpoints")
    (tmp_path / "checkpoints" / "esolm-b-owt-a0=0.5.ckpt").write_bytes(b"")
    eso = _eso_rows()
    assert [m.overrides["alpha_0"] for m in eso] == [1.0, 0.5, 0.25]
    assert [m.nfe_equals_l for m in eso] == [True, False, False]
    assert eso[1].source == str(tmp_path / "checkpoints" / "esolm-b-owt-a0=0.5.ckpt")
    for m in (eso[0], eso[2]):
        assert Path(m.source).is_dir()
        state, info = import_checkpoint(m.source, model="esolm-b")
        assert state["model_config"]["alpha_0"] == m.overrides["alpha_0"]
        assert info["alpha_0"]["source"] == f"the folder name {Path(m.source).name}"


def test_both_released_presets_are_registered():
    assert {"paper-owt-released", "paper-lm1b-released"} <= set(P.PRESETS)
    owt = P.get("paper-owt-released")
    assert owt.run.eval.exact_orders[-1] == 1000 and set(owt.zero_shot) == set(ZERO_SHOT)
    assert owt.evaluator == "gpt2-large" and owt.run.mauve.featurizer == "answerdotai/ModernBERT-large"


def test_every_zero_shot_corpus_loads_from_its_saved_standin(tmp_path):
    specs = _zero_shot_standins(tmp_path)
    for name, spec in specs.items():
        spec = dict(spec)
        c = load_corpus(spec.pop("name"), length=16, **spec)
        test = c.splits["test"]
        assert test.shape[1] == 16 and len(test) >= 1
        assert (test[:, 0] == 48).all() and (test[:, -1] == 48).all()  # framed BOS ... EOS (insert_valid_special)


def test_a_zero_shot_corpus_offline_names_the_dataset_to_fetch():
    with pytest.raises(ConfigError, match="wikitext-103-raw-v1"):
        load_corpus("zeroshot:wikitext", length=1024)


def test_detokenizers_undo_the_datasets_tokenized_spacing():
    assert detokenize("wikitext", "a well @-@ known 1 @,@ 000 , ( it 's ) .") == "a well-known 1,000, (it's)."
    assert detokenize("ptb", "he did n't say 3\\/4 .") == "he didn't say 3/4."
    assert detokenize("lambada", "\u201cok\u201d ") == '\n"ok"'


def test_the_released_graph_on_standins_imports_evaluates_and_writes_every_table(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ESOLM_CHECKPOINTS", str(tmp_path / "checkpoints"))
    preset = standin_preset(tmp_path)
    monkeypatch.setitem(P.PRESETS, "released-standin", lambda: preset)
    rc = run.main(["tables", "--preset", "released-standin", "--cluster", "debug",
                   "--results", str(tmp_path / "results"), "--work", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 0, err[-3000:]
    results = tmp_path / "results" / "released-standin"
    tables = {p.stem for p in (results / "tables").glob("*.csv")}
    for t in ("table1_test_ppl", "table6-8_iw_vs_k", "table11_longctx_seconds", "table5_zero_shot"):
        assert t in tables, tables
    assert {"table14_mdlm", "table15_bd3lm", "sweep_esolm-b"} <= tables, tables  # Tables 13-15 (gen PPL, MAUVE, time)
    # the "train" jobs imported the fixtures (EMA weights) instead of training
    records = [json.loads(p.read_text()) for p in (results / "records" / "train").glob("*.json")]
    # mdlm.ckpt's EMA; the BD3-LM and Eso-LM (B) HF releases' published weights
    assert sorted(r["row"]["config"]["weights"].split()[0] for r in records) == ["ema", "published", "published"]
    t5 = (results / "tables" / "table5_zero_shot.csv").read_text()
    assert all(n in t5.splitlines()[0] for n in ZERO_SHOT)
