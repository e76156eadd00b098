"""The paper's published numbers (results/paper_anchors.json, transcribed from spec section 10)
and the rule that pairs them with our rows (docs/analysis.md, "Matching rule")."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from esolm.config import ConfigError

ANCHORS = Path(__file__).resolve().parent.parent / "results" / "paper_anchors.json"
IDENTITY = ("table", "dataset", "length", "method", "block_size", "alpha_0", "alpha_0_eval", "steps",
            "steps_per_block", "num_orders", "estimator", "tries", "nfe", "batch_size")
# the paper's per-configuration sweep (v4 Tables 13-15) and its only AR gen PPL (Table 3, tries = 1)
SWEEP_TABLES = ("13", "14", "15")


@lru_cache(maxsize=4)
def _read(path: str) -> dict:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"no paper anchors at {p}; it ships with the repository as results/paper_anchors.json")
    doc = json.loads(p.read_text())
    if "anchors" not in doc or "paper" not in doc:
        raise ConfigError(f"{p} is not an anchors file: it needs 'paper' and 'anchors' (see docs/analysis.md)")
    return doc


def anchors_meta(path: str | Path = ANCHORS) -> dict:
    """Everything in the anchors file but the numbers: paper, footnotes, table setups."""
    return {k: v for k, v in _read(str(path)).items() if k != "anchors"}


def load_anchors(path: str | Path = ANCHORS) -> pd.DataFrame:
    """One row per published number; `group` names the method as our plots do
    ("BD3-LM L'=4", "Eso-LM (B)", ...)."""
    df = pd.DataFrame(_read(str(path))["anchors"])
    for c in IDENTITY + ("std", "notes"):
        if c not in df.columns:
            df[c] = np.nan
    df["notes"] = df["notes"].map(lambda n: n if isinstance(n, list) else [])
    df["group"] = [f"{m} L'={int(b)}" if m == "BD3-LM" and pd.notna(b) else m
                   for m, b in zip(df["method"], df["block_size"])]
    return df


def source_label(table: str | list[str], dataset: str | None = "OWT") -> str:
    """How a paper column is labelled everywhere: 'paper (OWT, v4 Table 13)'."""
    tables = [table] if isinstance(table, str) else list(table)
    word = "Table" if len(tables) == 1 else "Tables"
    return f"paper ({dataset + ', ' if dataset else ''}v4 {word} {', '.join(tables)})"


def paper_points(anchors: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paper's sampling configurations as rows shaped like our speed-quality points:
    group, method, alpha_0, alpha_0_eval, block_size, steps, relative_steps (T / L), nfe, gen_ppl,
    entropy, mauve, time_s, table. Eso-LM's NFE and time (Table 13) depend only on
    (alpha_0_eval, T) and are copied to every alpha_0 of training."""
    a = load_anchors() if anchors is None else anchors
    sweep = a.loc[a["table"].isin(SWEEP_TABLES)]
    keys = ["table", "group", "method", "length", "alpha_0", "alpha_0_eval", "block_size", "steps", "steps_per_block"]
    wide = _pivot(sweep, keys)
    eso_time = wide.loc[wide["alpha_0"].isna() & wide["table"].eq("13"), ["alpha_0_eval", "steps", "nfe", "time_s"]]
    quality = wide.loc[~(wide["alpha_0"].isna() & wide["table"].eq("13"))]
    eso = quality["table"].eq("13")
    merged = quality.loc[eso].drop(columns=["nfe", "time_s"]).merge(eso_time, on=["alpha_0_eval", "steps"], how="left")
    points = pd.concat([merged, quality.loc[~eso]], ignore_index=True)
    ar = _pivot(a.loc[a["table"].eq("3") & a["method"].eq("AR") & a["tries"].eq(1) & a["steps"].eq(1024)],
                ["table", "group", "method", "length"])  # AR does not take a step count: its one value
    points = pd.concat([points, ar], ignore_index=True)
    points["relative_steps"] = points["steps"] / points["length"]
    return points


def _pivot(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    out = frame.assign(**{k: frame[k].astype(object).where(frame[k].notna(), "-") for k in keys})
    out = out.pivot_table(index=keys, columns="metric", values="value", aggfunc="first").reset_index()
    out.columns.name = None
    for k in keys:
        out[k] = out[k].replace("-", np.nan)
        if k not in ("table", "group", "method"):
            out[k] = pd.to_numeric(out[k])
    return out


def match_paper(ours: pd.Series, paper: pd.DataFrame, length: int | None) -> pd.Series | None:
    """The paper configuration that corresponds to one of our points, or None. Same method
    (group); same alpha_0 of training and alpha_0_eval where the paper has them; same
    relative step count T / L (the paper at L = 1024, ours at the preset's L); a paper row
    without a step count (AR) matches any of ours."""
    cand = paper.loc[paper["group"].eq(ours.get("group"))]
    for col in ("alpha_0", "alpha_0_eval"):
        mine = ours.get(col)
        if col in cand.columns and pd.notna(mine):
            cand = cand.loc[cand[col].isna() | np.isclose(cand[col].astype(float), float(mine))]
    steps = ours.get("steps")
    if length and pd.notna(steps):
        rel = cand["relative_steps"]
        cand = cand.loc[rel.isna() | np.isclose(rel.astype(float), float(steps) / length)]
    return cand.iloc[0] if len(cand) == 1 else None
