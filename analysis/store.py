"""Read the results store (docs/results_store.md): results.csv in the schema of
analysis/schema.py, summary.json, and the speed-quality points that join a `sample` row to
its `time` row (spec 8.5)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from analysis import schema as X
from esolm.config import ConfigError

EVALUATOR_GROUP = "evaluator"  # the scorer of a preset, not one of the compared methods


def load_results(results_dir: str | Path) -> pd.DataFrame:
    """results/<preset>/results.csv as a prefixed frame (one row per job); a results.csv of
    the old flat format is upgraded (analysis/schema.py, `upgrade`)."""
    path = Path(results_dir) / "results.csv"
    if not path.exists():
        raise ConfigError(f"no results store at {path}; run `python experiments/run.py pareto --preset NAME` "
                          f"(or with --no-run to aggregate existing records) and pass results/<preset>")
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ConfigError(f"{path} has no rows: no job of the preset has finished yet; run `python experiments/run.py "
                          f"pareto --preset NAME` (`run.py status` says what failed)") from None
    if not X.is_prefixed(df):
        missing = [c for c in X.IDENTITY if c not in df.columns]
        if missing:
            raise ConfigError(f"{path} lacks the column(s) {missing} of the results schema (docs/results_store.md); "
                              f"regenerate it with `python experiments/run.py tables --no-run`")
        df = X.upgrade(df)
    df = X.complete_display(df)
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
    """The rows of one stage with bare names (schema.view), columns that are empty there
    dropped, the evaluator left out."""
    return X.view(X.stage_rows(df, stage, EVALUATOR_GROUP if methods_only else None))


def speed_quality(df: pd.DataFrame) -> pd.DataFrame:
    """One row per sweep configuration, bare names: quality from its `sample` row, seconds
    (and every other metric) from the `time` row of the same join key (schema.join_columns:
    the label and the sample options; NaN where that row is missing)."""
    sample = X.stage_rows(df, "sample", EVALUATOR_GROUP)
    if sample.empty:
        return X.view(sample)
    return X.view(X.join_time(sample, X.stage_rows(df, "time", EVALUATOR_GROUP)))


def evaluator_name(points: pd.DataFrame, column: str = "evaluator") -> str:
    """A short name for the gen-PPL judge of these points in ``column`` ("evaluator"; the second
    judge's: "evaluator2")."""
    names = points[column].dropna().unique() if column in points.columns else []
    if len(names) == 0:
        return "evaluator unknown"
    name = str(names[0])
    return "the preset's own AR judge (trained apart, its own seed)" if "checkpoint" in name else name


def output_dir(results_dir: str | Path, kind: str) -> Path:
    """results/<preset>/tables or /figures, created."""
    path = Path(results_dir) / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
