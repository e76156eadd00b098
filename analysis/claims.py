"""The paper's findings (spec 10) as checks over results.csv: one row per claim with PASS, FAIL,
INCONCLUSIVE or NOT MEASURED, our numbers with their 95% intervals, the paper's and the table
they come from. The rules are data (analysis/rules.py, RULES); this module is the one engine that
evaluates them. Rules, tolerances and interval method: docs/analysis.md, "Claims report".

    python -m analysis.claims results/tiny                     # -> results/tiny/claims.md, claims.json
    python -m analysis.claims results/cpu --out /tmp/claims    # the same, written elsewhere
"""
from __future__ import annotations

import json
import math
import operator
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import anchors as A
from analysis import rules as R
from analysis import schema as X
from analysis import store as S
from analysis.pareto import COLLAPSE_RATIO, collapsed, is_reference, pareto_front
from analysis.rules import (CALIBRATION, FAMILY_AR, FAMILY_BD3, FAMILY_ESO_B, FAMILY_MDLM,  # noqa: F401
                            JUDGES, RULES, Check, Rows, Rule)

PASS, FAIL, INCONCLUSIVE, NOT_MEASURED = "PASS", "FAIL", "INCONCLUSIVE", "NOT MEASURED"
VERDICTS = (PASS, FAIL, INCONCLUSIVE, NOT_MEASURED)
PAPER_AR_ENTROPY = 5.26  # v4 Table 3, AR tries = 1: the paper's collapse threshold is 0.95 x this
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
SHORT = dict(num_orders="K", steps="T", steps_per_block="T'", alpha_0="a0", alpha_0_eval="a0_eval", block_size="L'")


@dataclass
class Claim:
    id: str
    statement: str
    source: str  # the paper's table(s)
    status: str = NOT_MEASURED
    ours: str = ""
    paper: str = ""
    rule: str = ""
    details: list[str] = field(default_factory=list)
    point: str = NOT_MEASURED  # the verdict at the point estimates, intervals ignored (the two-way rule)
    earlier: str = ""  # the verdict under the earlier rule, where the rule changed after a FAIL
    judges: dict = field(default_factory=dict)  # judge -> verdict, for gen-PPL claims


# ---------------------------------------------------------------------- numbers, verdicts
def _g(v) -> str:
    return f"{float(v):.4g}"


@dataclass(frozen=True)
class Num:
    """A measured value and its 95% interval (NaN bounds: no interval); `seeds`: the per-seed
    values it is the mean of ((train_seed, value), ...), where a model's training seeds were folded."""

    v: float
    lo: float = math.nan
    hi: float = math.nan
    seeds: tuple = ()

    @property
    def ci(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    def scaled(self, k: float) -> Num:
        return Num(self.v * k, self.lo * k, self.hi * k)

    def __str__(self) -> str:
        text = f"{_g(self.v)} [{_g(self.lo)}, {_g(self.hi)}]" if self.ci else _g(self.v)
        if self.seeds:
            text += f" (mean of {len(self.seeds)} seeds: " + ", ".join(f"{_seed(s)}: {_g(v)}" for s, v in self.seeds) + ")"
        return text


def _seed(s) -> str:
    return f"{int(s)}" if isinstance(s, (int, float)) and math.isfinite(s) and float(s).is_integer() else str(s)


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def num(row, metric: str) -> Num:
    """A row's metric with its interval columns (<metric>_lo, <metric>_hi) where present (and
    the per-seed values of a row folded over training seeds, fold_seeds)."""
    folded = row.get(SEEDS_COLUMN)
    seeds = folded.get(metric, ()) if isinstance(folded, dict) else ()
    return Num(_float(row.get(metric)), _float(row.get(f"{metric}_lo")), _float(row.get(f"{metric}_hi")), seeds)


def const(c: float) -> Num:
    """A declared bound: exact, so it has a zero-width interval."""
    return Num(float(c), float(c), float(c))


def ratio(a: Num, b: Num) -> Num:
    """a / b with the conservative interval from the two intervals (lo_a / hi_b, hi_a / lo_b)."""
    return Num(a.v / b.v, a.lo / b.hi, a.hi / b.lo)


def compare(a: Num, op: str, b: Num) -> tuple[str, bool | None]:
    """`a op b` three ways, and at the point estimates. PASS when the intervals clear it (for
    "<": hi(a) below lo(b)), FAIL when they clear the opposite (lo(a) above hi(b)), else
    INCONCLUSIVE; a number without an interval clears nothing. NOT MEASURED on a NaN value."""
    if not (math.isfinite(a.v) and math.isfinite(b.v)):
        return NOT_MEASURED, None
    point = bool(OPS[op](a.v, b.v))
    if not (a.ci and b.ci):
        return INCONCLUSIVE, point
    below = op in ("<", "<=")
    ok = OPS[op](a.hi, b.lo) if below else OPS[op](a.lo, b.hi)
    bad = a.lo > b.hi if below else a.hi < b.lo
    return (PASS if ok else FAIL if bad else INCONCLUSIVE), point


@dataclass
class Part:
    """One measured part of a claim: its verdict, its outcome at the point estimates, its numbers."""

    verdict: str
    point: bool | None
    text: str
    no_interval: bool = False


def part(label: str, verdicts: list[tuple[str, bool | None]], text: str, nums=()) -> Part:
    """A part from its comparisons: any FAIL fails it, a missing number leaves it not measured,
    PASS needs every comparison to clear its interval."""
    points = [p for _, p in verdicts]
    point = None if any(p is None for p in points) or not points else all(points)
    missing = any(not n.ci for n in nums)
    return Part(combine([v for v, _ in verdicts]), point, f"{label}: {text}" if label else text, missing)


def combine(verdicts: list[str]) -> str:
    """FAIL if any part fails, else NOT MEASURED if a part could not be measured, else
    INCONCLUSIVE if a part's margin is inside its interval, else (every part clears) PASS."""
    if not verdicts:
        return NOT_MEASURED
    return next((v for v in (FAIL, NOT_MEASURED, INCONCLUSIVE) if v in verdicts), PASS)


def point_verdict(parts: list[Part]) -> str:
    """The two-way verdict at the point estimates (the rule before intervals)."""
    points = [p.point for p in parts]
    if any(p is False for p in points):
        return FAIL
    return PASS if points and all(p is True for p in points) else NOT_MEASURED


# ----------------------------------------------------------------------------- selection
def _bool(col: pd.Series) -> pd.Series:
    return col.astype(str).str.lower().isin(("true", "1", "1.0"))


def _col(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame.columns else pd.Series(np.nan, index=frame.index)


def _fam(frame: pd.DataFrame) -> pd.Series:
    """Each row's method family (display.family)."""
    return _col(frame, "display.family").astype(object)


def _methods(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of methods: the calibration rows (real text, null samplers) left out."""
    return frame.loc[~_col(frame, "group").astype(str).eq(CALIBRATION)] if len(frame) else frame


def select(frames: dict, rows: Rows) -> pd.DataFrame:
    """The rows a check declares (analysis.rules.Rows), never a calibration row."""
    f = _methods(frames.get(rows.stage, pd.DataFrame()))
    if f.empty:
        return f
    keep = pd.Series(True, index=f.index)
    if rows.families:
        keep &= _fam(f).isin(rows.families)
    if rows.exclude:
        keep &= ~_fam(f).isin(rows.exclude)
    if rows.exact is not None:
        keep &= _bool(_col(f, "exact")).eq(rows.exact)
    for name, value in rows.where:
        column = _col(f, name)
        if value is None:  # the column empty or absent (an older store)
            keep &= column.isna() | column.astype(str).str.strip().isin(("", "nan", "None"))
        else:
            keep &= _bool(column).eq(value) if isinstance(value, bool) else column.eq(value)
    return f.loc[keep]


# ------------------------------------------------------------------------- training seeds
SEEDS_COLUMN = "_seeds"  # a folded row's {metric: ((train_seed, value), ...)}


def fold_seeds(rows: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, list[str]]:
    """The rows with each model trained from several seeds as one row (analysis.rules.SEEDS): rows
    equal on every key column present are one model's seeds; its row (the lowest seed's) gets the
    mean over the seeds with a value, and the 95% interval mean -+ sqrt((t975(n-1) sd / sqrt(n))^2 +
    h^2), h the mean per-seed bootstrap half-width on that side (the seed spread and the test
    sequences' noise, independent); no interval where a seed's row has none. A model with one
    seed, and a frame without a train_seed column, are returned as they are. Also a line per
    folded model (its seeds' values and intervals) for the report."""
    column = R.SEEDS["column"]
    if rows.empty or column not in rows.columns or metric not in rows.columns:
        return rows, []
    key = [k for k in R.SEEDS["key"] if k in rows.columns]
    groups = [g for _, g in rows.groupby(key, sort=False, dropna=False)] if key else [rows]
    if all(len(g) < 2 for g in groups):
        return rows, []
    out, lines = [], []
    for g in groups:
        if len(g) < 2:
            out += [r for _, r in g.iterrows()]
            continue
        g = g.assign(_order=pd.to_numeric(g[column], errors="coerce")).sort_values("_order", na_position="last")
        row, line = _folded(g.drop(columns="_order"), metric, column)
        out.append(row)
        lines.append(line)
    folded = pd.DataFrame(out).infer_objects()
    return folded.loc[[i for i in rows.index if i in folded.index]], lines


def _folded(g: pd.DataFrame, metric: str, column: str) -> tuple[pd.Series, str]:
    """One model's seed rows (lowest seed first) as its one row, and its line for the report."""
    main = g.iloc[0].copy()
    per = [(r.get(column), num(r, metric)) for _, r in g.iterrows()]
    got = [(s, n) for s, n in per if math.isfinite(n.v)]
    lo_c, hi_c = f"{metric}_lo", f"{metric}_hi"
    if got:
        v = np.array([n.v for _, n in got])
        n = len(v)
        spread = R.T975[min(n - 1, max(R.T975))] * v.std(ddof=1) / math.sqrt(n) if n >= 2 else 0.0
        with_ci = all(x.ci for _, x in got)
        down = float(np.mean([x.v - x.lo for _, x in got])) if with_ci else math.nan
        up = float(np.mean([x.hi - x.v for _, x in got])) if with_ci else math.nan
        mean = float(v.mean())
        main[metric], main[lo_c], main[hi_c] = mean, mean - math.hypot(spread, down), mean + math.hypot(spread, up)
    else:
        main[metric] = main[lo_c] = main[hi_c] = math.nan
    main[SEEDS_COLUMN] = {metric: tuple((s, x.v) for s, x in got)}
    each = ", ".join(f"seed {_seed(s)}: {x}" for s, x in per)
    missing = f"; {len(per) - len(got)} of {len(per)} seeds not measured" if len(got) < len(per) else ""
    return main, (f"{main.get('label')}: {len(got)} training seeds ({each}), mean {num(main, metric)}"
                  f"{missing}")


def _seed_rows(check: Check, rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The rows of a check, its models' training seeds folded where it declares `seeds`."""
    return fold_seeds(rows, check.metric) if check.p("seeds") else (rows, [])


def _seed_note(lines: list[str]) -> list[str]:
    """The report's lines on folded seeds (none where every model has one seed)."""
    if not lines:
        return []
    return [f"training seeds folded: each model's value is the mean over its seeds, its 95% interval "
            f"{R.SEEDS['interval']}: " + "; ".join(dict.fromkeys(lines))]


def _name(keys, values) -> str:
    values = values if isinstance(values, tuple) else (values,)
    return ", ".join(f"{SHORT.get(k, k)}={v:g}" if isinstance(v, float) else f"{v}" for k, v in zip(keys, values))


@dataclass
class Outcome:
    """What one check gives: its parts, its numbers in a line, and details for the report."""

    parts: list[Part]
    ours: str = ""
    details: list[str] = field(default_factory=list)


def _outcome(parts: list[Part]) -> Outcome:
    """The usual outcome: the parts' texts as the numbers, the parts that do not pass as details."""
    word = {FAIL: "fails", INCONCLUSIVE: "inside the interval", NOT_MEASURED: "not measured"}
    details = [f"{'no interval' if p.no_interval and p.verdict == INCONCLUSIVE else word[p.verdict]}: {p.text}"
               for p in parts if p.verdict != PASS]
    return Outcome(parts, "; ".join(p.text for p in parts), details)


def _missing(text: str) -> Outcome:
    return Outcome([Part(NOT_MEASURED, None, text)], text, [text])


# ---------------------------------------------------------------------------- the kinds
def check_falls(check: Check, frames: dict, ctx: dict) -> Outcome:
    """Within each group of `by`, the metric falls along `x` (sorted by `order`)."""
    rows, x, by = select(frames, check.rows), check.p("x"), list(check.p("by"))
    if rows.empty or x not in rows.columns or check.metric not in rows.columns:
        return _missing(f"{check.label}: no rows")
    rows, seeds = _seed_rows(check, rows)
    rows = rows.dropna(subset=[x, check.metric])
    groups = rows.groupby(by, sort=False, dropna=False) if by else [((), rows)]
    parts = [p for key, g in groups for p in _falls_group(check, by, key, g)]
    if not parts:
        return _missing(f"{check.label}: no group with >= 2 values of {x} (a trend needs 2)")
    out = _outcome(parts)
    out.details += _seed_note(seeds)
    return out


def _falls_group(check: Check, by: list, key, g: pd.DataFrame) -> list[Part]:
    x, tol = check.p("x"), float(check.p("tol", 0.0))
    g = g.sort_values(x, ascending=check.p("order") == "ascending").drop_duplicates(x)
    if len(g) < 2:
        return []
    nums = [num(r, check.metric) for _, r in g.iterrows()]
    op = "<" if tol == 0 else "<="
    verdicts = [compare(b, op, a.scaled(1 + tol)) for a, b in zip(nums, nums[1:])]
    if check.p("ends"):
        verdicts.append(compare(nums[-1], "<", nums[0]))
    text = ", ".join(f"{SHORT.get(x, x)}={float(v):g} {n}" for v, n in zip(g[x], nums))
    return [part(_name(by, key) if by else check.label, verdicts, text, nums)]


def _value(row, check: Check) -> Num:
    """A row's value: its metric, or the lowest of the declared `bound` metrics."""
    nums = [num(row, m) for m in check.p("bound", (check.metric,))]
    nums = [n for n in nums if math.isfinite(n.v)]
    return min(nums, key=lambda n: n.v) if nums else Num(math.nan)


def check_below(check: Check, frames: dict, ctx: dict) -> Outcome:
    """Each row of `rows` (or its lowest, `a_best`) below every row of `against` (matched on `match`)."""
    a_rows, b_rows = select(frames, check.rows), select(frames, check.against)
    if a_rows.empty or b_rows.empty:
        return Outcome([]) if check.p("optional") else _missing(f"{check.label}: no rows on one side")
    (a_rows, a_seeds), (b_rows, b_seeds) = _seed_rows(check, a_rows), _seed_rows(check, b_rows)
    a_rows = a_rows.assign(_v=[_value(r, check).v for _, r in a_rows.iterrows()])
    if check.p("a_best"):
        a_rows = a_rows.loc[[a_rows["_v"].idxmin()]]
    parts = []
    for _, a in a_rows.iterrows():
        b = b_rows
        for m in check.p("match", ()):
            b = b.loc[b[m].eq(a[m])]
        if b.empty:
            continue
        parts.append(_below_part(check, a, b))
    if not parts and not check.p("optional"):
        return _missing(f"{check.label}: no matching rows")
    out = _outcome(parts)
    out.details += _seed_note(a_seeds + b_seeds)
    return out


def _below_part(check: Check, a, b: pd.DataFrame) -> Part:
    va = _value(a, check)
    vbs = [(r, _value(r, check)) for _, r in b.iterrows()]
    best, vbest = min(vbs, key=lambda rv: rv[1].v)
    above = [f"{r['label']} {vb}" for r, vb in vbs if compare(va, "<", vb)[1] is False]
    text = f"{a['label']} {va}, best other {best['label']} {vbest}" + (f" (at or below it: {', '.join(above)})"
                                                                       if above else "")
    return part(check.label, [compare(va, "<", vb) for _, vb in vbs], text, [va, *(vb for _, vb in vbs)])


def check_below_paired(check: Check, frames: dict, ctx: dict) -> Outcome:
    """Within each row, metric <= `other` (at each `per` group's largest `at_max`)."""
    rows, other, at = select(frames, check.rows), check.p("other"), check.p("at_max")
    if rows.empty:
        return _missing(f"no {check.rows.stage} rows of {', '.join(check.rows.families)}")
    if other not in rows.columns or rows[other].isna().all():
        return _missing(f"sequences differ: these rows carry no same-sequence `{other}`; the rows that have it use "
                        f"other sequences, so comparing them would compare different sequences")
    parts = []
    for label, g in rows.groupby(check.p("per"), sort=False):
        top = g.loc[g[at].idxmax()]
        a, b = num(top, check.metric), num(top, other)
        seqs = int(top["num_sequences"]) if pd.notna(top.get("num_sequences")) else "?"
        text = f"{label} {SHORT.get(at, at)}={int(top[at])}: {check.metric} {a} vs {other} {b} ({seqs} seqs)"
        parts.append(part("", [compare(a, "<=", b)], text, [a, b]))
    return _outcome(parts)


def _pick(rows: pd.DataFrame, metric: str, how: str):
    """The row a ratio takes when several labels share a length: the slowest ("max") or fastest."""
    rows = rows.dropna(subset=[metric]) if metric in rows.columns else rows.iloc[:0]
    if rows.empty:
        return None
    return rows.loc[rows[metric].idxmax() if how == "max" else rows[metric].idxmin()]


def _ratio_num(check: Check, n, d) -> Num:
    """The ratio of two rows' metric: with the paired interval over the rounds of their one clock
    where both carry them (analysis.store.paired_ratio), else the conservative one from the two
    intervals; a declared ratio interval column on the numerator row wins over both."""
    paired = S.paired_ratio(n, d) if check.metric == "time_mean_s" else None
    r = Num(*paired) if paired else ratio(num(n, check.metric), num(d, check.metric))
    col = check.p("ratio_column")
    if col and math.isfinite(_float(n.get(f"{col}_lo"))):
        return Num(r.v, _float(n.get(f"{col}_lo")), _float(n.get(f"{col}_hi")))
    return r


def check_ratio(check: Check, frames: dict, ctx: dict) -> Outcome:
    """rows / against at each judged length `op` `bound`; with `grow`, rising with length."""
    num_rows, den_rows = select(frames, check.rows), select(frames, check.against)
    lengths = sorted(_col(frames.get("longctx", pd.DataFrame()), "length").dropna().unique())
    if not lengths:
        return _missing("no longctx rows")
    judged = lengths[-1:] if check.p("at") == "longest" else lengths
    groups = list(num_rows.groupby("group", sort=True)) if check.p("per_group") else [(check.label, num_rows)]
    parts, series = [], []
    for L in judged:
        d = _pick(den_rows.loc[den_rows["length"].eq(L)], check.metric, check.p("against_pick"))
        for g, rows in groups or [(check.label, num_rows)]:
            n = _pick(rows.loc[rows["length"].eq(L)], check.metric, check.p("pick"))
            label = f"L={int(L)}: {str(g).replace('BD3-LM ', 'BD3 ')}" + ("/Eso" if check.p("per_group") else "")
            if n is None or d is None:
                parts.append(Part(NOT_MEASURED, None, f"{label}: no row on one side"))
                continue
            r = _ratio_num(check, n, d)
            series.append(r)
            parts.append(part("", [compare(r, check.p("op"), const(check.p("bound")))], f"{label} {r}", [r]))
    if check.p("grow"):
        parts.append(_growing(check, series))
    return _outcome(parts)


def _growing(check: Check, series: list[Num]) -> Part:
    if len(series) < 2:
        return Part(NOT_MEASURED, None, f"{check.label}: {len(series)} length(s) measured: 'growing with L' needs 2")
    verdicts = [compare(b, ">", a) for a, b in zip(series, series[1:])]
    return part(f"{check.label} growing with L", verdicts, " -> ".join(str(r) for r in series), series)


# ---------------------------------------------------------------------------- C6 frontier
def point_name(row) -> str:
    """A sweep point as the report names it: label and sample options."""
    bits = [str(row.get("label", row.get("group")))]
    for col, short in (("steps", "T"), ("steps_per_block", "T'"), ("alpha_0_eval", "a0_eval")):
        v = row.get(col)
        if v is not None and pd.notna(v):
            bits.append(f"{short}={float(v):g}")
    if str(row.get("reference_grid")).lower() == "true":
        bits.append("reference grid")
    return " ".join(bits)


def _matched(target, by: pd.DataFrame, x: str, y: str, tol: float) -> tuple[str, bool | None]:
    """Is `target` matched by some row of `by` (within tol or better on both axes)? PASS when one
    clears it beyond the intervals, FAIL when every one is beyond them on some axis."""
    tx, ty = num(target, x).scaled(1 + tol), num(target, y).scaled(1 + tol)
    each = [(combine([vx, vy]), px and py) for (vx, px), (vy, py) in
            ((compare(num(e, x), "<=", tx), compare(num(e, y), "<=", ty)) for _, e in by.iterrows())]
    verdict = PASS if any(v == PASS for v, _ in each) else FAIL if all(v == FAIL for v, _ in each) else INCONCLUSIVE
    return verdict, any(p for _, p in each)


def _covered(targets: pd.DataFrame, by: pd.DataFrame, x: str, y: str, tol: float) -> pd.Series:
    """True where some point of `by` is at most (1 + tol) x the target on both axes (points only)."""
    bx, byy = by[x].to_numpy(float), by[y].to_numpy(float)
    return pd.Series([bool(np.any((bx <= tx * (1 + tol)) & (byy <= ty * (1 + tol))))
                      for tx, ty in zip(targets[x], targets[y])], index=targets.index, dtype=bool)


def _gap(pts: pd.DataFrame, y: str) -> pd.DataFrame:
    """The points with the column "1 - y" and its interval (1 - hi, 1 - lo)."""
    lo, hi = (pts[c] if c in pts.columns else pd.Series(np.nan, index=pts.index) for c in (f"{y}_lo", f"{y}_hi"))
    return pts.assign(**{f"1 - {y}": 1 - pts[y], f"1 - {y}_lo": 1 - hi, f"1 - {y}_hi": 1 - lo})


def check_frontier(check: Check, frames: dict, ctx: dict) -> Outcome:
    """Every timed point of every family other than the checked one's matched by one of its points."""
    x, y, tol = check.p("x"), check.metric, float(check.p("tol"))
    pts = _methods(frames.get("points", pd.DataFrame()))
    if pts.empty or x not in pts.columns or y not in pts.columns:
        return _missing("no timed sample points")
    if check.p("flip"):  # a similarity in [0, 1] (higher is better): its gap 1 - y, lower is better
        pts, y = _gap(pts, y), f"1 - {y}"
    pts = pts.loc[pts[x].notna() & pts[y].notna()]
    own, rivals = select({"points": pts}, check.rows), pts.loc[~_fam(pts).isin(check.rows.families)]
    if own.empty or rivals.empty:
        return _missing(f"no timed {', '.join(check.rows.families)} point, or no timed point of another family")
    parts, details = [], []
    for _, r in rivals.iterrows():
        verdict, point = _matched(r, own, x, y, tol)
        where = f"{point_name(r)} ({r.get('display.family')}; {num(r, x)} s, {y} {num(r, y)})"
        parts.append(Part(verdict, point, where, not (num(r, x).ci and num(r, y).ci)))
        if verdict == FAIL or point is False:
            details.append(f"not matched: {where}")
    families = ", ".join(sorted(_fam(rivals).astype(str).unique()))
    ours = (f"{sum(bool(p.point) for p in parts)} of {len(parts)} points of the other families ({families}) matched or "
            f"beaten at the point estimates; beyond the intervals: {sum(p.verdict == PASS for p in parts)} matched, "
            f"{sum(p.verdict == FAIL for p in parts)} not")
    front = pts.loc[pareto_front(pts[x], pts[y])]
    details.append("not dominated by any point (all methods): " + "; ".join(
        f"{point_name(r)} ({_g(r[x])} s, {_g(r[y])})" for _, r in front.iterrows()))
    return Outcome(parts, ours, details)


# ---------------------------------------------------------------------------- C7 collapse
def _many_step_row(rows_of: pd.DataFrame, row, grids: str):
    """The row at the largest step count of the same label and alpha_0_eval as `row`: the
    model's many-step samples. grids "either": on either time grid (the reference grid is sampled
    at one and two steps per block only, so its own largest step count is no many-step value; our
    grid's row is taken where both have the largest); "same": of the row's own grid."""
    same = rows_of.loc[rows_of["label"].eq(row["label"])]
    for col in ("alpha_0_eval",) + (("reference_grid",) if grids == "same" else ()):
        if col in same.columns:
            v = row.get(col)
            same = same.loc[same[col].isna()] if pd.isna(v) else same.loc[same[col].astype(str).eq(str(v))]
    if not len(same):
        return None
    steps = same["steps"].astype(float)
    top = same.loc[steps.eq(steps.max())]
    if "reference_grid" in top.columns and len(top) > 1:
        own = top.loc[~_bool(top["reference_grid"])]
        top = own if len(own) else top
    return top.iloc[0]


def _threshold(sample: pd.DataFrame, flag: str) -> tuple[float | None, str]:
    """The entropy threshold of the collapse flag: the calibrated one (analysis.pareto.collapsed),
    or the earlier rule's 95% of AR's mean entropy ("ar_ratio")."""
    if flag == "calibrated":
        low = collapsed(sample)
        return low.attrs.get("threshold"), low.attrs.get("rule", "")
    ref = _col(sample, "entropy").loc[is_reference(sample)].dropna()
    return (COLLAPSE_RATIO * float(ref.iloc[0]), "95% of AR's mean entropy") if len(ref) else (None, "no AR row")


def _flagged(row, threshold: float | None) -> bool:
    """The collapse flag of one row: its upper bound (the point without an interval) below the threshold."""
    e = num(row, "entropy")
    return threshold is not None and (e.hi if e.ci else e.v) < threshold


def _criteria(r, sample: pd.DataFrame, check: Check, threshold) -> tuple[list, Num]:
    """The collapse criteria that apply to a row, each three ways (PASS: collapsed): entropy below
    the flag's threshold (unless the many-step samples are flagged too, with the exemption), gen
    PPL above `factor` x the many-step value (not at the largest step count); and that ratio."""
    many = _many_step_row(sample, r, check.p("many_step"))
    crit = []
    exempt = check.p("exemption") and many is not None and many.name != r.name and _flagged(many, threshold)
    if threshold is not None and not exempt:
        crit.append(compare(num(r, "entropy"), "<", const(threshold)))
    rn = ratio(num(r, check.metric), num(many, check.metric)) if many is not None else Num(math.nan)
    top = sample.loc[sample["label"].eq(r["label"]), "steps"].max()
    if math.isfinite(rn.v) and r["steps"] != top:
        crit.append(compare(rn, ">", const(check.p("factor"))))
    return crit, rn


def _state(r, sample: pd.DataFrame, check: Check, threshold) -> tuple[str | None, bool | None, Num]:
    """Has the row collapsed? ("collapsed", "not collapsed", "unclear" or None when no criterion
    applies), at the point estimates, and its gen PPL over the many-step value."""
    crit, rn = _criteria(r, sample, check, threshold)
    if not crit or any(v == NOT_MEASURED for v, _ in crit):
        return None, None, rn
    state = ("collapsed" if any(v == PASS for v, _ in crit) else
             "not collapsed" if all(v == FAIL for v, _ in crit) else "unclear")
    return state, any(p for _, p in crit), rn


def _collapse_parts(r, eso: pd.DataFrame, sample: pd.DataFrame, check: Check, threshold) -> tuple[list[Part], str]:
    b_state, b_point, b_ratio = _state(r, sample, check, threshold)
    near = eso.loc[(eso["nfe"] - r["nfe"]).abs().eq((eso["nfe"] - r["nfe"]).abs().min())]
    e_states = [_state(e, sample, check, threshold) for _, e in near.iterrows()]
    b_verdict = {"collapsed": PASS, "not collapsed": FAIL, "unclear": INCONCLUSIVE}.get(b_state, NOT_MEASURED)
    states = [s for s, _, _ in e_states]
    e_verdict = (NOT_MEASURED if None in states else FAIL if "collapsed" in states else
                 PASS if all(s == "not collapsed" for s in states) else INCONCLUSIVE)
    e_point = None if None in states else not any(p for _, p, _ in e_states)
    text = (f"{point_name(r)} NFE {_g(r['nfe'])}: {check.metric} {num(r, check.metric)} ({_g(b_ratio.v)}x many-step), "
            f"entropy {num(r, 'entropy')} -> {b_state or 'not measured'}; Eso-LM (B) at NFE "
            + ", ".join(f"{_g(e['nfe'])} {point_name(e)}: {num(e, check.metric)} ({_g(x.v)}x), entropy "
                        f"{num(e, 'entropy')} -> {s or 'not measured'}" for (_, e), (s, _, x) in
                        zip(near.iterrows(), e_states)))
    nums = [num(r, "entropy"), *(num(e, "entropy") for _, e in near.iterrows())]
    return [Part(b_verdict, b_point, text, any(not n.ci for n in nums)), Part(e_verdict, e_point, "", False)], text


def check_collapse(check: Check, frames: dict, ctx: dict) -> Outcome:
    """One step per block: the BD3-LM rows collapse, the closest-NFE rows of `against` do not."""
    sample, length = frames.get("sample", pd.DataFrame()), ctx.get("length")
    if not length:
        return _missing("sequence length L unknown (no summary.json data.length)")
    if sample.empty:
        return _missing("no sample rows")
    grid = check.p("reference_grid")
    bd3 = select(frames, check.rows)
    bd3 = bd3.loc[_bool(_col(bd3, "reference_grid")).eq(grid)]
    bd3 = bd3.loc[np.isclose(_col(bd3, "steps").astype(float), length / _col(bd3, "block_size").astype(float))]
    eso = select(frames, check.against)
    eso = eso.loc[eso["nfe"].notna()] if len(eso) else eso
    if bd3.empty or eso.empty:
        return _missing(("no BD3-LM row at one step per block" if bd3.empty else "no Eso-LM (B) sample row")
                        + (" with the reference grid" if grid else ""))
    threshold, how = _threshold(sample, check.p("flag"))
    methods = _methods(sample)
    parts, lines = [], []
    for _, r in bd3.iterrows():
        p, line = _collapse_parts(r, eso, methods, check, threshold)
        parts += p
        lines.append(line)
    flag = f"collapse flag: {how}" if threshold is not None else f"no collapse threshold ({how}): the entropy " \
                                                                  f"criterion is not applied"
    return Outcome(parts, "; ".join(lines), [flag])


KINDS = dict(falls=check_falls, below=check_below, below_paired=check_below_paired, ratio=check_ratio,
             frontier=check_frontier, collapse=check_collapse)


# ----------------------------------------------------------------------------- the engine
def _for_judge(check: Check, judge: str) -> Check:
    return replace(check, metric=judge) if check.metric == JUDGES[0] else check


def run_checks(checks, frames: dict, ctx: dict, judge: str = JUDGES[0]) -> Outcome:
    """Every check of a claim under one judge, their outcomes joined."""
    outs = [KINDS[c.kind](_for_judge(c, judge), frames, ctx) for c in checks]
    return Outcome([p for o in outs for p in o.parts], "; ".join(o.ours for o in outs if o.ours),
                   [d for o in outs for d in o.details])


def _judges(frames: dict) -> list[str]:
    """The gen-PPL judges scored in this store (the primary always)."""
    present = [j for j in JUDGES[1:] for f in (frames.get("sample", pd.DataFrame()),) if j in f.columns
               and f[j].notna().any()]
    return [JUDGES[0], *present]


def _second_judges(c: Claim, rule: Rule, frames: dict, ctx: dict) -> None:
    """Each other judge's verdict; where one differs from the primary's (or at the point
    estimates), the claim says so and is INCONCLUSIVE."""
    c.judges = {JUDGES[0]: c.status}
    for judge in _judges(frames)[1:]:
        out = run_checks(rule.checks, frames, ctx, judge)
        status, point = combine([p.verdict for p in out.parts]), point_verdict(out.parts)
        c.judges[judge] = status
        if (status, point) != (c.status, c.point) and NOT_MEASURED not in (status, c.status):
            c.ours += (f"; the judges disagree: {JUDGES[0]} {c.status} (point: {c.point}), {judge} {status} "
                       f"(point: {point})")
            c.status = INCONCLUSIVE
        c.details.append(f"under {judge}: {status} (point: {point}): {out.ours}")


def evaluate_rule(rule: Rule, frames: dict, ctx: dict) -> Claim:
    """One claim from its declared rule: the verdict, the numbers, the other judges' verdicts and
    the verdict under its earlier rule."""
    c = Claim(rule.id, rule.statement, rule.source, rule=rule.text)
    out = run_checks(rule.checks, frames, ctx)
    c.status, c.point = combine([p.verdict for p in out.parts]), point_verdict(out.parts)
    c.ours, c.details = out.ours or "-", list(out.details)
    if c.status == INCONCLUSIVE and any(p.no_interval for p in out.parts):
        c.details.insert(0, f"no interval on some numbers (no <metric>_lo/_hi columns): they cannot clear one; at "
                            f"the point estimates: {c.point}")
    if rule.judged:
        _second_judges(c, rule, frames, ctx)
    if rule.earlier is not None:
        e = run_checks(rule.earlier.checks, frames, ctx)
        c.earlier = (f"under the rule of {rule.earlier.date} ({rule.earlier.commit}): "
                     f"{combine([p.verdict for p in e.parts])} (point: {point_verdict(e.parts)})")
        c.details.append(f"{c.earlier}; changed because {rule.earlier.reason}")
    if any(ch.rows.stage in ("sample", "points") for ch in rule.checks):
        c.details += identical_note(frames)
    c.details += list(rule.notes)
    return c


def frames_of(df: pd.DataFrame) -> dict:
    """The stages the rules read, bare-named: eval, longctx, sample and the timed points."""
    df = X.ensure(df)
    if "stale" not in df.columns:  # a hand-made frame
        df = df.assign(stale=False)
    out = {stage: _rows(df, stage) for stage in ("eval", "longctx", "sample")}
    out["points"] = S.speed_quality(df) if len(out["sample"]) else out["sample"]
    out["_raw_sample"] = out["sample"]
    out["sample"], _ = identical_once(out["sample"])
    out["points"], _ = identical_once(out["points"])
    return out


def identical_once(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The rows with each set of identical samples once (analysis.rules.IDENTICAL: rows of one
    label with the same samples_digest kept at their fewest steps), and a line per row left out.
    Rows without a digest (calibration rows keep theirs; a store written before digests) stay."""
    column, within = R.IDENTICAL["column"], list(R.IDENTICAL["within"])
    if rows.empty or column not in rows.columns or any(w not in rows.columns for w in within):
        return rows, []
    digest = rows[column].astype(str).str.strip()
    has = rows[column].notna() & ~digest.isin(("", "nan", "None"))
    order = pd.to_numeric(_col(rows, "steps"), errors="coerce").fillna(math.inf).sort_values(kind="stable").index
    ranked = rows.loc[order].assign(_digest=digest.loc[order])
    dup = ranked.duplicated(subset=within + ["_digest"], keep="first") & has.loc[order]
    firsts = ranked.loc[~dup].drop_duplicates(subset=within + ["_digest"])
    lines = []
    for _, r in ranked.loc[dup].iterrows():
        same = firsts.loc[firsts["_digest"].eq(r["_digest"])]
        for w in within:
            same = same.loc[same[w].eq(r[w])]
        lines.append(f"{point_name(r)} drew the same samples as {point_name(same.iloc[0])}: counted once, as the latter")
    return rows.loc[[i for i in rows.index if i not in set(ranked.index[dup])]], lines


def identical_note(frames: dict) -> list[str]:
    """The report's line on sample rows counted once (none where no two are identical)."""
    df = frames.get("_raw_sample")
    lines = identical_once(df)[1] if df is not None else []
    return [f"identical samples counted once ({R.IDENTICAL['keep']}): " + "; ".join(lines)] if lines else []


def _rows(df: pd.DataFrame, stage: str) -> pd.DataFrame:
    """S.rows, but an empty result keeps every column (so that the checks can still select)."""
    out = S.rows(df, stage)
    return X.view(X.ensure(df)).iloc[:0] if out.empty else out


def evaluate_claims(df: pd.DataFrame, *, length: int | None = None, table: tuple[Rule, ...] = RULES,
                    anchors: pd.DataFrame | None = None) -> list[Claim]:
    """Every claim of the rule table checked on one results frame; `length` is the preset's L (C7)."""
    anch = A.load_anchors() if anchors is None else anchors
    frames = frames_of(df)
    paper = X.borrow_display(A.paper_points(anch), X.view(X.ensure(df)))
    claims = [evaluate_rule(r, frames, dict(length=length)) for r in table]
    for c in claims:
        c.paper = PAPER[c.id](anch, paper) if c.id in PAPER else ""
    return claims


# ---------------------------------------------------------------------------- the paper
def _anchor(anch: pd.DataFrame, table: str, **ident) -> pd.DataFrame:
    sel = anch.loc[anch["table"].eq(table)]
    for k, v in ident.items():
        sel = sel.loc[sel[k].eq(v)] if isinstance(v, str) else sel.loc[np.isclose(sel[k].astype(float), v)]
    return sel


def _falls(values: list[float], tol: float = 0.0) -> bool:
    return all((b < a) if tol == 0 else (b <= a * (1 + tol)) for a, b in zip(values, values[1:]))


def _paper_c1(anch, paper) -> str:
    out = []
    for ds in ("LM1B", "OWT"):
        p = _anchor(anch, "1", dataset=ds, group=FAMILY_ESO_B, estimator="nelbo").sort_values("alpha_0", ascending=False)
        out.append(f"{ds}: " + " > ".join(f"{v:g} (a0={a:g})" for a, v in zip(p["alpha_0"], p["value"])))
    return "; ".join(out)


def _paper_c2(anch, paper) -> str:
    out = []
    for ds in ("LM1B", "OWT"):
        p = _anchor(anch, "1", dataset=ds, group=FAMILY_ESO_B)
        pairs = [(al, g.loc[g["estimator"].eq("exact"), "value"], g.loc[g["estimator"].eq("nelbo"), "value"])
                 for al, g in p.groupby("alpha_0", sort=False)]
        out.append(f"{ds}: " + ", ".join(f"a0={al:g} {e.iloc[0]:g} <= {n.iloc[0]:g}" for al, e, n in pairs
                                        if len(e) and len(n)))
    return "; ".join(out)


def _paper_c2k(anch, paper) -> str:
    t7 = anch.loc[anch["table"].isin(["6", "7", "8"])]
    held = [_falls(list(g.sort_values("num_orders")["value"])) for _, g in t7.groupby(["table", "method", "alpha_0"],
                                                                                      dropna=False)]
    return f"falls with K in {sum(held)} of {len(held)} rows of Tables 6-8 (e.g. Table 7 a0=1: 37.53 at K=1 -> 31.65 " \
           f"at K=5000)"


def _paper_c3(anch, paper) -> str:
    out = []
    for ds in ("LM1B", "OWT"):
        p = _anchor(anch, "1", dataset=ds, estimator="nelbo")
        p = p.loc[p["method"].isin([FAMILY_BD3, FAMILY_MDLM])].sort_values("block_size", ascending=False,
                                                                           na_position="first")
        out.append(f"{ds}: " + " > ".join(f"{v:g} ({g})" for g, v in zip(p["group"], p["value"])))
    return "; ".join(out)


def _paper_c3ft(anch, paper) -> str:
    return _paper_c3(anch, paper).split("; ")[0] + " (the paper's LM1B BD3-LMs are finetuned from MDLM)"


def _paper_c4(anch, paper) -> str:
    p = _anchor(anch, "1")
    out = ""
    for ds in ("LM1B", "OWT"):
        d = p.loc[p["dataset"].eq(ds)]
        low = d.loc[d["value"].idxmin()]
        out += f"{ds}: lowest {low['value']:g} ({low['row']}); "
    return out + "(Eso-LM a0=0 ties: it is an AR)"


def _paper_c5(anch, paper) -> str:
    out = []
    for L, d in anch.loc[anch["table"].eq("11")].groupby("length"):
        t = dict(zip(d["group"], d["value"]))  # the paper's numbers, keyed by its method names
        eso = t[FAMILY_ESO_B]
        bd3 = " ".join(f"{g.replace('BD3-LM ', 'BD3 ')}/Eso {v / eso:.2f}"
                       for g, v, m in zip(d["group"], d["value"], d["method"]) if m == FAMILY_BD3)
        out.append(f"L={L}: Eso/AR {eso / t[FAMILY_AR]:.2f} MDLM/Eso {t[FAMILY_MDLM] / eso:.1f} {bd3}")
    return "; ".join(out) + " (the paper's own Eso/AR at 8192 is above 1.25)"


def _paper_c6(anch, paper) -> str:
    pts = paper.loc[paper["time_s"].notna() & paper["gen_ppl"].notna()]
    own, rivals = pts.loc[_fam(pts).eq(FAMILY_ESO_B)], pts.loc[_fam(pts).ne(FAMILY_ESO_B)]
    cov = _covered(rivals, own, "time_s", "gen_ppl", 0.05)
    return (f"{int(cov.sum())} of {len(cov)} timed points of the other families "
            f"({', '.join(sorted(_fam(rivals).astype(str).unique()))}) of Tables 14-15 matched or beaten by Table 13")


def _paper_c7(anch, paper) -> str:
    return ("Table 15: L'=4 T'=1 (NFE 512) gen PPL 184.86, entropy 4.00 (5.3x its T'=16 value 34.93; entropy < "
            f"{COLLAPSE_RATIO * PAPER_AR_ENTROPY:.2f} = 95% of AR's 5.26); Table 13: Eso-LM (B) a0_eval=0.5 T=16 "
            "(NFE 529) gen PPL 70.78-100.22, entropy 5.5")


def _paper_c8(anch, paper) -> str:
    p = paper.loc[_fam(paper).eq(FAMILY_ESO_B)]
    held = [_falls(list(g.sort_values("alpha_0_eval", ascending=False)["gen_ppl"].dropna()))
            for _, g in p.groupby(["alpha_0", "steps"], dropna=False) if g["alpha_0_eval"].nunique() >= 2]
    return (f"holds in {sum(held)} of {len(held)} (a0 of training, T) (e.g. a0=1, T=16: 25.36 < 51.11 < 72.16 < "
            f"119.89 at a0_eval 0.0625, 0.25, 0.5, 1)")


def _paper_c9(anch, paper) -> str:
    p = paper.loc[_fam(paper).eq(FAMILY_MDLM)].sort_values("steps")
    return ", ".join(f"T={t:g} {v:g}" for t, v in zip(p["steps"], p["gen_ppl"]))


PAPER = {"C1": _paper_c1, "C2": _paper_c2, "C2-K": _paper_c2k, "C3": _paper_c3, "C3-ft": _paper_c3ft,
         "C4": _paper_c4, "C5": _paper_c5,
         "C6": _paper_c6, "C7": _paper_c7, "C7-ref": lambda a, p: _paper_c7(a, p) + "; the reference grid is the "
         "authors' own", "C8": _paper_c8, "C9": _paper_c9}


# ------------------------------------------------------------------------------ report
def summary_lines(claims: list[Claim]) -> list[str]:
    """One line per claim: id, result, statement, our numbers (shortened)."""
    out = []
    for c in claims:
        ours = c.ours if len(c.ours) <= 110 else c.ours[:107] + "..."
        out.append(f"{c.id:<7} {c.status:<13} {c.statement} | ours: {ours}")
    return out


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def counts_line(claims: list[Claim]) -> str:
    return ", ".join(f"{sum(c.status == v for c in claims)} {v}" for v in VERDICTS)


def render_markdown(claims: list[Claim], title: str, table: tuple[Rule, ...] = RULES) -> str:
    lines = [f"# Claims report: {title}", "",
             f"{counts_line(claims)}. Each claim is one of the paper's findings (spec 10) checked on results.csv by the "
             "declared rules of analysis/rules.py (docs/analysis.md, \"Claims report\"; changes: "
             "docs/claims_changelog.md). PASS and FAIL only where the margin clears the 95% intervals, shown as "
             "`value [lo, hi]`; a number without one cannot clear it (INCONCLUSIVE, with the verdict at the point "
             "estimates). Our numbers and the paper's are not the same quantity (corpus, length, model size, "
             "evaluator, device): a claim compares within one side only.", "",
             f"Rule table fingerprint: `{R.fingerprint(table)}`.", "",
             "| claim | result | statement | ours | paper | source |", "|---|---|---|---|---|---|"]
    for c in claims:
        result = f"**{c.status}**" + (f" ({c.earlier})" if c.earlier else "")
        lines.append(f"| {c.id} | {result} | {_cell(c.statement)} | {_cell(c.ours)} | {_cell(c.paper)} | {c.source} |")
    lines.append("")
    for c in claims:
        lines += [f"## {c.id}: {c.status}", "", c.statement + f" ({c.source}).", "", f"Rule: {c.rule}.", "",
                  f"At the point estimates: {c.point}." + (f" Earlier rule: {c.earlier}." if c.earlier else ""), "",
                  f"Ours: {c.ours}", "", f"Paper: {c.paper}", ""]
        lines += [f"* {d}" for d in c.details] + ([""] if c.details else [])
    return "\n".join(lines)


def write_claims(results_dir, *, out_dir=None, table: tuple[Rule, ...] = RULES) -> tuple[list[Claim], list[Path]]:
    """claims.md and claims.json from results.csv (and summary.json's L), in `out_dir`
    (default: the results folder)."""
    results = Path(results_dir)
    out = Path(out_dir) if out_dir is not None else results
    out.mkdir(parents=True, exist_ok=True)
    df = S.load_results(results)
    summary = S.load_summary(results)
    claims = evaluate_claims(df, length=S.sequence_length(summary), table=table)
    stale = int(df["stale"].sum()) if "stale" in df.columns else 0
    title = f"{summary.get('preset', results.name)} ({len(df)} rows, {stale} stale)"
    md, js = out / "claims.md", out / "claims.json"
    runs = timing_run_verdicts(results, summary, table)
    md.write_text(render_markdown(claims, title, table) + _timing_runs_markdown(runs) + "\n")
    js.write_text(json.dumps(dict(results=str(results), fingerprint=R.fingerprint(table),
                                  rules=[asdict(r) for r in table], claims=[asdict(c) for c in claims],
                                  timing_runs=runs),
                             indent=1, default=str) + "\n")
    return claims, [md, js]


TIMED = ("C5", "C6", "C6-dist")  # the claims a timing run decides (longctx and clock rows)


def timing_run_verdicts(results: Path, summary: dict, table: tuple[Rule, ...] = RULES) -> dict:
    """{claim id: {timing run: (status, our numbers)}} of the timed claims under each timing run of
    a store with several (Preset.clock runs), {} with one: each run is a fresh clock, and its
    verdicts must agree with the first's (issue 25 item 4)."""
    df = S.load_results(results)
    runs = df.attrs.get("timing_runs") or []
    if len(runs) < 2:
        return {}
    out: dict = {cid: {} for cid in TIMED}
    for run in runs:
        for c in evaluate_claims(S.load_results(results, timing_run=run), length=S.sequence_length(summary),
                                 table=table):
            if c.id in out:
                out[c.id][run] = (c.status, c.ours)
    return out


def _timing_runs_markdown(runs: dict) -> str:
    if not runs:
        return ""
    lines = ["", "## The timed claims under each timing run", "",
             "Each timing run is a fresh clock (one interleaved clock job and the NFE = L jobs again); the report "
             "above reads the first. The verdicts must agree.", "",
             "| claim | " + " | ".join(f"timing run {r}" for r in next(iter(runs.values()))) + " | same |",
             "|---|" + "---|" * (len(next(iter(runs.values()))) + 1)]
    for cid, by_run in runs.items():
        same = len({status for status, _ in by_run.values()}) == 1
        cells = [f"{status}: {ours[:160]}".replace("|", "\\|") for status, ours in by_run.values()]
        lines.append(f"| {cid} | " + " | ".join(cells) + f" | {'yes' if same else 'NO'} |")
    return "\n".join(lines)


def report(results_dir, log=print, out_dir=None) -> list[Path]:
    """What `run.py pareto|tables` calls at the end: claims.md/json and samples.md (in the
    results folder only), a line per claim."""
    from analysis.excerpts import write_samples

    claims, paths = write_claims(results_dir, out_dir=out_dir)
    for line in summary_lines(claims):
        log(line)
    log(f"claims report: {paths[0]} (and {paths[1].name}); {counts_line(claims)}")
    samples = write_samples(results_dir) if out_dir is None else None
    if samples:
        log(f"sample excerpts: {samples}")
        paths.append(samples)
    return paths


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = None
    if len(args) == 3 and args[1] == "--out":
        args, out = args[:1], args[2]
    if len(args) != 1:
        print("usage: python -m analysis.claims results/<preset> [--out DIR]", file=sys.stderr)
        return 2
    report(args[0], out_dir=out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
