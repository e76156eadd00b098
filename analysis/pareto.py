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

COLLAPSE_RATIO = 0.95  # the fallback without a real-text row: entropy below 95% of AR's (the paper's "below 5"
#                        at AR's 5.26, spec 8.3); with one, analysis.rules.real_text_threshold calibrates it
# a shaded method (Display.shade_by, Eso-LM: alpha_0 of training): marker and shading level by the value
SHADE_MARKERS = {1.0: "o", 0.5: "s", 0.25: "D", 0.125: "^", 0.0625: "v", 0.0: "P"}
REFERENCE = "display.reference"
# alpha_0 of sampling (Eso-LM, options.alpha_0_eval): a marker fill per value, so that it reads in
# grayscale too; hollow is the near-sequential end whose points win C6
EVAL_FILLS = {1.0: "full", 0.5: "bottom", 0.25: "left", 0.125: "top", 0.0625: "none"}
GRID_DASH = (0, (7, 2.5))  # BD3-LM on the authors' time grid (options.reference_grid): its own series, long dashes
GRID_SUFFIX = ", authors' time grid"
CALIBRATION_COLOUR = "#4d4d4d"  # the calibration rows' reference lines and their labels


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
    """True for configurations whose samples collapsed (one rule for every method, calibration
    rows included). With a real-text calibration row: the upper 95% bound of the mean entropy
    (the point without an interval) below real text's 5th percentile (analysis.rules
    .real_text_threshold); without one, today's fallback: the mean entropy below COLLAPSE_RATIO
    of the reference's (AR), nothing flagged without either. The result's attrs hold the
    `threshold` (None: none) and the `rule` in words, for the figures' and claims' notes."""
    from analysis.rules import real_text_threshold  # imported here: analysis.rules is the rule table's module

    entropy = points["entropy"] if "entropy" in points.columns else pd.Series(np.nan, index=points.index)
    threshold, how = real_text_threshold(points)
    upper = entropy
    if threshold is not None and "entropy_hi" in points.columns:
        upper = points["entropy_hi"].where(points["entropy_hi"].notna(), entropy)
    if threshold is None:
        ref = entropy.loc[is_reference(points)].dropna()
        threshold = COLLAPSE_RATIO * float(ref.iloc[0]) if len(ref) else None
        how = (f"{how}: mean entropy below {COLLAPSE_RATIO:.0%} of AR's" + (f" ({threshold:.3f})" if len(ref) else
                                                                            ", and no AR row: nothing flagged"))
    out = (upper < threshold).astype(bool) if threshold is not None else pd.Series(False, index=points.index)
    out.attrs.update(threshold=threshold, rule=how)
    return out


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


# -------------------------------------------------------------------- rows of a figure
def _truthy(values: pd.Series) -> pd.Series:
    """A boolean column as read back from a CSV ("True", 1.0) or set by hand (True); NaN is False."""
    return values.astype(str).str.lower().isin(("true", "1", "1.0"))


def is_calibration(frame: pd.DataFrame) -> pd.Series:
    """Rows of the calibration group (real text and the null samplers: no time, not a method)."""
    from analysis.rules import CALIBRATION  # imported here: the rule table's module owns the name

    if "group" not in frame.columns:
        return pd.Series(False, index=frame.index)
    return frame["group"].astype(str).eq(CALIBRATION)


def split_calibration(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the methods' rows, the calibration rows) of a frame."""
    cal = is_calibration(frame)
    return frame.loc[~cal], frame.loc[cal]


def on_reference_grid(frame: pd.DataFrame) -> pd.Series:
    """Rows sampled on the authors' time grid (BD3-LM, options.reference_grid True)."""
    if "reference_grid" not in frame.columns:
        return pd.Series(False, index=frame.index)
    return _truthy(frame["reference_grid"])


def series_names(frame: pd.DataFrame, by: str = "group") -> pd.Series:
    """Each row's series (one frontier line): its `by` value (the method), and the authors' time
    grid as a series of its own, since its samples differ (half EOS at two steps per block)."""
    grid = on_reference_grid(frame)
    return frame[by].astype(str) + grid.map({True: GRID_SUFFIX, False: ""})


def row_on_reference_grid(row: pd.Series) -> bool:
    """Whether one row was sampled on the authors' time grid (as on_reference_grid)."""
    return str(row.get("reference_grid")).lower() in ("true", "1", "1.0")


def marker_fill(row: pd.Series) -> str:
    """The marker fill of a row: by alpha_0 of sampling (EVAL_FILLS; "full" for a value not
    listed there or none), hollow on the authors' time grid."""
    if row_on_reference_grid(row):
        return "none"
    a = row.get("alpha_0_eval")
    return EVAL_FILLS.get(float(a), "full") if _given(a) else "full"


def sampling_alphas(*frames: pd.DataFrame) -> dict:
    """alpha_0 of sampling -> the families that sample at it, over these frames' rows."""
    out: dict = {}
    for f in frames:
        if f is None or "alpha_0_eval" not in f.columns:
            continue
        families = f["display.family"] if "display.family" in f.columns else f["group"]
        for fam, a in zip(families, f["alpha_0_eval"]):
            if _given(a):
                out.setdefault(float(a), set()).add(str(fam))
    return out


def error_extent(frame: pd.DataFrame, name: str) -> np.ndarray | None:
    """2 x n distances [value - lo, hi - value] of the 95% interval of metric `name`, as
    errorbar's xerr / yerr take them (0 where a row has none); None where no row has one (a store
    from before intervals: nothing is drawn)."""
    if name not in frame.columns or not X.has_interval(frame, name):
        return None
    lo, hi = X.interval(frame, name)
    value = pd.to_numeric(frame[name], errors="coerce")
    return np.vstack([(value - lo).clip(lower=0).fillna(0), (hi - value).clip(lower=0).fillna(0)])


def setup_style() -> None:
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.95)


def log_tick_values(lo: float, hi: float, *, least: int = 4, most: int = 9) -> list[float]:
    """Major ticks of a log axis over [lo, hi], as plain numbers a reader can place: the coarsest
    of 1 / 1-2-5 / 1-2-3-5 / 1-2-3-4-5-6-8 x 10^k that puts at least `least` ticks in view; an
    axis narrower than that (25-45) gets round linear steps (25, 30, 35, 40, 45), which a log
    axis this narrow shows nearly evenly; a very wide one keeps every n-th decade."""
    lo, hi = min(lo, hi), max(lo, hi)
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= 0:
        return []
    lo = max(lo, hi * 1e-12)
    decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    for subs in ((1,), (1, 2, 5), (1, 2, 3, 5), (1, 2, 3, 4, 5, 6, 8)):
        ticks = [s * 10.0 ** k for k in decades for s in subs if lo <= s * 10.0 ** k <= hi * (1 + 1e-9)]
        if len(ticks) > most and subs == (1,):  # many decades: every n-th one
            return ticks[::int(np.ceil(len(ticks) / most))]
        if len(ticks) >= least:
            return ticks
    linear = matplotlib.ticker.MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10], min_n_ticks=least)
    return [float(f"{v:.12g}") for v in linear.tick_values(lo, hi) if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9) and v > 0]


class PlainLogLocator(matplotlib.ticker.Locator):
    """log_tick_values over the axis's current view (recomputed whenever the limits change)."""

    def __call__(self):
        lo, hi = self.axis.get_view_interval()
        return self.tick_values(lo, hi)

    def tick_values(self, vmin, vmax):
        return log_tick_values(vmin, vmax)


def plain_log_ticks(axis) -> None:
    """A log axis labelled at enough plain-number ticks for its span (log_tick_values); the
    unlabelled minor ticks stay at 2..9 x 10^k."""
    axis.set_major_locator(PlainLogLocator())
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(matplotlib.ticker.LogLocator(base=10, subs=np.arange(2, 10)))
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
    """The name of a row's look (its colour and marker in the figures): the method and, for a
    shaded one, the value it shades by ("Eso-LM (B) | alpha_0 = 0.25")."""
    field, value = shade(row)
    return f"{row['group']} | {field} = {value:g}" if field else str(row["group"])


def looks(points: pd.DataFrame) -> tuple[pd.Series, dict, dict]:
    """Each row's look, and the colour and marker of each look (point_style of its first row)."""
    names = pd.Series([look(r) for _, r in points.iterrows()], index=points.index, dtype=object)
    first = points.loc[~names.duplicated()]
    st = {names[i]: point_style(r) for i, r in first.iterrows()}
    return names, {k: v["color"] for k, v in st.items()}, {k: v["marker"] for k, v in st.items()}


def _filled(marker) -> bool:
    return matplotlib.markers.MarkerStyle(marker).is_filled()


def panel_points(models: pd.DataFrame, x: str, y: str, styles: dict, *, by: str, maximize: bool) -> pd.DataFrame:
    """The timed points of one panel with what drawing them needs: `_series` (series_names: a
    frontier per method, or per `by` level, and per time grid), `_front`, `_look`, `_fill`
    (marker_fill) and `_reference`."""
    timed = models.loc[models[y].notna() & models[x].notna()].copy()
    timed["_series"] = series_names(timed, by)
    timed["_front"] = frontier(timed, x, y, by="_series", maximize_y=maximize)
    timed["_look"] = looks(timed)[0]
    timed["_fill"] = pd.Series([marker_fill(r) for _, r in timed.iterrows()], index=timed.index, dtype=object)
    timed["_reference"] = timed["group"].map(lambda g: bool(styles[g]["reference"]))
    return timed


def error_bars(ax, part: pd.DataFrame, x: str, y: str, colour, *, alpha: float) -> bool:
    """Thin bars of the 95% intervals of `x` and `y` where these rows have them (a column without
    interval columns gets none); whether any was drawn."""
    xerr, yerr = error_extent(part, x), error_extent(part, y)
    if xerr is None and yerr is None:
        return False
    ax.errorbar(part[x], part[y], xerr=xerr, yerr=yerr, fmt="none", ecolor=colour, elinewidth=0.75, capsize=0,
                alpha=alpha, zorder=3.5)
    return True


def draw_points(ax, timed: pd.DataFrame, x: str, y: str) -> tuple[list, bool]:
    """The points in their look's colour and marker, filled by alpha_0 of sampling (hollow on the
    authors' time grid), faded off the frontier (dark-edged on it), the reference (AR) a big star,
    each with thin 95% error bars where the store has intervals. Returns the Line2D of each drawn
    group of points and whether any error bar was drawn."""
    _, palette, markers = looks(timed)
    lines, bars = [], False
    for on in (False, True):  # the frontier's points drawn last, on top
        for (name, fill, ref), part in timed.loc[timed["_front"].eq(on)].groupby(["_look", "_fill", "_reference"],
                                                                                 sort=False):
            colour, marker = palette[name], markers[name]
            bars |= error_bars(ax, part, x, y, colour, alpha=0.8 if on else 0.3)
            dark = on and fill == "full" and _filled(marker)
            line, = ax.plot(part[x], part[y], ls="none", marker=marker, ms=16 if ref else 7, color=colour,
                            fillstyle=fill, markerfacecoloralt="white", mec="black" if dark else colour,
                            mew=0.6 if dark else 1.3, alpha=1.0 if on else 0.35, zorder=4, label=f"_point {name}")
            lines.append(line)
    return lines, bars


def draw_fronts(ax, timed: pd.DataFrame, x: str, y: str, styles: dict, *, by: str) -> dict:
    """Each series' frontier as a line through its points on it (a series with one point has
    none): the method's colour (per `by` level: its first point's), long dashes on the authors'
    time grid. Returns series -> Line2D."""
    out = {}
    for name, g in timed.loc[timed["_front"]].groupby("_series", sort=False):
        if len(g) < 2:
            continue
        g = g.sort_values([x, y])
        first = g.iloc[0]
        colour = styles[first["group"]]["colour"] if by == "group" else point_style(first)["color"]
        grid = bool(on_reference_grid(g).iloc[0])
        out[name], = ax.plot(g[x], g[y], color=colour, ls=GRID_DASH if grid else "-", lw=1.8, zorder=3,
                             label=f"_frontier {name}")
    return out


def set_axes(ax, metric: X.Metric) -> bool:
    """Log time axis; a bounded score on a linear axis over its bounds, a lower-is-better one on
    a log axis, with plain-number ticks. Returns whether the y axis is logarithmic."""
    ax.set_xscale("log")
    plain_log_ticks(ax.xaxis)
    if metric.bounds is not None:
        lo, hi = metric.bounds
        ax.set_ylim(lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo))
        return False
    if not metric.higher_is_better:
        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis)
        return True
    return False


def axis_values(frame: pd.DataFrame, y: str) -> np.ndarray:
    """Every value of `y` and of its interval's ends in these rows (the range the methods need)."""
    if y not in frame.columns:
        return np.array([])
    lo, hi = X.interval(frame, y)
    values = pd.concat([pd.to_numeric(frame[y], errors="coerce"), lo, hi]).to_numpy(dtype=float)
    return values[np.isfinite(values)]


def draw_panel(ax, points: pd.DataFrame, x: str, y: str, styles: dict, *, metric: X.Metric, by: str = "group") -> dict:
    """Points (faded off the frontier, error bars where intervals exist), each series' frontier
    line, the reference (AR) as a star, an x on collapsed samples; a method with no time at all
    (the paper's AR) as a dashed level line in its colour; the calibration rows as labelled
    reference lines (draw_calibration). Returns what it drew: `points` (Line2D per group of
    points), `fronts` (series -> Line2D), `intervals` (any error bar), `calibration` (label ->
    "line" / "above" / "below"), `series` (each timed point's series)."""
    models, calibration = split_calibration(points.loc[points[y].notna()])
    timed = panel_points(models, x, y, styles, by=by, maximize=bool(metric.higher_is_better))
    lines, bars = draw_points(ax, timed, x, y)
    fronts = draw_fronts(ax, timed, x, y, styles, by=by)
    low = timed.loc[collapsed(points).reindex(timed.index, fill_value=False)]
    if len(low):
        ax.plot(low[x], low[y], ls="none", marker="x", color="#555555", ms=8.5, mew=1.2, zorder=5, label="_collapsed")
    for _, row in models.loc[~models["group"].isin(timed["group"])].iterrows():  # a method with no times: a level
        ax.axhline(row[y], color=styles[row["group"]]["colour"], ls="--", lw=1.2, zorder=2)
    log = set_axes(ax, metric)
    room = (-np.inf, np.inf) if metric.bounds is not None else calibration_room(axis_values(models, y), log=log)
    return dict(points=lines, fronts=fronts, intervals=bars, series=timed["_series"],
                calibration=draw_calibration(ax, calibration, y, room=room))


# ------------------------------------------------------------------- calibration rows
def calibration_room(values, *, log: bool) -> tuple[float, float]:
    """The band a calibration line may take without crushing the methods' points: their range
    widened by half its span on each side (in decades on a log axis, at least 0.15 of one);
    everything when the methods have no values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)] if log else v[np.isfinite(v)]
    if len(v) == 0:
        return -np.inf, np.inf
    if log:
        lo, hi = np.log10(v.min()), np.log10(v.max())
        pad = max(0.5 * (hi - lo), 0.15)
        return 10 ** (lo - pad), 10 ** (hi + pad)
    lo, hi = float(v.min()), float(v.max())
    pad = max(0.5 * (hi - lo), 0.05 * max(abs(hi), 1e-9))
    return lo - pad, hi + pad


def draw_calibration(ax, calibration: pd.DataFrame, y: str, *, room: tuple[float, float]) -> dict:
    """Each calibration row with a value of `y` (real text, the null samplers: no time, so no
    point) as a dashed reference line labelled at the right edge, its 95% interval a faint band;
    one outside `room` (calibration_room: all-EOS gen PPL) is not drawn, so that it does not crush
    the axis, but written at the top or bottom edge with an arrow and its value. Returns label ->
    "line", "above" or "below"."""
    if y not in calibration.columns:
        return {}
    rows = calibration.loc[pd.to_numeric(calibration[y], errors="coerce").notna()]
    lo, hi = X.interval(rows, y)
    values, where = {}, {}
    for i, row in rows.iterrows():
        label, v = str(row["label"]), float(row[y])
        values[label], where[label] = v, "line" if room[0] <= v <= room[1] else "above" if v > room[1] else "below"
        if where[label] == "line":
            ax.axhline(v, color=CALIBRATION_COLOUR, ls="--", lw=1.0, zorder=2, label=f"_calibration {label}")
            if pd.notna(lo[i]) and pd.notna(hi[i]):
                ax.axhspan(lo[i], hi[i], color=CALIBRATION_COLOUR, alpha=0.07, lw=0, zorder=1)
    side = {s: {k: values[k] for k in where if where[k] == s} for s in ("line", "above", "below")}
    if values:
        ax.set_ylim(ax.get_ylim())  # frozen now, so that the labels stay beside their lines
    label_lines(ax, side["line"], top=0.96 - 0.07 * len(side["above"]), bottom=0.01)
    for s, vals in (("above", side["above"]), ("below", side["below"])):
        mark_off_axis(ax, vals, top=s == "above")
    return where


def label_lines(ax, values: dict, *, top: float, bottom: float) -> None:
    """Labels of the calibration lines at the right edge, just above each, moved apart where two
    lines lie closer than a label's height (kept between `bottom` and `top`, axes fractions)."""
    gap = 0.055
    frac = {k: ax.transAxes.inverted().transform(ax.transData.transform((ax.get_xlim()[0], v)))[1]
            for k, v in values.items()}
    order = sorted(frac, key=frac.get)
    pos: list[float] = []
    for k in order:
        pos.append(max(frac[k], bottom, pos[-1] + gap if pos else -np.inf))
    shift = min(0.0, top - pos[-1]) if pos else 0.0
    for k, p in zip(order, pos):
        ax.text(0.99, p + shift + 0.006, k, transform=ax.transAxes, ha="right", va="bottom", fontsize=7.5,
                color=CALIBRATION_COLOUR, bbox=dict(fc="white", ec="none", alpha=0.75, pad=0.5), zorder=6)


def mark_off_axis(ax, values: dict, *, top: bool) -> None:
    """A calibration value too far out to draw: its label, an arrow and its value in the top
    right (above) or bottom left (below) corner, clear of the line labels at the right edge."""
    for k, (label, v) in enumerate(sorted(values.items(), key=lambda kv: kv[1], reverse=top)):
        y = 0.98 - 0.07 * k if top else 0.02 + 0.07 * k
        ax.text(0.99 if top else 0.01, y, f"{'↑' if top else '↓'} {label}: {v:.4g} (off the axis)",
                transform=ax.transAxes, ha="right" if top else "left",
                va="top" if top else "bottom", fontsize=7.5, color=CALIBRATION_COLOUR, zorder=6,
                bbox=dict(boxstyle="round,pad=0.25", fc="white", ec=CALIBRATION_COLOUR, lw=0.6, alpha=0.85))


# --------------------------------------------------------------------------- the legend
def collapse_label(points: pd.DataFrame) -> str:
    """The legend's words for the x on collapsed samples: the rule collapsed() applied to these
    points (real text's 5th percentile where a real-text row calibrates it, else AR's entropy)."""
    from analysis.rules import real_text_threshold  # imported here, as collapsed() does

    threshold, _ = real_text_threshold(points)
    if threshold is not None:
        return f"collapsed samples: entropy below real text's 5th percentile ({threshold:.3g})"
    return f"low entropy (< {COLLAPSE_RATIO:.0%} of AR's): collapsed samples"


def grid_groups(*frames: pd.DataFrame) -> list:
    """Methods with points on the authors' time grid, in the order they first appear."""
    return list(dict.fromkeys(g for f in frames if f is not None for g in f.loc[on_reference_grid(f), "group"]))


def legend_handles(groups, styles: dict, shaded: dict, *, paper_ref: str | None, collapse,
                   alphas: dict | None = None, grids=(), calibration: bool = False, intervals: bool = False) -> list:
    """One entry per method in its own marker (Display.marker; the reference's star; "o" for a
    method shaded by a field, whose markers are the shade entries), per shade value, per alpha_0 of sampling
    (its marker fill), per method's authors'-grid series, off the frontier, error bars, the
    calibration lines, collapsed samples (`collapse`: True, or the words of each rule drawn)
    and the paper's untimed reference line."""
    h = []
    for g in groups:
        ref = styles[g]["reference"]
        shaded_by = _given(styles[g].get("shade_by"))  # its markers are the shade entries' below
        h.append(Line2D([], [], color=styles[g]["colour"], marker="o" if shaded_by and not ref else styles[g]["marker"],
                        ms=12 if ref else 7, lw=0 if ref else 1.8, label=f"{g}" + ("" if ref else " (frontier line)")))
    h += [Line2D([], [], color=styles[g]["colour"], marker="o", fillstyle="none", ms=7, mew=1.3, ls=GRID_DASH, lw=1.8,
                 label=f"{g}{GRID_SUFFIX} (reference_grid)") for g in grids]
    for (field, value) in sorted(shaded, key=lambda fv: (fv[0], -fv[1])):
        h.append(Line2D([], [], color="#777777", marker=SHADE_MARKERS.get(value, "X"), lw=0, ms=7,
                        label=f"{shaded_name(shaded, field)}, {X.shown(field, long=True)} = {value:g}"))
    h += eval_handles(alphas or {})
    h += [Line2D([], [], color="#999999", marker="o", lw=0, ms=7, alpha=0.35, label="off the frontier")]
    return h + note_handles(styles, paper_ref=paper_ref, collapse=collapse, calibration=calibration,
                             intervals=intervals)


def eval_handles(alphas: dict, linestyles: dict | None = None) -> list:
    """An entry per alpha_0 of sampling: its marker fill (and, given `linestyles`, its line
    style), named by the families that sample at it."""
    h = []
    for a in sorted(alphas, reverse=True):
        fams = sorted(alphas[a])
        who = os.path.commonprefix(fams).rstrip(" (") or " / ".join(fams)
        ls = (linestyles or {}).get(a, "-")
        h.append(Line2D([], [], color="#555555", marker="o", ms=7, mew=1.3, fillstyle=EVAL_FILLS.get(a, "full"),
                        markerfacecoloralt="white", ls=ls if linestyles else "none", lw=1.5,
                        label=f"{who}, {X.shown('alpha_0_eval', long=True)} = {a:g}"))
    return h


def note_handles(styles: dict, *, paper_ref, collapse, calibration: bool, intervals: bool) -> list:
    h = []
    if intervals:
        h += [Line2D([], [], color="#777777", marker="+", ms=13, mew=0.75, lw=0,
                     label="thin bars: 95% bootstrap intervals")]
    if calibration:
        h += [Line2D([], [], color=CALIBRATION_COLOUR, ls="--", lw=1.0,
                     label="calibration rows (real text, null samplers; untimed), named at the right")]
    for words in ([f"low entropy (< {COLLAPSE_RATIO:.0%} of AR's): collapsed samples"] if collapse is True
                  else collapse or []):
        h += [Line2D([], [], color="#555555", marker="x", lw=0, ms=8, label=words)]
    if paper_ref is not None:
        h += [Line2D([], [], color=styles[paper_ref]["colour"], ls="--", lw=1.2,
                     label=f"paper's {paper_ref} (1M steps, v4 Table 3; no time given)")]
    return h


def collapse_labels(panels, names=("ours", "paper's")) -> list:
    """The collapse rule's words for each panel that flags some point; where the panels' rules
    differ (ours calibrated by real text, the paper's by AR), each named by its panel."""
    words = {n: collapse_label(p) for n, p in zip(names, panels) if collapsed(p).any()}
    if len(set(words.values())) < 2:
        return list(dict.fromkeys(words.values()))
    return [f"{n}: {w}" for n, w in words.items()]


# ---------------------------------------------------------------------------- the figure
def label_ours(ax, points: pd.DataFrame, summary: dict, ylabel: str) -> None:
    """Our panel's axis labels and title: the batch and device that were timed, the preset."""
    batch = points.get("batch_size", pd.Series(dtype=float)).dropna()
    env = summary.get("environment") or {}
    device = env.get("device") or f"{env.get('cpu', 'CPU')} CPU, {env.get('torch_threads', '?')} thread(s)"
    ax.set_xlabel(f"median sampling time per batch of {int(batch.iloc[0]) if len(batch) else '?'} (s, "
                  f"network passes; {device})")
    ax.set_ylabel(ylabel)
    ax.set_title(f"ours: {summary.get('preset', '')} ({summary.get('corpus', '?')}, L = "
                 f"{S.sequence_length(summary)}, {summary.get('num_samples', '?')} samples per point)", fontsize=10)


def draw_paper_panel(ax, paper: pd.DataFrame, styles: dict, m: X.Metric, ylabel: str):
    """The paper's panel (v4 Tables 13-15); returns its untimed reference method (AR) or None."""
    draw_panel(ax, paper, "time_s", m.name, styles, metric=m)
    ax.set_xlabel("mean sampling time per batch of 512 (s, H200)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{A.source_label(['13', '14', '15'])}: L = 1024, 5120 samples per point", fontsize=10)
    refs = paper.loc[is_reference(paper) & paper[m.name].notna(), "group"]
    return refs.iloc[0] if len(refs) else None


def pareto_figure(points: pd.DataFrame, paper: pd.DataFrame | None, *, metric: str = "gen_ppl",
                  summary: dict | None = None, by: str = "group"):
    """Our frontier and, in a separate panel (axes not comparable), the paper's."""
    setup_style()
    m = X.metric(metric)
    name, maximize = m.shown, bool(m.higher_is_better)
    summary = summary or {}
    paper = X.borrow_display(paper, points) if paper is not None and metric in paper.columns else None
    panels = [points] + ([paper] if paper is not None and paper[metric].notna().any() else [])
    models = [split_calibration(p)[0] for p in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.6 * len(panels), 5.0), squeeze=False)
    styles = group_styles(*models)
    ours = draw_panel(axes[0, 0], points, "time_median_s", metric, styles, metric=m, by=by)
    unit = "log scale" if not maximize else "higher is better"
    label_ours(axes[0, 0], points, summary, f"{name} ({unit}; {S.short_evaluator_name(points)})" if m.evaluator
               else f"{name} ({unit})")
    paper_ref = None
    if len(panels) > 1:
        paper_ref = draw_paper_panel(axes[0, 1], paper, styles, m,
                                     f"{name} ({unit}; GPT-2 Large)" if m.evaluator else f"{name} ({unit})")
    handles = legend_handles(ordered_groups(*models), styles, shades(*models), paper_ref=paper_ref,
                             collapse=collapse_labels(panels), alphas=sampling_alphas(*models),
                             grids=grid_groups(*models), calibration="line" in ours["calibration"].values(),
                             intervals=ours["intervals"])
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


def finite_points(points: pd.DataFrame, metric: str, figure: str) -> pd.DataFrame:
    """``points`` without those whose ``metric`` is infinite (a gen PPL of inf: a sample the judge
    gives probability 0, e.g. the true source judging an undertrained model), each dropped point
    named on stderr under ``figure``: it cannot stand on a log axis. Every figure of gen PPL
    (Pareto, NFE) draws through it."""
    value = points[metric].astype(float)
    off = points[np.isinf(value)]
    if not off.empty:
        names = ", ".join(f"{r.get('label')} {r.get('options_tag', '')}".strip() for _, r in off.iterrows())
        print(f"[analysis] {figure}: {len(off)} point(s) with {metric} = inf left out of the "
              f"figure ({names}); the tables show them", file=sys.stderr)
    return points[~np.isinf(value)]


def draw_pareto(results_dir) -> list[Path]:
    """figures/pareto_<metric>.* for every declared quality metric the store scored (gen PPL;
    MAUVE where it was scored), and the conditional task's pareto_conditional.* where the store
    has its rows (analysis/conditional.py)."""
    from analysis.conditional import draw_conditional

    results = Path(results_dir)
    df = S.load_results(results)
    summary = S.load_summary(results)
    out = draw_conditional(results, df, summary, save)
    points = S.speed_quality(df)
    if points.empty or points["time_median_s"].isna().all():
        print(f"[analysis] no sample rows with timings in {results / 'results.csv'}: no Pareto figure", file=sys.stderr)
        return out
    paper = A.paper_points()
    for metric in pareto_metrics(points):
        drawn = finite_points(points, metric, f"pareto_{metric} of {results}")
        if drawn[metric].notna().any():
            fig = pareto_figure(drawn, paper, metric=metric, summary=summary)
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
