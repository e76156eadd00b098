"""Records -> results/<preset>/results.csv (one row per job; the schema of analysis/schema.py,
described in docs/results_store.md)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from analysis import records as R
from analysis import schema as X
from esolm.io import atomic_write_bytes, atomic_write_json


def read_records(results: Path) -> list[dict]:
    """The records of the store that verify (analysis/records.py); the corrupt ones count as
    missing (the commands name them: experiments/store.py ``warn_corrupt``)."""
    return [record for _, record in R.scan(results)[0]]


def record_rows(record: dict, name: str, displays: dict) -> list[dict]:
    """A record's rows as {name, config, options, metrics, display}: a record of several rows
    (longctx: every method at one length, timed side by side) gives one per method, named by
    the row. A row of the old flat format is nested by its documented columns (schema.nest_old_row),
    its display the graph's for its label (else its model's, when results.csv is read)."""
    rows = record["rows"] if "rows" in record else [dict(name=name, **record["row"])]
    out = []
    for row in rows:
        if not any(isinstance(row.get(g), dict) for g in X.GROUPS):
            row = X.nest_old_row(row, displays.get(row.get("label")))
        out.append(dict(row, name=row.get("name", name)))
    return out


def init_sources(preset) -> dict[str, tuple[str, str]]:
    """label -> (source label, source group) of the preset's entries that start from another entry's
    trained weights (ModelEntry.init_from: a finetune)."""
    groups = {m.label: m.group for m in preset.models}
    return {m.label: (m.init_from, groups.get(m.init_from, m.init_from))
            for m in preset.models if getattr(m, "init_from", None)}


def mark_init_from(row: dict, sources: dict) -> dict:
    """A row of a finetuned model (``init_sources``) with ``config.init_from`` = its source's label, and
    its display label saying so ("BD3-LM L'=4 (from MDLM)"; the family stays the model's own, so it
    is selected as its method, yet never mistaken for the model trained from scratch). Other rows
    as they are (no init_from: empty in results.csv)."""
    found = sources.get((row.get("config") or {}).get("label"))
    if found is None:
        return row
    label, group = found
    display = dict(row.get("display") or {})
    if display.get("label") and f"(from {group})" not in display["label"]:
        display["label"] = f"{display['label']} (from {group})"
    return dict(row, config=dict(row["config"], init_from=label), display=display)


def train_seeds(graph) -> dict[str, int]:
    """label -> the training seed (TrainConfig.seed) of each model the graph trains: 1 for the
    presets' models, 2, 3 for their seed replicates (experiments/presets.py _seed_replicates)."""
    return {j.label: j.identity["train"]["seed"] for j in graph
            if j.stage == "train" and j.label and isinstance(j.identity.get("train"), dict)
            and "seed" in j.identity["train"]}


def mark_train_seed(row: dict, seeds: dict) -> dict:
    """A row of a trained model with ``config.train_seed`` = its training seed (the claims fold a
    model's seeds into one value, analysis/claims.py fold_seeds); other rows (calibration, timing
    only) as they are (empty in results.csv)."""
    seed = seeds.get((row.get("config") or {}).get("label"))
    return row if seed is None else dict(row, config=dict(row["config"], train_seed=seed))


def aggregate(preset, graph, results: Path, code: str) -> pd.DataFrame:
    """The newest record of every job of the graph (by name); ``stale`` marks records of an
    older code version, kept so that tables still have a number while a rerun is pending."""
    names = {j.name: j for j in graph}
    displays = {j.label: j.display for j in graph if getattr(j, "display", None) and j.label}
    latest = R.latest_by_name(r for r in read_records(results) if r["name"] in names)
    sources, seeds = init_sources(preset), train_seeds(graph)
    rows = []
    for name, r in sorted(latest.items()):
        meta = dict(key=r["key"], stale=r["key"] != names[name].key, code_version=r["code_version"],
                    git_sha=r.get("git_sha"), finished=r["finished"], seconds=r.get("seconds"))
        rows += [dict(X.flatten(mark_train_seed(mark_init_from(row, sources), seeds)), **meta)
                 for row in record_rows(r, name, displays)]
    df = X.frame(rows)
    csv = df.to_csv(index=False).encode()
    atomic_write_bytes(results / "results.csv", lambda f: f.write(csv))
    missing = sorted(set(names) - set(latest))
    atomic_write_json(results / "summary.json", dict(
        preset=preset.name, description=preset.description, corpus=preset.corpus,
        data=dataclasses.asdict(preset.run.data), backbone=preset.run.backbone_fields(),
        train=dataclasses.asdict(preset.run.train), num_samples=preset.run.sampling.num_samples,
        top_p=preset.run.sampling.top_p, timing=dataclasses.asdict(preset.run.timing), code_version=code,
        jobs=len(graph), records=len(latest), rows=len(rows), stale=int(df["stale"].sum()) if len(df) else 0, missing=missing,
        environment=_environment(latest)))
    return df


def _environment(latest: dict) -> dict | None:
    for r in latest.values():
        if r.get("stage") == "time":
            return r.get("environment")
    return None
