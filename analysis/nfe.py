"""Gen PPL against NFE per model (v4 Fig. 17 / v2 Fig. 3), with the samples' entropy beneath
so that collapsed (repetitive) samples stand out; ours beside the paper's (Tables 13-15).

    python -m analysis.nfe results/tiny      # -> results/tiny/figures/nfe_gen_ppl.png/.pdf
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D

from analysis import anchors as A
from analysis import schema as X
from analysis import store as S
from analysis.pareto import (
    GRID_DASH,
    GRID_SUFFIX,
    axis_values,
    calibration_room,
    collapse_labels,
    collapsed,
    draw_calibration,
    error_bars,
    eval_handles,
    finite_points,
    grid_groups,
    group_styles,
    marker_fill,
    note_handles,
    on_reference_grid,
    ordered_groups,
    plain_log_ticks,
    row_on_reference_grid,
    point_style,
    sampling_alphas,
    save,
    setup_style,
    shade,
    split_calibration,
)

_LINESTYLES = {1.0: "-", 0.5: "--", 0.25: "-.", 0.125: (0, (5, 1, 1, 1, 1, 1)), 0.0625: ":"}


def model_name(row: pd.Series) -> str:
    """A trained model as the legend names it: the method, and the value its display shades by
    (Eso-LM: alpha_0 of training)."""
    field, value = shade(row)
    return f"{row['group']}, {X.shown(field, long=True)} = {value:g}" if field else str(row["group"])


def curves(points: pd.DataFrame, length: int) -> pd.DataFrame:
    """Points with x = NFE / L and a curve id: one curve per trained model, alpha_0 of sampling
    and time grid (BD3-LM on the authors' grid is a curve of its own: its samples differ)."""
    out = points.loc[points["gen_ppl"].notna() & points["nfe"].notna()].copy()
    out["nfe_per_token"] = out["nfe"] / length
    out["model_name"] = [model_name(r) for _, r in out.iterrows()]
    a_eval = out["alpha_0_eval"] if "alpha_0_eval" in out.columns else pd.Series(float("nan"), index=out.index)
    grid = on_reference_grid(out).map({True: GRID_SUFFIX, False: ""})
    out["curve"] = out["model_name"] + a_eval.map(lambda a: "" if pd.isna(a) else f" | eval {float(a):g}") + grid
    return out


def curve_style(row: pd.Series) -> dict:
    """Line style and marker fill of a curve: by alpha_0 of sampling (a line style and a fill per
    value), long dashes and hollow markers on the authors' time grid, solid and full otherwise."""
    if row_on_reference_grid(row):
        return dict(ls=GRID_DASH, fillstyle="none")
    a = row.get("alpha_0_eval")
    return dict(ls=_LINESTYLES.get(float(a), "-") if pd.notna(a) else "-", fillstyle=marker_fill(row))


def draw_curve(ax_ppl, ax_ent, g: pd.DataFrame, styles: dict) -> tuple[Line2D, bool]:
    """One curve on both axes (the reference, AR, as a big star without a line), with y error bars
    where the store has intervals. Returns its gen-PPL line and whether any bar was drawn."""
    st, cs = point_style(g.iloc[0]), curve_style(g.iloc[0])
    big = styles[g["group"].iloc[0]]["reference"]
    lines, bars = [], False
    for ax, y in ((ax_ppl, "gen_ppl"), (ax_ent, "entropy")):
        bars |= error_bars(ax, g.loc[g[y].notna()], "nfe_per_token", y, st["color"], alpha=0.6)
        lines += ax.plot(g["nfe_per_token"], g[y], color=st["color"], marker=st["marker"], ms=15 if big else 5.5,
                         ls="none" if big else cs["ls"], lw=1.5, fillstyle=cs["fillstyle"], markerfacecoloralt="white",
                         mec=st["color"], mew=1.2, zorder=4 if big else 3, label=f"_curve {g['curve'].iloc[0]}")
    return lines[0], bars


def draw_column(ax_ppl, ax_ent, points: pd.DataFrame, level_lines: pd.DataFrame, styles: dict, length: int) -> dict:
    """Gen PPL (log) and entropy against NFE / L: a line per curve, collapsed samples crossed out,
    the collapse threshold on the entropy axis, untimed methods (the paper's AR) as level lines
    and the calibration rows as labelled reference lines. Returns `curves` (curve -> gen-PPL
    Line2D), `intervals` (any error bar) and `calibration` (axis -> label -> where it is drawn)."""
    models, calibration = split_calibration(points)
    pts = curves(models, length)
    flags = collapsed(pd.concat([points, level_lines]))
    drawn, bars = {}, False
    for name, g in pts.groupby("curve", sort=False):
        drawn[name], b = draw_curve(ax_ppl, ax_ent, g.sort_values("nfe_per_token"), styles)
        bars |= b
    low = flags.reindex(pts.index, fill_value=False)
    ax_ppl.plot(pts.loc[low, "nfe_per_token"], pts.loc[low, "gen_ppl"], ls="none", ms=9, marker="x", color="#555555",
                mew=1.3, zorder=5, label="_collapsed")
    for _, row in level_lines.iterrows():
        for ax, y in ((ax_ppl, "gen_ppl"), (ax_ent, "entropy")):
            if pd.notna(row.get(y)):
                ax.axhline(row[y], color=styles[row["group"]]["colour"], ls="--", lw=1.1, zorder=2)
    if flags.attrs.get("threshold") is not None:
        ax_ent.axhline(flags.attrs["threshold"], color="#555555", ls=":", lw=1.2, zorder=2)
    set_axes(ax_ppl, ax_ent, length)
    cal = {y: draw_calibration(ax, calibration, y, room=calibration_room(axis_values(models, y), log=log))
           for ax, y, log in ((ax_ppl, "gen_ppl", True), (ax_ent, "entropy", False))}
    return dict(curves=drawn, intervals=bars, calibration=cal)


def set_axes(ax_ppl, ax_ent, length: int) -> None:
    """Log NFE / L (the shared x) and gen PPL axes with plain-number ticks, the absolute NFE on top."""
    ax_ppl.set_xscale("log")
    ax_ppl.set_yscale("log")
    plain_log_ticks(ax_ppl.yaxis)
    plain_log_ticks(ax_ent.xaxis)
    ax_ent.set_xlabel(f"NFE / L (network calls per generated token; L = {length})")
    top = ax_ppl.secondary_xaxis("top", functions=(lambda f: f * length, lambda n: n / length))
    top.set_xlabel("NFE")
    plain_log_ticks(top.xaxis)


def nfe_figure(points: pd.DataFrame, paper: pd.DataFrame | None, *, summary: dict | None = None):
    """Two columns (ours, the paper's), two rows (gen PPL, entropy)."""
    setup_style()
    summary = summary or {}
    length = S.sequence_length(summary) or int(points["nfe"].max())
    paper = X.borrow_display(paper, points) if paper is not None else None
    cols = [points] + ([paper] if paper is not None else [])
    models = [split_calibration(c)[0] for c in cols]
    fig, axes = plt.subplots(2, len(cols), figsize=(6.6 * len(cols), 7.6), squeeze=False, sharex="col",
                             gridspec_kw=dict(height_ratios=[3, 2]))
    styles = group_styles(*models)
    ours = draw_column(axes[0, 0], axes[1, 0], points, points.iloc[:0], styles, length)
    axes[0, 0].set_ylabel(f"gen PPL (log; {S.short_evaluator_name(points)})")
    axes[1, 0].set_ylabel("mean unigram entropy (nats)")
    axes[0, 0].set_title(f"ours: {summary.get('preset', '')} ({summary.get('corpus', '?')}, L = {length}, "
                         f"{summary.get('num_samples', '?')} samples per point)", fontsize=10)
    if paper is not None:
        untimed = paper["nfe"].isna()
        draw_column(axes[0, 1], axes[1, 1], paper.loc[~untimed], paper.loc[untimed], styles, 1024)
        axes[0, 1].set_ylabel("gen PPL (log; GPT-2 Large)")
        axes[1, 1].set_ylabel("mean unigram entropy (nats)")
        axes[0, 1].set_title(f"{A.source_label(['13', '14', '15'])}: L = 1024, 5120 samples per point", fontsize=10)
    calibration = any("line" in c.values() for c in ours["calibration"].values())
    fig.legend(handles=_legend(cols, models, styles, paper is not None, calibration=calibration,
                               intervals=ours["intervals"]),
               loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8.5, frameon=False)
    fig.suptitle("Gen PPL and sample entropy against NFE, one line per trained model, α0 of sampling and time grid"
                 + ("\nours (left) and the paper's (right) on separate y axes: different data, models and evaluators"
                    if paper is not None else ""), fontsize=11)
    fig.tight_layout()
    fig.align_ylabels(axes[:, 0])
    return fig


def _legend(cols, models, styles: dict, paper: bool, *, calibration: bool, intervals: bool) -> list:
    """An entry per trained model, per authors'-grid series, per alpha_0 of sampling (line style
    and fill), then the notes: intervals, calibration, collapse and the paper's AR."""
    rows = pd.concat([c.assign(model_name=[model_name(r) for _, r in c.iterrows()]) for c in models])
    rows = rows.drop_duplicates("model_name")
    order = ordered_groups(*models)
    shade_value = [shade(r)[1] for _, r in rows.iterrows()]
    rows = rows.assign(_o=rows["group"].map(order.index), _a=[-(v or 0) for v in shade_value])
    h = []
    for _, r in rows.sort_values(["_o", "_a"]).iterrows():
        st = point_style(r)
        ref = styles[r["group"]]["reference"]
        h.append(Line2D([], [], color=st["color"], marker=st["marker"], ms=12 if ref else 6,
                        lw=0 if ref else 1.5, label=r["model_name"]))
    h += [Line2D([], [], color=styles[g]["colour"], marker="o", fillstyle="none", ms=6, ls=GRID_DASH, lw=1.5,
                 label=f"{g}{GRID_SUFFIX} (reference_grid)") for g in grid_groups(*models)]
    h += eval_handles(sampling_alphas(*models), _LINESTYLES)
    refs = [g for g in order if styles[g]["reference"]]
    h += note_handles(styles, paper_ref=refs[0] if paper and refs else None, collapse=collapse_labels(cols),
                       calibration=calibration, intervals=intervals)
    h.append(Line2D([], [], color="#555555", ls=":", lw=1.2, label="collapse threshold (entropy panels)"))
    return h


def draw_nfe(results_dir) -> list[Path]:
    """figures/nfe_gen_ppl.png/.pdf from the store's sample rows."""
    results = Path(results_dir)
    points = S.speed_quality(S.load_results(results))
    if not points.empty:
        points = finite_points(points, "gen_ppl", f"nfe_gen_ppl of {results}")
    if points.empty or points["gen_ppl"].isna().all():
        print(f"[analysis] no scored sample rows in {results / 'results.csv'}: no NFE figure", file=sys.stderr)
        return []
    fig = nfe_figure(points, A.paper_points(), summary=S.load_summary(results))
    return save(fig, S.output_dir(results, "figures") / "nfe_gen_ppl")


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m analysis.nfe results/<preset>", file=sys.stderr)
        return 2
    for p in draw_nfe(args[0]):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
