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
import seaborn as sns

from analysis import records as R
from analysis import store as S
from analysis.pareto import group_styles, save, setup_style
from esolm.config import ConfigError
from esolm.io import atomic_write_text

WINDOW = 25  # training steps per plotted point


def collect(results: Path) -> pd.DataFrame:
    """One row per (training run, window): label, group, run (the training record's key: a model
    trained again, or under another seed, is a run of its own), step, tokens, train_nll,
    valid_nll (NaN off the validation steps). Models whose log is gone are skipped, and so are
    records that do not verify (analysis/records.py). Of a job trained under several code
    versions (records of older keys not yet cleaned), only its newest record is drawn."""
    rows = []
    for rec in R.latest_by_name(rec for _, rec in R.scan(results, {"train"})[0]).values():
        log = Path(rec.get("checkpoint") or "").with_name("train_log.jsonl")
        config = rec.get("config") if isinstance(rec.get("config"), dict) else {}
        length = (config.get("corpus") or {}).get("length")
        steps = _steps(log)
        if not steps or not length:
            continue
        tokens_per_step = int((config.get("train") or {}).get("batch_size", 1)) * int(length)
        for i in range(0, len(steps), WINDOW):
            window = steps[i:i + WINDOW]
            last = window[-1]
            valid = [s["valid_nll_per_token"] for s in window if "valid_nll_per_token" in s]
            rows.append(dict(label=rec["label"], group=rec["group"], run=rec["key"], step=last["step"],
                             tokens=last["step"] * tokens_per_step,
                             train_nll=sum(s["nll_per_token"] for s in window) / len(window),
                             valid_nll=valid[-1] if valid else float("nan")))
    return pd.DataFrame(rows)


def _steps(log: Path) -> list[dict]:
    """The training steps of a train_log.jsonl ([] when it is gone); a line cut short (a run
    killed while appending) is left out."""
    if not log.is_file():
        return []
    steps = []
    for line in log.read_text().splitlines():
        try:
            step = json.loads(line)
        except ValueError:
            continue
        if isinstance(step, dict) and "step" in step and "nll_per_token" in step:
            steps.append(step)
    return steps


def _displays(results: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """The curves' methods with the display.* columns of their train rows in results.csv
    (a method not there keeps a neutral display)."""
    try:
        train = S.rows(S.load_results(results), "train")
    except (ConfigError, OSError, KeyError):  # no or unreadable results.csv: neutral colours
        return frame
    cols = ["group", *[c for c in train.columns if c.startswith("display.")]]
    return pd.concat([train[cols], frame[["group"]]], ignore_index=True)


def dash(i: int):
    """The i-th model of a method: solid, dashed, dotted, dash-dot (seaborn dash specs: matplotlib's
    own patterns, scaled by the line width as "--", ":" and "-." are)."""
    name = ("", "lines.dashed_pattern", "lines.dotted_pattern", "lines.dashdot_pattern")[i % 4]
    return tuple(matplotlib.rcParams[name]) if name else ""


def runs(frame: pd.DataFrame) -> pd.Series:
    """Each row's training run: the `run` column collect() writes, or, in a learning_curves.csv
    from before it, a new run wherever a model's steps start again (one record after another)."""
    if "run" in frame.columns:
        return frame["run"].astype(str)
    restart = frame.groupby("label", sort=False)["step"].diff().le(0).astype(int)
    return frame["label"].astype(str) + "#" + restart.groupby(frame["label"], sort=False).cumsum().astype(str)


def draw_curves(ax, frame: pd.DataFrame, styles: dict) -> None:
    """A training line per run (sns.lineplot, hue and style by model: its method's colour, a line
    style per model of one method; the runs of one model alike, each drawn on its own so that no
    line jumps from one run's end back to another's start) and the validation points as dots,
    with the models' legend."""
    curves = frame.assign(model=frame["label"].astype(str) + " (train)", tokens_m=frame["tokens"] / 1e6,
                          _run=runs(frame))
    first = curves.drop_duplicates("model")
    order = list(first["model"])
    palette = dict(zip(order, first["group"].map(lambda g: styles[g]["colour"])))
    dashes = dict(zip(order, first.groupby("group", sort=False).cumcount().map(dash)))
    sns.lineplot(data=curves, x="tokens_m", y="train_nll", hue="model", style="model", units="_run", hue_order=order,
                 style_order=order, palette=palette, dashes=dashes, estimator=None, sort=True, lw=1.3, ax=ax)
    valid = curves.dropna(subset=["valid_nll"])  # drawn model after model, as the lines are
    valid = valid.sort_values("model", key=lambda m: m.map(order.index), kind="stable")
    if len(valid):
        sns.scatterplot(data=valid, x="tokens_m", y="valid_nll", hue="model", hue_order=order, palette=palette,
                        s=36, linewidth=0, zorder=3, legend=False, ax=ax)
    sns.move_legend(ax, "best", fontsize=7, ncol=2, title=None)


def draw_learning_curves(results: Path) -> list[Path]:
    """Write the CSV and the figure; returns their paths (none when no log is found)."""
    results = Path(results)
    frame = collect(results)
    if frame.empty:
        return []
    csv = results / "learning_curves.csv"
    atomic_write_text(csv, frame.to_csv(index=False))
    fig = learning_figure(frame, group_styles(_displays(results, frame)), results.name)
    (results / "figures").mkdir(parents=True, exist_ok=True)
    return [csv, *save(fig, results / "figures" / "learning_curves")]


def learning_figure(frame: pd.DataFrame, styles: dict, name: str):
    """The learning-curve figure of a collect() frame (or a learning_curves.csv read back)."""
    setup_style()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    draw_curves(ax, frame, styles)
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("NLL bound, nats/token (dots: validation)")
    more = ", a line per run" if runs(frame).nunique() > frame["label"].nunique() else ""
    ax.set_title(f"Learning curves: {name}\nlines: training loss (mean of {WINDOW} steps){more}; dots: validation",
                 fontsize=10)
    return fig


if __name__ == "__main__":
    for out in draw_learning_curves(Path(sys.argv[1] if len(sys.argv) > 1 else "results/tiny")):
        print(f"wrote {out}")
