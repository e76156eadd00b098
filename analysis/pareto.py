"""The speed-quality Pareto frontier (spec 8.5; v4 Fig. 4): gen PPL or MAUVE against sampling
time, a point per configuration, each method's frontier as a line; ours beside the paper's.

    python -m analysis.pareto results/tiny      # -> results/tiny/figures/pareto_*.png/.pdf
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from analysis import anchors as A
from analysis import store as S

COLLAPSE_RATIO = 0.95  # entropy below 95% of AR's: the paper's "below 5" at AR's 5.26 (spec 8.3)
METRICS = {"gen_ppl": ("gen PPL", False), "mauve": ("MAUVE", True)}  # name, higher is better
_BASE = {"AR": "#222222", "AR + AdaLN": "#666666", "MDLM": 0, "BD3-LM L'=4": 1, "BD3-LM L'=8": 4,
         "BD3-LM L'=16": 3, "Eso-LM (B)": 2, "Eso-LM (A)": 9}
_MARKERS = {1.0: "o", 0.5: "s", 0.25: "D", 0.125: "^", 0.0625: "v", 0.0: "P"}


# ------------------------------------------------------------------------- the frontier
def pareto_front(x, y, *, maximize_y: bool = False) -> np.ndarray:
    """True where no other point is at least as fast and at least as good, and strictly
    better in one of the two; NaN points are never on the frontier."""
    x = np.asarray(x, dtype=float)
    y = -np.asarray(y, dtype=float) if maximize_y else np.asarray(y, dtype=float)
    ok = ~(np.isnan(x) | np.isnan(y))
    on = np.zeros(len(x), dtype=bool)
    for i in np.flatnonzero(ok):
        no_worse = ok & (x <= x[i]) & (y <= y[i])
        better = (x < x[i]) | (y < y[i])
        on[i] = not np.any(no_worse & better)
    return on


def frontier(points: pd.DataFrame, x: str, y: str, *, by: str = "group", maximize_y: bool = False) -> pd.Series:
    """Per-method (or per-`by`) frontier membership of each point."""
    on = pd.Series(False, index=points.index)
    for _, g in points.groupby(by, sort=False):
        on.loc[g.index] = pareto_front(g[x], g[y], maximize_y=maximize_y)
    return on


def collapsed(points: pd.DataFrame) -> pd.Series:
    """Samples whose mean entropy is below COLLAPSE_RATIO of the AR samples' (no AR: none)."""
    ar = points.loc[points["group"].eq("AR"), "entropy"].dropna() if "entropy" in points.columns else []
    if len(ar) == 0:
        return pd.Series(False, index=points.index)
    return points["entropy"] < COLLAPSE_RATIO * float(ar.iloc[0])


# ----------------------------------------------------------------------------- styling
def method_colors(groups) -> dict:
    """A fixed color per method, the same in every figure."""
    pal = sns.color_palette("colorblind", 10)
    spare = iter(pal[6:] + pal)
    return {g: (pal[_BASE[g]] if isinstance(_BASE.get(g), int) else _BASE.get(g) or next(spare)) for g in groups}


def ordered_groups(groups) -> list:
    """Methods in the paper's order (AR, MDLM, BD3-LM by L', Eso-LM), others after."""
    known = list(_BASE)
    return sorted(dict.fromkeys(groups), key=lambda g: (known.index(g) if g in known else len(known), str(g)))


def point_style(row: pd.Series, colors: dict) -> dict:
    """Color by method (Eso-LM shaded by alpha_0 of training), marker by alpha_0 of training."""
    a0 = row.get("alpha_0")
    color = colors[row["group"]]
    marker = "o"
    if pd.notna(a0) and str(row["group"]).startswith("Eso-LM"):
        marker = _MARKERS.get(float(a0), "X")
        level = list(_MARKERS).index(float(a0)) if float(a0) in _MARKERS else len(_MARKERS)
        color = tuple(np.array(matplotlib.colors.to_rgb(color)) * (1 - 0.13 * level))
    if row["group"] == "AR":
        marker = "*"
    return dict(color=color, marker=marker)


def setup_style() -> None:
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.95)


def plain_log_ticks(axis) -> None:
    """Log-axis ticks at 1, 2, 5 x 10^k written as plain numbers."""
    axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def save(fig, path_stem: Path) -> list[Path]:
    """PNG and PDF side by side."""
    out = []
    for ext in ("png", "pdf"):
        path = path_stem.with_suffix(f".{ext}")
        fig.savefig(path, dpi=160, bbox_inches="tight")
        out.append(path)
    plt.close(fig)
    return out


# ------------------------------------------------------------------------------ drawing
def draw_panel(ax, points: pd.DataFrame, x: str, y: str, colors: dict, *, maximize_y: bool, by: str = "group"):
    """Points (faded off the frontier), each method's frontier line, AR as a star, an x on
    collapsed samples; a method with no time at all (the paper's AR) as a dashed level line;
    other untimed configurations are left out."""
    pts = points.loc[points[y].notna()].copy()
    timed = pts.loc[pts[x].notna()].copy()
    timed["_front"] = frontier(timed, x, y, by=by, maximize_y=maximize_y)
    for _, row in timed.iterrows():
        st = point_style(row, colors)
        big = row["group"] == "AR"
        ax.scatter(row[x], row[y], s=260 if big else 46, color=st["color"], marker=st["marker"], zorder=4,
                   alpha=1.0 if row["_front"] else 0.35, edgecolor="black" if row["_front"] else "none",
                   linewidth=0.6)
    for _, g in timed.loc[timed["_front"]].groupby(by, sort=False):
        g = g.sort_values(x)
        if len(g) > 1:
            color = colors[g["group"].iloc[0]] if by == "group" else point_style(g.iloc[0], colors)["color"]
            ax.plot(g[x], g[y], color=color, lw=1.8, zorder=3)
    low = timed.loc[collapsed(pts).reindex(timed.index, fill_value=False)]
    ax.scatter(low[x], low[y], s=70, marker="x", color="#555555", linewidth=1.2, zorder=5)
    for _, row in pts.loc[~pts["group"].isin(timed["group"])].iterrows():  # a method with no times: a level
        ax.axhline(row[y], color=colors[row["group"]], ls="--", lw=1.2, zorder=2)
    ax.set_xscale("log")
    plain_log_ticks(ax.xaxis)
    if not maximize_y:
        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis)
    else:
        ax.set_ylim(-0.02, 1.02)


def legend_handles(groups, colors: dict, alphas, *, paper_ar: bool, collapse: bool) -> list:
    h = [Line2D([], [], color=colors[g], marker="*" if g == "AR" else "o", ms=12 if g == "AR" else 7,
                lw=0 if g == "AR" else 1.8, label=f"{g}" + ("" if g == "AR" else " (frontier line)"))
         for g in groups]
    h += [Line2D([], [], color="#777777", marker=_MARKERS.get(a, "X"), lw=0, ms=7,
                 label=f"Eso-LM, α0 of training = {a:g}") for a in alphas]
    h += [Line2D([], [], color="#999999", marker="o", lw=0, ms=7, alpha=0.35, label="off the frontier")]
    if collapse:
        h += [Line2D([], [], color="#555555", marker="x", lw=0, ms=8,
                     label=f"low entropy (< {COLLAPSE_RATIO:.0%} of AR's): collapsed samples")]
    if paper_ar:
        h += [Line2D([], [], color=colors.get("AR", "#222222"), ls="--", lw=1.2,
                     label="paper's AR (1M steps, v4 Table 3; no time given)")]
    return h


def pareto_figure(points: pd.DataFrame, paper: pd.DataFrame | None, *, metric: str = "gen_ppl",
                  summary: dict | None = None, by: str = "group"):
    """Our frontier and, in a separate panel (axes not comparable), the paper's."""
    setup_style()
    name, maximize = METRICS[metric]
    summary = summary or {}
    L = S.sequence_length(summary)
    panels = [points] + ([paper] if paper is not None and paper[metric].notna().any() else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.6 * len(panels), 5.0), squeeze=False)
    groups = ordered_groups([*points["group"], *(paper["group"] if len(panels) > 1 else [])])
    colors = method_colors(groups)
    draw_panel(axes[0, 0], points, "time_median_s", metric, colors, maximize_y=maximize, by=by)
    batch = points.get("batch_size", pd.Series(dtype=float)).dropna()
    env = summary.get("environment") or {}
    device = env.get("device") or f"{env.get('cpu', 'CPU')} CPU, {env.get('torch_threads', '?')} thread(s)"
    axes[0, 0].set_xlabel(f"median sampling time per batch of {int(batch.iloc[0]) if len(batch) else '?'} (s, "
                          f"network passes; {device})")
    unit = "log scale" if not maximize else "higher is better"
    axes[0, 0].set_ylabel(f"{name} ({unit}; {S.evaluator_name(points)})" if metric == "gen_ppl" else f"{name} ({unit})")
    axes[0, 0].set_title(f"ours: {summary.get('preset', '')} ({summary.get('corpus', '?')}, L = {L}, "
                         f"{summary.get('num_samples', '?')} samples per point)", fontsize=10)
    if len(panels) > 1:
        ax = axes[0, 1]
        draw_panel(ax, paper, "time_s", metric, colors, maximize_y=maximize)
        ax.set_xlabel("mean sampling time per batch of 512 (s, H200)")
        ax.set_ylabel(f"{name} ({unit}; GPT-2 Large)" if metric == "gen_ppl" else f"{name} ({unit})")
        ax.set_title(f"{A.source_label(['13', '14', '15'])}: L = 1024, 5120 samples per point", fontsize=10)
    alphas = sorted({float(a) for a in pd.concat([p.loc[p["group"].str.startswith("Eso-LM"), "alpha_0"]
                                                  for p in panels]).dropna()}, reverse=True)
    paper_ar = len(panels) > 1 and paper.loc[paper["group"].eq("AR"), metric].notna().any()
    handles = legend_handles(groups, colors, alphas, paper_ar=bool(paper_ar),
                             collapse=any(collapsed(p).any() for p in panels))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8.5, frameon=False)
    what = "gen PPL (lower is better)" if not maximize else "MAUVE (higher is better)"
    per = "each method's frontier" if by == "group" else f"one frontier per {by}"
    beside = ("\nours (left) and the paper's (right) on separate axes: different data, models and devices"
              if len(panels) > 1 else "")
    fig.suptitle(f"Speed-quality Pareto frontier ({per}): {what} against sampling time{beside}", fontsize=11)
    fig.tight_layout()
    return fig


def draw_pareto(results_dir) -> list[Path]:
    """figures/pareto_gen_ppl.* and, where MAUVE was scored, figures/pareto_mauve.*."""
    results = Path(results_dir)
    df = S.load_results(results)
    summary = S.load_summary(results)
    points = S.speed_quality(df)
    if points.empty or points["time_median_s"].isna().all():
        print(f"[analysis] no sample rows with timings in {results / 'results.csv'}: no Pareto figure", file=sys.stderr)
        return []
    paper = A.paper_points()
    out = []
    for metric in METRICS:
        if metric in points.columns and points[metric].notna().any():
            fig = pareto_figure(points, paper, metric=metric, summary=summary)
            out += save(fig, S.output_dir(results, "figures") / f"pareto_{metric}")
    return out


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m analysis.pareto results/<preset>", file=sys.stderr)
        return 2
    for p in draw_pareto(args[0]):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
