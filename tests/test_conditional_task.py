"""The CPU conditional task (esolm/metrics/conditional.py, issue 27 item 3): the forms, chrF,
the judges' conditional NLL against the truth's, intervals, the skip note, and the stage in the
pipeline's graph and analysis."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from esolm.config import ConfigError
from esolm.interface import SampleOutput
from esolm.metrics import conditional as C

L = 32


@pytest.fixture(scope="module")
def corpus():
    from esolm.data import load_corpus

    return load_corpus("shakespeare", length=L, vocab_size=258)  # byte-level, as the CPU presets


@pytest.fixture(scope="module")
def judges(corpus):
    from esolm.metrics.evaluators import load_evaluator

    return {"": load_evaluator("ngram:3", corpus=corpus), "_judge2": load_evaluator("ngram:2", corpus=corpus)}


class TableModel:
    """A stand-in sampler: each row's free positions come from ``fill(given, generator)``; the
    copy model looks the row up among the held-out rows (the perfect completion)."""

    def __init__(self, corpus, fill, forms=("prefix", "infill"), name="table"):
        t = corpus.tokenizer
        self.config = SimpleNamespace(mask_id=t.mask_id, length=corpus.length, vocab_size=t.vocab_size)
        self.forms, self.fill, self.name, self.calls = forms, fill, name, []
        self.device = torch.device("cpu")

    def capabilities_for(self, config):
        return SimpleNamespace(conditioning=self.forms)

    def sample(self, n, *, generator=None, given=None, **options):
        self.calls.append((n, dict(options)))
        assert len(given.mask) == n and not bool((given.tokens[~given.mask] != self.config.mask_id).any())
        return SampleOutput(given.place(self.fill(given, generator)), nfe=3, seconds=0.0)


def copy_model(corpus, **kw):
    rows = corpus.splits["test"]

    def fill(given, generator):
        agree = ((rows[None] == given.tokens[:, None]) | ~given.mask[:, None]).all(-1)  # [n, N] rows that fit
        return rows[agree.float().argmax(1)]
    return TableModel(corpus, fill, name="copy", **kw)


def noisy_model(corpus, **kw):
    def fill(given, generator):
        return torch.randint(32, 127, given.tokens.shape, generator=generator)  # printable bytes
    return TableModel(corpus, fill, name="noisy", **kw)


# ------------------------------------------------------------------------------ the forms
def test_prefix_frees_the_second_half_and_infill_the_middle_quarter():
    assert C.free_positions("prefix", 32).nonzero().flatten().tolist() == list(range(16, 32))
    assert C.free_positions("infill", 32).nonzero().flatten().tolist() == list(range(12, 20))
    assert C.free_positions("infill", 128).nonzero().flatten().tolist() == list(range(48, 80))
    with pytest.raises(ConfigError, match="unknown conditional form 'suffix'"):
        C.free_positions("suffix", 32)


def test_the_given_tokens_hide_the_free_truth(corpus):
    truth = C.passages(corpus, 4)
    free = C.free_positions("infill", L)
    g = C.task_given(truth, free, corpus.tokenizer.mask_id)
    assert g.form == "infill" and torch.equal(g.mask[0], ~free)
    assert bool((g.tokens[:, free] == corpus.tokenizer.mask_id).all()) and torch.equal(g.tokens[:, ~free], truth[:, ~free])
    assert C.task_given(truth, C.free_positions("prefix", L), 0).form == "prefix"


def test_passages_spread_over_the_test_split_and_refuse_too_many(corpus):
    test = corpus.splits["test"]
    rows = C.passages(corpus, 3)
    assert torch.equal(rows[0], test[0]) and torch.equal(rows[-1], test[-1])
    with pytest.raises(ConfigError, match="num_examples"):
        C.passages(corpus, len(test) + 1)


# ------------------------------------------------------------------------------------ chrF
def test_chrf_matches_hand_computed_values():
    # "ab" vs "abc": n=1 P=2/2 R=2/3, n=2 P=1/1 R=1/2, n>=3 none in "ab": P=1, R=7/12
    # F2 = 5 P R / (4 P + R) = (35/12) / (55/12) = 7/11
    assert C.chrf("ab", "abc") == pytest.approx(100 * 7 / 11)
    # whitespace is removed; "aab" vs "ab": n=1 clipped match 2 of 3 (P=2/3, R=1), n=2 {aa, ab} vs {ab}: P=1/2, R=1
    # P = 7/12, R = 1: F2 = 5 (7/12) / (4 (7/12) + 1) = (35/12) / (40/12) = 7/8
    assert C.chrf("a a b", "ab") == pytest.approx(100 * 7 / 8)
    assert C.chrf("xyz", "abc") == 0.0
    assert C.chrf("", "") == 100.0 and C.chrf("", "abc") == 0.0 and C.chrf(" ", "abc") == 0.0
    # recall weighs beta^2 = 4 times precision: a short exact piece of the reference scores low
    assert C.chrf("abcdef", "abcdefghijkl") < C.chrf("abcdefghijkl", "abcdef")


def test_chrf_equals_sacrebleus_sentence_chrf():
    sacrebleu = pytest.importorskip("sacrebleu")
    rng = np.random.default_rng(0)
    alphabet = list("abcde fgh")
    for _ in range(30):
        hyp = "".join(rng.choice(alphabet, rng.integers(1, 30)))
        ref = "".join(rng.choice(alphabet, rng.integers(1, 30)))
        if not hyp.split() or not ref.split():
            continue
        theirs = sacrebleu.sentence_chrf(hyp, [ref]).score
        assert C.chrf(hyp, ref) == pytest.approx(theirs, abs=1e-9), (hyp, ref)


def test_identical_completions_score_token_match_1_and_chrf_100(corpus, judges):
    truth = C.passages(corpus, 6)
    for form in ("prefix", "infill"):
        out = C.score(truth.clone(), truth, C.free_positions(form, L), corpus.tokenizer, judges)["metrics"]
        assert out["token_match"] == 1.0 and out["chrf"] == 100.0
        assert out["cond_nll"] == out["ref_nll"] and out["cond_nll_judge2"] == out["ref_nll_judge2"]


# ------------------------------------------------------------------------------ the judges
class FixedJudge:
    """A judge whose log-probability of target j + 1 is -(j + 1): the NLL of a span is a known sum."""

    name, eos_id, max_length, tokenizer_name = "fixed", None, None, "t"

    def __init__(self, fingerprint):
        self.tokenizer_fingerprint = fingerprint

    def token_logprobs(self, ids, attention):
        return -torch.arange(1, ids.shape[1], dtype=torch.float64).expand(ids.shape[0], -1)


def test_the_judge_scores_from_the_first_free_position_to_the_end(corpus):
    judge, rows = FixedJudge(corpus.tokenizer.fingerprint), C.passages(corpus, 2)
    nll, count = C.judge_nll(judge, rows, C.free_positions("prefix", L))
    assert count.tolist() == [16, 16] and nll[0] == sum(range(16, 32))
    nll, count = C.judge_nll(judge, rows, C.free_positions("infill", L))  # the free middle and the suffix after it
    assert count.tolist() == [20, 20] and nll[1] == sum(range(12, 32))


def test_a_judge_of_another_tokenizer_is_refused(corpus):
    with pytest.raises(ConfigError, match="position by position"):
        C.check_judge(FixedJudge("another"), corpus.tokenizer, L)


# ------------------------------------------------------------------------------- run_form
def test_a_perfect_copy_scores_the_reference_level(corpus, judges):
    model = copy_model(corpus)
    for form in ("prefix", "infill"):
        out = C.run_form(model, corpus, judges, form=form, num_examples=8, batch_size=4, options=dict(steps=5))
        m = out["metrics"]
        assert out["skipped"] is None and m["cond_nll"] == m["ref_nll"] and m["cond_nll_judge2"] == m["ref_nll_judge2"]
        assert m["token_match"] == 1.0 and m["chrf"] == 100.0 and m["num_examples"] == 8
    assert {o["steps"] for _, o in model.calls} == {5}  # the model's own sampler options


def test_every_interval_contains_its_point_estimate(corpus, judges):
    out = C.run_form(noisy_model(corpus), corpus, judges, form="infill", num_examples=12, batch_size=4,
                     options={}, rounds=2)
    m = out["metrics"]
    names = [k[:-3] for k in m if k.endswith("_lo")]
    assert set(names) >= {"cond_nll", "ref_nll", "cond_nll_judge2", "ref_nll_judge2", "chrf", "token_match",
                          "dist_sim", "sec_per_example"}
    for name in names:
        assert m[f"{name}_lo"] <= m[name] <= m[f"{name}_hi"], name
    assert m["cond_nll_lo"] < m["cond_nll_hi"]  # noisy completions: a real spread
    assert m["cond_nll"] > m["ref_nll"] and m["token_match"] < 0.2 and m["chrf"] < 50
    assert m["timed_calls"] == 6 and len(out["per_example"]["seconds"]) == 6 and m["sec_per_example"] >= 0


def test_the_completions_depend_on_the_seed_only(corpus, judges):
    truth, free = C.passages(corpus, 8), C.free_positions("prefix", L)
    a = C.complete(noisy_model(corpus), truth, free, options={}, batch_size=4, seed=3, rounds=1)
    b = C.complete(noisy_model(corpus), truth, free, options={}, batch_size=4, seed=3, rounds=3, warmup=2)
    c = C.complete(noisy_model(corpus), truth, free, options={}, batch_size=4, seed=4)
    assert torch.equal(a["tokens"], b["tokens"]) and not torch.equal(a["tokens"], c["tokens"])
    assert torch.equal(a["tokens"][:, ~free], truth[:, ~free])


def test_a_model_without_the_infill_form_is_skipped_with_a_note(corpus, judges):
    model = copy_model(corpus, forms=("prefix",))
    out = C.run_form(model, corpus, judges, form="infill", num_examples=4, batch_size=4, options={})
    assert out["metrics"] == {} and not model.calls
    assert "skipped for the infill form" in out["skipped"] and "prefix" in out["skipped"]
    assert C.run_form(model, corpus, judges, form="prefix", num_examples=4, batch_size=4, options={})["skipped"] is None


def test_real_samplers_keep_the_given_tokens(corpus, judges):
    """AR (prefix only) and MDLM, untrained, through their own conditional samplers."""
    from esolm import registry

    fields = dict(corpus.model_fields(), d_model=32, n_layers=1, n_heads=2, cond_dim=16)
    for name, forms in (("ar", ("prefix",)), ("mdlm", ("prefix", "infill"))):
        model = registry.build(name, **fields).eval()
        for form in ("prefix", "infill"):
            out = C.run_form(model, corpus, judges, form=form, num_examples=4, batch_size=2, options=dict(steps=8))
            if form not in forms:
                assert "skipped" in out["skipped"]
                continue
            m = out["metrics"]
            assert math.isfinite(m["cond_nll"]) and m["nfe"] >= 1 and m["sec_per_example"] > 0
            assert out["examples"][0]["given"].count("[MASK]") == int(C.free_positions(form, L).sum())


# ---------------------------------------------------------------------------- the stage
def test_the_stage_has_a_job_per_entry_and_form_and_leaves_the_other_jobs_keys(tmp_path):
    from experiments import graph as G
    from experiments import presets as P
    from experiments.lanes import WAVES

    assert WAVES[-1] == ["conditional"]
    smoke = P.get("smoke")
    jobs = {j.name: j for j in G.build_graph(smoke, tmp_path)}
    cond = {n: j for n, j in jobs.items() if j.stage == "conditional"}
    swept = [m.label for m in smoke.models if m.sweep]
    assert set(cond) == {f"conditional/{label}/{form}" for label in swept for form in ("prefix", "infill")}
    skip = cond["conditional/ar/infill"]
    assert "skipped for the infill form" in skip.config["skipped"] and not skip.deps
    run = cond["conditional/mdlm/infill"]
    assert run.identity["num_examples"] == 4 and run.identity["options"] == {"steps": 1_000_000}  # its NFE = L options
    assert {d.name for d in run.deps} == {"train/mdlm", "train/evaluator-2"} and "evaluator2" in run.config
    tiny = P.get("tiny")  # its quickstart stays short: no task
    assert tiny.conditional is None and all(m.conditional is None for m in tiny.models)
    cpu = P.get("cpu")  # every entry with a sweep joins (AR too: its infill row says why it is skipped)
    assert cpu.conditional["num_examples"] == 32 and cpu.conditional["batch_size"] == 16
    assert {m.label: m.conditional for m in cpu.models if m.conditional is not None} == {
        **{m.label: {} for m in cpu.models if m.sweep and m.model != "esolm-a"}, "esolm-a a0=0.25": {"steps": 128}}
    # the task adds jobs and changes no other job's key
    plain = P.get("smoke")
    plain.conditional = None
    assert {j.name: j.key for j in G.build_graph(plain, tmp_path)} == {n: j.key for n, j in jobs.items()
                                                                        if j.stage != "conditional"}


def test_unknown_task_settings_are_refused(tmp_path):
    from experiments import graph as G
    from experiments import presets as P

    preset = P.get("smoke")
    preset.conditional = dict(preset.conditional, examples=3)
    with pytest.raises(ConfigError, match="unknown conditional setting"):
        G.build_graph(preset, tmp_path)
    preset.conditional = dict(forms=["suffix"])
    with pytest.raises(ConfigError, match="unknown conditional form"):
        G.build_graph(preset, tmp_path)


def test_a_skipped_form_writes_a_record_with_its_note(tmp_path):
    import json

    from experiments import graph as G
    from experiments import jobs as J
    from experiments import presets as P

    job = next(j for j in G.build_graph(P.get("smoke"), tmp_path / "work") if j.name == "conditional/ar/infill")
    record = J.JOB_FUNCTIONS["conditional"](job.payload("smoke", tmp_path / "res", tmp_path / "work", 1))
    row = json.loads(G.record_path(tmp_path / "res", job).read_text())["row"]
    assert record["row"] == row and row["metrics"] == {} and "infill" in row["config"]["skipped"]
    assert row["display"]["label"] == "AR"


def _store(tmp_path):
    """A hand-made store of conditional rows: two methods, two forms, AR's infill skipped."""
    import dataclasses
    import json

    from analysis import schema as X
    from esolm import registry

    def display(model):
        return dataclasses.asdict(registry.model_class(model).display(registry.build_config(model)))

    rows = []
    for i, (label, group, model) in enumerate((("ar", "AR", "ar"), ("mdlm", "MDLM", "mdlm"))):
        for form in ("prefix", "infill"):
            config = dict(stage="conditional", label=label, group=group, model=model, form=form)
            if model == "ar" and form == "infill":
                rows.append(dict(config=dict(config, skipped="AR is skipped for the infill form: ..."), metrics={},
                                 display=display(model), name=f"conditional/{label}/{form}", stale=False))
                continue
            v = 2.0 + i + (form == "infill")
            metrics = dict(cond_nll=v, cond_nll_lo=v - 0.1, cond_nll_hi=v + 0.1, ref_nll=1.5, ref_nll_lo=1.4,
                           ref_nll_hi=1.6, chrf=30.0 + i, chrf_lo=28.0, chrf_hi=33.0, token_match=0.1, nfe=8.0,
                           sec_per_example=0.01 * (i + 1), sec_per_example_lo=0.009, sec_per_example_hi=0.03,
                           num_examples=4, timed_calls=2)
            rows.append(dict(config=dict(config, evaluator="KN 8-gram on shakespeare", top_p=0.9, batch_size=2,
                                         rounds=1),
                             options=dict(steps=8), metrics=metrics, display=display(model),
                             name=f"conditional/{label}/{form}", stale=False))
    store = tmp_path / "store"
    store.mkdir()
    X.frame(rows).to_csv(store / "results.csv", index=False)
    (store / "summary.json").write_text(json.dumps(dict(preset="smoke", corpus="shakespeare", data=dict(length=32))))
    return store


def test_the_table_and_figure_name_every_method_and_the_skipped_form(tmp_path):
    from analysis.conditional import write_conditional
    from analysis.pareto import draw_pareto
    from analysis.tables import write_tables

    store = _store(tmp_path)
    paths = write_conditional(store)
    assert {p.name for p in paths} == {"conditional.md", "conditional.tex", "conditional.csv",
                                       "pareto_conditional.png", "pareto_conditional.pdf"}
    md = (store / "tables" / "conditional.md").read_text()
    lines = [line for line in md.splitlines() if line.startswith("| ") and ("AR" in line or "MDLM" in line)]
    assert [(line.split("|")[1].strip(), line.split("|")[2].strip()) for line in lines] == [
        ("AR", "prefix"), ("MDLM", "prefix"), ("MDLM", "infill")]
    assert "2.000 [1.900, 2.100]" in md and "Not run: AR (infill): AR is skipped for the infill form" in md
    assert all(p.stat().st_size > 0 for p in paths)
    # the commands' own entries write them too
    assert "conditional.md" in {p.name for p in write_tables(store)}
    assert "pareto_conditional.png" in {p.name for p in draw_pareto(store)}
