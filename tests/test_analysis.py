"""The analysis layer: the Pareto frontier on a hand-made set, tables that carry the store's
numbers and the paper's, figures and notebooks drawn from a store without re-running anything,
and the paper anchors file checked against the spec's text (spec 8.5, 10)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import anchors as A
from analysis import pareto
from analysis import schema as X
from analysis import store as S
from analysis.nfe import draw_nfe
from analysis.pareto import collapsed, draw_pareto, frontier, pareto_front
from analysis.tables import build_tables, write_tables
from esolm import registry
from esolm.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
L = 128

# ---------------------------------------------------------------------- a hand-made store
# (label, group, model, overrides, options, sample metrics, time_median_s); None: no time row
SWEEP = [
    ("ar", "AR", "ar", {}, dict(steps=127), dict(nfe=127, gen_ppl=60.0, entropy=4.2, mauve=0.50), 0.25),
    ("mdlm", "MDLM", "mdlm", {}, dict(steps=8), dict(nfe=8, gen_ppl=200.0, entropy=4.1, mauve=0.05), 0.05),
    ("mdlm", "MDLM", "mdlm", {}, dict(steps=16), dict(nfe=16, gen_ppl=210.0, entropy=4.1, mauve=0.04), 0.10),
    ("mdlm", "MDLM", "mdlm", {}, dict(steps=64), dict(nfe=50, gen_ppl=130.0, entropy=4.1, mauve=0.20), 0.40),
    ("mdlm", "MDLM", "mdlm", {}, dict(steps=128), dict(nfe=81, gen_ppl=100.0, entropy=4.1, mauve=0.30), 0.80),
    ("mdlm", "MDLM", "mdlm", {}, dict(steps=512), dict(nfe=115, gen_ppl=95.0, entropy=4.1, mauve=0.31), None),
    ("bd3lm L'=4", "BD3-LM L'=4", "bd3lm", dict(block_size=4), dict(steps=32),
     dict(nfe=63, gen_ppl=300.0, entropy=3.0, mauve=0.01), 0.20),
    ("bd3lm L'=4", "BD3-LM L'=4", "bd3lm", dict(block_size=4), dict(steps=128),
     dict(nfe=120, gen_ppl=250.0, entropy=4.0, mauve=0.02), 0.30),
    ("esolm-b a0=1", "Eso-LM (B)", "esolm-b", dict(alpha_0=1.0), dict(steps=8, alpha_0_eval=1.0),
     dict(nfe=8, gen_ppl=120.0, entropy=4.1, mauve=0.10), 0.10),
    ("esolm-b a0=1", "Eso-LM (B)", "esolm-b", dict(alpha_0=1.0), dict(steps=32, alpha_0_eval=1.0),
     dict(nfe=28, gen_ppl=80.0, entropy=4.1, mauve=0.30), 0.30),
    ("esolm-b a0=1", "Eso-LM (B)", "esolm-b", dict(alpha_0=1.0), dict(steps=8, alpha_0_eval=0.25),
     dict(nfe=100, gen_ppl=90.0, entropy=4.1, mauve=0.20), 0.50),
    ("esolm-b a0=0.25", "Eso-LM (B)", "esolm-b", dict(alpha_0=0.25), dict(steps=8, alpha_0_eval=1.0),
     dict(nfe=8, gen_ppl=150.0, entropy=4.1, mauve=0.05), 0.20),
    ("esolm-b a0=0.25", "Eso-LM (B)", "esolm-b", dict(alpha_0=0.25), dict(steps=8, alpha_0_eval=0.25),
     dict(nfe=100, gen_ppl=40.0, entropy=3.5, mauve=0.25), 0.60),
]
EVAL = [  # (label, group, model, overrides, exact, K, ppl)
    ("ar", "AR", "ar", {}, False, None, 50.0), ("ar", "AR", "ar", {}, True, 1, 50.5),
    ("mdlm", "MDLM", "mdlm", {}, False, None, 70.0), ("mdlm", "MDLM", "mdlm", {}, True, 1, 68.0),
    ("bd3lm L'=4", "BD3-LM L'=4", "bd3lm", dict(block_size=4), False, None, 60.0),
    ("esolm-b a0=1", "Eso-LM (B)", "esolm-b", dict(alpha_0=1.0), False, None, 90.0),
    ("esolm-b a0=1", "Eso-LM (B)", "esolm-b", dict(alpha_0=1.0), True, 1, 85.0),
    ("esolm-b a0=1", "Eso-LM (B)", "esolm-b", dict(alpha_0=1.0), True, 10, 80.0),
    ("esolm-b a0=0.25", "Eso-LM (B)", "esolm-b", dict(alpha_0=0.25), False, None, 65.0),
    ("esolm-b a0=0.25", "Eso-LM (B)", "esolm-b", dict(alpha_0=0.25), True, 1, 62.0),
    ("esolm-b a0=0.25", "Eso-LM (B)", "esolm-b", dict(alpha_0=0.25), True, 10, 60.0),
    ("evaluator", "evaluator", "ar", {}, False, None, 40.0),
]
LONGCTX = [  # (group, model, overrides, kv_cache, mean seconds)
    ("AR", "ar", {}, True, 0.5), ("AR", "ar", {}, False, 0.7), ("MDLM", "mdlm", {}, False, 4.0),
    ("BD3-LM L'=4", "bd3lm", dict(block_size=4), True, 1.0), ("BD3-LM L'=4", "bd3lm", dict(block_size=4), False, 1.5),
    ("Eso-LM (B)", "esolm-b", dict(alpha_0=1.0), True, 0.8), ("Eso-LM (B)", "esolm-b", dict(alpha_0=1.0), False, 1.2),
]


def _tag(opts: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in opts.items())


def display(model: str, overrides: dict) -> dict:
    """The model's own display (what experiments/jobs.py records beside each row)."""
    config = registry.build_config(model, **overrides)
    return dataclasses.asdict(registry.model_class(model).display(config))


def row(name: str, stage: str, label: str, group: str, model: str, ov: dict, options: dict, metrics: dict,
        **config) -> dict:
    """One results row in the schema of analysis/schema.py: meta, config, options, metrics, display."""
    return dict(name=name, **META, config=dict(stage=stage, label=label, group=group, model=model, **ov, **config),
                options=options, metrics=metrics, display=display(model, ov))


META = dict(key="0" * 16, stale=False, code_version="hand", git_sha="hand", finished="2026-01-01T00:00:00+00:00",
            seconds=1.0)


def write_store(folder: Path) -> Path:
    """results.csv + summary.json in the schema of docs/results_store.md."""
    rows = []
    for label, group, model, ov, opts, m, t in SWEEP:
        rows.append(row(f"sample/{label}/{_tag(opts)}", "sample", label, group, model, ov, opts,
                        dict(m, self_bleu=0.1, num_samples=64), evaluator="ar checkpoint runs/hand/checkpoint.pt"))
        if t is not None:
            rows.append(row(f"time/{label}/{_tag(opts)}", "time", label, group, model, ov, opts,
                            dict(nfe=m["nfe"] + 1, time_median_s=t, time_mean_s=t * 1.1, time_std_s=t / 10,
                                 wall_median_s=t * 2, wall_mean_s=t * 2, wall_std_s=t / 5),
                            kv_cache=True, batch_size=32))
    for label, group, model, ov, exact, k, ppl in EVAL:
        rows.append(row(f"eval/{label}/" + (f"exact K={k}" if exact else "nelbo"), "eval", label, group, model, ov, {},
                        dict(ppl=ppl, nll_per_token=math.log(ppl), num_sequences=128), exact=exact, num_orders=k))
    for group, model, ov, cached, secs in LONGCTX:
        rows.append(row(f"longctx/{group}/L={L}/{'cache' if cached else 'no-cache'}", "longctx", model, group, model,
                        ov, {}, dict(nfe=L, time_mean_s=secs, time_std_s=secs / 20, time_median_s=secs,
                                     profile_mean_s=secs * 0.9), length=L, kv_cache=cached))
    rows.append(row("train/ar", "train", "ar", "AR", "ar", {}, {}, dict(params=1e5, steps_trained=10, train_loss=4.0)))
    folder.mkdir(parents=True, exist_ok=True)
    X.frame(rows).to_csv(folder / "results.csv", index=False)
    (folder / "summary.json").write_text(json.dumps(dict(
        preset="hand", corpus="shakespeare", data=dict(length=L), num_samples=64, top_p=0.9,
        timing=dict(batch_size=32, trials=5, warmup=1), environment=dict(cpu="hand-made", torch_threads=1))))
    return folder


@pytest.fixture
def store(tmp_path) -> Path:
    return write_store(tmp_path / "hand")


def _point(points, label, **opts):
    sel = points.loc[points["label"].eq(label)]
    for k, v in opts.items():
        sel = sel.loc[np.isclose(sel[k].astype(float), v)]
    assert len(sel) == 1, (label, opts)
    return sel.iloc[0]


# --------------------------------------------------------------------------- the frontier
def test_pareto_front_keeps_exactly_the_undominated_points():
    x = [1, 2, 3, 4, 2, 1, np.nan]
    y = [10, 5, 6, 1, 5, 12, 0.5]  # C(3,6) is beaten by B(2,5); F(1,12) by A(1,10); ties B/E both stay
    assert pareto_front(x, y).tolist() == [True, True, False, True, True, False, False]


def test_pareto_front_for_a_higher_is_better_metric():
    assert pareto_front([1, 2, 3], [0.2, 0.1, 0.5], maximize_y=True).tolist() == [True, False, True]


def test_each_methods_frontier_on_the_hand_made_store(store):
    points = S.speed_quality(S.load_results(store))
    timed = points.loc[points["time_median_s"].notna()].copy()
    on = frontier(timed, "time_median_s", "gen_ppl")
    got = {(r.label, int(r.steps), None if pd.isna(r.alpha_0_eval) else r.alpha_0_eval)
           for r in timed.loc[on].itertuples()}
    assert got == {("ar", 127, None), ("mdlm", 8, None), ("mdlm", 64, None), ("mdlm", 128, None),
                   ("bd3lm L'=4", 32, None), ("bd3lm L'=4", 128, None), ("esolm-b a0=1", 8, 1.0),
                   ("esolm-b a0=1", 32, 1.0), ("esolm-b a0=0.25", 8, 0.25)}
    mauve_on = frontier(timed, "time_median_s", "mauve", maximize_y=True)
    eso = timed.loc[timed["group"].eq("Eso-LM (B)") & mauve_on]
    assert sorted(eso["mauve"]) == [0.10, 0.30]


def test_collapsed_means_entropy_below_95_percent_of_ar(store):
    points = S.speed_quality(S.load_results(store))
    low = points.loc[collapsed(points), ["label", "entropy"]]
    assert sorted(low["entropy"]) == [3.0, 3.5]  # AR's 4.2 x 0.95 = 3.99; BD3-LM's 4.0 stays
    assert not collapsed(points.loc[points["group"].ne("AR")]).any()  # no AR: nothing to compare with


# -------------------------------------------------------------------------- the store
def test_speed_quality_joins_each_sample_row_to_its_time_row(store):
    points = S.speed_quality(S.load_results(store))
    assert len(points) == len(SWEEP)  # the evaluator and other stages stay out
    for label, _, _, _, opts, m, t in SWEEP:
        p = _point(points, label, **opts)
        assert p["gen_ppl"] == m["gen_ppl"]
        assert (pd.isna(p["time_median_s"]) if t is None else p["time_median_s"] == t)
        if t is not None:
            assert p["nfe_timed"] == m["nfe"] + 1


def test_a_metric_declared_once_reaches_the_points_the_sweep_tables_and_a_pareto_figure(store, monkeypatch):
    """docs/results_store.md, "A new metric": a metrics.* column its job writes and one entry in
    schema.METRICS; nothing else changes."""
    df = pd.read_csv(store / "results.csv")
    sample = df["config.stage"].eq("sample")
    df.loc[sample, "metrics.fake_score"] = np.linspace(0.1, 0.9, int(sample.sum()))
    df.to_csv(store / "results.csv", index=False)
    points = S.speed_quality(S.load_results(store))
    assert points["fake_score"].notna().all() and points["time_median_s"].notna().sum() == 12  # still joined
    assert "fake_score" not in {t.name: t for t in build_tables(store)}["table14_mdlm"].markdown()  # undeclared
    monkeypatch.setattr(X, "METRICS", (*X.METRICS, X.Metric("fake_score", "fake score", True, ".3f", pareto=True)))
    t14 = {t.name: t for t in build_tables(store)}["table14_mdlm"]
    assert "fake_score" in t14.data.columns and "| fake score |" in t14.markdown().replace(" | paper", " |")[:2000]
    assert "fake_score" in pareto.pareto_metrics(points)
    assert {p.name for p in draw_pareto(store)} >= {"pareto_fake_score.png", "pareto_fake_score.pdf"}


def test_a_new_metric_column_is_never_a_join_key(store):
    """Which columns join a sample row to its time row is declared (config.label and the
    options.* columns), so a metric of the sample rows alone keeps every timing."""
    df = pd.read_csv(store / "results.csv")
    df.loc[df["config.stage"].eq("sample"), "metrics.undeclared"] = 1.0
    df.to_csv(store / "results.csv", index=False)
    keys = X.join_columns(X.stage_rows(S.load_results(store), "sample"))
    assert keys == ["config.label", "options.steps", "options.alpha_0_eval"]
    points = S.speed_quality(S.load_results(store))
    assert points["time_median_s"].notna().sum() == sum(t is not None for *_, t in SWEEP)


def test_an_old_flat_results_csv_is_upgraded_to_the_same_points_and_tables(store, tmp_path):
    new = S.load_results(store)
    flat = X.view(new).drop(columns=[c for c in new.columns if c.startswith("display.")])
    old = tmp_path / "old"
    old.mkdir()
    flat.to_csv(old / "results.csv", index=False)
    shutil.copy(store / "summary.json", old / "summary.json")
    up = S.load_results(old)
    assert X.is_prefixed(up) and set(X.columns(up, "options")) == {"options.steps", "options.alpha_0_eval"}
    assert {"config.kv_cache", "config.batch_size", "metrics.time_median_s"} <= set(up.columns)
    cols = ["label", "steps", "gen_ppl", "time_median_s", "nfe_timed", "display.colour", "display.marker"]
    pd.testing.assert_frame_equal(S.speed_quality(up)[cols], S.speed_quality(new)[cols], check_dtype=False)
    for a, b in zip(build_tables(old), build_tables(store)):
        assert a.markdown() == b.markdown()


def test_committed_stores_of_the_old_format_get_each_models_own_display():
    for preset in ("tiny", "cpu"):
        path = ROOT / "results" / preset
        if not (path / "results.csv").exists():
            continue
        df = S.rows(S.load_results(path), "sample")
        styles = pareto.group_styles(df)
        assert styles["AR"]["reference"] and styles["AR"]["marker"] == "*"
        assert styles["Eso-LM (B)"]["shade_by"] == "alpha_0" and styles["MDLM"]["colour"] == "#0173b2"
        order = pareto.ordered_groups(df)  # the models' Display.order (the paper's rows), whatever else the store holds
        assert order[0] == "AR" and order.index("MDLM") < order.index("Eso-LM (B)")
        assert [float(styles[g]["order"]) for g in order] == sorted(float(styles[g]["order"]) for g in order)


def test_figure_styles_come_from_the_display_columns(store):
    df = pd.read_csv(store / "results.csv")
    df.loc[df["config.group"].eq("MDLM"), "display.colour"] = "#123456"
    df.loc[df["config.group"].eq("MDLM"), "display.order"] = -1
    df.to_csv(store / "results.csv", index=False)
    points = S.speed_quality(S.load_results(store))
    mdlm = points.loc[points["group"].eq("MDLM")].iloc[0]
    assert pareto.point_style(mdlm) == dict(color="#123456", marker="o")
    assert pareto.ordered_groups(points)[0] == "MDLM"
    eso = points.loc[points["label"].eq("esolm-b a0=0.25")].iloc[0]  # shaded by alpha_0: darker, its own marker
    assert pareto.point_style(eso)["marker"] == pareto.SHADE_MARKERS[0.25]
    paper = X.borrow_display(A.paper_points(), points)
    assert (paper.loc[paper["group"].eq("MDLM"), "display.colour"] == "#123456").all()
    other = paper.loc[paper["group"].eq("BD3-LM L'=8")]  # not ours: a neutral display, the paper's method as family
    assert other["display.colour"].isin(X.NEUTRAL).all() and (other["display.family"] == "BD3-LM").all()


def test_missing_store_raises_config_error_naming_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="run.py pareto"):
        S.load_results(tmp_path)


# --------------------------------------------------------------------------- the tables
def test_table1_carries_the_stores_numbers_and_the_papers(store):
    t1 = next(t for t in build_tables(store) if t.name == "table1_test_ppl").data.set_index("label")
    assert "evaluator" not in t1.index
    assert t1.loc["esolm-b a0=1", "exact_ppl"] == 80.0 and t1.loc["esolm-b a0=1", "exact_K"] == 10
    assert t1.loc["esolm-b a0=0.25", "nelbo_split_ppl"] == 65.0
    assert t1.loc["bd3lm L'=4", "nelbo_split_ppl"] == 60.0 and pd.isna(t1.loc["bd3lm L'=4", "exact_ppl"])
    assert t1.loc["esolm-b a0=1", "paper_lm1b_nelbo"] == 36.12 and t1.loc["esolm-b a0=0.25", "paper_owt_exact"] == 23.15
    assert t1.loc["bd3lm L'=4", "paper_owt_nelbo"] == 20.96 and t1.loc["bd3lm L'=4", "paper_owt_nelbo_notes"] == "r"
    assert t1.loc["mdlm", "paper_lm1b_nelbo"] == 31.78 and t1.loc["mdlm", "paper_lm1b_nelbo_notes"] == "‡"


def test_table1_puts_only_the_same_runs_nelbo_beside_the_exact_ppl_and_marks_the_rest(store):
    """Like with like: the NELBO beside the exact PPL is the exact run's own (same sequences, same
    seed); an exact row without one gets a visible mark and a blank, never the whole-split NELBO."""
    df = pd.read_csv(store / "results.csv")
    ex = df["config.stage"].eq("eval") & df["config.exact"].astype(str).eq("True")
    df.loc[ex, "metrics.num_sequences"] = 64
    df.loc[ex & df["config.label"].eq("ar"), "metrics.nelbo_ppl"] = 50.5  # AR: exact == NELBO, one run
    df.loc[ex & df["config.label"].eq("esolm-b a0=1") & df["config.num_orders"].eq(10), "metrics.nelbo_ppl"] = 91.0
    df.to_csv(store / "results.csv", index=False)
    t = next(t for t in build_tables(store) if t.name == "table1_test_ppl")
    t1 = t.data.set_index("label")
    assert (t1.loc["ar", "exact_ppl"], t1.loc["ar", "nelbo_ppl"]) == (50.5, 50.5)
    assert t1.loc["esolm-b a0=1", "nelbo_ppl"] == 91.0 and t1.loc["esolm-b a0=1", "exact_sequences"] == 64
    assert t1.loc["esolm-b a0=1", "nelbo_split_ppl"] == 90.0 and t1.loc["esolm-b a0=1", "nelbo_split_sequences"] == 128
    assert pd.isna(t1.loc["esolm-b a0=0.25", "nelbo_ppl"]) and t1.loc["esolm-b a0=0.25", "exact_mark"] == "*"
    assert t1.loc["esolm-b a0=1", "exact_mark"] == "" and pd.isna(t1.loc["bd3lm L'=4", "exact_sequences"])
    assert any(n.startswith("* no NELBO on the exact run's sequences") for n in t.notes)
    assert "| 60.00* |" in t.markdown()  # the mark is visible in the rendered table


def test_sweep_tables_pair_rows_by_relative_step_count(store):
    tables = {t.name: t.data for t in build_tables(store)}
    eso = tables["table13_esolm-b"]
    row = eso.loc[eso["label"].eq("esolm-b a0=1") & eso["steps"].eq(32) & eso["alpha_0_eval"].eq(1.0)].iloc[0]
    assert (row["gen_ppl"], row["time_median_s"]) == (80.0, 0.30)
    assert (row["paper_steps"], row["paper_nfe"], row["paper_gen_ppl"], row["paper_time_s"]) == (256, 251, 50.76, 10.51)
    row = eso.loc[eso["label"].eq("esolm-b a0=0.25") & eso["alpha_0_eval"].eq(0.25)].iloc[0]  # T/L = 1/16: none
    assert row["collapsed"] and pd.isna(row["paper_gen_ppl"])
    mdlm = tables["table14_mdlm"].set_index("steps")
    assert mdlm.loc[8, "paper_gen_ppl"] == 51.11 and mdlm.loc[16, "paper_steps"] == 128
    assert pd.isna(mdlm.loc[64, "paper_gen_ppl"])  # paper T = 512: not in v4 Table 14
    assert mdlm.loc[512, "gen_ppl"] == 95.0 and pd.isna(mdlm.loc[512, "time_median_s"])
    bd3 = tables["table15_bd3lm"].set_index("steps")
    assert bd3.loc[32, "paper_gen_ppl"] == 184.86 and bd3.loc[128, "paper_mauve"] == 0.0533
    assert tables["sweep_ar"]["paper_gen_ppl"].iloc[0] == 13.03  # AR: no step count to match


def test_table11_seconds_and_speedups_match_the_store(store):
    tables = {t.name: t.data for t in build_tables(store)}
    secs = tables["table11_longctx_seconds"].set_index("method")
    assert secs.loc["AR", f"L{L}_s"] == 0.5 and secs.loc["AR", f"L{L}_no_cache_s"] == 0.7
    assert secs.loc["MDLM", f"L{L}_s"] == 4.0 and secs.loc["Eso-LM (B)", "paper_L8192_s"] == 82.1
    ratio = tables["table11_longctx_speedups"].set_index("ratio")
    assert ratio.loc["MDLM / Eso-LM (B)", f"L{L}"] == pytest.approx(5.0)
    assert ratio.loc["BD3-LM L'=4 / Eso-LM (B)", f"L{L}"] == pytest.approx(1.25)
    assert ratio.loc["Eso-LM (B) / AR", f"L{L}"] == pytest.approx(1.6)
    assert ratio.loc["MDLM / Eso-LM (B)", "paper_L2048"] == pytest.approx(201.3 / 14.6)


def test_write_tables_writes_markdown_latex_and_csv_with_the_same_numbers(store):
    paths = write_tables(store)
    assert {p.suffix for p in paths} == {".md", ".tex", ".csv"} and all(p.parent == store / "tables" for p in paths)
    csv = pd.read_csv(store / "tables" / "table14_mdlm.csv")
    assert sorted(csv["gen_ppl"]) == sorted(m["gen_ppl"] for lab, *_, m, _ in SWEEP if lab == "mdlm")
    md = (store / "tables" / "table14_mdlm.md").read_text()
    assert "| MDLM | 128 | 1 | 81.0 | 100.00 |" in md and "paper (OWT, v4 Table 14)" in md
    assert "Matching rule" in md
    tex = (store / "tables" / "table1_test_ppl.tex").read_text()
    assert r"\begin{tabular}" in tex and r"31.78\ddag{}" in tex and r"\multicolumn{4}{c}{paper (v4 Table 1)}" in tex


# -------------------------------------------------------------------------- the figures
def test_figures_are_written_as_png_and_pdf_next_to_the_store(store):
    paths = draw_pareto(store) + draw_nfe(store)
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{n}.{e}" for n in ("pareto_gen_ppl", "pareto_mauve", "nfe_gen_ppl") for e in ("png", "pdf"))
    for p in paths:
        assert p.parent == store / "figures" and p.stat().st_size > 10_000
        assert p.read_bytes()[:4] in (b"\x89PNG", b"%PDF")


# -------------------------------------------------------------------------- the notebooks
def _assert_shown(nb, name: str) -> None:
    """No cell failed and the notebook shows its figures / tables."""
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    tables = [o for o in outputs if "text/markdown" in o.get("data", {})]
    assert len(images) >= 4 if name == "pareto_frontier" else len(tables) >= 5  # figures / tables were shown


def _run_notebook(name: str, results: Path, monkeypatch) -> None:
    pytest.importorskip("nbclient")
    from analysis.notebooks import execute

    _assert_shown(execute(name, results), name)


@pytest.mark.parametrize("name", ["pareto_frontier", "paper_tables"])
def test_the_committed_notebooks_hold_their_outputs_from_the_committed_store(name):
    """`make notebooks` executed them on results/tiny: a reader sees the tables and figures
    without running anything."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(ROOT / "analysis" / f"{name}.ipynb", as_version=4)
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code")
    _assert_shown(nb, name)


@pytest.mark.parametrize("name", ["pareto_frontier", "paper_tables"])
def test_notebook_executes_headless_on_a_store(name, store, monkeypatch):
    _run_notebook(name, store, monkeypatch)


@pytest.mark.parametrize("name", ["pareto_frontier", "paper_tables"])
def test_notebook_executes_headless_on_the_committed_tiny_results(name, monkeypatch):
    tiny = ROOT / "results" / "tiny"
    if not (tiny / "results.csv").exists():
        pytest.skip("results/tiny/results.csv is not committed yet (run `python experiments/run.py pareto`)")
    _run_notebook(name, tiny, monkeypatch)


# ------------------------------------------------------------------- the paper anchors
def test_every_anchor_records_version_table_identity_and_its_printed_text():
    a = A.load_anchors()
    assert A.anchors_meta()["paper"]["arxiv"] == "2506.01928" and (a["version"] == "v4").all()
    assert set(a["table"]) == {"1", "3", "6", "7", "8", "9-10", "11", "12", "13", "14", "15", "16"}
    for _, r in a.iterrows():
        assert r["metric"] in {"test_ppl", "gen_ppl", "entropy", "mauve", "nfe", "time_s", "bertscore_f1"}
        assert float("0" + r["text"] if r["text"].startswith(".") else r["text"]) == r["value"], r["text"]
        assert isinstance(r["row"], str) and isinstance(r["column"], str) and r["dataset"] in ("LM1B", "OWT", "XSum")
    assert (a.groupby("table").size()[["1", "6", "7", "8", "13", "14", "15"]] == [44, 6, 35, 24, 224, 45, 75]).all()


def test_anchors_agree_across_the_papers_own_tables():
    a = A.load_anchors()

    def one(table, **ident):
        sel = a.loc[a["table"].eq(table)]
        for k, v in ident.items():
            sel = sel.loc[sel[k].eq(v)]
        assert len(sel) == 1, (table, ident)
        return sel["value"].iloc[0]

    for a0 in (1.0, 0.5, 0.25, 0.125):  # Table 1 Exact = the largest K of Tables 7 and 8; NELBO = Tables 9-10
        assert one("7", alpha_0=a0, num_orders=5000) == one("1", method="Eso-LM (B)", alpha_0=a0, dataset="LM1B",
                                                            estimator="exact")
        assert one("8", alpha_0=a0, num_orders=1000) == one("1", method="Eso-LM (B)", alpha_0=a0, dataset="OWT",
                                                            estimator="exact")
        for ds in ("LM1B", "OWT"):
            assert one("9-10", method="Eso-LM (B)", alpha_0=a0, dataset=ds) == \
                one("1", method="Eso-LM (B)", alpha_0=a0, dataset=ds, estimator="nelbo")
    assert one("6", num_orders=1000) == one("1", method="MDLM", dataset="LM1B", estimator="exact")
    t11 = lambda g, n: one("11", group=g, length=n)  # the speedups the spec derives
    assert round(t11("MDLM", 2048) / t11("Eso-LM (B)", 2048), 1) == 13.8
    assert round(t11("MDLM", 8192) / t11("Eso-LM (B)", 8192), 1) == 66.2
    assert round(t11("BD3-LM L'=4", 8192) / t11("Eso-LM (B)", 8192), 2) == 3.80
    sweep = A.paper_points(a)  # one token per step at most: NFE = T while T <= 128 (MDLM, Eso-LM at alpha_0_eval 1)
    few = sweep.loc[sweep["group"].isin(["MDLM", "Eso-LM (B)"]) & (sweep["steps"] <= 128)
                    & sweep["alpha_0_eval"].fillna(1.0).eq(1.0)]
    assert len(few) == 6 + 4 * 4 and (few["nfe"] == few["steps"]).all()
    bd3 = a.loc[a["table"].eq("15")]
    assert (bd3["steps_per_block"] == bd3["steps"] / (1024 / bd3["block_size"])).all()


def _spec_text() -> str:
    candidates = [os.environ.get("ESOLM_SPEC"), ROOT / "spec" / "ESOLM_SPEC.md",
                  ROOT.parent / "shared" / "spec" / "ESOLM_SPEC.md"]
    for c in candidates:
        if c and Path(c).exists():
            return Path(c).read_text()
    pytest.skip("the spec (ESOLM_SPEC.md) is not beside the repository; set ESOLM_SPEC=/path/to/ESOLM_SPEC.md")


SECTION = {"1": "10.1", "3": "10.3", "6": "10.6", "7": "10.6", "8": "10.6", "9-10": "10.7", "11": "10.8",
           "12": "10.8", "13": "10.9", "14": "10.9", "15": "10.9", "16": "10.10"}


def _section(spec: str, number: str) -> str:
    start = spec.index(f"### {number} ")
    return spec[start:spec.index("\n### ", start + 1)]


def _tables(text: str) -> list[list[list[str]]]:
    """The markdown tables of a text, as rows of cells (bold stripped), header first."""
    out, cur = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not re.match(r"^\|[\s|:-]+\|$", line):
                cur.append([c.strip().replace("**", "") for c in line.strip().strip("|").split("|")])
        elif cur:
            out.append(cur)
            cur = []
    return out


def _numbers(cell: str) -> list[str]:
    return re.findall(r"\d*\.?\d+", cell)


def _cell(spec: str, r) -> tuple[list[str], int]:
    """The spec cell that holds anchor r and the index of its number among the cell's numbers."""
    tables = _tables(_section(spec, SECTION[r["table"]]))
    t = r["table"]
    if t == "16":  # signed numbers (U+2212 printed as "-"); the reference is in the setup line
        text = _section(spec, "10.10")
        if r["row"] == "reference":
            return re.findall(r"FLAN-T5-small scores (\d*\.?\d+)", text), 0
        row = next(x for x in tables[0][1:] if x[0] == r["row"])
        return re.findall(r"-?\d*\.?\d+", row[tables[0][0].index(r["column"])].replace("\u2212", "-")), 0
    if t in ("6", "7", "8"):  # section 10.6 prints Tables 6, 7 and 8 in this order
        tables = [tables[{"6": 0, "7": 1, "8": 2}[t]]]
    if t in ("14", "15"):
        tables = [tb for tb in tables if tb[0][0] == {"14": "T", "15": "L′"}[t]]
    if t == "13":
        tb = next(tb for tb in tables if tb[0][0] == ("α0^eval" if r["metric"] in ("nfe", "time_s") else "α0^train"))
        if r["metric"] in ("nfe", "time_s"):
            row = next(x for x in tb[1:] if x[0] == r["row"].split(",")[0].split(" = ")[1])
            return _numbers(row[2 if r["metric"] == "nfe" else 3]), _numbers(row[1]).index(str(int(r["steps"])))
        row = next(x for x in tb[1:] if x[0] == r["row"].split(" = ")[1])
        col = next(i for i, h in enumerate(tb[0]) if h.startswith(r["column"].split(",")[0] + " (T ="))
        pos = _numbers(tb[0][col].split("(T =")[1]).index(str(int(r["steps"])))
        return _numbers(row[col]), 3 * pos + ["gen_ppl", "entropy", "mauve"].index(r["metric"])
    keys = {"3": lambda: [r["row"].split(" = ")[1]], "6": lambda: [r["row"]], "14": lambda: [r["row"].split(" = ")[1]],
            "15": lambda: [p.split(" = ")[1] for p in r["row"].split(", ")],
            "7": lambda: [r["row"].split(" = ")[1]], "8": lambda: [r["row"].split(" = ")[1]],
            "9-10": lambda: [r["row"].split(" = ")[1]]}.get(t, lambda: [r["row"]])()
    column = r["column"].split(" = ")[1] if t in ("6", "7", "8") else r["column"]
    for tb in tables:
        if column in tb[0]:
            row = next((x for x in tb[1:] if x[:len(keys)] == keys), None)
            if row is not None:
                index = 1 if (t == "3" and r["metric"] == "entropy") else 0
                return _numbers(row[tb[0].index(column)]), index
    raise AssertionError(f"no spec cell for table {t} row {r['row']!r} column {r['column']!r}")


def test_every_anchor_is_the_number_the_spec_prints_in_its_row_and_column():
    spec = _spec_text()
    a = A.load_anchors()
    wrong = []
    for _, r in a.iterrows():
        numbers, i = _cell(spec, r)
        text = r["text"]
        if numbers[i] != text:
            wrong.append(f"table {r['table']} {r['row']} / {r['column']} {r['metric']}: {text} vs spec {numbers[i]}")
        if pd.notna(r.get("std")) and numbers[i + 1] != r["std_text"]:
            wrong.append(f"table {r['table']} {r['row']} std: {r['std_text']} vs spec {numbers[i + 1]}")
    assert not wrong, "\n".join(wrong[:20])


def test_footnote_markers_of_table1_are_the_specs():
    spec = _section(_spec_text(), "10.1")
    a = A.load_anchors()
    marks = set(A.anchors_meta()["footnotes"])
    for _, r in a.loc[a["table"].eq("1")].iterrows():
        row = next(x for x in _tables(spec)[0][1:] if x[0] == r["row"])
        cell = row[_tables(spec)[0][0].index(r["column"])]
        assert "".join(ch for ch in cell.split(" ")[0] if ch in marks) == "".join(n for n in r["notes"] if n in marks)


def test_the_default_backbone_is_the_spec_tiny_row_and_the_paper_runs_the_small_row():
    """spec-tiny and the benchmarks rely on the defaults of esolm.runs.Backbone being spec 2.1's tiny."""
    from esolm import runs
    from esolm.config import ModelConfig

    rows = {r[0]: r for r in _tables(_section(_spec_text(), "2.1"))[0][1:]}

    def row(b):
        return [str(b.d_model), str(b.n_layers), str(b.n_heads), str(b.d_model // b.n_heads), str(b.cond_dim),
                str(ModelConfig.mlp_ratio), str(b.dropout)]

    assert row(runs.Backbone()) == rows["tiny"][1:]
    assert runs.get("spec-tiny").backbone == runs.Backbone()
    assert row(runs.get("paper-owt").backbone) == rows["small (all paper models)"][1:]
