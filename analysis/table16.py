"""Table 16 (spec 10.10, 15.6): rescaled BERTScore F1 of XSum summaries against time per example,
MDLM and Eso-LM (B) alpha_0 = 1 finetuned on XSum, ours beside the paper's. Rows come from the
"summarize" stage of experiments/presets_xsum.py (esolm/metrics/summarize.py).

One row per (method, T) we ran: NFE, seconds per example and BERTScore F1 with their 95 %
intervals, the paper's time bucket our time falls in, and the paper's F1 and bucket at the same
method and T (blank where the paper has no such T); last, the paper's reference FLAN-T5-small.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import anchors as A
from analysis import store as S
from analysis.render import Col, Table

STAGE = "summarize"
TABLE = "16"
# the paper's time-per-example buckets (upper bound in seconds, as printed); ours past the last: "≥ 0.4 s"
BUCKETS = ((0.1, "≤ 0.1 s"), (0.2, "≤ 0.2 s"), (0.4, "< 0.4 s"))
FEATURIZERS = {"roberta-large": "roberta-large, layer 17, no idf, rescaled with bert-score's en/roberta-large baseline "
                                "(the paper's call: lang='en', rescale_with_baseline=True)",
               "minilm": "all-MiniLM-L6-v2, layer 6, no idf, rescaled with a baseline of random Shakespeare line "
                         "pairs (the offline stand-in, not the paper's featurizer)"}


def bucket(seconds) -> str:
    """The paper's bucket of a time per example (its first bound at or above it)."""
    if seconds is None or pd.isna(seconds):
        return ""
    for limit, name in BUCKETS:
        if float(seconds) < limit or (float(seconds) == limit and name.startswith("≤")):
            return name
    return f"≥ {BUCKETS[-1][0]:g} s"


def _paper(anchors: pd.DataFrame) -> pd.DataFrame:
    return anchors.loc[anchors["table"].eq(TABLE)]


def _row(r: pd.Series, paper: pd.DataFrame) -> dict:
    """One configuration of ours with the paper's number at the same method (family) and T."""
    family = r.get("display.family", r.get("group"))
    hit = paper.loc[paper["method"].eq(family) & np.isclose(paper["steps"].astype(float), float(r["steps"]))]
    out = dict(method=family, label=r["label"], steps=r["steps"], nfe=r.get("nfe"),
               bucket=bucket(r.get("sec_per_example")), stale=bool(r.get("stale", False)),
               paper_f1=hit["value"].iloc[0] if len(hit) else np.nan,
               paper_bucket=hit["bucket"].iloc[0] if len(hit) else "")
    for key in ("sec_per_example", "bertscore_f1", "summary_tokens", "empty_fraction"):
        out[key] = r.get(key)
        for end in ("_lo", "_hi"):
            if f"{key}{end}" in r:
                out[f"{key}{end}"] = r[f"{key}{end}"]
    return out


def table16(df: pd.DataFrame, summary: dict) -> Table | None:
    """The table ``table16_xsum`` (None when the store has no summarize row)."""
    from analysis.pareto import ordered_groups
    from analysis.tables import _col, _stale_note

    rows = S.rows(df, STAGE)
    if rows.empty:
        return None
    order = ordered_groups(rows)
    rows = rows.assign(_g=rows["group"].map(lambda g: order.index(g) if g in order else len(order)),
                       steps=pd.to_numeric(rows["steps"], errors="coerce"))
    rows = rows.sort_values(["_g", "steps"], kind="stable")
    paper = _paper(A.load_anchors())
    ref = paper.loc[paper["steps"].isna()]
    data = pd.DataFrame([_row(r, paper) for _, r in rows.iterrows()]
                        + [dict(method=f"{m} (paper's reference)", paper_f1=v, bucket="", paper_bucket="")
                           for m, v in zip(ref["method"], ref["value"])])
    src = A.source_label(TABLE, "XSum")
    cols = [Col("method", "method", "s"), Col("steps", "T", "g"), Col("nfe", "NFE", ".1f"),
            _col(data, "sec_per_example", "s / example", ".3g"), Col("bucket", "time bucket", "s"),
            _col(data, "bertscore_f1", "BERTScore F1", ".3f"), Col("summary_tokens", "summary tokens", ".1f"),
            Col("empty_fraction", "empty", ".2f"), Col("paper_bucket", "time bucket", "s", group=src),
            Col("paper_f1", "BERTScore F1", ".2f", group=src)]
    cols = [c for c in cols if c.key in data.columns and (c.fmt == "s" or data[c.key].notna().any())]
    return Table("table16_xsum", "Table 16: XSum summaries, rescaled BERTScore F1 against time per example", data,
                 cols, _notes(rows, summary) + _stale_note(data))


def _notes(rows: pd.DataFrame, summary: dict) -> list[str]:
    first = rows.iloc[0]
    env = summary.get("environment") or {}
    featurizer = str(first.get("featurizer", "?"))
    device = first.get("device") if pd.notna(first.get("device", np.nan)) else env.get("device") or "?"
    return [(f"ours: preset {summary.get('preset', '?')}, XSum test split, the first {_g(first.get('num_examples'))} "
             f"documents, L = {S.sequence_length(summary)}, summary budget {_g(first.get('summary_budget'))} slots "
             f"after "
             f"each document (given: the document and the EOS padding after the slots; the summary = the slots up "
             f"to their first EOS), nucleus p = {_g(first.get('top_p'))}; models finetuned on XSum from the rows' "
             f"sources (docs/conditional.md, \"Table 16 (XSum)\")."),
            f"BERTScore: rescaled F1, mean over documents; featurizer {FEATURIZERS.get(featurizer, featurizer)}.",
            (f"s / example = seconds of a whole sampling call (device synchronized, untimed warm-up calls first) over "
             f"its {_g(first.get('batch_size'))} example(s), mean over the timed calls, on {device}; time bucket = the "
             f"paper's bucket it falls in; [lo, hi] = 95 % bootstrap interval over documents (over timed calls for "
             f"time); empty = fraction of summaries with no token before EOS."),
            ("paper: MDLM and Eso-LM (α0 = 1) finetuned 10K steps on XSum, one A6000 Ada GPU; the paper's grid prints "
             "one T per method and bucket. Matching rule: same method and T (our T need not land in the paper's "
             "bucket: devices differ)."),
            "Ours and the paper's are not the same quantity where the setups differ (featurizer, device, data, "
            "finetune): read them side by side, never as a difference."]


def _g(v) -> str:
    return f"{float(v):g}" if v is not None and pd.notna(v) else "?"
