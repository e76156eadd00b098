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


def load_results(results_dir: str | Path, timing_run: int | None = None) -> pd.DataFrame:
    """results/<preset>/results.csv as a prefixed frame (one row per job); a results.csv of
    the old flat format is upgraded (analysis/schema.py, `upgrade`). Of a preset with several
    timing runs (Preset.clock), the time and longctx rows of one run only: ``timing_run`` (default
    the first), so that every comparison reads one clock (`one_timing_run`)."""
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
    return one_timing_run(df, timing_run)


def timing_runs(df: pd.DataFrame) -> list[int]:
    """The timing runs of a store (config.timing_run of its time and longctx rows); [] when its
    rows do not say (one run, or a store written before timing runs)."""
    column = X.col("config", "timing_run")
    if column not in df.columns:
        return []
    return sorted(int(v) for v in pd.to_numeric(df[column], errors="coerce").dropna().unique())


def one_timing_run(df: pd.DataFrame, run: int | None = None) -> pd.DataFrame:
    """The rows of ``df`` without the timing rows of other timing runs than ``run`` (default: the
    first); rows that belong to no timing run (train, eval, sample) are all kept. The frame's
    attrs say which run it holds and which there are."""
    runs = timing_runs(df)
    if not runs:
        if run is not None and run != 1:
            raise ConfigError(f"this store has one timing run; there is no timing run {run}")
        return df
    if run is None:
        run = runs[0]
    if run not in runs:
        raise ConfigError(f"this store has timing runs {runs}; there is no timing run {run}")
    values = pd.to_numeric(df[X.col("config", "timing_run")], errors="coerce")
    out = df.loc[values.isna() | values.eq(run)].reset_index(drop=True)
    out.attrs.update(timing_run=run, timing_runs=runs)
    return out


TRIALS = "time_trials"  # a longctx row's seconds per interleaved round, space-separated (experiments/jobs.py)


def round_times(row) -> list[float] | None:
    """A timing row's seconds per interleaved round (None where the row does not carry them: a
    store written before they were recorded, or a row of another stage)."""
    text = row.get(TRIALS) if hasattr(row, "get") else None
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        return [float(v) for v in text.split()]
    except ValueError:
        return None


def paired_ratio(num_row, den_row) -> tuple[float, float, float] | None:
    """mean(num) / mean(den) of two rows timed in the same interleaved clock (the same length and
    timing run, as many rounds each) with its 95 % paired bootstrap interval (round i of both
    resampled together, esolm.metrics.bootstrap.ratio_interval): (ratio, lo, hi); None where the
    rows were not timed together or carry no rounds."""
    from esolm.metrics.bootstrap import ratio_interval

    a, b = round_times(num_row), round_times(den_row)
    if not a or not b or len(a) != len(b):
        return None
    for key in ("length", "timing_run"):
        va, vb = num_row.get(key), den_row.get(key)
        if not (pd.isna(va) and pd.isna(vb)) and str(va) != str(vb):
            return None
    lo, hi = ratio_interval(a, b)
    return sum(a) / sum(b), lo, hi


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


def short_evaluator_name(points: pd.DataFrame, column: str = "evaluator") -> str:
    """evaluator_name without what follows " on " (an axis label: "KN 8-gram", not its corpus)."""
    return evaluator_name(points, column).split(" on ")[0]


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
