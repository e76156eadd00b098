"""Records -> results/<preset>/results.csv (one row per job; schema in docs/results_store.md)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from esolm.checkpoint import atomic_write_bytes, atomic_write_json


def read_records(results: Path) -> list[dict]:
    out = []
    for p in sorted((results / "records").glob("*/*.json")):
        try:
            out.append(json.loads(p.read_text()))
        except json.JSONDecodeError:
            continue  # a record is written atomically; a broken one is not ours
    return out


def aggregate(preset, graph, results: Path, code: str) -> pd.DataFrame:
    """The newest record of every job of the graph (by name); ``stale`` marks records of an
    older code version, kept so that tables still have a number while a rerun is pending."""
    names = {j.name: j for j in graph}
    latest: dict[str, dict] = {}
    for r in read_records(results):
        if r.get("name") in names and (r["name"] not in latest or r["finished"] > latest[r["name"]]["finished"]):
            latest[r["name"]] = r
    rows = []
    for name, r in sorted(latest.items()):
        meta = dict(key=r["key"], stale=r["key"] != names[name].key, code_version=r["code_version"],
                    git_sha=r.get("git_sha"), finished=r["finished"], seconds=r.get("seconds"))
        # a record of several rows (longctx: every method at one length, timed side by side)
        # gives one results.csv row per method, named by the row
        for row in r["rows"] if "rows" in r else [dict(name=name, **r["row"])]:
            rows.append(dict(name=row["name"], **meta, **{k: v for k, v in row.items() if k != "name"}))
    df = pd.DataFrame(rows)
    csv = df.to_csv(index=False).encode()
    atomic_write_bytes(results / "results.csv", lambda f: f.write(csv))
    missing = sorted(set(names) - set(latest))
    atomic_write_json(results / "summary.json", dict(
        preset=preset.name, description=preset.description, corpus=preset.corpus, data=preset.data,
        backbone=preset.backbone, backbone_overrides=preset.backbone_overrides, train=preset.train,
        num_samples=preset.num_samples, top_p=preset.top_p, timing=preset.timing, code_version=code,
        jobs=len(graph), records=len(latest), rows=len(rows), stale=int(df["stale"].sum()) if len(df) else 0, missing=missing,
        environment=_environment(latest)))
    return df


def _environment(latest: dict) -> dict | None:
    for r in latest.values():
        if r.get("stage") == "time":
            return r.get("environment")
    return None
