"""The paper's tables from the results store, our numbers with the paper's beside them
(spec 10): Table 1 (test PPL), Tables 6-8 (IW vs K), Table 11 (NFE = L latency),
Tables 13-15 (gen PPL, entropy, MAUVE, time per configuration) and Table 16 (XSum summaries,
analysis/table16.py), each as Markdown, LaTeX and CSV under results/<preset>/tables/. Matching
rules: docs/analysis.md.

    python -m analysis.tables results/tiny
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import anchors as A
from analysis import schema as X
from analysis import store as S
from analysis.claims import FAMILY_AR, FAMILY_ESO_B
from analysis.conditional import conditional_table
from analysis.pareto import collapsed, group_styles, ordered_groups, split_calibration
from analysis.render import BLANK, Col, Table
from analysis.table5 import table5
from analysis.table16 import table16

NOT_SAME = ("Ours and the paper's are not the same quantity (corpus, sequence length, model size, training budget, "
            "evaluator and device all differ): read them side by side, never as a difference.")


def _order(frame: pd.DataFrame, *styled: pd.DataFrame) -> pd.DataFrame:
    """Rows in the paper's method order (the display of the `styled` rows, by default the
    frame's own), then block size, then alpha_0 of training (high first)."""
    order = ordered_groups(*(styled or (frame,)))
    order += sorted(set(frame["group"]) - set(order), key=str)
    keys = frame.assign(_g=frame["group"].map(order.index),
                        _b=frame.get("block_size", pd.Series(np.nan, index=frame.index)).fillna(0),
                        _a=-frame.get("alpha_0", pd.Series(np.nan, index=frame.index)).fillna(0))
    return frame.loc[keys.sort_values(["_g", "_b", "_a"], kind="stable").index]


def _anchor(anchors: pd.DataFrame, table: str, **ident):
    """The one paper number of `table` with this identity (NaN-valued identity keys must be NaN there)."""
    sel = anchors.loc[anchors["table"].eq(table)]
    for k, v in ident.items():
        if v is None or (isinstance(v, float) and np.isnan(v)):
            sel = sel.loc[sel[k].isna()]
        elif isinstance(v, str):
            sel = sel.loc[sel[k].eq(v)]
        else:
            sel = sel.loc[np.isclose(sel[k].astype(float), float(v))]
    return sel.iloc[0] if len(sel) == 1 else None


def _marks(anchor) -> str:
    """The paper's footnote markers on a number (¶ △ ‡ † r c)."""
    if anchor is None:
        return ""
    keys = A.anchors_meta()["footnotes"]
    return "".join(n for n in anchor["notes"] if n in keys)


def _setup(summary: dict, length) -> str:
    return f"ours: {summary.get('corpus', '?')}, L = {length}, preset {summary.get('preset', '?')}"


def _stale_note(frame: pd.DataFrame) -> list[str]:
    n = int(frame["stale"].sum()) if "stale" in frame.columns else 0
    return [f"{n} row(s) come from records of an older code version (stale); rerun the preset to refresh them."] if n else []


# ------------------------------------------------------------------------- intervals
@dataclass
class IntervalCol(Col):
    """A shown column whose cells read ``x [lo, hi]``: the value, its std where the column has
    one, the 95 % interval from the data columns ``lo`` and ``hi`` (same format as the value;
    left out in a row without one), then the footnote marks. The CSV keeps lo and hi as columns."""

    lo: str = ""
    hi: str = ""

    def cell(self, row: pd.Series) -> str:
        text = Col.cell(Col(self.key, self.header, self.fmt, std=self.std), row)
        lo, hi = row.get(self.lo), row.get(self.hi)
        if text != BLANK and pd.notna(lo) and pd.notna(hi):
            text += f" [{format(float(lo), self.fmt)}, {format(float(hi), self.fmt)}]"
        if self.marks and isinstance(row.get(self.marks), str):
            text += row[self.marks]
        return text


def _col(data: pd.DataFrame, key: str, header: str, fmt: str, **kw) -> Col:
    """A shown column of ``key``: with its interval (``key``_lo, ``key``_hi) when some row of the
    data has one, else the plain column (records written before intervals)."""
    lo, hi = X.bounds_of(key)
    if X.has_interval(data, key):
        return IntervalCol(key, header, fmt, lo=lo, hi=hi, **kw)
    return Col(key, header, fmt, **kw)


def _first(rows: pd.DataFrame, name: str, metric: str) -> dict:
    """{name, name_lo, name_hi}: ``metric`` and its interval from the first of ``rows`` (NaN
    where there is no row or no interval)."""
    first = rows.iloc[0] if len(rows) else pd.Series(dtype=object)
    (lo, hi), (out_lo, out_hi) = X.bounds_of(metric), X.bounds_of(name)
    return {name: first.get(metric, np.nan), out_lo: first.get(lo, np.nan), out_hi: first.get(hi, np.nan)}


def _with_intervals(names: list[str], frame: pd.DataFrame) -> list[str]:
    """The columns ``names`` with each one's interval columns after it, where the frame has them."""
    return [c for n in names for c in (n, *X.bounds_of(n)) if c == n or c in frame.columns]


# ----------------------------------------------------------------------------- Table 1
def table1(df: pd.DataFrame, anchors: pd.DataFrame, summary: dict) -> Table:
    """Test perplexity per model: exact (largest K we ran) with the NELBO on the same
    sequences and seed (the exact run's own nelbo_ppl), then the NELBO run (the first N test
    sequences, the whole split unless the preset caps it); each with its sequence count. A
    NELBO from another run never fills the same-sequence column; the paper's LM1B and OWT
    columns beside."""
    ev, seeds = _seed_replicates(S.rows(df, "eval"))
    rows = [dict(_table1_row(label, g, seeds), **_table1_paper(g.iloc[0], anchors))
            for label, g in ev.groupby("label", sort=False)]
    data = _order(pd.DataFrame(rows), ev).rename(columns={"group": "method"})
    return Table("table1_test_ppl", "Table 1: test perplexity", data, _table1_columns(data),
                 _table1_notes(data, summary))


def _table1_row(label: str, g: pd.DataFrame, seeds: dict) -> dict:
    """Ours for one model: its exact row at the largest K (with the same run's NELBO), its NELBO run."""
    first = g.iloc[0]
    exact = g.loc[g["exact"].astype(str).eq("True")] if "exact" in g else g.iloc[:0]
    exact = exact.sort_values("num_orders") if len(exact) else exact  # no exact run: no num_orders column
    nelbo = g.loc[g["exact"].astype(str).ne("True")] if "exact" in g else g
    top = exact.iloc[-1] if len(exact) else None
    same = top.get("nelbo_ppl", np.nan) if top is not None else np.nan  # same run: same sequences, same seed
    return dict(group=first["group"], label=label, alpha_0=first.get("alpha_0", np.nan),
                block_size=first.get("block_size", np.nan),
                **_first(exact.iloc[-1:], "exact_ppl", "ppl"),
                exact_K=top["num_orders"] if top is not None else np.nan,
                exact_sequences=top["num_sequences"] if top is not None else np.nan,
                **_first(exact.iloc[-1:], "nelbo_ppl", "nelbo_ppl"),  # same run: same sequences, same seed
                **_first(nelbo, "nelbo_split_ppl", "ppl"),
                nelbo_split_sequences=nelbo["num_sequences"].iloc[0] if len(nelbo) else np.nan,
                test_sequences=g["num_sequences"].max(), stale=bool(g["stale"].any()),
                nelbo_seeds=seeds.get(_seed_key(first), ""),
                exact_mark="*" if top is not None and pd.isna(same) else "")


def _table1_paper(first: pd.Series, anchors: pd.DataFrame) -> dict:
    """The paper's LM1B and OWT numbers (exact and NELBO) of the same method, L' and alpha_0."""
    a0 = first.get("alpha_0", np.nan)
    a0 = a0 if pd.notna(a0) else None
    out = {}
    for ds in ("LM1B", "OWT"):
        for est in ("exact", "nelbo"):
            anc = _anchor(anchors, "1", group=first["group"], alpha_0=a0, dataset=ds, estimator=est)
            out[f"paper_{ds.lower()}_{est}"] = anc["value"] if anc is not None else np.nan
            out[f"paper_{ds.lower()}_{est}_notes"] = _marks(anc)
    return out


def _table1_columns(data: pd.DataFrame) -> list[Col]:
    paper = A.source_label("1", None)
    cols = [Col("method", "method", "s"), Col("alpha_0", "α0 (train)", "g"),
            _col(data, "exact_ppl", "exact PPL", ".2f", marks="exact_mark"), Col("exact_K", "K", "g"),
            _col(data, "nelbo_ppl", "NELBO PPL, same seqs", ".2f"), Col("exact_sequences", "seqs", "g"),
            _col(data, "nelbo_split_ppl", "NELBO PPL, NELBO run", ".2f"), Col("nelbo_split_sequences", "seqs", "g")]
    if data["nelbo_seeds"].ne("").any():
        cols.append(Col("nelbo_seeds", "NELBO PPL over training seeds", "s"))
    return cols + [Col(f"paper_{d.lower()}_{e}", f"{d} {e}", ".2f", group=paper, marks=f"paper_{d.lower()}_{e}_notes")
                   for d in ("LM1B", "OWT") for e in ("exact", "nelbo")]


def _table1_notes(data: pd.DataFrame, summary: dict) -> list[str]:
    used = sorted({m for c in data.filter(like="_notes") for s in data[c] for m in s})
    foot = A.anchors_meta()["footnotes"]
    unpaired = ["* no NELBO on the exact run's sequences in its record (a record of an older code version): "
                "this exact PPL has no like-for-like NELBO; the NELBO run is another set of sequences."
                ] if data["exact_mark"].eq("*").any() else []
    return [(f"{_setup(summary, S.sequence_length(summary))}; exact = the IW bound with the largest K we ran "
             "(AR: its exact likelihood), and beside it the NELBO computed in the same run on the same test "
             "sequences with the same seed (AR: the same number); 'seqs' = test sequences behind the number(s) "
             "to its left. The NELBO run is its own job, on the first 'seqs' test sequences (the whole split "
             "unless the preset caps it): compare it with the exact PPL only when the two counts agree."),
            ("paper: LM1B (L = 128, 1M steps) and OWT (L = 1024, 250K steps); Eso-LM exact = IW bound with K = 5000 "
             "(LM1B) / 1000 (OWT); MDLM LM1B exact = IW with K = 1000."),
            "Matching rule: same method, block size L′ and α0 of training.", NOT_SAME, *unpaired,
            *[f"{m}: {foot[m]}" for m in used], *_stale_note(data)]


# --------------------------------------------------------------------------- Tables 6-8
def _seed_key(row: pd.Series) -> str:
    return "|".join(str(row.get(c)) for c in ("group", "alpha_0", "block_size", "init_from"))


def _seed_replicates(ev: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """(the eval rows of the main training seed, {model key: "mean ± sd (n seeds: v1, v2, ...)"} of
    the NELBO PPL over every training seed where a model has several (cpu: seeds 1-3, the claims
    fold them, analysis/claims.py))."""
    if "train_seed" not in ev.columns or ev["train_seed"].nunique() < 2:
        return ev, {}
    seed = pd.to_numeric(ev["train_seed"], errors="coerce")
    nelbo = ev.loc[ev["exact"].astype(str).ne("True")] if "exact" in ev else ev
    out = {}
    for key, g in nelbo.groupby(nelbo.apply(_seed_key, axis=1), sort=False):
        if len(g) >= 2:
            v = g.sort_values("train_seed")["ppl"].astype(float)
            out[key] = (f"{v.mean():.2f} ± {v.std(ddof=1):.2f} ({len(v)} seeds: "
                        + ", ".join(f"{x:.2f}" for x in v) + ")")
    return ev.loc[seed.isna() | seed.le(1)].reset_index(drop=True), out


def table_iw(df: pd.DataFrame, anchors: pd.DataFrame, summary: dict) -> Table | None:
    """The IW exact-likelihood estimate against the number of orders K, paper's at the same K."""
    ev = S.rows(df, "eval")
    ex = ev.loc[ev["exact"].astype(str).eq("True")] if "exact" in ev.columns else ev.iloc[:0]
    if ex.empty:
        return None
    ks = sorted(int(k) for k in ex["num_orders"].dropna().unique())
    rows = [_iw_row(label, g, ks, anchors) for label, g in ex.groupby("label", sort=False)]
    data = _order(pd.DataFrame(rows), ex).rename(columns={"group": "method"})
    return Table("table6-8_iw_vs_k", "Tables 6–8: exact-likelihood (IW) test PPL against the number of orders K",
                 data, _iw_columns(data, ks), _iw_notes(data, summary))


def _iw_row(label: str, g: pd.DataFrame, ks: list[int], anchors: pd.DataFrame) -> dict:
    """One model's IW PPL at each K (ours, then the paper's LM1B and OWT at the same K)."""
    first = g.iloc[0]
    a0 = first.get("alpha_0") if pd.notna(first.get("alpha_0", np.nan)) else None
    counts = g["num_sequences"].dropna().unique() if "num_sequences" in g else []
    row = dict(group=first["group"], label=label, alpha_0=a0 if a0 is not None else np.nan,
               block_size=first.get("block_size", np.nan), stale=bool(g["stale"].any()),
               sequences=counts[0] if len(counts) == 1 else np.nan,
               sequences_note=", ".join(f"{c:g}" for c in counts) if len(counts) > 1 else "")
    for k in ks:
        row.update(_first(g.loc[g["num_orders"].eq(k)], f"K{k}", "ppl"))
        row.update(_iw_paper(first["group"], a0, k, anchors))
    return row


def _iw_paper(group: str, a0, k: int, anchors: pd.DataFrame) -> dict:
    """The paper's IW PPL at K orders: LM1B (Tables 6, 7) and OWT (Table 8)."""
    out = {}
    for ds, tables in (("lm1b", ("6", "7")), ("owt", ("8",))):
        anc = [a for a in (_anchor(anchors, t, group=group, alpha_0=a0, num_orders=k) for t in tables) if a is not None]
        out[f"paper_{ds}_K{k}"] = anc[0]["value"] if anc else np.nan
    return out


def _iw_columns(data: pd.DataFrame, ks: list[int]) -> list[Col]:
    cols = [Col("method", "method", "s"), Col("alpha_0", "α0 (train)", "g"), Col("sequences", "seqs", "g")]
    for k in ks:
        cols += [_col(data, f"K{k}", f"K = {k}", ".2f", group="ours"),
                 Col(f"paper_lm1b_K{k}", f"K = {k}", ".2f", group=A.source_label(["6", "7"], "LM1B")),
                 Col(f"paper_owt_K{k}", f"K = {k}", ".2f", group=A.source_label("8", "OWT"))]
    return cols


def _iw_notes(data: pd.DataFrame, summary: dict) -> list[str]:
    return [(f"{_setup(summary, S.sequence_length(summary))}; test PPL of the importance-weighted exact-likelihood "
             "bound (spec 7.10) with K orders; a model with one order (AR) does not change with K."),
            ("Matching rule: same method, α0 of training and K (paper: MDLM LM1B in Table 6, Eso-LM LM1B in "
             "Table 7, Eso-LM OWT in Table 8)."),
            "seqs: test sequences behind every K of the row (the same sequences and seed for each K).",
            *[f"{r['label']}: its K columns come from different sequence counts ({r['sequences_note']}): "
              "not comparable along the row." for _, r in data.iterrows() if r["sequences_note"]],
            NOT_SAME, *_stale_note(data)]


# ----------------------------------------------------------------------------- Table 11
def table11(df: pd.DataFrame, anchors: pd.DataFrame, summary: dict) -> list[Table]:
    """NFE = L latency at batch 1 (seconds) and the paper's speedup ratios, ours beside the paper's."""
    lc = S.rows(df, "longctx")
    if lc.empty:
        return []
    lengths = sorted(int(v) for v in lc["length"].unique())
    paper = X.borrow_display(anchors.loc[anchors["table"].eq("11")], lc)
    p_lengths = sorted(int(v) for v in paper["length"].unique())
    groups = ordered_groups(lc, paper)
    rows, main = [], {}
    for g in groups:
        row = dict(method=g)
        for L in lengths:
            row.update(_table11_ours(lc, g, L, main))
        for L in p_lengths:
            anc = paper.loc[paper["group"].eq(g) & paper["length"].eq(L)]
            row[f"paper_L{L}_s"] = anc["value"].iloc[0] if len(anc) else np.nan
            row[f"paper_L{L}_std"] = anc["std"].iloc[0] if len(anc) else np.nan
            main[("paper", g, L)] = row[f"paper_L{L}_s"]
        rows.append(row)
    data = pd.DataFrame(rows)
    src = A.source_label("11")
    cols = [Col("method", "method", "s")]
    for L in lengths:
        cols += [Col(f"L{L}_nfe", f"L = {L}: NFE", ".0f"), _col(data, f"L{L}_s", f"L = {L}: s", ".3f", std=f"L{L}_std"),
                 _col(data, f"L{L}_no_cache_s", f"L = {L}: s, no KV cache", ".3f", std=f"L{L}_no_cache_std")]
    cols += [Col(f"paper_L{L}_s", f"L = {L}: s", ".1f", std=f"paper_L{L}_std", group=src) for L in p_lengths]
    notes = _table11_notes(lc, summary)
    seconds = Table("table11_longctx_seconds", "Table 11: sampling time at NFE = L, batch 1 (seconds)", data, cols,
                    notes)
    speedups = _speedups(groups, group_styles(lc, paper), main, lengths, p_lengths, src)
    return [seconds, speedups]




def _table11_ours(lc: pd.DataFrame, g: str, L: int, main: dict) -> dict:
    """Method ``g`` at length ``L``: its cached row (else its only one) and its uncached row;
    ``main`` keeps the shown seconds and row of each (method, L) for the speedups."""
    sel = lc.loc[lc["group"].eq(g) & lc["length"].eq(L)]
    cached = sel.loc[sel["kv_cache"].astype(str).eq("True")]
    best = cached if len(cached) else sel
    plain = sel.loc[sel["kv_cache"].astype(str).ne("True")] if len(cached) else sel.iloc[:0]
    row = {}
    for key, part in (("", best), ("_no_cache", plain)):
        row.update(_first(part, f"L{L}{key}_s", "time_mean_s"))
        row[f"L{L}{key}_std"] = part["time_std_s"].iloc[0] if len(part) else np.nan
    row[f"L{L}_kv_cache"] = bool(len(cached))
    row[f"L{L}_nfe"] = best["nfe"].iloc[0] if len(best) else np.nan
    main[(g, L)] = row[f"L{L}_s"]
    main[("row", g, L)] = best.iloc[0] if len(best) else None
    return row


def _table11_notes(lc: pd.DataFrame, summary: dict) -> list[str]:
    env = summary.get("environment") or {}
    return [(f"ours: {summary.get('corpus', '?')}, preset {summary.get('preset', '?')}, L as in each column: "
             f"mean (std) [95 % interval] seconds of the whole sampling call over {_rounds_text(lc)}, batch 1, "
             f"NFE = L (first-hitting, spec 8.6), no nucleus, with the model's KV cache "
             f"where it has one; device: {env.get('device') or env.get('cpu', 'CPU')}, "
             f"{env.get('torch_threads', '?')} thread(s). Untrained weights: latency does not depend on them."),
            "paper: OWT models, mean (std) over 5 runs on one A6000 (v4); = v2 Table 3.",
            "Matching rule: same method; our lengths and the paper's are different columns, never the same one.",
            NOT_SAME, *_stale_note(lc)]


def _rounds_text(lc: pd.DataFrame) -> str:
    """How many interleaved rounds timed Table 11 (the preset's trials in a store without the count)."""
    rounds = pd.to_numeric(lc["rounds"], errors="coerce").dropna() if "rounds" in lc else pd.Series(dtype=float)
    if rounds.empty:
        return "the preset's trials"
    span = f"{int(rounds.min())}" + (f"-{int(rounds.max())}" if rounds.max() != rounds.min() else "")
    return (f"{span} interleaved rounds per length (one job per length times every method once a round, the order "
            f"rotated; rounds until every ratio's 95 % interval is within the preset's target, "
            f"esolm/runs.py LongContext)")


def _ratio(num: str, den: str, main: dict, lengths: list, p_lengths: list) -> dict:
    """One row of Table 11's speedups: ours and the paper's mean seconds of `num` over `den`."""
    r = dict(ratio=f"{num} / {den}")
    for L in lengths:
        r[f"L{L}"] = main.get((num, L), np.nan) / main.get((den, L), np.nan)
        a, b = main.get(("row", num, L)), main.get(("row", den, L))
        paired = S.paired_ratio(a, b) if a is not None and b is not None else None
        r[f"L{L}_lo"], r[f"L{L}_hi"] = paired[1:] if paired else (np.nan, np.nan)
    for L in p_lengths:
        r[f"paper_L{L}"] = main.get(("paper", num, L), np.nan) / main.get(("paper", den, L), np.nan)
    return r


def _speedups(groups: list, styles: dict, main: dict, lengths: list, p_lengths: list, src: str) -> Table:
    """Table 11's time ratios: every other method over Eso-LM (B), Eso-LM (B) over AR."""
    family = {g: st["family"] for g, st in styles.items()}
    eso = next((g for g in groups if family[g] == FAMILY_ESO_B), None)  # the paper's speedups are Eso-LM (B)'s
    refs = [g for g in groups if family[g] == FAMILY_AR]
    pairs = [(g, eso) for g in groups if eso and g != eso and g not in refs] + [(eso, r) for r in refs if eso]
    rdata = pd.DataFrame([_ratio(num, den, main, lengths, p_lengths) for num, den in pairs])
    rcols = [Col("ratio", "time ratio", "s"), *[_col(rdata, f"L{L}", f"L = {L}", ".2f", group="ours") for L in lengths],
             *[Col(f"paper_L{L}", f"L = {L}", ".1f", group=src) for L in p_lengths]]
    rnotes = [("Ratios of the mean seconds of Table 11 (above 1: the first method is slower); [lo, hi] = 95 % paired "
               "bootstrap interval over the interleaved rounds that timed both methods. The paper reports "
               "Eso-LM (B) 14–65× faster than MDLM and 3–4× faster than BD3-LM at these lengths."),
              "Matching rule: same pair of methods; lengths differ (ours: the preset's, paper: 2048 and 8192).",
              NOT_SAME]
    return Table("table11_longctx_speedups", "Table 11: speedups at NFE = L", rdata, rcols, rnotes)



# ------------------------------------------------------------------------- Tables 13-15
def sweep_tables(df: pd.DataFrame, paper: pd.DataFrame, summary: dict) -> list[Table]:
    """Per model family (the paper's Tables 13, 14, 15; Table 3 for AR's gen PPL): one row
    per sampling configuration, the paper's matching configuration beside it."""
    points = S.speed_quality(df)
    if points.empty:
        return []
    length = S.sequence_length(summary)
    points["relative_steps"] = points["steps"] / length if length and "steps" in points else np.nan
    low = collapsed(points)
    points["collapsed"] = low
    points, calibration = split_calibration(points)
    calibration = calibration.assign(group="calibration: " + calibration["label"].astype(str))
    rule = low.attrs.get("rule", "")
    return [_sweep_table(model, pts, calibration, paper, summary, rule)
            for model, pts in points.groupby("model", sort=False)]


def _sweep_table(model: str, pts: pd.DataFrame, calibration: pd.DataFrame, paper: pd.DataFrame, summary: dict,
                 collapse_rule: str) -> Table:
    """One model's sweep table: its configurations in order (selection), each matched to the
    paper's (A.match_paper), the calibration rows last, then the columns and notes (rendering)."""
    length = S.sequence_length(summary)
    pts = _sweep_order(pts)
    matches = [A.match_paper(r, paper, length) for _, r in pts.iterrows()] + [None] * len(calibration)
    pts = pd.concat([pts, calibration], ignore_index=True)  # real text and the null samplers, last
    found = [m for m in matches if m is not None]
    table = found[0]["table"] if found else None
    ident = [c for c in ("alpha_0", "block_size", "alpha_0_eval", "steps") if c in pts and pts[c].notna().any()]
    shown = [m for m in X.METRICS if m.stage in ("sample", "time") and m.name in pts]
    data = _sweep_data(pts, ident, shown, matches)
    cols = _sweep_columns(data, ident, shown, A.source_label(table) if table else "paper")
    notes = _sweep_notes(summary, length, pts, table, collapse_rule) + _stale_note(data)
    return Table(*_sweep_name(table, model, pts), data, cols, notes)


def _sweep_order(pts: pd.DataFrame) -> pd.DataFrame:
    """A model's configurations: alpha_0_eval descending, then steps ascending, in the registry's order."""
    within = [c for c in ("alpha_0_eval", "steps") if c in pts]
    ordered = pts.sort_values(within, ascending=[c != "alpha_0_eval" for c in within], kind="stable") if within else pts
    return _order(ordered).reset_index(drop=True)


def _sweep_name(table: str | None, model: str, pts: pd.DataFrame) -> tuple[str, str]:
    """(file name, title): the paper's table number where the rows match one of its sweep tables."""
    paper = table in A.SWEEP_TABLES
    methods = pts.loc[~pts["group"].astype(str).str.startswith("calibration"), "group"]
    title = (f"Table {table}: " if paper else "") + (f"{', '.join(dict.fromkeys(methods))}: gen PPL, entropy, MAUVE "
                                                     "and time per configuration, with the calibration rows")
    return (f"table{table}_{_slug(model)}" if paper else f"sweep_{_slug(model)}"), title


def _sweep_data(pts: pd.DataFrame, ident: list[str], shown: list, matches: list) -> pd.DataFrame:
    """The table's frame: identity, T / L, the metrics with their intervals (the collapse flag
    beside entropy, as its footnote mark), the matched paper configuration's numbers."""
    names = [m.name for m in shown]
    at = names.index("entropy") + 1 if "entropy" in names else len(names)  # the collapse flag: beside entropy
    data = pts[["group", "label", *ident, "relative_steps", *_with_intervals(names[:at], pts), "collapsed",
                *_with_intervals(names[at:], pts), *[c for c in ("stale",) if c in pts]]].copy()
    data["entropy_mark"] = np.where(data["collapsed"], "↓", "")  # entropy's footnote mark (Col marks)
    for c in ("steps", "nfe", "gen_ppl", "entropy", "mauve", "time_s"):
        data[f"paper_{c}"] = [m[c] if m is not None and c in m and pd.notna(m[c]) else np.nan for m in matches]
    return data


def _sweep_columns(data: pd.DataFrame, ident: list[str], shown: list, src: str) -> list[Col]:
    """The shown columns of a sweep table: identity, T / L, each declared metric (schema.METRICS,
    table=True), the paper's; those without a value left out."""
    cols = [Col("group", "method", "s"), *[Col(c, X.shown(c), "g") for c in ident],
            Col("relative_steps", "T / L", "g"),
            *[_col(data, m.name, m.shown, m.fmt, marks=f"{m.name}_mark" if f"{m.name}_mark" in data else None)
              for m in shown if m.table]]
    cols += [Col(f"paper_{c}", h, f, group=src) for c, h, f in (
        ("steps", "T", ".0f"), ("nfe", "NFE", ".0f"), ("gen_ppl", "gen PPL", ".2f"), ("entropy", "entropy", "g"),
        ("mauve", "MAUVE", ".4f"), ("time_s", "time (s)", ".2f"))]
    return [c for c in cols if c.key in data.columns and data[c.key].notna().any()]


def _clock_note(pts: pd.DataFrame, timing: dict) -> str:
    """How the time column was measured: one clock job's interleaved rounds, or a job per row."""
    rounds = pd.to_numeric(pts["rounds"], errors="coerce").dropna() if "rounds" in pts else pd.Series(dtype=float)
    if len(rounds):
        run = pd.to_numeric(pts["timing_run"], errors="coerce").dropna() if "timing_run" in pts else rounds.iloc[:0]
        return (f"median over {int(rounds.max())} interleaved rounds of one clock job that timed every configuration "
                f"of the preset (timing run {int(run.iloc[0]) if len(run) else 1}, the order rotated per round)")
    return f"median over {timing.get('trials', '?')} trials in a timing job of its own"


def _sweep_notes(summary: dict, length, pts: pd.DataFrame, table: str | None, collapse_rule: str) -> list[str]:
    timing, env = summary.get("timing") or {}, summary.get("environment") or {}
    judge2 = (f"; 2nd judge: {S.evaluator_name(pts, 'evaluator2')}" if "evaluator2" in pts and pts["evaluator2"].notna().any()
              else "")
    ours = (f"{_setup(summary, length)}: {summary.get('num_samples', '?')} samples per row, nucleus p = "
            f"{summary.get('top_p', '?')}, gen PPL by {S.evaluator_name(pts)}{judge2}; [lo, hi] = 95 % bootstrap "
            f"interval over samples (over trials for time); time = {_clock_note(pts, timing)} of the network "
            f"passes for one batch of {timing.get('batch_size', '?')} on "
            f"{env.get('device') or env.get('cpu', 'CPU')} ({env.get('torch_threads', '?')} thread(s)); "
            "NFE = mean per sample of the scored samples; time comes from timing the same configuration at that "
            "batch size, whose own NFE is shown beside it (the p(x0) reuse makes NFE depend on the batch); "
            "samples = the count behind gen PPL, entropy and MAUVE.")
    paper = ("paper: the only AR gen PPL the paper gives (v4 Table 3: 1M-step OWT checkpoint, L = 1024, tries = 1; "
             "no MAUVE or time)." if table == "3" else
             "paper: OWT, L = 1024, 5120 samples, nucleus 0.9, GPT-2 Large; time = mean s per batch of 512 on H200.")
    rule = ("Matching rule: same method, α0 of training, α0 of sampling and relative step count T / L "
            f"(ours T / {length} = paper T / 1024); blank where the paper has no such configuration; AR takes no "
            "step count.")
    low = f"↓ collapsed (repetitive) samples: {collapse_rule} (the paper's 'below 5' at AR's 5.26, spec 8.3)."
    cal = ("calibration rows (no model, no time): real text = held-out test rows scored by the same judges (the "
           "judges' own score on real text); unigram, repeater (the most frequent train 4-gram repeated) and "
           "all-EOS = null samplers (nothing to score: no gen PPL); scored fraction = the share of targets the "
           "judge scored (every EOS after the first is left out, spec 8.2): well below 1 means samples cut short "
           "by end-of-text, whose gen PPL covers only their start (docs/metrics.md).")
    return [ours, paper, rule, low, cal, NOT_SAME]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")


# ------------------------------------------------------------------------------ entry
def build_tables(results_dir) -> list[Table]:
    """Every table the store has rows for (a stage without rows gives no table)."""
    results = Path(results_dir)
    df = S.load_results(results)
    summary = S.load_summary(results)
    anchors = A.load_anchors()
    out = [table1(df, anchors, summary)] if not S.rows(df, "eval").empty else []
    iw = table_iw(df, anchors, summary)
    out += ([iw] if iw is not None else []) + table11(df, anchors, summary)
    out += sweep_tables(df, A.paper_points(anchors), summary)
    out += table5(df, summary)  # the zero-shot stage of the released presets
    out += [t for t in (conditional_table(df, summary),) if t is not None]  # the conditional task (issue 27)
    out += [t for t in (table16(df, summary),) if t is not None]  # Table 16: XSum (experiments/presets_xsum.py)
    for t in out:
        t.notes += _missing_note(summary)
    return out


def _missing_note(summary: dict) -> list[str]:
    """The jobs of the preset without a record (summary.json ``missing``): rows they give are absent."""
    missing = summary.get("missing") or []
    if not missing:
        return []
    more = f" and {len(missing) - 10} more (summary.json)" if len(missing) > 10 else ""
    return [f"Incomplete store: {len(missing)} job(s) of the preset have no record, so their rows are missing from "
            f"the tables they belong to: {', '.join(missing[:10])}{more}."]


def write_tables(results_dir) -> list[Path]:
    """tables/<name>.md, .tex and .csv for every table (see build_tables)."""
    folder = S.output_dir(Path(results_dir), "tables")
    return [p for t in build_tables(results_dir) for p in t.write(folder)]


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m analysis.tables results/<preset>", file=sys.stderr)
        return 2
    for p in write_tables(args[0]):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
