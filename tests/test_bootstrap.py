"""Bootstrap intervals (issue 25: uncertainty on every number): the percentile bootstrap covers
the truth about 95 % of the time, keeps paired rows together, is reproducible from its seed,
and reaches evaluate(), the results schema and every table."""
from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
import torch

from analysis import schema as X
from analysis import store as S
from analysis.tables import build_tables
from esolm import registry
from esolm.config import ConfigError
from esolm.data import load_corpus
from esolm.metrics import bootstrap as bs
from esolm.evaluate import evaluate
from esolm.metrics.bootstrap import (bootstrap_interval, interval_fields, mean_interval, median_interval,
                                     ppl_interval, ratio_interval)
from test_analysis import write_store


# ------------------------------------------------------------------------------ the method
def test_the_95_percent_interval_of_a_mean_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(123)
    hits = 0
    for _ in range(200):
        lo, hi = mean_interval(rng.normal(3.0, 2.0, size=60))
        hits += lo <= 3.0 <= hi
    assert 0.9 <= hits / 200 <= 0.99, hits


def test_the_perplexity_interval_covers_the_population_perplexity_about_95_percent_of_the_time():
    """Sequences of varying length resampled whole: the ratio estimator's interval still covers."""
    rng = np.random.default_rng(7)
    truth = math.exp(2.0)  # every token's NLL has mean 2 nats
    hits = 0
    for _ in range(200):
        count = rng.integers(5, 60, size=80)
        nll = np.array([rng.exponential(2.0, size=c).sum() for c in count])
        lo, hi = ppl_interval(nll, count)
        hits += lo <= truth <= hi
    assert 0.9 <= hits / 200 <= 0.99, hits


def test_rows_are_resampled_jointly_so_a_ratio_of_paired_data_is_tight():
    """Trial i of two interleaved methods shares its slow spell: the paired ratio's interval is
    narrow, and breaking the pairing (shuffling one method's trials) widens it many times."""
    rng = np.random.default_rng(0)
    spell = rng.lognormal(0.0, 0.5, size=40)  # the machine's speed in each round
    den = spell
    num = 2.0 * spell * (1 + 0.01 * rng.standard_normal(40))
    lo, hi = ratio_interval(num, den)
    assert lo <= 2.0 <= hi or abs(lo - 2.0) < 0.01
    shuffled = ratio_interval(rng.permutation(num), den)
    assert (hi - lo) * 10 < shuffled[1] - shuffled[0]
    assert ratio_interval(2.0 * den, den) == pytest.approx((2.0, 2.0), abs=1e-12)  # exactly proportional


def test_the_perplexity_interval_keeps_each_sequences_nll_with_its_own_token_count():
    nll = np.array([10.0, 200.0, 12.0, 190.0])
    count = np.array([5, 100, 6, 95])  # 2 nats per token in every sequence
    assert ppl_interval(nll, count) == pytest.approx((math.exp(2.0), math.exp(2.0)))


def test_the_same_seed_gives_the_same_interval_and_another_seed_another():
    x = np.random.default_rng(1).normal(size=100)
    assert mean_interval(x, seed=5) == mean_interval(x, seed=5)
    assert mean_interval(x, seed=5) != mean_interval(x, seed=6)
    assert median_interval(x) == median_interval(list(x))


def test_degenerate_data_give_the_point_and_empty_or_bad_data_a_config_error():
    assert mean_interval([4.5]) == (4.5, 4.5)
    assert median_interval([0.3, 0.3, 0.3]) == (0.3, 0.3)
    assert ppl_interval([6.0, 6.0], [3, 3]) == (math.exp(2.0), math.exp(2.0))
    with pytest.raises(ConfigError, match="no items"):
        mean_interval([])
    with pytest.raises(ConfigError, match="one length"):
        ppl_interval([1.0, 2.0], [1])
    with pytest.raises(ConfigError, match="non-finite"):
        mean_interval([1.0, float("nan")])
    with pytest.raises(ConfigError, match="level"):
        mean_interval([1.0, 2.0], level=1.5)


def test_the_interval_lies_around_the_point_and_narrows_with_more_data():
    rng = np.random.default_rng(2)
    small, large = rng.normal(size=30), rng.normal(size=3000)
    lo, hi = mean_interval(small)
    assert lo < small.mean() < hi
    lo2, hi2 = mean_interval(large)
    assert hi2 - lo2 < (hi - lo) / 5


def test_a_thousand_draws_over_1024_sequences_take_well_under_a_second():
    rng = np.random.default_rng(3)
    nll, count = rng.gamma(5.0, 20.0, size=1024), np.full(1024, 128)
    ppl_interval(nll, count)  # warm
    t0 = time.perf_counter()
    ppl_interval(nll, count)
    assert time.perf_counter() - t0 < 0.5


def test_a_custom_statistic_gets_the_resampled_rows_with_a_leading_draw_axis():
    shapes = []

    def stat(a):
        shapes.append(a.shape)
        return a.max(axis=1)

    bootstrap_interval(stat, np.arange(10.0), draws=7)
    assert shapes == [(1, 10), (7, 10)]
    assert interval_fields("ppl", (1.0, 2.0)) == {"ppl_lo": 1.0, "ppl_hi": 2.0}
    assert interval_fields("ppl", None) == {"ppl_lo": None, "ppl_hi": None}


# --------------------------------------------------------------------------- evaluate()
@pytest.mark.parametrize("name,exact", [("mdlm", False), ("ar", True)])
def test_evaluate_returns_per_sequence_arrays_whose_token_weighted_total_is_its_nll(name, exact):
    corpus = load_corpus("synthetic", length=16)
    torch.manual_seed(0)
    model = registry.build(name, preset="smoke", **corpus.model_fields())
    r = evaluate(model, corpus, "test", batch_size=8, max_batches=3, exact=exact, progress=False)
    nll, tokens = r["per_sequence_nll"], r["per_sequence_tokens"]
    assert len(nll) == len(tokens) == r["num_sequences"] == 24
    assert all(isinstance(v, float) for v in nll) and all(isinstance(v, int) for v in tokens)
    assert sum(tokens) == r["num_tokens"]
    assert sum(nll) / sum(tokens) == pytest.approx(r["nll_per_token"], rel=1e-12)
    lo, hi = ppl_interval(nll, tokens)
    assert lo <= r["ppl"] <= hi


# ------------------------------------------------------------------- schema and tables
def _with_intervals(folder):
    """The hand-made store with a gen PPL and a time interval on every sweep row, a PPL interval
    on every eval row."""
    df = pd.read_csv(folder / "results.csv")
    for m in ("gen_ppl", "time_median_s", "ppl"):
        v = df[f"metrics.{m}"]
        df[f"metrics.{m}_lo"], df[f"metrics.{m}_hi"] = v * 0.9, v * 1.1
    df.to_csv(folder / "results.csv", index=False)
    return folder


def test_the_schema_finds_an_interval_where_there_is_one_and_nan_where_there_is_none(tmp_path):
    bare = write_store(tmp_path / "bare")
    points = S.speed_quality(S.load_results(bare))
    lo, hi = X.interval(points, "gen_ppl")
    assert lo.isna().all() and hi.isna().all() and not X.has_interval(points, "gen_ppl")
    points = S.speed_quality(S.load_results(_with_intervals(tmp_path / "bare")))
    lo, hi = X.interval(points, "gen_ppl")
    assert (lo == points["gen_ppl"] * 0.9).all() and (hi == points["gen_ppl"] * 1.1).all()
    lo, hi = X.interval(points, "time_median_s")  # from the time row, through the join
    timed = points["time_median_s"].notna()
    assert (lo[timed] == points["time_median_s"][timed] * 0.9).all() and lo[~timed].isna().all()
    assert {m.name for m in X.METRICS if m.interval} >= {"gen_ppl", "entropy", "time_median_s"}


def test_a_time_rows_interval_follows_its_metric_through_the_timed_suffix():
    sample = X.frame([dict(config=dict(stage="sample", label="a"), options=dict(steps=8),
                           metrics=dict(nfe=8.0), display={})]).assign(stale=False)
    time_ = X.frame([dict(config=dict(stage="time", label="a"), options=dict(steps=8),
                          metrics=dict(nfe=9.0, nfe_lo=8.5, nfe_hi=9.5, time_median_s=1.0), display={})]
                    ).assign(stale=False)
    out = X.join_time(sample, time_)
    assert out[["metrics.nfe", "metrics.nfe_timed", "metrics.nfe_timed_lo", "metrics.nfe_timed_hi"]].iloc[0].tolist() \
        == [8.0, 9.0, 8.5, 9.5]


def test_tables_show_x_lo_hi_where_intervals_exist_and_just_x_otherwise(tmp_path):
    plain = {t.name: t for t in build_tables(write_store(tmp_path / "a"))}
    shown = {t.name: t for t in build_tables(_with_intervals(write_store(tmp_path / "b")))}
    assert "| MDLM | 128 | 1 | 81.0 | 100.00 |" in plain["table14_mdlm"].markdown()
    assert "gen_ppl_lo" not in plain["table14_mdlm"].data.columns
    assert not any("[" in c for t in plain.values() for r in t.cells() for c in r)
    md = shown["table14_mdlm"].markdown()
    assert "| MDLM | 128 | 1 | 81.0 | 100.00 [90.00, 110.00] |" in md
    assert "0.8 [0.72, 0.88]" in md  # time (s): the same format for the value and both ends
    data = shown["table14_mdlm"].data.set_index("steps")
    assert (data.loc[128, "gen_ppl_lo"], data.loc[128, "gen_ppl_hi"]) == pytest.approx((90.0, 110.0))
    assert pd.isna(data.loc[512, "time_median_s_lo"])  # no time row: no interval, the cell a blank
    t1 = shown["table1_test_ppl"]
    assert "80.00 [72.00, 88.00]" in t1.markdown() and r"80.00 [72.00, 88.00]" in t1.latex()
    assert t1.data.set_index("label").loc["esolm-b a0=1", "nelbo_split_ppl_lo"] == pytest.approx(81.0)
    assert "85.00 [76.50, 93.50]" in shown["table6-8_iw_vs_k"].markdown()


# --------------------------------------------------------------------------- the jobs
def test_eval_time_and_longctx_records_carry_intervals_and_the_values_they_resample(tmp_path, monkeypatch):
    """job_eval: ppl_lo/hi (and nelbo_ppl_lo/hi on an exact row) around the point, the record
    keeping the per-sequence arrays; job_time: time_mean_s / time_median_s intervals over its
    trials; job_longctx: time_mean_s_lo/hi per method and each method's trials, paired by round."""
    import esolm.checkpoint as ck
    from esolm import runs as R
    from experiments import jobs
    from experiments.graph import build_graph
    from test_pipeline import micro

    preset = micro()
    preset.run.timing = R.Timing(batch_size=2, trials=3, warmup=0, wall=False)
    preset.run.long_context = R.LongContext(lengths=[16], trials=3, warmup=0, profile=False)
    graph = build_graph(preset, tmp_path / "work", "code1")
    corpus = load_corpus("synthetic", length=16)
    torch.manual_seed(0)
    model = registry.build("ar", preset="smoke", **corpus.model_fields()).eval()
    with torch.no_grad():  # an untrained AR gives every sequence the same NLL (a degenerate interval)
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    monkeypatch.setattr(ck, "load_model", lambda path: (model, dict(corpus=corpus.spec())))
    payload = lambda name: next(j for j in graph if j.name == name).payload(  # noqa: E731
        "micro", tmp_path / "results", tmp_path / "work", 1)

    rec = jobs.job_eval(payload("eval/ar/exact K=1"))
    m = rec["row"]["metrics"]
    assert m["ppl_lo"] <= m["ppl"] <= m["ppl_hi"] and m["ppl_lo"] < m["ppl_hi"]
    assert m["nelbo_ppl_lo"] <= m["nelbo_ppl"] <= m["nelbo_ppl_hi"]
    assert len(rec["metrics"]["per_sequence_nll"]) == len(rec["metrics"]["nelbo"]["per_sequence_tokens"]) == 8
    assert (m["ppl_lo"], m["ppl_hi"]) == ppl_interval(rec["metrics"]["per_sequence_nll"],
                                                       rec["metrics"]["per_sequence_tokens"])

    m = jobs.job_time(payload("time/ar/steps=15"))["row"]["metrics"]
    assert m["time_mean_s_lo"] <= m["time_mean_s"] <= m["time_mean_s_hi"]
    assert m["time_median_s_lo"] <= m["time_median_s"] <= m["time_median_s_hi"]
    assert m.get("wall_median_s_lo") is None  # the preset times network passes only

    (lc,) = [j for j in graph if j.stage == "longctx"]
    rec = jobs.job_longctx(lc.payload("micro", tmp_path / "results", tmp_path / "work", 1))
    for row in rec["rows"]:
        trials = rec["metrics"]["methods"][row["name"]]["wall"]["trials"]
        assert len(trials) == 3 and row["config"]["rounds"] == 3
        assert (row["metrics"]["time_mean_s_lo"], row["metrics"]["time_mean_s_hi"]) == mean_interval(trials)
        assert [float(v) for v in row["metrics"]["time_trials"].split()] == pytest.approx(trials, rel=1e-5)
    preset.run.long_context = R.LongContext(lengths=[16], trials=2, max_trials=4, target=1e-9, warmup=0, profile=False)
    (lc,) = [j for j in build_graph(preset, tmp_path / "work", "code1") if j.stage == "longctx"]
    rec = jobs.job_longctx(lc.payload("micro", tmp_path / "results", tmp_path / "work", 1))
    assert rec["metrics"]["rounds"] == 4 and rec["metrics"]["met"] is False  # the target unmet at the cap


def test_paired_ratio_widths_give_every_pair_the_interval_of_ratio_interval():
    rng = np.random.default_rng(3)
    series = {f"c{i}": list(rng.uniform(1.0, 1.3, 12) * (i + 1)) for i in range(5)}
    widths = bs.paired_ratio_widths(series)
    assert len(widths) == 10
    for (a, b), w in widths.items():
        lo, hi = bs.ratio_interval(series[a], series[b])
        r = np.mean(series[a]) / np.mean(series[b])
        assert w == pytest.approx((hi - lo) / 2 / r, rel=1e-6)  # quantiles interpolated on logs
    with pytest.raises(ConfigError, match="time <= 0"):
        bs.paired_ratio_widths(dict(a=[1.0, 0.0], b=[1.0, 1.0]))
    assert bs.paired_ratio_widths(dict(a=[1.0, 2.0])) == {}


def test_interleaved_rounds_go_on_until_every_paired_ratio_is_within_the_target():
    """experiments.jobs._rounds: rotated order; with a target, from `least` rounds until the widest
    paired ratio interval is within it (or `most`); without one, exactly `least` rounds. A slow
    spell shared by both methods does not widen the paired ratio."""
    from experiments.jobs import _rounds

    rng = np.random.default_rng(0)
    order = []

    def once(name, scale):
        order.append(name)
        return scale * (1.0 + 0.3 * rng.random())  # independent noise: the ratio needs rounds

    noisy = _rounds([("a", 1.0), ("b", 2.0)], once, 3, 40, 0.05)
    assert 3 < noisy["rounds"] <= 40 and noisy["met"] == (noisy["widest"] <= 0.05)
    assert noisy["pair"] == ["a", "b"] and len(noisy["secs"]["a"]) == noisy["rounds"]
    assert order[:4] == ["a", "b", "b", "a"]  # the order rotated from round to round
    spell = iter([1.0, 1.0, 3.0, 3.0, 1.0, 1.0, 2.0, 2.0] * 10)
    shared = _rounds([("a", 1.0), ("b", 2.0)], lambda n, s: s * next(spell), 4, 40, 0.05)
    assert shared["rounds"] == 4 and shared["widest"] == pytest.approx(0.0, abs=1e-12) and shared["met"]
    fixed = _rounds([("a", 1.0), ("b", 2.0)], once, 3, 40, None)
    assert fixed["rounds"] == 3 and fixed["met"] is None and fixed["widest"] > 0
    capped = _rounds([("a", 1.0), ("b", 2.0)], once, 2, 3, 1e-6)
    assert capped["rounds"] == 3 and capped["met"] is False
