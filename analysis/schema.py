"""The schema of results.csv (docs/results_store.md): which column is configuration, which a
sample option, which a metric and which the model's display, the one join key of a `sample`
row and its `time` row, and the METRICS that tables and figures show.

A record's row is ``{config, options, metrics, display}`` (experiments/jobs.py); results.csv
flattens it into prefixed columns (``config.alpha_0``, ``options.steps``, ``metrics.gen_ppl``,
``display.colour``) beside the unprefixed META columns. Nothing here guesses a column's group
from its name: the prefix says it. An old flat results.csv (before the prefixes) is upgraded by
:func:`upgrade`, a migration of that documented format.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from esolm.config import ConfigError

GROUPS = ("config", "options", "metrics", "display")  # the prefixed column groups, in column order
META = ("name", "key", "stale", "code_version", "git_sha", "finished", "seconds")  # record-level, unprefixed
IDENTITY = ("stage", "label", "group", "model")  # config.* columns every row has
DISPLAY = ("family", "label", "colour", "marker", "order", "reference", "shade_by")  # esolm/interface.py Display
# the join key of a sample row and its time row: the trained model's label and every sample
# option a sample row sets (NaN matches NaN: an option a model does not take)
JOIN_CONFIG = ("label",)
JOIN_GROUP = "options"
TIMED = "_timed"  # suffix of a time-row metric whose name the sample row measures too (nfe -> nfe_timed)
LO, HI = "_lo", "_hi"  # suffixes of a metric's 95 % interval columns (metrics.gen_ppl_lo, metrics.gen_ppl_hi)


@dataclass(frozen=True)
class Metric:
    """One measured quantity as tables and figures show it."""

    name: str  # the bare column name (metrics.<name> in results.csv)
    shown: str  # header in tables, axis name in figures
    higher_is_better: bool | None  # None: neither (a count, NFE)
    fmt: str = ".4g"  # format spec of a table cell
    stage: str = "sample"  # the rows that measure it: "sample" or "time" (a speed-quality point has both)
    table: bool = True  # shown in the sweep tables (their CSV keeps every metric either way)
    pareto: bool = False  # a quality axis: one Pareto figure of it against sampling time
    bounds: tuple[float, float] | None = None  # a bounded score: a linear axis over these bounds
    evaluator: bool = False  # scored by the preset's gen-PPL evaluator (its name goes in the axis label)
    interval: bool = False  # its job writes a 95 % bootstrap interval: metrics.<name>_lo, metrics.<name>_hi


# The metrics of a speed-quality point (sample row joined to its time row), in table order.
# A new metric appears in the sweep tables (and, with pareto=True, as a Pareto figure) by one
# entry here; its job writes it under row["metrics"].
METRICS: tuple[Metric, ...] = (
    Metric("nfe", "NFE", None, ".1f"),
    Metric("gen_ppl", "gen PPL", False, ".2f", pareto=True, evaluator=True, interval=True),
    Metric("gen_ppl_judge2", "gen PPL (2nd judge)", False, ".2f", evaluator=True, interval=True),
    Metric("entropy", "entropy", True, ".3f", interval=True),
    Metric("scored_fraction", "scored fraction", True, ".3f", bounds=(0.0, 1.0)),
    Metric("mauve", "MAUVE", True, ".4f", pareto=True, bounds=(0.0, 1.0)),
    Metric("dist_sim", "distributional sim.", True, ".4f", pareto=True, bounds=(0.0, 1.0), interval=True),
    Metric("self_bleu", "Self-BLEU", False, ".4f", table=False),
    Metric("time_median_s", "time (s)", False, ".4g", stage="time", interval=True),
    Metric("time_std_s", "time std (s)", None, ".4g", stage="time", table=False),
    Metric("nfe" + TIMED, "NFE (timed run)", None, ".1f", stage="time"),
    Metric("num_samples", "samples", None, "g"),
)

# how a configuration field or sample option is named in tables and legends
SHOWN = dict(alpha_0=("α0 (train)", "α0 of training"), block_size=("L′", "block size L′"),
             alpha_0_eval=("α0 (eval)", "α0 of sampling"), steps=("T", "steps T"))


def metric(name: str) -> Metric | None:
    """The declaration of a metric (None: not declared)."""
    return next((m for m in METRICS if m.name == name), None)


def bounds_of(name: str) -> tuple[str, str]:
    """The bare names of the 95 % interval columns of metric ``name``: (name_lo, name_hi)
    (metrics.<name>_lo / _hi in results.csv; esolm/metrics/bootstrap.py ``interval_fields``)."""
    return f"{name}{LO}", f"{name}{HI}"


def interval(frame_: pd.DataFrame, name: str) -> tuple[pd.Series, pd.Series]:
    """The (lo, hi) Series of metric ``name``'s interval in a bare-named frame (``view``, the
    points of ``speed_quality``) or a prefixed one (``metrics.<name>_lo``); NaN where a row has
    none or the frame lacks the columns (records written before intervals)."""
    out = []
    for c in bounds_of(name):
        c = c if c in frame_.columns else col("metrics", c)
        out.append(pd.to_numeric(frame_[c], errors="coerce") if c in frame_.columns
                   else pd.Series(np.nan, index=frame_.index, dtype=float))
    return out[0], out[1]


def has_interval(frame_: pd.DataFrame, name: str) -> bool:
    """Whether some row of the frame has both ends of metric ``name``'s interval."""
    lo, hi = interval(frame_, name)
    return bool((lo.notna() & hi.notna()).any())


def shown(field: str, long: bool = False) -> str:
    """A field's name in a table header (or, `long`, in a legend)."""
    names = SHOWN.get(field)
    return names[1 if long else 0] if names else field


# ----------------------------------------------------------------------------- columns
def col(group: str, name: str) -> str:
    return f"{group}.{name}"


def columns(df: pd.DataFrame, group: str) -> list[str]:
    """The prefixed columns of one group, in frame order."""
    return [c for c in df.columns if c.startswith(group + ".")]


def bare(column: str) -> str:
    return column.split(".", 1)[1] if column.split(".", 1)[0] in GROUPS else column


def flatten(row: dict) -> dict:
    """A record row {name?, config, options, metrics, display} as one results.csv row."""
    out = {k: v for k, v in row.items() if k not in GROUPS}
    for g in GROUPS:
        out.update({col(g, k): v for k, v in (row.get(g) or {}).items()})
    return out


def frame(rows: list[dict]) -> pd.DataFrame:
    """Prefixed rows (flattened or nested) as a results frame: META first, then each group."""
    df = pd.DataFrame([flatten(r) if any(isinstance(r.get(g), dict) for g in GROUPS) else r for r in rows])
    order = [c for c in META if c in df.columns] + [c for g in GROUPS for c in columns(df, g)]
    return df[order + [c for c in df.columns if c not in order]]


def is_prefixed(df: pd.DataFrame) -> bool:
    return col("config", "stage") in df.columns


def ensure(df: pd.DataFrame) -> pd.DataFrame:
    """A frame in the prefixed schema: as it is, or upgraded from the old flat format."""
    return df if is_prefixed(df) else upgrade(df)


def view(df: pd.DataFrame) -> pd.DataFrame:
    """The frame with bare names for config, options and metrics (``gen_ppl``, ``steps``,
    ``label``); display.* and META keep theirs. A name in two groups (``kv_cache`` of config and
    options) is one column, each row taking the value of the group that sets it; two groups
    that both set it differently are an error."""
    out = df[[c for c in df.columns if c in META or not c.split(".", 1)[0] in GROUPS[:3]]].copy()
    names: dict[str, list[str]] = {}
    for g in GROUPS[:3]:
        for c in columns(df, g):
            names.setdefault(bare(c), []).append(c)
    for name, cols in names.items():
        value = df[cols[0]]
        for other in cols[1:]:
            both = value.notna() & df[other].notna()
            if (value[both].astype(str) != df[other][both].astype(str)).any():
                raise ConfigError(f"{' and '.join(cols)} disagree in some rows: a name may be in one group only")
            value = value.where(value.notna(), df[other])
        out[name] = value
    return out


def stage_rows(df: pd.DataFrame, stage: str, evaluator_group: str | None = None) -> pd.DataFrame:
    """Prefixed rows of one stage (the `evaluator_group` left out), columns empty there dropped
    (display.* kept: a field None for every row is still the display)."""
    df = ensure(df)
    if "stale" not in df.columns:  # a hand-made frame
        df = df.assign(stale=False)
    out = df.loc[df[col("config", "stage")].eq(stage)]
    if evaluator_group is not None:
        out = out.loc[out[col("config", "group")].ne(evaluator_group)]
    empty = [c for c in out.columns if not c.startswith("display.") and out[c].isna().all()]
    return out.drop(columns=empty).reset_index(drop=True)


# ---------------------------------------------------------------------------- the join
def join_columns(sample: pd.DataFrame) -> list[str]:
    """The declared join key over prefixed sample rows: config.label and every options.* column
    some sample row sets."""
    return [col("config", c) for c in JOIN_CONFIG] + [c for c in columns(sample, JOIN_GROUP) if sample[c].notna().any()]


def join_key(frame_: pd.DataFrame, keys: list[str]) -> pd.Series:
    """A string key of the given columns in which NaN matches NaN (an option a model does not take)."""
    def cell(v):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "-"
        return repr(float(v)) if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else str(v)

    cols = [frame_[c] if c in frame_.columns else pd.Series(np.nan, index=frame_.index) for c in keys]
    return pd.Series(["|".join(cell(v) for v in vals) for vals in zip(*cols)], index=frame_.index, dtype=object)


def join_time(sample: pd.DataFrame, time: pd.DataFrame) -> pd.DataFrame:
    """Prefixed sample rows with the metrics of their time row (same join key) and the time
    row's own configuration the sample row lacks (batch_size, kv_cache); a metric both rows
    measure takes the suffix TIMED; `stale` when either record is."""
    if time.empty:
        missing = {col("metrics", m.name): np.nan for m in METRICS if m.stage == "time"}
        return sample.assign(**{k: v for k, v in missing.items() if k not in sample.columns})
    keys = join_columns(sample)
    own = set(columns(sample, "metrics"))
    metrics = {c: _timed_name(c, own) for c in columns(time, "metrics")}
    config = [c for c in columns(time, "config") if c not in sample.columns]
    timed = time[[*metrics, *config, "stale"]].rename(columns={**metrics, "stale": "_stale_timed"})
    timed["_key"] = join_key(time, keys)
    out = sample.assign(_key=join_key(sample, keys)).merge(timed, how="left", on="_key", validate="one_to_one")
    out["stale"] = out["stale"].eq(True) | out.pop("_stale_timed").eq(True)
    return out.drop(columns="_key")


def _timed_name(column: str, own: set) -> str:
    """A time-row metric column as the joined point names it: with TIMED when the sample row
    measures it too, an interval column following its metric (metrics.nfe_lo -> metrics.nfe_timed_lo)."""
    for end in (LO, HI):
        if column.endswith(end) and column[: -len(end)] in own:
            return column[: -len(end)] + TIMED + end
    return column + TIMED if column in own else column


# ------------------------------------------------------------------------------ display
NEUTRAL = ("#949494", "#7f7f7f", "#b5b5b5", "#5f5f5f", "#a39e93", "#c7c7c7")  # methods nobody describes
FALLBACK_ORDER = 10_000  # after every method a model describes


def neutral_display(name: str, i: int = 0, family: str | None = None) -> dict:
    """The display of a method no model of ours describes (a paper-only row)."""
    return dict(family=family or name, label=name, colour=NEUTRAL[i % len(NEUTRAL)], marker="o",
                order=FALLBACK_ORDER, reference=False, shade_by=None)


def borrow_display(rows: pd.DataFrame, ours: pd.DataFrame) -> pd.DataFrame:
    """Rows without display columns (the paper's, analysis/anchors.py) with the display of our
    row of the same group; a group we do not have gets a neutral display (its family the
    paper's method name where the rows carry one)."""
    if col("display", "colour") in rows.columns:
        return rows
    ours = ensure_view(ours)
    known = {}
    if "group" in ours.columns and col("display", "colour") in ours.columns:
        for g, part in ours.groupby("group", sort=False):
            known[g] = {k: part[col("display", k)].iloc[0] for k in DISPLAY if col("display", k) in part}
    out = rows.copy()
    new = [g for g in dict.fromkeys(out["group"]) if g not in known]
    method = dict(zip(out["group"], out["method"])) if "method" in out.columns else {}
    for i, g in enumerate(new):
        known[g] = neutral_display(g, i, method.get(g))
    for k in DISPLAY:
        out[col("display", k)] = [known[g].get(k) for g in out["group"]]
    return out


def ensure_view(df: pd.DataFrame) -> pd.DataFrame:
    """A bare-named frame: a prefixed one viewed, a bare one as it is."""
    return view(df) if is_prefixed(df) else df


# ------------------------------------------------------------------- the old flat format
# results.csv before the prefixes (documented in git history of docs/results_store.md): every
# column flat; the sample options were the keyword arguments of the models' `sample`, the
# metrics those of the stages' tables; every other column was configuration.
OLD_OPTIONS = ("steps", "steps_per_block", "alpha_0_eval", "reference_grid", "sampler", "nucleus", "reuse_px0",
               "block_steps", "block_shuffle", "subcontext_len", "subcontext_shuffle", "top_p")
OLD_METRICS = ("ppl", "nll_per_token", "num_sequences", "true_ppl", "nelbo_ppl", "nelbo_nll_per_token",
               "nfe", "gen_ppl", "gen_ppl_ref_pad", "entropy", "self_bleu", "mauve", "num_samples",
               "time_median_s", "time_mean_s", "time_std_s", "wall_median_s", "wall_mean_s", "wall_std_s",
               "profile_mean_s", "params", "steps_trained", "train_loss", "valid_nll", "valid_ppl", "tokens_per_s",
               "parity", "load_check_ppl", "load_check_warning")


def old_group(column: str) -> str | None:
    """The group of a column of the old flat format (None: META)."""
    if column in META:
        return None
    base = column[: -len(LO)] if column.endswith((LO, HI)) else column  # an interval goes with its metric
    return "options" if column in OLD_OPTIONS else "metrics" if base in OLD_METRICS else "config"


def nest_old_row(row: dict, display: dict | None = None) -> dict:
    """A flat record row of the old format as {name?, config, options, metrics, display}."""
    out = dict(config={}, options={}, metrics={}, display=dict(display or {}))
    for k, v in row.items():
        if k == "name":
            out["name"] = v
        else:
            out[old_group(k) or "config"][k] = v
    return out


def upgrade(df: pd.DataFrame) -> pd.DataFrame:
    """An old flat results frame in the prefixed columns, each row's display its model's own."""
    missing = [c for c in IDENTITY if c not in df.columns]
    if missing:
        raise ConfigError(f"results lack the column(s) {missing} of the results schema (docs/results_store.md); "
                          f"regenerate them with `python experiments/run.py tables --no-run`")
    out = df.rename(columns={c: col(old_group(c), c) for c in df.columns if old_group(c)})
    out = out[[c for c in META if c in out.columns] + [c for g in GROUPS for c in columns(out, g)]]
    return complete_display(out)


def complete_display(df: pd.DataFrame) -> pd.DataFrame:
    """Rows without a display (old records) get their model's own `display(config)`; rows of
    no known model a neutral one."""
    if col("display", "colour") not in df.columns:
        df = df.assign(**{col("display", k): None for k in DISPLAY})
    need = df[col("display", "colour")].isna()
    if not need.any():
        return df
    df = df.astype({col("display", k): object for k in DISPLAY})
    conf = columns(df, "config")
    for i in df.index[need]:
        values = {bare(c): df.at[i, c] for c in conf if _set(df.at[i, c])}
        d = model_display(values.get("model"), values.get("group"), _fields(values.get("model"), values))
        for k in DISPLAY:
            df.at[i, col("display", k)] = d[k]
    return df


def _set(v) -> bool:
    return v is not None and not (isinstance(v, float) and np.isnan(v))


@lru_cache(maxsize=64)
def _config_types(model: str) -> dict:
    from esolm import registry
    from esolm.config import field_types

    try:
        return field_types(registry.model_class(model).config_class)
    except ConfigError:
        return {}


def _fields(model, values: dict) -> tuple:
    """The config values of a row that are fields of its model's config, typed (hashable)."""
    from esolm.config import coerce

    types_ = _config_types(str(model))
    try:
        return tuple(sorted((k, coerce(v, types_[k], k)) for k, v in values.items() if k in types_))
    except ConfigError:
        return ()


@lru_cache(maxsize=256)
def model_display(model: str | None, group: str | None, fields: tuple) -> dict:
    """The registered model's Display for these config fields (neutral when it has none)."""
    from esolm import registry

    try:
        cls = registry.model_class(str(model))
        return dataclasses.asdict(cls.display(registry.build_config(str(model), **dict(fields))))
    except (ConfigError, TypeError, ValueError):
        return neutral_display(str(group or model))
