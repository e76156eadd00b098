"""Read the results store (docs/results_store.md): results.csv, summary.json, and the
speed-quality points that join a `sample` row to its `time` row (spec 8.5)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from esolm.config import ConfigError

META = ("name", "key", "stale", "code_version", "git_sha", "finished", "seconds", "stage", "label", "group", "model")
SAMPLE_METRICS = ("nfe", "gen_ppl", "entropy", "self_bleu", "mauve", "num_samples", "evaluator")
TIME_METRICS = ("kv_cache", "batch_size", "nfe", "time_median_s", "time_mean_s", "time_std_s",
                "wall_median_s", "wall_mean_s", "wall_std_s")
EVALUATOR_GROUP = "evaluator"  # the scorer of a preset, not one of the compared methods


def load_results(results_dir: str | Path) -> pd.DataFrame:
    """results/<preset>/results.csv as a frame (one row per job)."""
    path = Path(results_dir) / "results.csv"
    if not path.exists():
        raise ConfigError(f"no results store at {path}; run `python experiments/run.py pareto --preset NAME` "
                          f"(or with --no-run to aggregate existing records) and pass results/<preset>")
    df = pd.read_csv(path)
    missing = [c for c in ("stage", "label", "group", "model") if c not in df.columns]
    if missing:
        raise ConfigError(f"{path} lacks the column(s) {missing} of the results schema (docs/results_store.md); "
                          f"regenerate it with `python experiments/run.py tables --no-run`")
    if "stale" in df.columns:
        df["stale"] = df["stale"].astype(str).str.lower().eq("true")
    return df


def load_summary(results_dir: str | Path) -> dict:
    """summary.json of the preset ({} when absent: a hand-made store)."""
    path = Path(results_dir) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def sequence_length(summary: dict) -> int | None:
    """L of the preset's samples (summary.json data.length), None when not recorded."""
    length = (summary.get("data") or {}).get("length")
    return int(length) if length else None


def rows(df: pd.DataFrame, stage: str, *, methods_only: bool = True) -> pd.DataFrame:
    """The rows of one stage, columns that are empty there dropped, the evaluator left out."""
    out = df.loc[df["stage"].eq(stage)]
    if methods_only:
        out = out.loc[out["group"].ne(EVALUATOR_GROUP)]
    return out.dropna(axis=1, how="all").reset_index(drop=True)


def option_columns(sample: pd.DataFrame) -> list[str]:
    """The configuration columns of sample rows: model overrides and sample options."""
    skip = set(META) | set(SAMPLE_METRICS)
    return [c for c in sample.columns if c not in skip]


def speed_quality(df: pd.DataFrame) -> pd.DataFrame:
    """One row per sweep configuration: quality from its `sample` row, seconds from the
    `time` row of the same label and options (NaN where that row is missing)."""
    sample = rows(df, "sample")
    time = rows(df, "time")
    if sample.empty:
        return sample
    keys = ["label", *option_columns(sample)]
    metrics = [c for c in TIME_METRICS if c in time.columns and c != "nfe"]
    if time.empty:
        return sample.assign(time_median_s=np.nan, time_mean_s=np.nan, time_std_s=np.nan)
    timed = _join_key(time, keys)[["_key", *metrics, "nfe", "stale"]]
    timed = timed.rename(columns={"nfe": "nfe_timed", "stale": "stale_timed"})
    out = _join_key(sample, keys).merge(timed, how="left", on="_key", validate="one_to_one")
    out["stale"] = out["stale"] | out.pop("stale_timed").eq(True)
    return out.drop(columns="_key")


def _join_key(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """A string key of the given columns in which NaN matches NaN (an option a model does not take)."""
    def cell(v):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "-"
        return repr(float(v)) if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else str(v)

    out = frame.copy()
    cols = [out[c] if c in out.columns else pd.Series(np.nan, index=out.index) for c in keys]
    out["_key"] = ["|".join(cell(v) for v in vals) for vals in zip(*cols)]
    return out


def evaluator_name(points: pd.DataFrame) -> str:
    """A short name for the gen-PPL evaluator of these points."""
    names = points["evaluator"].dropna().unique() if "evaluator" in points.columns else []
    if len(names) == 0:
        return "evaluator unknown"
    name = str(names[0])
    return "preset's AR evaluator" if "checkpoint" in name else name


def output_dir(results_dir: str | Path, kind: str) -> Path:
    """results/<preset>/tables or /figures, created."""
    path = Path(results_dir) / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
