"""The figures a reviewer reads (issue 25, items 2, 6 and 8): error bars exactly where the store
has intervals, alpha_0 of sampling told apart by marker fill, BD3-LM's authors' time grid a
series of its own, the calibration rows as labelled reference lines (one far off the axis
written at its edge instead of stretching it), enough labelled ticks on a narrow log axis, and
one learning-curve line per training run. Figures are drawn from hand-made points, never from
results/, and saved under pytest's tmp_path only."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.collections
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from analysis import anchors as A
from analysis import learning_curves as LC
from analysis import nfe as N
from analysis import pareto as P
from analysis import schema as X

DISPLAYS = {  # group -> display.* (as the models declare them: esolm/interface.py Display)
    "AR": dict(family="AR", colour="#222222", marker="*", order=0, reference=True, shade_by=None),
    "MDLM": dict(family="MDLM", colour="#0173b2", marker="o", order=10, reference=False, shade_by=None),
    "BD3-LM L'=16": dict(family="BD3-LM", colour="#d55e00", marker="o", order=116, reference=False, shade_by=None),
    "Eso-LM (B)": dict(family="Eso-LM (B)", colour="#029e73", marker="o", order=1000, reference=False,
                       shade_by="alpha_0"),
    "calibration": dict(family="calibration", colour="#949494", marker="o", order=10_000, reference=False,
                        shade_by=None),
}
# (group, label, options, nfe, gen_ppl, entropy, seconds); seconds None: a calibration row (no time)
ROWS = [
    ("AR", "ar", dict(steps=127), 127, 8.0, 3.0, 0.2),
    *[("MDLM", "mdlm", dict(steps=t), t, ppl, 2.9, t / 16) for t, ppl in ((8, 31.0), (32, 27.0), (128, 25.0))],
    *[("BD3-LM L'=16", "bd3lm L'=16", dict(steps=t), t + 7, ppl, 2.85, s)
      for t, ppl, s in ((8, 100.0, 0.12), (16, 50.0, 0.18), (128, 25.5, 1.1))],
    *[("BD3-LM L'=16", "bd3lm L'=16", dict(steps=t, reference_grid=True), t + 7, ppl, 2.0, s)
      for t, ppl, s in ((8, 105.0, 0.13), (16, 51.0, 0.19))],
    *[("Eso-LM (B)", "esolm-b a0=0.25", dict(steps=t, alpha_0_eval=a), nfe, ppl, 2.9, s)
      for t, a, nfe, ppl, s in ((8, 1.0, 8, 42.0, 0.13), (32, 1.0, 29, 37.0, 0.17), (8, 0.25, 101, 21.0, 0.29),
                                (32, 0.25, 111, 21.5, 0.30), (8, 0.0625, 125, 14.8, 0.33),
                                (32, 0.0625, 127, 14.6, 0.34))],
]
CALIBRATION = [("real text", 6.5, 3.05), ("unigram", 60.0, 3.2), ("repeater", 1.6, 1.1), ("all-EOS", 2500.0, 0.0)]
INTERVALS = ("gen_ppl", "entropy", "time_median_s")


def points(*, intervals: bool, calibration: bool) -> pd.DataFrame:
    """Speed-quality points shaped as store.speed_quality returns them (bare names, display.*),
    with 95% interval columns and calibration rows when asked."""
    rows = []
    for group, label, opts, nfe, ppl, ent, secs in ROWS:
        rows.append(dict(group=group, label=label, **opts, nfe=nfe, gen_ppl=ppl, entropy=ent, mauve=0.3,
                         time_median_s=secs, batch_size=16, num_samples=64,
                         alpha_0=0.25 if group == "Eso-LM (B)" else np.nan))
    if calibration:
        rows += [dict(group="calibration", label=lab, gen_ppl=ppl, entropy=ent, mauve=0.9 if lab == "real text" else 0.0,
                      num_samples=64) for lab, ppl, ent in CALIBRATION]
    out = pd.DataFrame(rows)
    for k in X.DISPLAY:
        out[f"display.{k}"] = [DISPLAYS[g].get(k, g) for g in out["group"]]
    if intervals:
        for m in INTERVALS:
            out[f"{m}_lo"], out[f"{m}_hi"] = out[m] * 0.95, out[m] * 1.05
    return out


def _panel(frame: pd.DataFrame, metric: str = "gen_ppl"):
    """One Pareto panel of ours drawn on a fresh axes: (axes, what draw_panel returns)."""
    fig, ax = plt.subplots()
    styles = P.group_styles(P.split_calibration(frame)[0])
    return ax, P.draw_panel(ax, frame, "time_median_s", metric, styles, metric=X.metric(metric))


def _error_bars(ax) -> int:
    return sum(isinstance(c, matplotlib.collections.LineCollection) for c in ax.collections)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ------------------------------------------------------------------------- both kinds of store
@pytest.mark.parametrize("new_columns", [False, True], ids=["store before intervals", "intervals and calibration"])
def test_every_figure_renders_from_a_store_with_and_without_intervals_and_calibration_rows(new_columns, tmp_path):
    frame = points(intervals=new_columns, calibration=new_columns)
    summary = dict(preset="hand", corpus="shakespeare", data=dict(length=128), num_samples=64)
    paths = P.save(P.pareto_figure(frame, A.paper_points(), metric="gen_ppl", summary=summary), tmp_path / "pareto")
    paths += P.save(N.nfe_figure(frame, A.paper_points(), summary=summary), tmp_path / "nfe")
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_error_bars_are_drawn_exactly_where_the_store_has_intervals():
    ax, drawn = _panel(points(intervals=False, calibration=False))
    assert not drawn["intervals"] and _error_bars(ax) == 0
    ax, drawn = _panel(points(intervals=True, calibration=False))
    assert drawn["intervals"] and _error_bars(ax) > 0
    fig, (top, bottom) = plt.subplots(2)
    frame = points(intervals=True, calibration=False)
    assert N.draw_column(top, bottom, frame, frame.iloc[:0], P.group_styles(frame), 128)["intervals"]
    assert _error_bars(top) > 0 and _error_bars(bottom) > 0


def test_error_extent_is_the_distance_to_each_end_and_none_without_interval_columns():
    frame = pd.DataFrame(dict(gen_ppl=[10.0, 20.0], gen_ppl_lo=[9.0, np.nan], gen_ppl_hi=[12.0, np.nan]))
    assert P.error_extent(frame, "gen_ppl").tolist() == [[1.0, 0.0], [2.0, 0.0]]
    assert P.error_extent(frame[["gen_ppl"]], "gen_ppl") is None


# ------------------------------------------------------------------------ alpha_0 of sampling
def test_each_alpha_0_of_sampling_gets_its_own_marker_fill_on_the_points_and_in_the_legend():
    frame = points(intervals=False, calibration=False)
    ax, drawn = _panel(frame)
    eso = frame.loc[frame["group"].eq("Eso-LM (B)")]
    fills = {a: P.marker_fill(r) for a, r in zip(eso["alpha_0_eval"], (r for _, r in eso.iterrows()))}
    assert len(set(fills.values())) == 3 and fills[0.0625] == "none" and fills[1.0] == "full"
    eso_lines = [ln for ln in drawn["points"] if "Eso-LM (B)" in ln.get_label()]
    assert {ln.get_fillstyle() for ln in eso_lines} == set(fills.values())
    handles = P.eval_handles(P.sampling_alphas(frame))
    assert [h.get_fillstyle() for h in handles] == ["full", "left", "none"]
    assert all("α0 of sampling" in h.get_label() for h in handles)


# ------------------------------------------------------------------------- BD3-LM's two grids
def test_the_authors_time_grid_is_a_series_of_its_own_in_the_pareto_and_nfe_figures():
    frame = points(intervals=False, calibration=False)
    ax, drawn = _panel(frame)
    grid = "BD3-LM L'=16" + P.GRID_SUFFIX
    assert {"BD3-LM L'=16", grid} <= set(drawn["fronts"])
    assert drawn["fronts"][grid].get_linestyle() != drawn["fronts"]["BD3-LM L'=16"].get_linestyle()
    on_grid = drawn["series"].eq(grid)
    assert on_grid.sum() == 2 and (frame.loc[on_grid[on_grid].index, "reference_grid"] == True).all()  # noqa: E712
    fig, (top, bottom) = plt.subplots(2)
    curves = N.draw_column(top, bottom, frame, frame.iloc[:0], P.group_styles(frame), 128)["curves"]
    bd3 = {name: line for name, line in curves.items() if name.startswith("BD3-LM")}
    assert set(bd3) == {"BD3-LM L'=16", grid}
    assert len(bd3[grid].get_xdata()) == 2 and len(bd3["BD3-LM L'=16"].get_xdata()) == 3


# ---------------------------------------------------------------------------- calibration rows
def test_calibration_rows_are_labelled_lines_and_a_far_off_one_is_written_at_the_edge():
    frame = points(intervals=True, calibration=True)
    ax, drawn = _panel(frame)
    assert drawn["calibration"] == {"real text": "line", "unigram": "line", "repeater": "below", "all-EOS": "above"}
    lines = {ln.get_label() for ln in ax.lines}
    assert {"_calibration real text", "_calibration unigram"} <= lines and "_calibration all-EOS" not in lines
    assert "calibration" not in set(drawn["series"])  # not a method: no point, no frontier


def test_far_off_calibration_values_are_written_at_the_edge_without_stretching_the_axis():
    ax, drawn = _panel(points(intervals=True, calibration=True))
    texts = " | ".join(t.get_text() for t in ax.texts)
    assert "real text" in texts and "unigram" in texts  # the lines' names
    assert "↑ all-EOS: 2500 (off the axis)" in texts and "↓ repeater: 1.6 (off the axis)" in texts
    lo, hi = ax.get_ylim()
    assert hi < 500 and lo > 2


def test_calibration_rows_on_a_bounded_score_are_all_drawn():
    ax, drawn = _panel(points(intervals=False, calibration=True), metric="mauve")
    assert set(drawn["calibration"].values()) == {"line"}


def test_calibration_room_widens_the_models_range_by_half_its_span_on_each_side():
    lo, hi = P.calibration_room([10.0, 100.0], log=True)
    assert np.isclose(lo, 10 ** 0.5) and np.isclose(hi, 10 ** 2.5)
    assert P.calibration_room([2.0, 3.0], log=False) == (1.5, 3.5)
    assert P.calibration_room([], log=True) == (-np.inf, np.inf)


# ------------------------------------------------------------------------------ log-axis ticks
@pytest.mark.parametrize("lo, hi", [(25.0, 45.0), (5.2, 47.0)], ids=["25-45", "the committed tiny figure's axis"])
def test_a_narrow_log_axis_labels_at_least_three_plain_ticks(lo, hi):
    """(5.2, 47) is the gen-PPL axis of results/tiny's pareto_gen_ppl.png, labelled only at 10
    and 20 by 1-2-5 ticks."""
    assert len(P.log_tick_values(lo, hi)) >= 3
    fig, ax = plt.subplots()
    ax.set_yscale("log")
    P.plain_log_ticks(ax.yaxis)
    ax.set_ylim(lo, hi)
    fig.canvas.draw()
    shown = [t.get_text() for t in ax.yaxis.get_ticklabels() if t.get_text() and lo <= t.get_position()[1] <= hi]
    assert len(shown) >= 3 and all(s.replace(".", "").isdigit() for s in shown), shown


@pytest.mark.parametrize("lo, hi", [(0.12, 8.3), (6.0, 45.0), (13.0, 110.0), (2.7, 3.1), (1.0, 1e8)])
def test_log_ticks_are_in_view_few_enough_and_enough(lo, hi):
    ticks = P.log_tick_values(lo, hi)
    assert 3 <= len(ticks) <= 9 and all(lo <= t <= hi * (1 + 1e-9) for t in ticks)


# ------------------------------------------------------------------------------ learning curves
def test_each_training_run_is_its_own_learning_curve_line():
    steps = [25, 50, 75]
    one = [dict(label="ar", group="AR", step=s, tokens=s * 100, train_nll=3.0 - s / 100, valid_nll=np.nan) for s in steps]
    frame = pd.DataFrame(one + one)  # the same model trained twice, one record after another
    assert LC.runs(frame).nunique() == 2
    assert LC.runs(frame.assign(run=["k1"] * 3 + ["k2"] * 3)).tolist() == ["k1"] * 3 + ["k2"] * 3
    fig = LC.learning_figure(frame, P.group_styles(pd.DataFrame(dict(group=["AR"]))), "hand")
    drawn = [ln for ln in fig.axes[0].lines if len(ln.get_xdata()) == 3]
    assert len(drawn) == 2 and all(np.all(np.diff(ln.get_xdata()) > 0) for ln in drawn)  # no line runs back


def test_learning_curves_draw_the_newest_record_of_each_training_job_once(tmp_path, monkeypatch):
    """A model trained under three code versions (older records not yet cleaned) is one line, its
    newest run's; another seed of it is a job of its own and keeps its line."""
    def record(name, key, day):
        folder = tmp_path / key
        folder.mkdir()
        (folder / "train_log.jsonl").write_text("".join(json.dumps(dict(step=s, nll_per_token=3.0 - s / 100)) + "\n"
                                                        for s in range(1, 51)))
        return dict(name=name, key=key, label=name.split("/")[1], group="UDLM", finished=f"2026-12-0{day}T00:00:00+00:00",
                    checkpoint=str(folder / "checkpoint.safetensors"),
                    config=dict(corpus=dict(length=8), train=dict(batch_size=2)))

    recs = [record("train/udlm", f"k{d}", d) for d in (1, 3, 2)] + [record("train/udlm seed=2", "s2", 1)]
    monkeypatch.setattr(LC.R, "scan", lambda results, stages: ([(None, r) for r in recs], []))
    frame = LC.collect(tmp_path)
    assert set(frame["run"]) == {"k3", "s2"} and len(frame) == 4  # 50 steps: two windows of 25 each


def test_the_legend_shows_each_methods_own_marker():
    styles = {"UDLM": dict(colour="#aa0000", marker="D", reference=False, shade_by=None),
              "Eso-LM (B)": dict(colour="#029e73", marker="s", reference=False, shade_by="alpha_0"),
              "AR": dict(colour="#222222", marker="*", reference=True, shade_by=None)}
    h = {x.get_label().split(" (")[0]: x.get_marker() for x in
         P.legend_handles(list(styles), styles, {}, paper_ref=None, collapse=False)}
    assert h["UDLM"] == "D" and h["AR"] == "*" and h["Eso-LM"] == "o"  # shaded: its markers are the shade entries'


def test_a_point_of_infinite_gen_ppl_is_left_out_of_the_pareto_figure_and_named(capsys):
    """A sample the judge gives probability 0 (gen PPL inf) cannot stand on a log axis: the
    figure leaves it out and says which; a metric with no finite point draws no figure."""
    import pandas as pd

    from analysis.pareto import finite_points

    points = pd.DataFrame(dict(label=["a", "b", "c"], gen_ppl=[12.0, float("inf"), float("nan")]))
    kept = finite_points(points, "gen_ppl", "results/x")
    assert list(kept["label"]) == ["a", "c"]
    err = capsys.readouterr().err
    assert "1 point(s) with gen_ppl = inf left out" in err and "(b)" in err
    assert finite_points(points.iloc[[0, 2]], "gen_ppl", "results/x").shape[0] == 2
    assert capsys.readouterr().err == ""
