"""Table 16 (XSum, spec 10.10 / 15.6): the summarisation data path, rescaled BERTScore against a
hand computation, the paper-xsum preset's graph and preflight, and the whole preset on local
stand-ins (tiny random MDLM and Eso-LM (B) releases in the authors' HF layout, Shakespeare as
XSum, MiniLM as the featurizer) through the debug cluster, producing Table 16."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from esolm import registry
from esolm.config import ConfigError
from esolm.data import xsum as X
from experiments import presets as P
from experiments import run

GPT2 = dict(vocab_size=50258, mask_id=50257, bos_id=50256, eos_id=50256)  # the OWT releases' ids


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    return X.write_standin(tmp_path_factory.mktemp("xsum") / "standin")


# ------------------------------------------------------------------------------ the data path
def test_rows_are_bos_document_eos_summary_eos_padded_within_the_budget():
    row, p = X.format_example([1, 2, 3], [7, 8], length=12, budget=4, bos_id=0, eos_id=9)
    assert row.tolist() == [0, 1, 2, 3, 9, 7, 8, 9, 9, 9, 9, 9] and p == 5
    # a long document is cut to L - S - 2 tokens, a long summary to S - 1: the S slots after p hold it
    row, p = X.format_example(list(range(1, 20)), [7, 7, 7, 7, 7], length=12, budget=4, bos_id=0, eos_id=9)
    assert row.tolist() == [0, 1, 2, 3, 4, 5, 6, 9, 7, 7, 7, 9] and p == 8 == 12 - 4
    assert X.default_budget(1024) == 64 and X.default_budget(64) == 16
    with pytest.raises(ConfigError, match="summary_budget=11 does not fit"):
        X.check_geometry(12, 11)


def test_the_standin_loads_in_gpt2_ids_with_documents_given_and_the_summary_slots_free(standin):
    data = X.load_xsum(length=64, data_dir=standin)
    assert data.budget == 16 and data.rows["test"].shape == (16, 64) and len(data.references["test"]) == 16
    tok = data.tokenizer
    for i in range(len(data.rows["test"])):
        row, p = data.rows["test"][i], int(data.prefix["test"][i])
        assert row[0] == tok.bos_id and row[p - 1] == tok.eos_id and p <= 64 - 16
        summary = tok.encode(data.references["test"][i])[:15]
        assert row[p:p + len(summary)].tolist() == summary and (row[p + len(summary):] == tok.eos_id).all()
    index = list(range(4))
    given = data.given("test", index, GPT2["mask_id"])
    assert (given.counts == 64 - 16).all()  # every row: S free slots (one Eso-LM (B) call per batch)
    free = data.free("test", index)
    assert (given.tokens[free] == GPT2["mask_id"]).all() and not given.mask[free].any()
    assert torch.equal(given.tokens[~free], torch.where(free, 0, data.rows["test"][:4])[~free])
    # the summary is read from the slots up to the first EOS: the truth rows give the references back
    cut = [tok.decode(tok.encode(r)[:15], skip_special=True) for r in data.references["test"][:4]]
    assert data.summaries(data.rows["test"][:4], "test", index) == cut
    corpus = data.corpus()  # what esolm.train.fit takes
    assert torch.equal(corpus.splits["train"], data.rows["train"]) and corpus.spec()["summary_budget"] == 16


def test_documents_longer_than_the_budget_are_cut(standin):
    data = X.load_xsum(length=32, data_dir=standin, summary_budget=8)
    assert (data.prefix["train"] <= 32 - 8).all() and (data.prefix["train"] == 32 - 8).any()
    with pytest.raises(ConfigError, match="do not fit"):
        data.check_model(registry.build_config("mdlm", preset="smoke", **GPT2, length=64))


def test_offline_without_data_one_error_names_what_to_fetch_and_where(tmp_path):
    with pytest.raises(ConfigError) as e:
        X.load_xsum(length=64, cache_dir=tmp_path)
    text = str(e.value)
    assert "EdinburghNLP/xsum" in text and str(tmp_path / "hf" / "xsum") in text and "save_to_disk" in text
    assert X.missing_reason(cache_dir=tmp_path, online=False).startswith("the Hugging Face dataset EdinburghNLP/xsum")
    with pytest.raises(ConfigError, match="does not exist"):
        X.load_xsum(length=64, data_dir=tmp_path / "nowhere")


# ------------------------------------------------------------------------------- BERTScore
def _hand_bertscore(candidate: str, reference: str, layer: int, baseline: np.ndarray) -> np.ndarray:
    """BERTScore by its definition: unit vectors of ``layer``, greedy cosine matching (special
    tokens matched against, not averaged over), F1 = 2PR/(P+R), then (s - b) / (1 - b)."""
    from transformers import AutoModel, AutoTokenizer

    from esolm.metrics.mauve import minilm_folder

    tok, model = AutoTokenizer.from_pretrained(str(minilm_folder())), AutoModel.from_pretrained(str(minilm_folder()))

    def vectors(text):
        with torch.no_grad():
            h = model.eval()(**tok(text, return_tensors="pt"), output_hidden_states=True).hidden_states[layer][0]
        return torch.nn.functional.normalize(h.double(), dim=-1)

    sim = vectors(candidate) @ vectors(reference).T  # [CLS] ... [SEP] on both sides
    p, r = sim[1:-1].max(1).values.mean().item(), sim[:, 1:-1].max(0).values.mean().item()
    return (np.array([p, r, 2 * p * r / (p + r)]) - baseline) / (1 - baseline)


def test_rescaled_bertscore_equals_the_hand_computation_on_two_pairs():
    from esolm.metrics.bertscore import bertscore, featurizer

    pairs = [("the cat sat on the mat", "a cat was sitting on the mat"), ("storms over the sea", "the weather is calm")]
    out = bertscore([c for c, _ in pairs], [r for _, r in pairs], "minilm", device="cpu")
    f = featurizer("minilm")
    base = np.loadtxt(f.baseline, delimiter=",", skiprows=1)[f.layer, 1:]
    assert out["featurizer"]["layer"] == 6 and np.allclose(out["featurizer"]["baseline_p_r_f"], base)
    for i, (c, r) in enumerate(pairs):
        want = _hand_bertscore(c, r, f.layer, base)
        assert np.allclose([out["precision"][i], out["recall"][i], out["f1"][i]], want, atol=1e-5), (i, want)
    assert out["f1"][0] > out["f1"][1]  # a paraphrase beats an unrelated sentence
    empty = bertscore(["", pairs[0][0]], [pairs[0][1]] * 2, "minilm", device="cpu")
    assert empty["empty"] == 1 and np.isclose(empty["f1"][0], -base[2] / (1 - base[2]))  # raw 0, rescaled


def test_the_paper_featurizer_is_roberta_large_layer_17_with_the_packages_baseline():
    from esolm.metrics.bertscore import featurizer, missing

    f = featurizer("roberta-large")
    assert (f.model, f.layer, f.baseline, f.lang) == ("roberta-large", 17, None, "en")
    assert "roberta-large" in missing("roberta-large", online=False)
    with pytest.raises(ConfigError, match="unknown BERTScore featurizer"):
        featurizer("bert")


# ------------------------------------------------------------------------------ the preset
def _paper_graph(tmp_path, monkeypatch) -> dict:
    from experiments.graph import build_graph

    monkeypatch.setenv("ESOLM_CHECKPOINTS", str(tmp_path / "none"))
    return {j.name: j for j in build_graph(P.get("paper-xsum"), tmp_path)}


def test_paper_xsum_graph_imports_the_releases_then_finetunes_each_on_xsum(tmp_path, monkeypatch):
    by = _paper_graph(tmp_path, monkeypatch)
    assert {j.stage for j in by.values()} == {"train", "finetune", "summarize"}
    assert by["train/mdlm owt"].identity["source"] == "hf:kuleshov-group/mdlm-owt"
    assert by["train/esolm-b a0=1 owt"].identity["source"] == "hf:sahoo-diffusion/Eso-LM-B-alpha-1"
    for label, src in (("mdlm xsum", "mdlm owt"), ("esolm-b a0=1 xsum", "esolm-b a0=1 owt")):
        ft, imported = by[f"finetune/{label}"], by[f"train/{src}"]
        assert ft.deps == [imported] and ft.identity["train"]["steps"] == 10_000
        assert ft.config["init_checkpoint"].endswith(f"train/{imported.key}/checkpoint.safetensors")
        assert ft.identity["data"]["name"] == "xsum" and ft.identity["data"]["length"] == 1024


def test_paper_xsum_summarises_the_papers_t_and_more_from_each_finetune(tmp_path, monkeypatch):
    from experiments.presets_xsum import ESO_STEPS, MDLM_STEPS

    summ = [j for j in _paper_graph(tmp_path, monkeypatch).values() if j.stage == "summarize"]
    assert all(j.deps[0].stage == "finetune" and j.config["checkpoint"] == j.deps[0].outputs[0] for j in summ)
    steps = {label: sorted(j.identity["options"]["steps"] for j in summ if j.label == label)
             for label in ("mdlm xsum", "esolm-b a0=1 xsum")}
    assert steps == {"mdlm xsum": list(MDLM_STEPS), "esolm-b a0=1 xsum": list(ESO_STEPS)}
    assert {1, 4, 8} <= set(MDLM_STEPS) and {8, 16, 32} <= set(ESO_STEPS)  # the paper's grid
    assert all(j.identity["featurizer"] == "roberta-large" and j.identity["num_examples"] == 1000 for j in summ)


def test_paper_xsum_offline_fails_at_once_naming_every_missing_piece(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ESOLM_CHECKPOINTS", str(tmp_path / "none"))
    monkeypatch.setenv("ESOLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ESOLM_XSUM", raising=False)
    for command in ("tables", "pareto"):
        rc = run.main([command, "--preset", "paper-xsum", "--cluster", "debug", "--results", str(tmp_path / "r"),
                       "--work", str(tmp_path / "w")])
        err = capsys.readouterr().err
        assert rc == 2, err
        (line,) = [x for x in err.splitlines() if x.startswith("error:")]
        gpu = [] if torch.cuda.is_available() else ["a CUDA GPU"]
        for what in ("hf:kuleshov-group/mdlm-owt", "hf:sahoo-diffusion/Eso-LM-B-alpha-1", "EdinburghNLP/xsum",
                     str(tmp_path / "cache" / "hf" / "xsum"), "roberta-large", *gpu):
            assert what in line, (command, what)
        assert not (tmp_path / "w").exists()  # nothing was submitted


# ------------------------------------------------------------------------------ on stand-ins
def write_release(folder: Path, model: str, length: int = 64) -> Path:
    """A tiny random ``model`` (GPT-2 vocabulary) saved in the authors' Hugging Face layout: config.json
    (model_type, model_length, n_heads) and model.safetensors of backbone.<authors' names>."""
    from safetensors.torch import save_file

    from esolm.importers.dit import _authors_names

    net = registry.build(model, **GPT2, length=length, d_model=32, n_layers=2, n_heads=4, cond_dim=16, dropout=0.0)
    with torch.no_grad():  # adaLN-zero and a zero head give uniform logits: give the stand-in some opinion
        for p in net.backbone.parameters():
            p.add_(0.02 * torch.randn_like(p))
    state = net.backbone.state_dict()
    names = _authors_names(state)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {f"backbone.{names.get(k, k)}": v.contiguous() for k, v in state.items()}
    save_file(weights, str(folder / "model.safetensors"))
    kind = {"mdlm": "mdlm", "esolm-b": "EsoLM"}[model]
    config = dict(model_type=kind, model_length=length, n_heads=4, dropout=0.0, vocab_size=GPT2["vocab_size"],
                  hidden_size=32, cond_dim=16, n_blocks=2, mask_index=GPT2["mask_id"])
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _check_records(results: Path) -> None:
    """The stages' records: two imports, two finetunes of the stand-in's steps, four summarize rows."""
    records = {}
    for path in (results / "records").glob("*/*.json"):
        records.setdefault(path.parent.name, []).append(json.loads(path.read_text()))
    assert sorted(records) == ["finetune", "summarize", "train"] and len(records["summarize"]) == 4
    assert {r["row"]["metrics"]["steps_trained"] for r in records["finetune"]} == {3}
    for r in records["summarize"]:
        m = r["row"]["metrics"]
        assert m["bertscore_f1_lo"] <= m["bertscore_f1"] <= m["bertscore_f1_hi"] and m["num_examples"] == 8
        assert m["sec_per_example"] > 0 and m["nfe"] >= 1 and m["summary_budget"] == 16
        assert len(r["metrics"]["per_example"]["bertscore_f1"]) == 8 and r["examples"]
    eso = [r["row"]["metrics"]["nfe"] for r in records["summarize"] if r["label"].startswith("esolm")]
    assert max(eso) <= 16 + 1  # T steps over the 16 summary slots (and at most one prefill)


def standin_preset(tmp: Path, data_dir: Path):
    """paper-xsum's graph on stand-ins: the releases as tiny random HF folders (Eso-LM's alpha_0 = 1
    from its folder name, as for the hub release), Shakespeare as XSum at L = 64, a few finetune
    steps, MiniLM as the featurizer, no GPU."""
    from experiments.presets_released import ReleasedEntry
    from experiments.presets_xsum import FinetuneEntry, xsum_data, xsum_preset

    mdlm = write_release(tmp / "checkpoints" / "kuleshov-group_mdlm-owt", "mdlm")
    eso = write_release(tmp / "checkpoints" / "sahoo-diffusion_Eso-LM-B-alpha-1", "esolm-b")
    data = xsum_data(64, data_dir=str(data_dir))
    models = [ReleasedEntry("mdlm owt", "mdlm", {}, [], source=str(mdlm)),
              ReleasedEntry("esolm-b a0=1 owt", "esolm-b", {"alpha_0": 1.0}, [], source=str(eso)),
              FinetuneEntry("mdlm xsum", "mdlm", {}, [dict(steps=1), dict(steps=4)], init_from="mdlm owt",
                            finetune_on=data),
              FinetuneEntry("esolm-b a0=1 xsum", "esolm-b", {"alpha_0": 1.0}, [dict(steps=8), dict(steps=16)],
                            init_from="esolm-b a0=1 owt", finetune_on=data)]
    return xsum_preset("xsum-standin", "Table 16's graph on stand-ins", models=models, data=data,
                       summarize=dict(num_examples=8, batch_size=4, warmup=1, rounds=1, featurizer="minilm"),
                       require_gpu=False, threads=1, slurm={"default": dict(time_min=20, cpus_per_task=1)},
                       train=dict(steps=3, batch_size=4, warmup=1, lr=1e-3, ema=0.9, eval_every=3, eval_batches=1,
                                  log_every=1, checkpoint_every=3, precision="fp32", device="cpu"))


@pytest.mark.slow
def test_the_preset_on_standins_imports_finetunes_summarises_and_writes_table16(tmp_path, standin, capsys,
                                                                                  monkeypatch):
    preset = standin_preset(tmp_path, standin)
    monkeypatch.setitem(P.PRESETS, "xsum-standin", lambda: preset)
    rc = run.main(["tables", "--preset", "xsum-standin", "--cluster", "debug", "--results", str(tmp_path / "results"),
                   "--work", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 0, err[-3000:]
    results = tmp_path / "results" / "xsum-standin"
    _check_records(results)
    table = (results / "tables" / "table16_xsum.md").read_text()
    for what in ("Table 16", "BERTScore F1", "paper (XSum, v4 Table 16)", "FLAN-T5-small", "0.42", "0.19", "-0.06",
                 "all-MiniLM-L6-v2"):
        assert what in table, what
    csv = (results / "tables" / "table16_xsum.csv").read_text().splitlines()
    assert len(csv) == 1 + 4 + 1  # header, our four configurations, the paper's reference
