"""The conditional task's table and figure (issue 27 item 3; esolm/metrics/conditional.py): every
method's completions of held-out passages, per form, with the quality and the time per example.

    python -m analysis.conditional results/cpu   # -> tables/conditional.*, figures/pareto_conditional.*

``conditional`` (tables/): a row per method and form: its sample options, NFE, seconds per example,
the conditional NLL of the completed sequences and of the truth under both judges, chrF, token
match and the distributional similarity, each with its 95 % interval; a method that does not
sample under a form is named in the notes. ``pareto_conditional`` (figures/): the first judge's
conditional NLL against seconds per example, one panel per form, each method in its Display
colour and marker with its interval bars, the frontier over the methods and the truth's level.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from analysis import schema as X
from analysis import store as S
from analysis.render import Col, Table

STAGE = "conditional"
FORM_ORDER = ("prefix", "infill")
FORM_WORDS = {"prefix": "prefix: the first half given, the second half free",
              "infill": "infill: the middle quarter free, the rest given"}
QUALITY = [("cond_nll", "cond NLL", ".3f"), ("ref_nll", "truth NLL", ".3f"),
           ("cond_nll_judge2", "cond NLL (2nd judge)", ".3f"), ("ref_nll_judge2", "truth NLL (2nd judge)", ".3f"),
           ("chrf", "chrF", ".1f"), ("token_match", "token match", ".3f"), ("dist_sim", "dist. sim.", ".3f")]


# --------------------------------------------------------------------------------- rows
def conditional_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The conditional rows, bare names, with ``sampler`` (the sample options as text) and the
    forms in task order, methods in the paper's order within a form."""
    from analysis.pareto import ordered_groups

    rows = X.stage_rows(df, STAGE, S.EVALUATOR_GROUP)
    if rows.empty:
        return X.view(rows)
    opts = X.columns(rows, "options")
    sampler = [", ".join(f"{X.bare(c)}={_plain(r[c])}" for c in opts if pd.notna(r[c])) for _, r in rows.iterrows()]
    out = X.view(rows).assign(sampler=sampler)
    order = ordered_groups(out)
    keys = out.assign(_f=out["form"].map(lambda f: FORM_ORDER.index(f) if f in FORM_ORDER else len(FORM_ORDER)),
                      _g=out["group"].map(lambda g: order.index(g) if g in order else len(order)),
                      _a=-pd.to_numeric(out.get("alpha_0", pd.Series(np.nan, index=out.index)), errors="coerce").fillna(0))
    return out.loc[keys.sort_values(["_f", "_g", "_a"], kind="stable").index].reset_index(drop=True)


def _plain(v) -> str:
    """An option's value as written in a preset (a whole float as an int: steps=1000000)."""
    if isinstance(v, (float, np.floating)):
        return str(int(v)) if float(v).is_integer() else f"{v:g}"
    return str(v)


def skipped(rows: pd.DataFrame) -> pd.Series:
    """Rows of a form the method does not sample under (their config says why)."""
    if "skipped" not in rows.columns:
        return pd.Series(False, index=rows.index)
    return rows["skipped"].notna() & rows["skipped"].astype(str).ne("")


# -------------------------------------------------------------------------------- table
def conditional_table(df: pd.DataFrame, summary: dict) -> Table | None:
    """The table ``conditional`` (None when the store has no conditional row)."""
    from analysis.tables import _col

    rows = conditional_rows(df)
    if rows.empty:
        return None
    ran = rows.loc[~skipped(rows)].rename(columns={"group": "method"})
    cols = [Col("method", "method", "s"), Col("alpha_0", X.shown("alpha_0"), "g"), Col("form", "form", "s"),
            Col("sampler", "sample options", "s"),
            Col("nfe", "NFE", ".1f"), _col(ran, "sec_per_example", "s / example", ".3g"),
            *[_col(ran, key, header, fmt) for key, header, fmt in QUALITY]]
    cols = [c for c in cols if c.key in ran.columns and ran[c.key].notna().any()]
    keep = [c for c in ran.columns if not c.startswith("display.")]
    return Table("conditional", "The conditional task: held-out passages completed, scored against the truth",
                 ran[keep].reset_index(drop=True), cols, _notes(rows, summary))


def _notes(rows: pd.DataFrame, summary: dict) -> list[str]:
    from analysis.tables import _missing_note, _stale_note

    env, ran = summary.get("environment") or {}, rows.loc[~skipped(rows)]
    first = ran.iloc[0] if len(ran) else pd.Series(dtype=object)
    judge2 = f"; 2nd judge: {S.evaluator_name(ran, 'evaluator2')}" if "evaluator2" in ran and ran["evaluator2"].notna().any() else ""
    out = [(f"ours: {summary.get('corpus', '?')}, L = {S.sequence_length(summary)}, preset {summary.get('preset', '?')}: "
            f"{_count(first, 'num_examples')} held-out test passages per form ({'; '.join(FORM_WORDS.values())}), the "
            f"same passages for every method; each method samples the free positions with its own conditional sampler "
            f"and the options shown, nucleus p = {_plain(first.get('top_p', '?'))}; judge: {S.evaluator_name(ran)}{judge2}."),
           ("cond NLL = the judge's NLL (nats per scored token) of the completed passage read left to right, over "
            "the free tokens and, for an infill, the given suffix after them (how the completion joins its right "
            "context); truth NLL = the same for the held-out passage itself: the level of a perfect completion, "
            "the same for every method of a form. chrF = character 6-gram F-score with beta = 2 (Popović 2015) "
            "of the free span against the truth's, 0-100; token match = fraction of free positions equal to the "
            "truth; dist. sim. = 1 - JSD of pooled byte k-grams of the free spans against the truths' (docs/metrics.md)."),
           (f"s / example = seconds of a whole sampling call (device synchronized, an untimed warm-up call first) "
            f"over its examples, mean over {_count(first, 'timed_calls')} timed calls of {_count(first, 'batch_size')} "
            f"examples ({_count(first, 'rounds')} pass(es) over the passages) on "
            f"{env.get('device') or env.get('cpu', 'CPU')} ({env.get('torch_threads', '?')} thread(s)); NFE = network "
            "calls per sampling call (mean). [lo, hi] = 95 % bootstrap interval over passages (over timed calls for "
            "time).")]
    out += [f"Not run: {r['group']} ({r['form']}): {r['skipped']}." for _, r in rows.loc[skipped(rows)].iterrows()]
    return out + _stale_note(ran) + _missing_note(summary)


def _count(row: pd.Series, key: str) -> str:
    v = row.get(key)
    return f"{float(v):g}" if v is not None and pd.notna(v) else "?"


# ------------------------------------------------------------------------------- figure
def conditional_figure(rows: pd.DataFrame, summary: dict):
    """The first judge's conditional NLL against seconds per example, a panel per form."""
    import matplotlib.pyplot as plt

    from analysis.pareto import setup_style

    setup_style()
    ran = rows.loc[~skipped(rows) & rows["cond_nll"].notna() & rows["sec_per_example"].notna()]
    forms = [f for f in FORM_ORDER if f in set(ran["form"])] + sorted(set(ran["form"]) - set(FORM_ORDER))
    fig, axes = plt.subplots(1, len(forms), figsize=(6.2 * len(forms), 5.0), squeeze=False)
    for ax, form in zip(axes[0], forms):
        draw_form(ax, ran.loc[ran["form"].eq(form)], form)
    env = summary.get("environment") or {}
    fig.legend(handles=legend(ran), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8.5, frameon=False)
    fig.suptitle(f"Conditional task ({summary.get('preset', '')}: {summary.get('corpus', '?')}, L = "
                 f"{S.sequence_length(summary)}): the judge's NLL of the completed passages (lower is better) against "
                 f"seconds per example\n({S.short_evaluator_name(ran)}; whole sampling calls on "
                 f"{env.get('device') or env.get('cpu', 'CPU')})", fontsize=10.5)
    fig.tight_layout()
    return fig


def draw_form(ax, part: pd.DataFrame, form: str) -> None:
    """One form's panel: the methods' points with their interval bars, the frontier over the
    methods (grey), the truth's NLL as a dashed level with its interval band."""
    from analysis.pareto import draw_points, panel_points, plain_log_ticks

    styles = _styles(part)
    timed = panel_points(part, "sec_per_example", "cond_nll", styles, by="form", maximize=False)
    draw_points(ax, timed, "sec_per_example", "cond_nll")
    front = timed.loc[timed["_front"]].sort_values(["sec_per_example", "cond_nll"])
    if len(front) > 1:
        ax.plot(front["sec_per_example"], front["cond_nll"], color="#777777", lw=1.2, zorder=2)
    ref = pd.to_numeric(part["ref_nll"], errors="coerce").dropna()
    if len(ref):
        ax.axhline(float(ref.iloc[0]), color="#4d4d4d", ls="--", lw=1.0, zorder=1)
        lo, hi = X.interval(part, "ref_nll")
        if lo.notna().any():
            ax.axhspan(float(lo.dropna().iloc[0]), float(hi.dropna().iloc[0]), color="#4d4d4d", alpha=0.07, lw=0)
    ax.set_xscale("log")
    plain_log_ticks(ax.xaxis)
    ax.set_xlabel("seconds per example (whole sampling call / examples)")
    ax.set_ylabel("conditional NLL (nats per scored token)")
    ax.set_title(FORM_WORDS.get(form, form), fontsize=10)


def _styles(frame: pd.DataFrame) -> dict:
    from analysis.pareto import group_styles

    return group_styles(frame)


def legend(ran: pd.DataFrame) -> list:
    """A marker per look (the method, and alpha_0 of training where it shades), then the frontier,
    the truth's level and the interval bars."""
    from analysis.pareto import point_style, shade

    h, seen = [], set()
    for _, row in ran.iterrows():
        field, value = shade(row)
        name = f"{row['group']}, {X.shown(field, long=True)} = {value:g}" if field else str(row["group"])
        if name not in seen:
            seen.add(name)
            style = point_style(row)
            h.append(Line2D([], [], color=style["color"], marker=style["marker"], lw=0, ms=7, label=name))
    return h + [Line2D([], [], color="#999999", marker="o", lw=0, ms=7, alpha=0.35, label="off the frontier (faded)"),
                Line2D([], [], color="#777777", lw=1.2, label="frontier over the methods"),
                Line2D([], [], color="#4d4d4d", ls="--", lw=1.0, label="held-out truth under the same judge (band: 95 %)"),
                Line2D([], [], color="#777777", marker="+", ms=13, mew=0.75, lw=0, label="thin bars: 95% bootstrap intervals")]


# -------------------------------------------------------------------------------- entry
def write_conditional(results_dir) -> list[Path]:
    """tables/conditional.* and figures/pareto_conditional.* (nothing when the store has no
    conditional row)."""
    from analysis.pareto import save

    results = Path(results_dir)
    df, summary = S.load_results(results), S.load_summary(results)
    table = conditional_table(df, summary)
    if table is None:
        return []
    out = table.write(S.output_dir(results, "tables"))
    return out + draw_conditional(results, df, summary, save)


def draw_conditional(results: Path, df: pd.DataFrame, summary: dict, save) -> list[Path]:
    """figures/pareto_conditional.png/.pdf where some row has a time and a conditional NLL."""
    rows = conditional_rows(df)
    need = ["cond_nll", "sec_per_example"]
    if rows.empty or not set(need) <= set(rows.columns) or rows.loc[~skipped(rows), need].dropna().empty:
        return []
    return save(conditional_figure(rows, summary), S.output_dir(results, "figures") / "pareto_conditional")


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m analysis.conditional results/<preset>", file=sys.stderr)
        return 2
    for p in write_conditional(args[0]):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
