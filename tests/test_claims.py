"""The claims report (analysis/claims.py, rules in analysis/rules.py) on hand-made result frames:
each claim passes on a store shaped like the paper's findings when the intervals clear the margin,
fails when its numbers contradict the finding beyond them, is INCONCLUSIVE inside them or without
them, and says NOT MEASURED when its rows are missing (never PASS by default); the rule table's
fingerprint is the changelog's; samples.md from hand-made records; both on results/tiny."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from analysis import schema as X
from analysis import rules as R
from analysis.claims import (FAIL, INCONCLUSIVE, NOT_MEASURED, PASS, VERDICTS, Num, compare,
                              evaluate_claims, report, write_claims)
from analysis.pareto import collapsed
from analysis.excerpts import write_samples

ROOT = Path(__file__).resolve().parent.parent
L = 128
ESO = "Eso-LM (B)"


def _ev(label, group, ppl, exact=False, K=None, nelbo=None, **over):
    return dict(stage="eval", label=label, group=group, model=label.split()[0], exact=exact, num_orders=K, ppl=ppl,
                num_sequences=64 if exact else 800, nelbo_ppl=nelbo, **over)


def _lc(label, group, length, secs, cached=True, **over):
    return dict(stage="longctx", label=label, group=group, model=label.split()[0], length=length, kv_cache=cached,
                time_mean_s=secs, time_median_s=secs, **over)


def _pt(label, group, opts, nfe, gen, ent, secs, **over):
    """A sample row and its time row (same label and options)."""
    base = dict(label=label, group=group, model=label.split()[0], **over, **opts)
    d = 1 - gen / 1000  # a similarity as good as gen PPL says, its interval +- 0.0002
    return [dict(stage="sample", nfe=nfe, gen_ppl=gen, entropy=ent, dist_sim=d, dist_sim_lo=d - 2e-4, dist_sim_hi=d + 2e-4,
                 **base),
            dict(stage="time", nfe=nfe, kv_cache=True, time_median_s=secs, time_mean_s=secs, **base)]


def store(**change) -> list[dict]:
    """Rows on which every claim holds; `change` swaps named numbers for contradicting ones."""
    c = dict(eso025_nelbo=80.0, eso1_k10=85.0, eso025_k10=75.0, bd16_nelbo=65.0, mdlm_nelbo=70.0, eso512=4.4,
             mdlm8=(8, 200.0, 0.3), mdlm128=100.0, bd_one=(300.0, 3.0), eso_low_a0=80.0)
    c.update(change)
    e1, e025 = dict(alpha_0=1.0), dict(alpha_0=0.25)
    rows = [
        _ev("ar", "AR", 50.0), _ev("ar", "AR", 50.0, True, 1, 50.0),
        _ev("mdlm", "MDLM", c["mdlm_nelbo"]),
        _ev("bd3lm L'=4", "BD3-LM L'=4", 60.0, block_size=4),
        _ev("bd3lm L'=16", "BD3-LM L'=16", c["bd16_nelbo"], block_size=16),
        _ev("esolm-b a0=1", ESO, 90.0, **e1), _ev("esolm-b a0=0.25", ESO, c["eso025_nelbo"], **e025),
        _ev("esolm-b a0=1", ESO, 95.0, True, 1, 88.0, **e1),
        _ev("esolm-b a0=1", ESO, c["eso1_k10"], True, 10, 88.0, **e1),
        _ev("esolm-b a0=0.25", ESO, 82.0, True, 1, 78.0, **e025),
        _ev("esolm-b a0=0.25", ESO, c["eso025_k10"], True, 10, 78.0, **e025),
        _ev("evaluator", "evaluator", 40.0),  # lower than AR: must not count
    ]
    for length, ar, eso, mdlm, bd in ((128, 1.0, 1.1, 3.0, 1.5), (512, 4.0, c["eso512"], 20.0, 6.0)):
        rows += [_lc("ar", "AR", length, ar), _lc("esolm-b a0=1", ESO, length, eso, **e1),
                 _lc("mdlm", "MDLM", length, mdlm, cached=False),
                 _lc("bd3lm L'=4", "BD3-LM L'=4", length, bd, block_size=4)]
    t8, g8, s8 = c["mdlm8"]
    rows += _pt("ar", "AR", dict(steps=127), 127, 85.0, 4.2, 1.2)  # matched by Eso-LM (B) T=8 a0_eval=0.25
    rows += _pt("mdlm", "MDLM", dict(steps=t8), t8, g8, 4.1, s8)
    rows += _pt("mdlm", "MDLM", dict(steps=32), 32, 120.0, 4.1, 1.0)
    rows += _pt("mdlm", "MDLM", dict(steps=128), 128, c["mdlm128"], 4.1, 4.0)
    gen, ent = c["bd_one"]
    rows += _pt("bd3lm L'=4", "BD3-LM L'=4", dict(steps=32), 63, gen, ent, 0.6, block_size=4)  # one step per block
    rows += _pt("bd3lm L'=4", "BD3-LM L'=4", dict(steps=128), 140, 110.0, 4.0, 1.5, block_size=4)
    rows += _pt("esolm-b a0=1", ESO, dict(steps=8, alpha_0_eval=1.0), 8, 150.0, 4.1, 0.2, **e1)
    rows += _pt("esolm-b a0=1", ESO, dict(steps=64, alpha_0_eval=1.0), 60, 100.0, 4.1, 0.5, **e1)
    rows += _pt("esolm-b a0=1", ESO, dict(steps=128, alpha_0_eval=1.0), 100, 95.0, 4.1, 0.9, **e1)
    rows += _pt("esolm-b a0=1", ESO, dict(steps=8, alpha_0_eval=0.25), 110, c["eso_low_a0"], 4.1, 1.0, **e1)
    return rows


OPTIONS = ("steps", "alpha_0_eval", "reference_grid")  # the sample options of these rows
CI = ("ppl", "nelbo_ppl", "gen_ppl", "gen_ppl_judge2", "entropy", "time_mean_s", "time_median_s")
METRICS = ("num_sequences", "nfe", "num_samples", *CI, *(f"{m}_{e}" for m in CI for e in ("lo", "hi")))


def with_ci(rows, ci: float) -> list[dict]:
    """Rows with a 95% interval of +- ci (relative) on every metric that has a value."""
    return [dict(r, **{f"{m}_{e}": r[m] * (1 + s * ci) for m in CI if r.get(m) is not None
                       for e, s in (("lo", -1), ("hi", 1))}) for r in rows]


def calibration(real=4.2) -> list[dict]:
    """The calibration rows (no time row): real text (interval +- 0.02 over 64 samples) and a repeater."""
    base = dict(stage="sample", group="calibration", model="calibration", num_samples=64)
    return [dict(base, label="real text", gen_ppl=70.0, entropy=real, entropy_lo=real - 0.02, entropy_hi=real + 0.02),
            dict(base, label="repeater", gen_ppl=2.0, entropy=1.0, entropy_lo=0.9, entropy_hi=1.1)]


def frame(rows) -> pd.DataFrame:
    """Hand-made flat rows as a results frame of the schema (analysis/schema.py): config,
    options, metrics, and each model's own display."""
    out = []
    for r in rows:
        config = {k: v for k, v in r.items() if k not in OPTIONS + METRICS + ("key",)}
        overrides = tuple(sorted((k, config[k]) for k in ("alpha_0", "block_size") if k in config))
        out.append(dict({k: r[k] for k in ("key",) if k in r}, config=config,
                        options={k: v for k, v in r.items() if k in OPTIONS},
                        metrics={k: v for k, v in r.items() if k in METRICS},
                        display=X.model_display(config["model"], config["group"], overrides)))
    return X.frame(out)


def claims(rows, length=L, ci: float | None = 0.005, table=R.RULES) -> dict:
    rows = with_ci(rows, ci) if ci is not None else rows
    return {c.id: c for c in evaluate_claims(frame(rows), length=length, table=table)}


def status(rows, cid, **kw) -> str:
    return claims(rows, **kw)[cid].status


IDS = ["C1", "C2", "C2-K", "C3", "C4", "C5", "C6", "C7", "C8", "C9"]


# ------------------------------------------------------------------ the comparison core
def test_a_comparison_passes_or_fails_only_beyond_the_intervals():
    assert compare(Num(1.0, 0.9, 1.1), "<", Num(2.0, 1.8, 2.2)) == (PASS, True)
    assert compare(Num(3.0, 2.9, 3.1), "<", Num(2.0, 1.8, 2.2)) == (FAIL, False)
    assert compare(Num(1.9, 1.7, 2.1), "<", Num(2.0, 1.8, 2.2)) == (INCONCLUSIVE, True)  # overlapping
    assert compare(Num(1.0), "<", Num(2.0, 1.8, 2.2)) == (INCONCLUSIVE, True)  # no interval: clears nothing
    assert compare(Num(2.5, 2.2, 2.8), ">=", Num(2.0, 2.0, 2.0)) == (PASS, True)
    assert compare(Num(float("nan")), "<", Num(1.0)) == (NOT_MEASURED, None)


def test_every_claim_passes_on_a_store_that_shows_the_papers_findings_beyond_its_intervals():
    got = claims(store())
    assert {i: got[i].status for i in IDS} == {i: PASS for i in IDS}
    assert got["C7-ref"].status == NOT_MEASURED  # no reference-grid rows
    cal = claims(store() + calibration())  # calibration rows are reference points, never a method
    assert {i: cal[i].status for i in IDS} == {i: PASS for i in IDS}
    assert any("real text's 4.200" in d for d in cal["C7"].details)  # C7 uses the calibrated flag


def test_without_intervals_every_claim_is_inconclusive_and_shows_its_point_verdict():
    got = claims(store(), ci=None)
    assert {i: (got[i].status, got[i].point) for i in IDS} == {i: (INCONCLUSIVE, PASS) for i in IDS}
    assert all(any(d.startswith("no interval") for d in got[i].details) for i in IDS)


FAILS = [
    ("C1", dict(eso025_nelbo=95.0)),             # lower alpha_0, higher NELBO
    ("C2", dict(eso1_k10=90.0)),                 # IW above the same-sequence NELBO at the largest K
    ("C2-K", dict(eso025_k10=84.0)),             # 84 > 82 x 1.01
    ("C3", dict(bd16_nelbo=55.0)),               # L'=16 below L'=4
    ("C3", dict(mdlm_nelbo=62.0)),               # BD3-LM L'=16 (65) above MDLM
    ("C4", dict(mdlm_nelbo=45.0)),               # MDLM below AR
    ("C5", dict(eso512=6.0)),                    # Eso-LM (B) / AR = 1.5 at L = 512
    ("C6", dict(mdlm8=(8, 100.0, 0.1))),         # an MDLM point faster and better than every Eso-LM (B) point
    ("C7", dict(bd_one=(150.0, 4.1))),           # BD3-LM at one step per block does not collapse
    ("C8", dict(eso_low_a0=160.0)),              # lower alpha_0_eval, higher gen PPL
    ("C9", dict(mdlm128=130.0)),                 # 130 > 120 x 1.05
]


@pytest.mark.parametrize("cid, change", FAILS)
def test_each_claim_fails_when_its_numbers_contradict_the_finding_beyond_the_intervals(cid, change):
    assert status(store(**change), cid) == FAIL


@pytest.mark.parametrize("cid, change", FAILS)
def test_each_claim_is_inconclusive_when_the_contradiction_is_inside_the_intervals(cid, change):
    got = claims(store(**change), ci=0.5)[cid]
    assert got.status == INCONCLUSIVE and got.point == FAIL


@pytest.mark.parametrize("cid, stage", [("C1", "eval"), ("C2", "eval"), ("C3", "eval"), ("C4", "eval"),
                                        ("C5", "longctx"), ("C6", "time"), ("C7", "sample"), ("C8", "sample"),
                                        ("C9", "sample")])
def test_a_claim_whose_rows_are_missing_is_not_measured(cid, stage):
    rows = [r for r in store() if r["stage"] != stage]
    assert status(rows, cid) == NOT_MEASURED
    assert status(rows, cid, ci=None) == NOT_MEASURED  # missing rows stay NOT MEASURED, not INCONCLUSIVE


def test_c3_names_the_part_that_fails_and_the_protocol_difference():
    """(Updated on purpose: the part's wording now carries the row labels and intervals.)"""
    trend = claims(store(bd16_nelbo=55.0))["C3"]
    assert trend.status == FAIL and any(d.startswith("fails: NELBO PPL along L': L'=16 55") for d in trend.details)
    above = claims(store(mdlm_nelbo=62.0))["C3"]
    assert above.status == FAIL and any(d.startswith("fails: below MDLM's NELBO PPL: bd3lm L'=16 65")
                                        for d in above.details)
    ok = claims(store())["C3"]
    assert ok.status == PASS and not any(d.startswith("fails") for d in ok.details)
    assert any(d.startswith("protocol:") for d in ok.details)


def test_nothing_passes_by_default_on_a_store_with_only_an_ar():
    got = claims([_ev("ar", "AR", 50.0), *_pt("ar", "AR", dict(steps=127), 127, 60.0, 4.2, 0.5)])
    assert all(c.status == NOT_MEASURED for c in got.values()), {c.id: c.status for c in got.values()}


def test_c2_without_same_sequence_nelbo_says_sequences_differ_instead_of_comparing_subsets():
    rows = [{k: v for k, v in r.items() if k != "nelbo_ppl"} for r in store()]
    c = claims(rows)["C2"]
    assert c.status == NOT_MEASURED and "sequences differ" in c.ours
    assert claims(rows)["C2-K"].status == PASS  # the trend in K needs no NELBO


def test_c2_checks_only_the_largest_k_where_eso_lm_b_sits_above_the_nelbo_at_k1():
    got = claims(store())  # a0=1: K=1 95 > NELBO 88, K=10 85 <= 88
    assert got["C2"].status == PASS and "K=10" in got["C2"].ours


def test_c4_leaves_out_the_evaluator():
    assert "evaluator" not in claims(store())["C4"].ours


def test_c5_growing_with_l_needs_two_lengths():
    rows = [r for r in store() if not (r["stage"] == "longctx" and r["length"] == 512)]
    c = claims(rows)["C5"]
    assert c.status == NOT_MEASURED and any("needs 2" in d for d in c.details)


def test_c5_a_ratio_gets_its_interval_from_the_two_intervals():
    c = claims(store())["C5"]  # Eso 4.4 +- 0.5% over AR 4.0 +- 0.5%
    assert f"Eso/AR 1.1 [{4.4 * 0.995 / (4.0 * 1.005):.4g}, {4.4 * 1.005 / (4.0 * 0.995):.4g}]" in c.ours


def test_c5_a_ratio_of_two_rows_timed_in_one_clock_gets_the_paired_interval_over_its_rounds():
    """Rows of one longctx job carry their seconds per round (time_trials): the ratio's interval is
    the paired bootstrap over rounds, so a slow spell shared by both methods cancels; wide
    per-row intervals would leave the same ratio INCONCLUSIVE. Rows of unequal rounds fall back."""
    from esolm.metrics.bootstrap import ratio_interval

    spell = [1.0, 1.0, 1.6, 1.0, 1.3, 1.0, 1.0, 1.5]  # the machine's slow spells, shared by every method
    jitter = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0, 1.01]

    def rounds(rows):
        out = []
        for r in rows:
            if r["stage"] == "longctx":
                t = [r["time_mean_s"] * s * (j if r["group"] == ESO else 1.0) for s, j in zip(spell, jitter)]
                r = dict(r, time_trials=" ".join(f"{v:.9g}" for v in t), time_mean_s=sum(t) / len(t))
            out.append(r)
        return out

    wide = [dict(r, time_mean_s_lo=r["time_mean_s"] * 0.8, time_mean_s_hi=r["time_mean_s"] * 1.2)
            if r["stage"] == "longctx" else r for r in with_ci(rounds(store()), 0.005)]
    assert claims(wide, ci=None)["C5"].status == PASS
    plain = [dict(r, time_trials=None) for r in wide]
    assert claims(plain, ci=None)["C5"].status == INCONCLUSIVE  # the same numbers, unpaired
    ar = next(r for r in wide if r["stage"] == "longctx" and r["group"] == "AR" and r["length"] == 512)
    eso = next(r for r in wide if r["stage"] == "longctx" and r["group"] == ESO and r["length"] == 512)
    lo, hi = ratio_interval([float(v) for v in eso["time_trials"].split()], [float(v) for v in ar["time_trials"].split()])
    assert f"[{lo:.4g}, {hi:.4g}]" in claims(wide, ci=None)["C5"].ours
    uneven = [dict(r, time_trials=" ".join(r["time_trials"].split()[:5])) if r.get("group") == "AR"
              and r["stage"] == "longctx" else r for r in wide]
    assert claims(uneven, ci=None)["C5"].status == INCONCLUSIVE  # Eso/AR not timed in the same rounds


def test_identical_samples_count_once_at_their_fewest_steps_and_the_report_says_so():
    """Two sweep points of one model that drew the very same samples (the same samples_digest)
    are one measurement: C6 counts the point once, and the claims reading samples say which."""
    rows = [dict(r, samples_digest="same") if r["label"] == "mdlm" and r.get("steps") in (32, 128) else r
            for r in store()]
    before, after = claims(store())["C6"], claims(rows)["C6"]
    assert "of 6 points" in before.ours and "of 5 points" in after.ours
    note = [d for d in after.details if d.startswith("identical samples counted once")]
    assert note and "mdlm T=128 drew the same samples as mdlm T=32" in note[0]
    assert any(d.startswith("identical samples") for d in claims(rows)["C9"].details)
    assert not any(d.startswith("identical samples") for d in claims(rows)["C5"].details)  # no sample rows read
    assert not any(d.startswith("identical samples") for d in before.details)


def test_c6_matches_within_the_stated_tolerance_and_names_unmatched_points():
    rows = store(mdlm8=(8, 145.0, 0.195))  # Eso-LM (B) 0.2 s / 150: within 5% on both axes
    assert status(rows, "C6") == PASS
    c = claims(rows, table=R.override(R.RULES, "C6", tol=0.0))["C6"]
    assert c.status == FAIL and any("not matched: mdlm T=8" in d for d in c.details)
    assert any(d.startswith("not dominated") for d in c.details)


def test_c6_asks_about_every_family_present_and_names_a_new_familys_unmatched_point():
    rows = store() + _pt("udlm", "UDLM", dict(steps=8), 8, 90.0, 4.1, 0.15)  # faster and better than every Eso-LM (B)
    c = claims(rows)["C6"]
    assert c.status == FAIL and "UDLM" in c.ours
    assert any(d.startswith("not matched: udlm T=8 (UDLM;") for d in c.details)
    assert status(store() + _pt("udlm", "UDLM", dict(steps=8), 8, 200.0, 4.1, 0.5), "C6") == PASS


def test_c6_dist_judges_the_frontier_on_the_gap_to_real_text():
    """1 - dist_sim is the quality (lower is better), its interval flipped: on store() it mirrors C6
    (1 - dist_sim = gen PPL / 1000); a rival far closer to real text and faster is not matched."""
    assert status(store(mdlm8=(8, 145.0, 0.195)), "C6-dist") == PASS
    rows = store() + [dict(r, dist_sim=0.99, dist_sim_lo=0.985, dist_sim_hi=0.995) if r["stage"] == "sample" else r
                      for r in _pt("udlm", "UDLM", dict(steps=8), 8, 200.0, 4.1, 0.15)]
    c = claims(rows)["C6-dist"]
    assert c.status == FAIL and any(d.startswith("not matched: udlm T=8 (UDLM;") for d in c.details)
    assert "1 - dist_sim" in c.details[0]
    assert claims(store())["C6"].status == claims([r for r in rows if r["label"] != "udlm"])["C6"].status


def test_a_gen_ppl_claim_whose_judges_disagree_is_inconclusive_and_says_so():
    def judged(rows, second):
        return [dict(r, gen_ppl_judge2=second(r)) if r["stage"] == "sample" else r for r in rows]

    same = claims(judged(store(), lambda r: r["gen_ppl"] * 1.3))["C9"]
    assert same.status == PASS and same.judges == {"gen_ppl": PASS, "gen_ppl_judge2": PASS}
    other = claims(judged(store(), lambda r: 130.0 if r["group"] == "MDLM" and r["steps"] == 128 else r["gen_ppl"]))
    c9 = other["C9"]
    assert c9.status == INCONCLUSIVE and "the judges disagree" in c9.ours
    assert c9.judges == {"gen_ppl": PASS, "gen_ppl_judge2": FAIL}
    assert other["C1"].judges == {}  # a perplexity claim has no judge


def test_c7_reports_each_time_grid_separately():
    rows = [dict(r, reference_grid=False) for r in store()]
    rows += _pt("bd3lm L'=4", "BD3-LM L'=4", dict(steps=32, reference_grid=True), 63, 150.0, 4.1, 0.6, block_size=4)
    rows += _pt("bd3lm L'=4", "BD3-LM L'=4", dict(steps=128, reference_grid=True), 140, 110.0, 4.0, 1.5, block_size=4)
    got = claims(rows)
    assert got["C7"].status == PASS and got["C7-ref"].status == FAIL
    assert status(rows, "C7", length=None) == NOT_MEASURED  # L unknown


def test_c9_rule_allows_the_stated_tolerance():
    assert status(store(mdlm128=123.0), "C9") == PASS  # 123 <= 120 x 1.05, and below T = 8's 200
    assert status(store(mdlm128=123.0), "C9", table=R.override(R.RULES, "C9", tol=0.0)) == FAIL


# ------------------------------------------------------------------------ training seeds
def seeded(rows, extra: dict) -> list[dict]:
    """The store's rows with train_seed = 1, plus NELBO rows of other training seeds: extra maps a
    main label to its replicates' NELBO PPLs (seeds 2, 3, ...), each a row like the main one's."""
    out = [dict(r, train_seed=1) for r in rows]
    for label, values in extra.items():
        main = next(r for r in rows if r["label"] == label and r["stage"] == "eval" and not r["exact"])
        out += [dict(main, label=f"{label} seed={i + 2}", train_seed=i + 2, ppl=v) for i, v in enumerate(values)]
    return out


def test_one_seed_per_model_gives_the_same_report_with_or_without_a_train_seed_column():
    plain, ones = claims(store()), claims(seeded(store(), {}))
    assert {i: (c.status, c.point, c.ours) for i, c in plain.items()} == \
           {i: (c.status, c.point, c.ours) for i, c in ones.items()}
    assert not any("seeds" in d for c in ones.values() for d in c.details)


def test_seeds_fold_into_one_value_per_model_that_passes_when_the_margin_clears_the_seed_interval():
    c = claims(seeded(store(), {"esolm-b a0=1": [89.0, 91.0], "esolm-b a0=0.25": [79.0, 81.0]}))["C1"]
    # mean 90, sd 1 over 3 seeds: +- 4.303 / sqrt(3) = 2.48, with the per-seed 0.45 in quadrature
    assert c.status == PASS and c.ours.count("mean of 3 seeds") == 2
    assert "a0=1 90 [87.48, 92.52] (mean of 3 seeds: 1: 90, 2: 89, 3: 91)" in c.ours
    assert any(d.startswith("training seeds folded") and "esolm-b a0=1: 3 training seeds" in d for d in c.details)
    assert "seed=2" not in c.ours  # the replicates are the same model, never a point of the trend


def test_a_seed_spread_wide_enough_makes_a_clear_single_seed_pass_inconclusive():
    assert status(store(), "C1") == PASS  # 90 vs 80 with +-0.5% intervals
    c = claims(seeded(store(), {"esolm-b a0=1": [80.0, 100.0]}))["C1"]  # mean 90, sd 10: +- 24.8
    assert c.status == INCONCLUSIVE and c.point == PASS


def test_seeds_fold_into_a_fail_when_the_reversal_clears_the_seed_interval():
    c = claims(seeded(store(eso025_nelbo=100.0), {"esolm-b a0=1": [89.0, 91.0], "esolm-b a0=0.25": [99.5, 100.5]}))
    assert c["C1"].status == FAIL and "mean of 3 seeds" in c["C1"].ours


def test_seeds_fold_in_c3_and_c4_without_spurious_comparisons_in_any_claim():
    extra = {"ar": [50.5, 49.5], "mdlm": [69.0, 71.0], "bd3lm L'=4": [60.5, 59.5], "bd3lm L'=16": [64.5, 65.5]}
    got = claims(seeded(store(), extra))
    assert {i: got[i].status for i in IDS} == {i: PASS for i in IDS}
    assert "mean of 3 seeds" in got["C3"].ours and "mean of 3 seeds" in got["C4"].ours
    assert not any("seed=" in got[i].ours for i in IDS)  # each model once, under its main label
    wide = claims(seeded(store(), {"mdlm": [40.0, 100.0]}))  # MDLM 70 +- 75 over its seeds
    assert wide["C3"].status == INCONCLUSIVE and wide["C4"].status == INCONCLUSIVE


def test_a_seed_row_without_an_interval_leaves_the_folded_value_without_one():
    rows = seeded(store(), {"esolm-b a0=1": [89.0, 91.0]})
    rows = with_ci(rows, 0.005)
    rows = [{k: v for k, v in r.items() if not k.startswith("ppl_")} if r["label"] == "esolm-b a0=1 seed=2" else r
            for r in rows]
    c = claims(rows, ci=None)["C1"]
    assert c.status == INCONCLUSIVE and c.point == PASS


def test_cpu_trains_seeds_2_and_3_of_the_compared_models_for_the_nelbo_only_and_rows_carry_train_seed(monkeypatch):
    """The replicates add train and NELBO jobs only, leave every existing job's key as it was, and
    aggregate marks each trained model's rows with its seed (experiments/aggregate.py)."""
    from experiments import presets as P
    from experiments.aggregate import mark_train_seed, train_seeds
    from experiments.graph import build_graph

    work = Path("/nonexistent/work")
    graph = build_graph(P.get("cpu"), work)
    monkeypatch.setattr(P, "_seed_replicates", lambda models, seeds=(2, 3): [])
    before = {j.name: j.key for j in build_graph(P.get("cpu"), work)}
    assert all({j.name: j.key for j in graph}[n] == k for n, k in before.items())
    extra = [j for j in graph if j.name not in before]
    assert sorted({(j.stage, j.name.endswith("/nelbo")) for j in extra}) == [("eval", True), ("train", False)]
    trains = {j.label: j for j in extra if j.stage == "train"}
    assert len(trains) == 14 and {j.identity["train"]["seed"] for j in trains.values()} == {2, 3}
    assert trains["esolm-b a0=0.25 seed=3"].group == "Eso-LM (B)" and trains["bd3lm L'=4 seed=2"].group == "BD3-LM L'=4"
    seeds = train_seeds(graph)
    assert seeds["ar"] == 1 and seeds["mdlm seed=3"] == 3 and seeds["evaluator-2"] == P.JUDGE_SEED
    row = dict(config=dict(label="mdlm seed=2"), metrics={})
    assert mark_train_seed(row, seeds)["config"]["train_seed"] == 2
    assert mark_train_seed(dict(config=dict(label="real text")), seeds) == dict(config=dict(label="real text"))


# ---------------------------------------------------------------- C3-ft: finetuned BD3-LMs
def finetuned(l4: float, l16: float) -> list[dict]:
    """NELBO rows of BD3-LM L'=4 and 16 finetuned from MDLM (config.init_from = "mdlm")."""
    return [_ev(f"bd3lm L'={b} from mdlm", f"BD3-LM L'={b} (from MDLM)", v, block_size=b, init_from="mdlm")
            for b, v in ((4, l4), (16, l16))]


def test_c3_ft_judges_only_the_bd3_lms_finetuned_from_mdlm_and_c3_only_those_from_scratch():
    assert status(store(), "C3-ft") == NOT_MEASURED  # no finetuned rows
    assert status(store(), "C3") == PASS  # a store without init_from: C3 as before
    got = claims(store() + finetuned(50.0, 55.0))  # finetuned: below L'=4's 60 from scratch, yet a trend of their own
    assert got["C3-ft"].status == PASS and got["C3"].status == PASS
    assert "from mdlm" in got["C3-ft"].ours and "from mdlm" not in got["C3"].ours
    assert "bd3lm L'=4 from mdlm" not in got["C3"].ours
    reversed_ = claims(store() + finetuned(56.0, 50.0))  # L'=16 below L'=4: fails C3-ft only
    assert reversed_["C3-ft"].status == FAIL and reversed_["C3"].status == PASS
    above = claims(store() + finetuned(50.0, 75.0))  # above MDLM's 70
    assert above["C3-ft"].status == FAIL and any("below MDLM's NELBO PPL" in d for d in above["C3-ft"].details)


def test_c4_counts_the_finetuned_bd3_lms_among_the_other_methods():
    assert status(store() + finetuned(56.0, 58.0), "C4") == PASS  # above AR's 50
    c = claims(store() + finetuned(40.0, 55.0))["C4"]  # a finetuned BD3-LM below AR's 50
    assert c.status == FAIL and "from mdlm" in c.ours


# ------------------------------------------------------------------- rules and changelog
def test_the_rule_tables_fingerprint_is_the_one_the_changelog_records():
    text = (ROOT / "docs" / "claims_changelog.md").read_text()
    recorded = re.findall(r"Fingerprint: `([0-9a-f]+)`", text)
    assert recorded, "docs/claims_changelog.md records no fingerprint"
    assert recorded[0] == R.fingerprint(), (
        f"the rule table (analysis/rules.py) changed: its fingerprint is {R.fingerprint()}, the changelog's newest "
        f"entry records {recorded[0]}; add a dated entry on top of docs/claims_changelog.md with the change, its "
        f"reason and `Fingerprint: `{R.fingerprint()}``")


def test_any_change_to_a_rule_changes_the_fingerprint():
    assert R.fingerprint(R.override(R.RULES, "C8", tol=0.06)) != R.fingerprint()
    assert R.fingerprint(R.override(R.RULES, "C8", no_such_param=1)) == R.fingerprint()  # nothing declared changed


def test_every_rule_uses_a_declared_kind():
    assert all(c.kind in R.KINDS for r in R.RULES for c in r.checks + (r.earlier.checks if r.earlier else ()))
    assert [r.id for r in R.RULES] == ["C1", "C2", "C2-K", "C3", "C3-ft", "C4", "C5", "C6", "C6-dist", "C7", "C7-ref",
                                       "C8", "C9"]


def test_a_claim_whose_rule_changed_after_a_fail_shows_its_verdict_under_the_earlier_rule():
    """Eso-LM (B) as low in entropy at every step count: no collapse now (the exemption of
    2026-12-02), a collapse under the earlier rule (entropy below 95% of AR's)."""
    rows = [dict(r, entropy=3.9) if r["label"] == "esolm-b a0=1" and r["stage"] == "sample" else r for r in store()]
    c = claims(rows)["C7"]
    assert c.status == PASS and c.earlier.startswith("under the rule of 2026-12-02 (1c76aba): FAIL")
    assert claims(store())["C1"].earlier == ""  # C1's rule never changed


# ---------------------------------------------------------------------- the collapse flag
def _points(rows) -> pd.DataFrame:
    return X.view(frame(rows))


def test_collapse_flag_is_calibrated_on_real_text():
    """Real text 4.2 +- 0.02 over 64 samples: per-sample sd 0.02 / 1.96 x 8 = 0.0816, threshold
    4.2 - 1.645 x 0.0816 = 4.066. The repeater is flagged, a near-real configuration is not, nor
    one whose upper bound reaches the threshold, nor real text itself."""
    rows = calibration() + [
        dict(stage="sample", label="near", group="MDLM", model="mdlm", entropy=4.10, entropy_lo=4.08, entropy_hi=4.12),
        dict(stage="sample", label="edge", group="MDLM", model="mdlm", entropy=4.05, entropy_lo=4.03, entropy_hi=4.07),
        dict(stage="sample", label="low", group="MDLM", model="mdlm", entropy=3.90, entropy_lo=3.88, entropy_hi=3.92)]
    pts = _points(rows)
    low = collapsed(pts)
    assert dict(zip(pts["label"], low)) == {"real text": False, "repeater": True, "near": False, "edge": False,
                                            "low": True}
    assert low.attrs["threshold"] == pytest.approx(4.2 - 1.644854 * 0.02 / 1.959964 * 8)
    assert "real text" in low.attrs["rule"]


def test_collapse_flag_falls_back_to_95_percent_of_ar_without_a_real_text_row_and_says_so():
    rows = [*_pt("ar", "AR", dict(steps=127), 127, 60.0, 4.2, 0.5), *_pt("mdlm", "MDLM", dict(steps=8), 8, 80.0, 3.9, 1)]
    pts = _points([r for r in rows if r["stage"] == "sample"])
    low = collapsed(pts)
    assert list(low) == [False, True] and low.attrs["threshold"] == pytest.approx(0.95 * 4.2)
    assert low.attrs["rule"].startswith("no real-text calibration row")


def test_write_claims_and_report_write_markdown_json_and_one_line_per_claim(tmp_path, capsys):
    frame(with_ci(store(), 0.005)).to_csv(tmp_path / "results.csv", index=False)
    (tmp_path / "summary.json").write_text(json.dumps(dict(preset="hand", data=dict(length=L))))
    got, paths = write_claims(tmp_path)
    assert [p.name for p in paths] == ["claims.md", "claims.json"]
    md = paths[0].read_text()
    assert "| C1 | **PASS** |" in md and "v4 Table 1" in md and R.fingerprint() in md
    assert "0 FAIL, 0 INCONCLUSIVE" in md and "under the rule of 2026-12-02" in md
    js = json.loads(paths[1].read_text())
    assert [c["id"] for c in js["claims"]] == [c.id for c in got] and js["fingerprint"] == R.fingerprint()
    lines = []
    report(tmp_path, log=lines.append)
    assert len([ln for ln in lines if ln.split()[0] in {c.id for c in got}]) == len(got)
    assert any("claims.md" in ln for ln in lines)
    out = tmp_path / "elsewhere"
    report(tmp_path, log=lines.append, out_dir=out)
    assert (out / "claims.md").exists() and not (out / "samples.md").exists()


# ---------------------------------------------------------------------------- samples.md
def test_samples_md_has_two_labelled_short_excerpts_per_method(tmp_path):
    rows = [r for r in store() if r["stage"] == "sample"]
    (tmp_path / "records" / "sample").mkdir(parents=True)
    jsonl = tmp_path / "mdlm.jsonl"
    jsonl.write_text(json.dumps(dict(text="from the samples file " * 5)) + "\n")
    for i, r in enumerate(rows):
        r["key"] = f"k{i}"
        head = dict(key=r["key"], stage="sample", name=f"sample/{i}", finished="1", code_version="c", row=r)
        rec = dict(head, examples=[f"text of {r['label']} T={r['steps']} " + "x" * 400, "second"])
        if r["group"] == "MDLM":
            rec = dict(head, samples=str(jsonl))  # no examples: read the samples file
        (tmp_path / "records" / "sample" / f"{r['key']}.json").write_text(json.dumps(rec))
    frame(rows).to_csv(tmp_path / "results.csv", index=False)
    md = write_samples(tmp_path).read_text()
    assert md.count("**low NFE**") == 4 and md.count("**high NFE**") == 3  # AR has one configuration
    assert "`esolm-b a0=1 T=8 a0_eval=1`, NFE 8, gen PPL 150" in md
    assert "`esolm-b a0=1 T=8 a0_eval=0.25`, NFE 110, gen PPL 80" in md  # the highest NFE of the group
    assert "from the samples file" in md and "```text" in md
    assert "x" * 301 not in md and "[...]" in md


def test_claims_and_samples_run_on_the_committed_tiny_store(tmp_path):
    src = ROOT / "results" / "tiny"
    assert (src / "results.csv").exists(), "results/tiny (the committed quickstart run) is missing"
    dst = tmp_path / "tiny"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("figures", "tables"))
    lines = []
    paths = report(dst, log=lines.append)
    js = json.loads((dst / "claims.json").read_text())
    assert {c["status"] for c in js["claims"]} <= set(VERDICTS)
    assert len(js["claims"]) == len(R.RULES) == 13 and (dst / "samples.md") in paths
    assert "## Eso-LM (B)" in (dst / "samples.md").read_text()


def test_c7_low_entropy_at_every_step_count_is_the_model_not_a_collapse():
    """Entropy below 95% of AR's is a collapse only where the same model's many-step samples are
    above it: an Eso-LM (B) as low at 128 steps as at 64 has not collapsed from few steps."""
    def eso_entropy(rows, steps_entropy):
        out = []
        for r in rows:
            if r["label"] == "esolm-b a0=1" and r["stage"] == "sample" and r.get("alpha_0_eval") == 1.0:
                r = dict(r, entropy=steps_entropy.get(r["steps"], r["entropy"]))
            out.append(r)
        return out

    low = 3.9  # below 0.95 x AR's 4.2
    assert status(eso_entropy(store(), {8: low, 64: low, 128: low}), "C7") == PASS
    got = claims(eso_entropy(store(), {64: low}))["C7"]  # low at NFE 60 only (the row closest to BD3-LM's 63)
    assert got.status == FAIL and "-> collapsed" in got.ours


def test_c7_reference_grid_rows_compare_with_the_models_many_step_samples():
    """The reference grid is sampled at one and two steps per block only: a collapse there is
    judged against the model's largest step count on either grid (here our grid's 128)."""
    rows = [dict(r, reference_grid=False) for r in store()]
    rows += _pt("bd3lm L'=4", "BD3-LM L'=4", dict(steps=32, reference_grid=True), 63, 250.0, 4.1, 0.6, block_size=4)
    rows += _pt("bd3lm L'=4", "BD3-LM L'=4", dict(steps=64, reference_grid=True), 95, 200.0, 4.1, 0.9, block_size=4)
    got = claims(rows)["C7-ref"]
    assert got.status == PASS and "(2.273x many-step)" in got.ours  # 250 / 110, not 250 / 200
