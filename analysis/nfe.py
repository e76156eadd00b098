"""Gen PPL against NFE per model (v4 Fig. 17 / v2 Fig. 3), with the samples' entropy beneath
so that collapsed (repetitive) samples stand out; ours beside the paper's (Tables 13-15).

    python -m analysis.nfe results/tiny      # -> results/tiny/figures/nfe_gen_ppl.png/.pdf
"""
from __future__ import annotations

import os
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
    COLLAPSE_RATIO,
    collapsed,
    group_styles,
    is_reference,
    ordered_groups,
    plain_log_ticks,
    point_style,
    save,
    setup_style,
    shade,
)

_LINESTYLES = {1.0: "-", 0.5: "--", 0.25: "-.", 0.125: (0, (5, 1, 1, 1, 1, 1)), 0.0625: ":"}


def model_name(row: pd.Series) -> str:
    """A trained model as the legend names it: the method, and the value its display shades by
    (Eso-LM: alpha_0 of training)."""
    field, value = shade(row)
    return f"{row['group']}, {X.shown(field, long=True)} = {value:g}" if field else str(row["group"])


def curves(points: pd.DataFrame, length: int) -> pd.DataFrame:
    """Points with x = NFE / L and a curve id: one curve per trained model and alpha_0_eval."""
    out = points.loc[points["gen_ppl"].notna() & points["nfe"].notna()].copy()
    out["nfe_per_token"] = out["nfe"] / length
    out["model_name"] = [model_name(r) for _, r in out.iterrows()]
    a_eval = out["alpha_0_eval"] if "alpha_0_eval" in out.columns else pd.Series(float("nan"), index=out.index)
    out["curve"] = out["model_name"] + a_eval.map(lambda a: "" if pd.isna(a) else f" | eval {float(a):g}")
    return out


def draw_column(ax_ppl, ax_ent, points: pd.DataFrame, level_lines: pd.DataFrame, styles: dict, length: int) -> None:
    """Gen PPL (log) and entropy against NFE / L: a line per curve, the reference (AR) as a star, collapsed
    samples crossed out, and the collapse threshold on the entropy axis."""
    pts = curves(points, length)
    low = collapsed(pd.concat([pts, level_lines])).reindex(pts.index, fill_value=False)
    for _, g in pts.groupby("curve", sort=False):
        g = g.sort_values("nfe_per_token")
        st = point_style(g.iloc[0])
        a_eval = g["alpha_0_eval"].iloc[0] if "alpha_0_eval" in g.columns else float("nan")
        ls = _LINESTYLES.get(float(a_eval), "-") if pd.notna(a_eval) else "-"
        big = styles[g["group"].iloc[0]]["reference"]
        for ax, y in ((ax_ppl, "gen_ppl"), (ax_ent, "entropy")):
            ax.plot(g["nfe_per_token"], g[y], color=st["color"], marker=st["marker"], ms=15 if big else 5.5,
                    ls="none" if big else ls, lw=1.5, zorder=4 if big else 3)
    ax_ppl.scatter(pts.loc[low, "nfe_per_token"], pts.loc[low, "gen_ppl"], s=80, marker="x", color="#555555",
                   linewidth=1.3, zorder=5)
    for _, row in level_lines.iterrows():
        for ax, y in ((ax_ppl, "gen_ppl"), (ax_ent, "entropy")):
            if pd.notna(row.get(y)):
                ax.axhline(row[y], color=styles[row["group"]]["colour"], ls="--", lw=1.1, zorder=2)
    ar = pd.concat([pts, level_lines]).loc[is_reference, "entropy"].dropna()
    if len(ar):
        ax_ent.axhline(COLLAPSE_RATIO * ar.iloc[0], color="#555555", ls=":", lw=1.2, zorder=2)
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
    fig, axes = plt.subplots(2, len(cols), figsize=(6.6 * len(cols), 7.6), squeeze=False, sharex="col",
                             gridspec_kw=dict(height_ratios=[3, 2]))
    styles = group_styles(*cols)
    draw_column(axes[0, 0], axes[1, 0], points, points.iloc[:0], styles, length)
    axes[0, 0].set_ylabel(f"gen PPL (log; {S.evaluator_name(points)})")
    axes[1, 0].set_ylabel("mean unigram entropy (nats)")
    axes[0, 0].set_title(f"ours: {summary.get('preset', '')} ({summary.get('corpus', '?')}, L = {length}, "
                         f"{summary.get('num_samples', '?')} samples per point)", fontsize=10)
    if paper is not None:
        untimed = paper["nfe"].isna()
        draw_column(axes[0, 1], axes[1, 1], paper.loc[~untimed], paper.loc[untimed], styles, 1024)
        axes[0, 1].set_ylabel("gen PPL (log; GPT-2 Large)")
        axes[1, 1].set_ylabel("mean unigram entropy (nats)")
        axes[0, 1].set_title(f"{A.source_label(['13', '14', '15'])}: L = 1024, 5120 samples per point", fontsize=10)
    fig.legend(handles=_legend(cols, styles, paper is not None), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=3, fontsize=8.5, frameon=False)
    fig.suptitle("Gen PPL and sample entropy against NFE, one line per trained model and α0 of sampling"
                 + ("\nours (left) and the paper's (right) on separate y axes: different data, models and evaluators"
                    if paper is not None else ""), fontsize=11)
    fig.tight_layout()
    fig.align_ylabels(axes[:, 0])
    return fig


def _legend(cols, styles: dict, paper: bool) -> list:
    rows = pd.concat([c.assign(model_name=[model_name(r) for _, r in c.iterrows()]) for c in cols])
    rows = rows.drop_duplicates("model_name")
    order = ordered_groups(*cols)
    shade_value = [shade(r)[1] for _, r in rows.iterrows()]
    rows = rows.assign(_o=rows["group"].map(order.index), _a=[-(v or 0) for v in shade_value])
    h = []
    for _, r in rows.sort_values(["_o", "_a"]).iterrows():
        st = point_style(r)
        ref = styles[r["group"]]["reference"]
        h.append(Line2D([], [], color=st["color"], marker=st["marker"], ms=12 if ref else 6,
                        lw=0 if ref else 1.5, label=r["model_name"]))
    h += _eval_handles(cols)
    h += [Line2D([], [], color="#555555", marker="x", lw=0, ms=8, label="collapsed samples (entropy below the line)"),
          Line2D([], [], color="#555555", ls=":", lw=1.2, label=f"collapse threshold: {COLLAPSE_RATIO:.0%} of AR's entropy")]
    refs = [g for g in order if styles[g]["reference"]]
    if paper and refs:
        h.append(Line2D([], [], color=styles[refs[0]]["colour"], ls="--", lw=1.1,
                        label=f"paper's {refs[0]} (1M steps, v4 Table 3; NFE not given)"))
    return h


def _eval_handles(cols) -> list:
    """A line style per alpha_0 of sampling, named by the families that sample at it."""
    evals: dict = {}
    for c in cols:
        if "alpha_0_eval" in c.columns:
            for fam, a in zip(c.get("display.family", c["group"]), c["alpha_0_eval"]):
                if pd.notna(a):
                    evals.setdefault(float(a), set()).add(str(fam))
    return [Line2D([], [], color="#555555", ls=_LINESTYLES.get(a, "-"), lw=1.5,
                   label=f"{os.path.commonprefix(sorted(evals[a])).rstrip(' (') or ' / '.join(sorted(evals[a]))}, "
                         f"{X.shown('alpha_0_eval', long=True)} = {a:g}")
            for a in sorted(evals, reverse=True)]


def draw_nfe(results_dir) -> list[Path]:
    """figures/nfe_gen_ppl.png/.pdf from the store's sample rows."""
    results = Path(results_dir)
    points = S.speed_quality(S.load_results(results))
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
