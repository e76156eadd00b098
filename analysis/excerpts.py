"""Samples a person can read: results/<preset>/samples.md, two short excerpts per method (at
its lowest and its highest NFE), each labelled with the model, its sample options, NFE and
gen PPL. The text comes from the sample records (`examples`, else the `samples` file).

    python -m analysis.excerpts results/tiny      # -> results/tiny/samples.md
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd

from analysis import records as R
from analysis import store as S
from analysis.pareto import ordered_groups

CHARS = 300  # characters per excerpt


def _text(results: Path, key: str) -> tuple[str | None, str]:
    """The first sample of the record with this key: its `examples`, else the first line of its
    samples file; (None, why) where there is none (a record that does not verify, a samples
    file gone)."""
    c = R.check(results / "records" / "sample" / f"{key}.json")
    if c.record is None:
        return None, f"the record {c.path} is " + (f"corrupt ({c.reason})" if c.state == "corrupt" else "missing")
    rec = c.record
    if rec.get("examples"):
        return str(rec["examples"][0]), ""
    samples = Path(rec.get("samples") or "")
    if not samples.is_file():
        return None, (f"its samples file {samples} is gone; `python experiments/run.py clean --preset {results.name} "
                      f"--job '{rec['name']}'` and a rerun of pareto redraw them")
    with samples.open() as f:
        first = f.readline()
    try:
        return str(json.loads(first)["text"]), ""
    except (ValueError, KeyError, TypeError):
        return None, f"the first line of {samples} is not a sample"


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in the text."""
    run = max((len(r) for r in re.findall(r"`+", text)), default=0)
    return "`" * max(3, run + 1)


def excerpts_markdown(df: pd.DataFrame, results: Path, chars: int = CHARS) -> str:
    from analysis.claims import point_name

    sample = S.rows(df, "sample")
    lines = [f"# Samples: {S.load_summary(results).get('preset', results.name)}", "",
             f"The first sample of two configurations per method, its lowest and its highest NFE, cut to "
             f"{chars} characters. Gen PPL is scored by {S.evaluator_name(sample) if len(sample) else '?'}.", ""]
    for g in ordered_groups(sample) if len(sample) else []:
        rows = sample.loc[sample["group"].eq(g) & sample["nfe"].notna()].sort_values(["nfe", "gen_ppl"])
        if rows.empty:
            continue
        picks = [("low NFE", rows.iloc[0])] + ([("high NFE", rows.iloc[-1])] if len(rows) > 1 else [])
        lines += [f"## {g}", ""]
        for which, r in picks:
            text, why = _text(results, str(r["key"])) if "key" in r else (None, "results.csv names no record")
            lines.append(f"**{which}**: `{point_name(r)}`, NFE {r['nfe']:g}, gen PPL {r['gen_ppl']:.4g}"
                         + (f", entropy {r['entropy']:.3g}" if pd.notna(r.get("entropy")) else ""))
            lines.append("")
            if text is None:
                lines += [f"(no text stored for this configuration: {why})", ""]
                continue
            cut = text[:chars] + (" [...]" if len(text) > chars else "")
            fence = _fence(cut)
            lines += [f"{fence}text", cut, fence, ""]
    return "\n".join(lines)


def write_samples(results_dir, chars: int = CHARS) -> Path | None:
    """results/<preset>/samples.md; None when the store has no sample rows."""
    results = Path(results_dir)
    df = S.load_results(results)
    if S.rows(df, "sample").empty:
        return None
    path = results / "samples.md"
    path.write_text(excerpts_markdown(df, results, chars) + "\n")
    return path


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m analysis.excerpts results/<preset>", file=sys.stderr)
        return 2
    path = write_samples(args[0])
    print(f"wrote {path}" if path else f"no sample rows in {args[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
