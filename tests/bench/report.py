"""The benchmark report: ratios between methods measured side by side in one session, next to
the paper's (v4 Table 11, results/paper_anchors.json), the targets of issue 8, the terminal
table and the JSON under results/bench/."""
from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

from esolm import sampling
from esolm.metrics.timing import environment_fingerprint

ROOT = Path(__file__).resolve().parents[2]
ANCHORS = ROOT / "results" / "paper_anchors.json"
PAPER_LENGTHS = (2048, 8192)
PAPER_LABELS = {"AR": "ar", "MDLM": "mdlm", "Eso-LM (B)": "esolm-b"}

# name -> (numerator, denominator), each (method key, cache); "x / y" = how many times y is faster
RATIOS = {
    "MDLM / Eso-LM (B)": (("mdlm", False), ("esolm-b", True)),
    "BD3-LM L'=4 / Eso-LM (B)": (("bd3lm-4", True), ("esolm-b", True)),
    "BD3-LM L'=16 / Eso-LM (B)": (("bd3lm-16", True), ("esolm-b", True)),
    "Eso-LM (B) / AR": (("esolm-b", True), ("ar", True)),
    **{f"{label} uncached / cached": ((key, False), (key, True))
       for key, label in [("ar", "AR"), ("bd3lm-4", "BD3-LM L'=4"), ("bd3lm-16", "BD3-LM L'=16"),
                          ("esolm-b", "Eso-LM (B)")]},
}
# issue 8, item 4: measured at L = 1024 on the 2-core CPU
TARGET_LENGTH = 1024
TARGETS = [
    ("Eso-LM (B) / AR", "<=", 1.25, "Eso-LM (B) with its cache within 1.25x of AR with its cache"),
    ("MDLM / Eso-LM (B)", ">=", 20.0, "Eso-LM (B) at least 20x faster than MDLM"),
    ("Eso-LM (B) uncached / cached", ">=", 8.0, "Eso-LM (B) with cache at least 8x faster than without"),
]


def paper_times() -> dict:
    """{(method key, block size or None): {L: seconds}} from v4 Table 11."""
    doc = json.loads(ANCHORS.read_text())
    out: dict = {}
    for a in doc["anchors"]:
        if a.get("table") != "11":
            continue
        key = f"bd3lm-{a['block_size']}" if a["method"] == "BD3-LM" else PAPER_LABELS[a["method"]]
        out.setdefault(key, {})[int(a["length"])] = float(a["value"])
    return out


def paper_ratios() -> dict:
    """{ratio name: {L: value}} for the ratios the paper's table gives (it has no uncached rows)."""
    t = paper_times()
    out = {}
    for name, ((a, _), (b, _)) in RATIOS.items():
        if "uncached" in name or a not in t or b not in t:
            continue
        out[name] = {L: round(t[a][L] / t[b][L], 2) for L in PAPER_LENGTHS}
    return out


def median(records, key, cache, length, vocab):
    for r in records:
        if (r["method"], r["cache"], r["length"], r["vocab_size"]) == (key, cache, length, vocab):
            return r["seconds"]["median"], r["mode"]
    return None, None


def ratios(records: list[dict], vocab: int) -> dict:
    """{L: {name: {value, numerator_s, denominator_s, estimated}}} from the medians."""
    out = {}
    for L in sorted({r["length"] for r in records if r["vocab_size"] == vocab}):
        row = {}
        for name, (num, den) in RATIOS.items():
            a, ma = median(records, *num, L, vocab)
            b, mb = median(records, *den, L, vocab)
            if a is not None and b is not None:
                row[name] = dict(value=a / b, numerator_s=a, denominator_s=b,
                                 estimated="subsampled" in (ma, mb))
        out[L] = row
    return out


def targets(table: dict) -> list[dict]:
    row = table.get(TARGET_LENGTH, {})
    out = []
    for name, op, bound, text in TARGETS:
        value = row.get(name, {}).get("value")
        met = None if value is None else (value <= bound if op == "<=" else value >= bound)
        out.append(dict(ratio=name, requirement=f"{op} {bound}", text=text, length=TARGET_LENGTH,
                        value=value, met=met))
    return out


# the document's tables of measured records, each filled by the benchmarks (Session.add); the
# first four are measurements, the estimator check only compares two of them
MEASURED = ("sampling", "per_step", "training", "likelihood")
TABLES = MEASURED + ("estimator_check",)


def build(settings, tables: dict, notes) -> dict:
    """The JSON document of one session; ``tables`` maps each of TABLES to its records."""
    records = tables["sampling"]
    primary = ratios(records, settings.vocab_size)
    alt = ratios(records, settings.alt_vocab_size) if settings.alt_vocab_size else {}
    return dict(
        schema="esolm-bench/1",
        created=dt.datetime.now().isoformat(timespec="seconds"),
        command=" ".join(sys.argv),
        environment=environment_fingerprint(settings.device),
        settings=settings.as_dict(),
        protocol=("spec 8.6: batch 1, NFE = L, top_p = 1 (no nucleus), first-hitting regime; "
                  "seconds = wall time of one model.sample(...) as torch.utils.benchmark.Timer measures it "
                  "(blocked_autorange: one warm-up call, then one timed call, the accelerator synchronized), "
                  "warm-up rounds excluded; NFE from the last round's timed call; ratios are of medians measured in this session; "
                  f"tokens drawn in float64 by {sampling.DRAW} (esolm.sampling.DRAW)"),
        sampling=records,
        estimator_check=tables["estimator_check"],
        per_step=tables["per_step"],
        ratios={str(L): r for L, r in primary.items()},
        ratios_alt_vocab={str(L): r for L, r in alt.items()},
        paper=dict(source="v4 Table 11 (results/paper_anchors.json); A6000 GPU, OWT models, L = 2048 / 8192",
                   seconds={k: {str(L): s for L, s in v.items()} for k, v in paper_times().items()},
                   ratios={k: {str(L): s for L, s in v.items()} for k, v in paper_ratios().items()}),
        targets=targets(primary),
        training=tables["training"],
        likelihood=tables["likelihood"],
        notes=notes,
    )


def write(doc: dict, path: Path, latest: Path | None) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=1, default=str) + "\n"
    written = []
    for p in [path] + ([latest] if latest is not None and latest != path else []):
        tmp = p.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(p)
        written.append(p)
    return written


# ------------------------------------------------------------------------ terminal
def _fmt(x, unit=""):
    return "-" if x is None else f"{x:.3g}{unit}"


def text(doc: dict) -> str:
    """The tables printed at the end of a run."""
    s = doc["settings"]
    lines = [f"esolm sampling benchmark: {s['device']}, {s['threads']} threads, preset {s['preset']}, "
             f"V = {s['vocab_size']}, batch 1, NFE = L, no nucleus  (~ = subsampled estimate)"]
    lines.append(f"{'method':<16}{'cache':>6}{'L':>6}{'V':>7}{'NFE':>6}{'median s':>11}{'+- std':>9}"
                 f"{'ms/step':>9}{'load':>6}")
    for r in doc["sampling"]:
        st = r["seconds"]
        mark = "~" if r["mode"] == "subsampled" else " "
        lines.append(f"{r['label']:<16}{'yes' if r['cache'] else 'no':>6}{r['length']:>6}{r['vocab_size']:>7}"
                     f"{r['nfe']:>6}{mark}{st['median']:>10.3f}{st['std']:>9.3f}"
                     f"{1e3 * st['median'] / max(r['nfe'], 1):>9.2f}{r['load_before']:>6.2f}")
    paper = doc["paper"]["ratios"]
    lengths = sorted(int(L) for L in doc["ratios"])
    head = "".join(f"{'L=' + str(L):>10}" for L in lengths)
    lines += ["", f"{'ratio (x / y: y is that much faster)':<36}{head}{'paper 2048':>12}{'paper 8192':>12}"]
    for name in RATIOS:
        vals = [doc["ratios"][str(L)].get(name) for L in lengths]
        cells = "".join(f"{('~' if v and v['estimated'] else '') + _fmt(v and v['value']):>10}" for v in vals)
        p = paper.get(name, {})
        lines.append(f"{name:<36}{cells}{_fmt(p.get('2048')):>12}{_fmt(p.get('8192')):>12}")
    for L, row in doc["ratios_alt_vocab"].items():
        v = row.get("Eso-LM (B) / AR")
        if v:
            lines.append(f"{'Eso-LM (B) / AR at V=' + str(s['alt_vocab_size']):<36}"
                         f"{'(L=' + L + ') ' + _fmt(v['value']):>10}")
    lines.append("")
    for t in doc["targets"]:
        state = "not measured" if t["met"] is None else ("MET" if t["met"] else "NOT MET")
        lines.append(f"target at L={t['length']}: {t['ratio']} {t['requirement']}: {_fmt(t['value'])}  {state}")
    for c in doc["estimator_check"]:
        lines.append(f"estimator check {c['label']} uncached={not c['cache']} L={c['length']}: "
                     f"estimate / full = {c['estimate_over_full']:.3f}")
    for t in doc["training"]:
        lines.append(f"training {t['label']:<14} L={t['length']} B={t['batch']}: "
                     f"{t['tokens_per_second']:.0f} tokens/s (fwd+bwd)")
    for e in doc["likelihood"]:
        lines.append(f"likelihood {e['label']:<12} L={e['length']} K={e['orders']}: "
                     f"{e['sequences_per_second']:.3g} sequences/s ({e['passes_per_sequence']} passes / sequence)")
    for st in doc["per_step"]:
        lines.append(f"per step {st['label']:<12} cached L={st['length']}: {st['wall_ms_per_step']:.2f} ms, "
                     f"network {st['network_ms_per_step']:.2f} ms ({100 * st['network_share']:.0f}%), "
                     f"{st['kernel_ops_per_step']:.0f} compute ops")
    lines += [f"note: {n}" for n in doc["notes"] if not n.startswith(tuple(s_["label"] for s_ in doc["per_step"]))]
    return "\n".join(lines)
