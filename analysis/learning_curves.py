"""Learning curves of a preset's trained models: training NLL (nats/token, mean over windows of
steps) and validation NLL against training tokens, one line per model, from the
``train_log.jsonl`` beside each checkpoint. Written as data (``learning_curves.csv``, which
stays valid once the checkpoints are gone) and as a figure.

    python -m analysis.learning_curves results/cpu   # -> results/cpu/learning_curves.csv,
                                                     #    results/cpu/figures/learning_curves.png/.pdf
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from analysis import store as S
from analysis.pareto import group_styles, save, setup_style
from esolm.config import ConfigError

WINDOW = 25  # training steps per plotted point


def collect(results: Path) -> pd.DataFrame:
    """One row per (model, window): label, group, step, tokens, train_nll, valid_nll (NaN off the
    validation steps). Models whose log is gone are skipped."""
    rows = []
    for path in sorted((results / "records" / "train").glob("*.json")):
        rec = json.loads(path.read_text())
        log = Path(rec.get("checkpoint", "")).with_name("train_log.jsonl")
        if not log.exists():
            continue
        steps = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        cfg = rec["config"].get("train", {})
        tokens_per_step = int(cfg.get("batch_size", 1)) * int(rec["config"]["corpus"]["length"])
        for i in range(0, len(steps), WINDOW):
            window = steps[i:i + WINDOW]
            last = window[-1]
            valid = [s["valid_nll_per_token"] for s in window if "valid_nll_per_token" in s]
            rows.append(dict(label=rec["label"], group=rec["group"], step=last["step"],
                             tokens=last["step"] * tokens_per_step,
                             train_nll=sum(s["nll_per_token"] for s in window) / len(window),
                             valid_nll=valid[-1] if valid else float("nan")))
    return pd.DataFrame(rows)


def _displays(results: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """The curves' methods with the display.* columns of their train rows in results.csv
    (a method not there keeps a neutral display)."""
    try:
        train = S.rows(S.load_results(results), "train")
    except (ConfigError, OSError, KeyError):  # no or unreadable results.csv: neutral colours
        return frame
    cols = ["group", *[c for c in train.columns if c.startswith("display.")]]
    return pd.concat([train[cols], frame[["group"]]], ignore_index=True)


def draw_learning_curves(results: Path) -> list[Path]:
    """Write the CSV and the figure; returns their paths (none when no log is found)."""
    results = Path(results)
    frame = collect(results)
    if frame.empty:
        return []
    csv = results / "learning_curves.csv"
    tmp = csv.with_suffix(".csv.tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(csv)
    setup_style()
    styles = group_styles(_displays(results, frame))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    seen: dict = {}  # models of one method share its colour; their line styles differ
    for label, part in frame.groupby("label", sort=False):
        group = part["group"].iloc[0]
        color, i = styles[group]["colour"], seen.setdefault(group, 0)
        seen[group] += 1
        style = ["-", "--", ":", "-."][i % 4]
        ax.plot(part["tokens"] / 1e6, part["train_nll"], style, color=color, lw=1.3, label=f"{label} (train)")
        valid = part.dropna(subset=["valid_nll"])
        ax.plot(valid["tokens"] / 1e6, valid["valid_nll"], "o", color=color, ms=5)
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("NLL bound, nats/token (dots: validation)")
    ax.set_title(f"Learning curves: {results.name} (lines: training loss, mean of {WINDOW} steps)")
    ax.legend(fontsize=7, ncol=2)
    (results / "figures").mkdir(parents=True, exist_ok=True)
    return [csv, *save(fig, results / "figures" / "learning_curves")]


if __name__ == "__main__":
    for out in draw_learning_curves(Path(sys.argv[1] if len(sys.argv) > 1 else "results/tiny")):
        print(f"wrote {out}")
