"""The speed-quality Pareto frontier (spec 8.5; v4 Fig. 4): gen PPL or MAUVE against sampling
time, a point per configuration, each method's frontier as a line; ours beside the paper's.

    python -m analysis.pareto results/tiny      # -> results/tiny/figures/pareto_*.png/.pdf
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.markers
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from analysis import anchors as A
from analysis import schema as X
from analysis import store as S

COLLAPSE_RATIO = 0.95  # entropy below 95% of the reference's (AR): the paper's "below 5" at AR's 5.26 (spec 8.3)
# a shaded method (Display.shade_by, Eso-LM: alpha_0 of training): marker and shading level by the value
SHADE_MARKERS = {1.0: "o", 0.5: "s", 0.25: "D", 0.125: "^", 0.0625: "v", 0.0: "P"}
REFERENCE = "display.reference"


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


def is_reference(frame: pd.DataFrame) -> pd.Series:
    """Rows of the quality reference (Display.reference: AR)."""
    if REFERENCE not in frame.columns:
        return pd.Series(False, index=frame.index)
    return frame[REFERENCE].astype(str).str.lower().isin(("true", "1", "1.0"))


def collapsed(points: pd.DataFrame) -> pd.Series:
    """Samples whose mean entropy is below COLLAPSE_RATIO of the reference samples' (none: none)."""
    ref = points.loc[is_reference(points), "entropy"].dropna() if "entropy" in points.columns else []
    if len(ref) == 0:
        return pd.Series(False, index=points.index)
    return points["entropy"] < COLLAPSE_RATIO * float(ref.iloc[0])


# ----------------------------------------------------------------------------- styling
def group_styles(*frames: pd.DataFrame) -> dict:
    """Per method (`group`): its display (family, colour, marker, order, reference, shade_by)
    from the display.* columns of its first row (schema.borrow_display gives paper rows ours)."""
    out: dict = {}
    for f in frames:
        if f is None or "group" not in f.columns:
            continue
        for g, part in f.groupby("group", sort=False):
            if g not in out:
                first = part.iloc[0]
                d = {k: first.get(f"display.{k}") for k in X.DISPLAY}
                out[g] = {**X.neutral_display(str(g), len(out)), **{k: v for k, v in d.items() if _given(v)}}
                out[g]["reference"] = str(out[g]["reference"]).lower() in ("true", "1", "1.0")
    return out


def _given(v) -> bool:
    return v is not None and not (isinstance(v, float) and np.isnan(v))


def ordered_groups(*frames: pd.DataFrame) -> list:
    """Methods in the paper's order (Display.order, then the name), those without a display after."""
    styles = group_styles(*frames)
    return sorted(styles, key=lambda g: (float(styles[g]["order"]), str(g)))


def shade(row: pd.Series):
    """The field a row's method shades by and its value there, or (None, None)."""
    field = row.get("display.shade_by")
    if not _given(field) or not _given(row.get(field)):
        return None, None
    return str(field), float(row[field])


def point_style(row: pd.Series) -> dict:
    """Colour and marker of the row's method; a shaded method (Eso-LM by alpha_0 of training)
    darkened and marked by its value."""
    color, marker = row.get("display.colour"), row.get("display.marker")
    color = color if _given(color) else X.NEUTRAL[0]
    marker = marker if _given(marker) else "o"
    _, value = shade(row)
    if value is not None:
        marker = SHADE_MARKERS.get(value, "X")
        level = list(SHADE_MARKERS).index(value) if value in SHADE_MARKERS else len(SHADE_MARKERS)
        color = tuple(np.array(matplotlib.colors.to_rgb(color)) * (1 - 0.13 * level))
    return dict(color=color, marker=marker)


def shaded_name(shaded: dict, field: str) -> str:
    """What the families shaded by `field` have in common ("Eso-LM" for Eso-LM (A) and (B))."""
    families = sorted({f for (fd, _), fams in shaded.items() if fd == field for f in fams})
    return os.path.commonprefix(families).rstrip(" (") or " / ".join(families)


def shades(*frames: pd.DataFrame) -> dict:
    """(shade field, value) -> the families shaded by it, over the rows of these frames."""
    out: dict = {}
    for f in frames:
        for _, row in f.iterrows() if f is not None and "display.shade_by" in f.columns else []:
            field, value = shade(row)
            if field is not None:
                out.setdefault((field, value), set()).add(str(row.get("display.family")))
    return out


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
def look(row: pd.Series) -> str:
    """The name of a row's look (its hue and style level in the figures): the method and, for a
    shaded one, the value it shades by ("Eso-LM (B) | alpha_0 = 0.25")."""
    field, value = shade(row)
    return f"{row['group']} | {field} = {value:g}" if field else str(row["group"])


def looks(points: pd.DataFrame) -> tuple[pd.Series, dict, dict]:
    """Each row's look, and the palette and markers of the looks (point_style of their first row),
    as seaborn's hue/style levels, `palette` and `markers` take them."""
    names = pd.Series([look(r) for _, r in points.iterrows()], index=points.index, dtype=object)
    first = points.loc[~names.duplicated()]
    st = {names[i]: point_style(r) for i, r in first.iterrows()}
    return names, {k: v["color"] for k, v in st.items()}, {k: v["marker"] for k, v in st.items()}


def _filled(marker) -> bool:
    return matplotlib.markers.MarkerStyle(marker).is_filled()


def scatter_looks(ax, data: pd.DataFrame, x: str, y: str, *, palette: dict, markers: dict, **kws) -> None:
    """sns.scatterplot of `data` by its `_look` column (hue and style); seaborn will not mix filled
    and line-art markers in one call, so a declared line-art marker gets a call of its own (without
    an edge colour, which line art has none of)."""
    for filled in (True, False):
        part = data.loc[data["_look"].map(lambda k: _filled(markers[k]) == filled)]
        if len(part):
            levels = list(dict.fromkeys(part["_look"]))
            sns.scatterplot(data=part, x=x, y=y, hue="_look", style="_look", hue_order=levels, style_order=levels,
                            palette={k: palette[k] for k in levels}, markers={k: markers[k] for k in levels},
                            legend=False, ax=ax, **{k: v for k, v in kws.items() if filled or k != "edgecolor"})


def draw_panel(ax, points: pd.DataFrame, x: str, y: str, styles: dict, *, metric: X.Metric, by: str = "group"):
    """Points (faded off the frontier), each method's frontier line, the reference (AR) as a
    star, an x on collapsed samples; a method with no time at all (the paper's AR) as a dashed
    level line; other untimed configurations are left out."""
    maximize = bool(metric.higher_is_better)
    pts = points.loc[points[y].notna()].copy()
    timed = pts.loc[pts[x].notna()].copy()
    timed["_front"] = frontier(timed, x, y, by=by, maximize_y=maximize)
    timed["_look"], palette, markers = looks(timed)
    timed["_reference"] = timed["group"].map(lambda g: bool(styles[g]["reference"]))
    for on, kws in ((False, dict(alpha=0.35, edgecolor="none")), (True, dict(alpha=1.0, edgecolor="black"))):
        scatter_looks(ax, timed.loc[timed["_front"].eq(on)], x, y, palette=palette, markers=markers,
                      size="_reference", sizes={True: 260, False: 46}, linewidth=0.6, zorder=4, **kws)
    front = timed.loc[timed["_front"]]
    front = front.loc[front.groupby(by, sort=False)[x].transform("size") > 1]
    if len(front):
        colour = {r[by]: styles[r["group"]]["colour"] if by == "group" else point_style(r)["color"]
                  for _, r in front.drop_duplicates(by).iterrows()}
        sns.lineplot(data=front, x=x, y=y, hue=by, hue_order=list(colour), palette=colour, estimator=None, sort=True,
                     lw=1.8, zorder=3, legend=False, ax=ax)
    low = timed.loc[collapsed(pts).reindex(timed.index, fill_value=False)]
    if len(low):
        sns.scatterplot(data=low, x=x, y=y, marker="x", color="#555555", s=70, linewidth=1.2, zorder=5, legend=False,
                        ax=ax)
    for _, row in pts.loc[~pts["group"].isin(timed["group"])].iterrows():  # a method with no times: a level
        ax.axhline(row[y], color=styles[row["group"]]["colour"], ls="--", lw=1.2, zorder=2)
    ax.set_xscale("log")
    plain_log_ticks(ax.xaxis)
    if metric.bounds is not None:
        lo, hi = metric.bounds
        ax.set_ylim(lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo))
    elif not maximize:
        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis)


def legend_handles(groups, styles: dict, shaded: dict, *, paper_ref: str | None, collapse: bool) -> list:
    """One entry per method (the reference as a star), per shade value, off the frontier,
    collapsed samples and the paper's untimed reference line."""
    h = []
    for g in groups:
        ref = styles[g]["reference"]
        h.append(Line2D([], [], color=styles[g]["colour"], marker=styles[g]["marker"] if ref else "o",
                        ms=12 if ref else 7, lw=0 if ref else 1.8, label=f"{g}" + ("" if ref else " (frontier line)")))
    for (field, value) in sorted(shaded, key=lambda fv: (fv[0], -fv[1])):
        h.append(Line2D([], [], color="#777777", marker=SHADE_MARKERS.get(value, "X"), lw=0, ms=7,
                        label=f"{shaded_name(shaded, field)}, {X.shown(field, long=True)} = {value:g}"))
    h += [Line2D([], [], color="#999999", marker="o", lw=0, ms=7, alpha=0.35, label="off the frontier")]
    if collapse:
        h += [Line2D([], [], color="#555555", marker="x", lw=0, ms=8,
                     label=f"low entropy (< {COLLAPSE_RATIO:.0%} of AR's): collapsed samples")]
    if paper_ref is not None:
        h += [Line2D([], [], color=styles[paper_ref]["colour"], ls="--", lw=1.2,
                     label=f"paper's {paper_ref} (1M steps, v4 Table 3; no time given)")]
    return h


def pareto_figure(points: pd.DataFrame, paper: pd.DataFrame | None, *, metric: str = "gen_ppl",
                  summary: dict | None = None, by: str = "group"):
    """Our frontier and, in a separate panel (axes not comparable), the paper's."""
    setup_style()
    m = X.metric(metric)
    name, maximize = m.shown, bool(m.higher_is_better)
    summary = summary or {}
    L = S.sequence_length(summary)
    paper = X.borrow_display(paper, points) if paper is not None and metric in paper.columns else None
    panels = [points] + ([paper] if paper is not None and paper[metric].notna().any() else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.6 * len(panels), 5.0), squeeze=False)
    styles = group_styles(*panels)
    groups = ordered_groups(*panels)
    draw_panel(axes[0, 0], points, "time_median_s", metric, styles, metric=m, by=by)
    batch = points.get("batch_size", pd.Series(dtype=float)).dropna()
    env = summary.get("environment") or {}
    device = env.get("device") or f"{env.get('cpu', 'CPU')} CPU, {env.get('torch_threads', '?')} thread(s)"
    axes[0, 0].set_xlabel(f"median sampling time per batch of {int(batch.iloc[0]) if len(batch) else '?'} (s, "
                          f"network passes; {device})")
    unit = "log scale" if not maximize else "higher is better"
    axes[0, 0].set_ylabel(f"{name} ({unit}; {S.evaluator_name(points)})" if m.evaluator else f"{name} ({unit})")
    axes[0, 0].set_title(f"ours: {summary.get('preset', '')} ({summary.get('corpus', '?')}, L = {L}, "
                         f"{summary.get('num_samples', '?')} samples per point)", fontsize=10)
    if len(panels) > 1:
        ax = axes[0, 1]
        draw_panel(ax, paper, "time_s", metric, styles, metric=m)
        ax.set_xlabel("mean sampling time per batch of 512 (s, H200)")
        ax.set_ylabel(f"{name} ({unit}; GPT-2 Large)" if m.evaluator else f"{name} ({unit})")
        ax.set_title(f"{A.source_label(['13', '14', '15'])}: L = 1024, 5120 samples per point", fontsize=10)
    paper_ref = None
    if len(panels) > 1:
        refs = paper.loc[is_reference(paper) & paper[metric].notna(), "group"]
        paper_ref = refs.iloc[0] if len(refs) else None
    handles = legend_handles(groups, styles, shades(*panels), paper_ref=paper_ref,
                             collapse=any(collapsed(p).any() for p in panels))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8.5, frameon=False)
    what = f"{name} ({'higher' if maximize else 'lower'} is better)"
    per = "each method's frontier" if by == "group" else f"one frontier per {by}"
    beside = ("\nours (left) and the paper's (right) on separate axes: different data, models and devices"
              if len(panels) > 1 else "")
    fig.suptitle(f"Speed-quality Pareto frontier ({per}): {what} against sampling time{beside}", fontsize=11)
    fig.tight_layout()
    return fig


def pareto_metrics(points: pd.DataFrame) -> list[str]:
    """The declared quality metrics (schema.METRICS, pareto=True) these points have values of."""
    return [m.name for m in X.METRICS if m.pareto and m.name in points.columns and points[m.name].notna().any()]


def draw_pareto(results_dir) -> list[Path]:
    """figures/pareto_<metric>.* for every declared quality metric the store scored (gen PPL;
    MAUVE where it was scored)."""
    results = Path(results_dir)
    df = S.load_results(results)
    summary = S.load_summary(results)
    points = S.speed_quality(df)
    if points.empty or points["time_median_s"].isna().all():
        print(f"[analysis] no sample rows with timings in {results / 'results.csv'}: no Pareto figure", file=sys.stderr)
        return []
    paper = A.paper_points()
    out = []
    for metric in pareto_metrics(points):
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
