"""The experiment graph: caching, resumption, failures, Slurm vs local, submit errors.

A "micro" preset (synthetic corpus, true-source evaluator, two small models, one sweep point
each) keeps every test to a minute or two; the full smoke preset runs in CI through the CLI.
"""
import dataclasses
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from esolm import runs
from esolm import runs as R
from esolm.config import ConfigError
from esolm.runs import RunConfig
from esolm.train import train_config
from experiments import graph as G
from experiments import pipeline
from experiments import presets as P


def micro(fail: bool = False) -> P.Preset:
    models = [
        P.ModelEntry("ar", "ar", {}, [dict(steps=15)], nfe_equals_l=True),
        P.ModelEntry("esolm-b a0=0.5", "esolm-b", {"alpha_0": 0.5}, [dict(steps=4, alpha_0_eval=0.5)],
                     nfe_equals_l=True),
    ]
    if fail:  # a sweep point the model refuses: its job raises, the others must be kept
        models[0].sweep.append(dict(steps=15, not_an_option=1))
    return P.Preset(
        RunConfig(name="micro-fail" if fail else "micro", description="tests",
                  data=R.Data("synthetic", length=16), backbone=runs.get("smoke").backbone,
                  train=train_config("smoke", steps=12, batch_size=8, eval_every=0, checkpoint_every=4),
                  eval=R.Eval(batch_size=8, max_batches=1, exact_orders=[1, 2], exact_max_sequences=8),
                  sampling=R.Sampling(num_samples=4, batch_size=4),
                  timing=R.Timing(batch_size=2, trials=1, warmup=0),
                  long_context=R.LongContext(lengths=[16], trials=1, warmup=0),
                  mauve=R.Mauve(featurizer="minilm", max_text_length=32),
                  slurm={"default": dict(time_min=10, array_parallelism=4)}),
        models=models, evaluator="source")


@pytest.fixture(autouse=True)
def _register_micro(monkeypatch):
    monkeypatch.setitem(P.PRESETS, "micro", micro)
    monkeypatch.setitem(P.PRESETS, "micro-fail", lambda: micro(True))


def slurm_up() -> bool:
    return shutil.which("sinfo") is not None and subprocess.run(["sinfo", "-h"], capture_output=True,
                                                                timeout=30).returncode == 0


needs_slurm = pytest.mark.skipif(not slurm_up(), reason="no Slurm: start it with `bash scripts/local-slurm/start.sh`")
TIMING_FIELDS = {"time_median_s", "time_mean_s", "time_std_s", "wall_median_s", "wall_mean_s", "wall_std_s",
                 "profile_mean_s", "tokens_per_s", "time_trials", "rounds"}  # rounds: a clock with a target stops on its data


def rows(results: Path) -> dict:
    out = {}
    for p in (results / "records").glob("*/*.json"):
        r = json.loads(p.read_text())
        for row in r["rows"] if "rows" in r else [dict(r["row"], name=r["name"])]:
            flat = {**row["config"], **row["options"], **row["metrics"]}
            out[row["name"]] = {k: v for k, v in flat.items()
                                if k.removesuffix("_lo").removesuffix("_hi") not in TIMING_FIELDS}
    return out


def test_graph_keys_depend_on_config_and_on_the_code_each_job_runs(tmp_path, monkeypatch):
    from experiments import versions

    a = G.build_graph(micro(), tmp_path)
    b = G.build_graph(micro(), tmp_path)
    assert [j.key for j in a] == [j.key for j in b]
    # a change to AR's file: every job that builds or loads an AR is stale, Eso-LM's training is not
    real = versions.file_hash
    monkeypatch.setattr(versions, "file_hash", lambda f: real(f) + "x" if f == "baselines/ar.py" else real(f))
    c = {j.name: j for j in G.build_graph(micro(), tmp_path)}
    changed = {j.name for j in a if c[j.name].key != j.key}
    assert {"train/ar", "eval/ar/nelbo", "sample/ar/steps=15", "time/ar/steps=15", "longctx/L=16"} <= changed
    assert not any(n.startswith(("train/esolm", "eval/esolm", "time/esolm")) for n in changed)
    assert "baselines/ar.py" in c["train/ar"].code_files and "baselines/ar.py" not in c["train/esolm-b a0=0.5"].code_files
    # a different configuration: a different key
    d = micro()
    d.models[0].sweep[0]["steps"] = 14
    assert "time/ar/steps=14" in {j.name for j in G.build_graph(d, tmp_path)}
    assert len({j.key for j in a}) == len(a)
    stages = {j.stage for j in a}
    assert stages == {"train", "eval", "sample", "time", "longctx"}
    # what a model can do decides its jobs, not its name: exact-likelihood evals for both, cache timing variants
    evals = [j.name for j in a if j.stage == "eval"]
    assert "eval/esolm-b a0=0.5/exact K=2" in evals and "eval/ar/exact K=2" in evals
    # latency: one job per length, every method in it (timed side by side, interleaved)
    (lc,) = [j for j in a if j.stage == "longctx"]
    assert lc.name == "longctx/L=16"
    assert {e["name"] for e in lc.config["entries"]} >= {"longctx/Eso-LM (B)/L=16/cache",
                                                         "longctx/Eso-LM (B)/L=16/no-cache"}


@pytest.mark.slow
def test_rerun_submits_nothing_and_local_equals_debug(tmp_path):
    """Local subprocesses and in-process (debug) give the same records; a second run submits none."""
    first = pipeline.run_preset("micro", cluster="local", results_root=tmp_path / "res", work_root=tmp_path / "work",
                                poll_s=0.5)
    assert first["failed"] == 0 and first["submitted"] > 0
    again = pipeline.run_preset("micro", cluster="local", results_root=tmp_path / "res", work_root=tmp_path / "work",
                                poll_s=0.5)
    assert again["submitted"] == 0
    debug = pipeline.run_preset("micro", cluster="debug", results_root=tmp_path / "dbg", work_root=tmp_path / "w2",
                                poll_s=0.5)
    assert debug["failed"] == 0
    assert rows(tmp_path / "res" / "micro") == rows(tmp_path / "dbg" / "micro")
    assert (tmp_path / "res" / "micro" / "results.csv").exists()


@pytest.mark.slow
def test_a_failing_job_is_reported_with_its_log_while_the_others_are_kept(tmp_path, capsys):
    out = pipeline.run_preset("micro-fail", cluster="local", results_root=tmp_path / "res",
                              work_root=tmp_path / "work", poll_s=0.5)
    err = capsys.readouterr().err
    assert out["failed"] >= 1
    assert "FAILED job" in err and "not_an_option" in err and "log: " in err
    log = Path(err.split("log: ")[1].split()[0])
    assert log.exists()
    names = rows(tmp_path / "res" / "micro-fail")
    assert "sample/ar/steps=15" in names and "sample/esolm-b a0=0.5/steps=4,alpha_0_eval=0.5" in names
    assert not any("not_an_option" in n for n in names)


@pytest.mark.slurm
@pytest.mark.slow
@needs_slurm
def test_slurm_gives_the_same_records_as_local(tmp_path):
    local = pipeline.run_preset("micro", cluster="local", results_root=tmp_path / "a", work_root=tmp_path / "wa",
                                poll_s=0.5)
    slurm = pipeline.run_preset("micro", cluster="slurm", results_root=tmp_path / "b", work_root=tmp_path / "wb",
                                poll_s=0.5)
    assert local["failed"] == slurm["failed"] == 0
    assert rows(tmp_path / "a" / "micro") == rows(tmp_path / "b" / "micro")
    again = pipeline.run_preset("micro", cluster="slurm", results_root=tmp_path / "b", work_root=tmp_path / "wb",
                                poll_s=0.5)
    assert again["submitted"] == 0


@pytest.mark.slurm
@pytest.mark.slow
@needs_slurm
def test_a_training_job_cancelled_part_way_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """scancel the training jobs once they have a checkpoint; the rerun resumes them (its log
    says so) and ends with the records of an uninterrupted run."""
    def long_micro():
        p = micro()
        p.run.train = dataclasses.replace(p.run.train, steps=2000, checkpoint_every=50)
        return p

    monkeypatch.setitem(P.PRESETS, "micro", long_micro)
    ref = pipeline.run_preset("micro", cluster="debug", results_root=tmp_path / "ref", work_root=tmp_path / "wr")
    assert ref["failed"] == 0
    import threading

    work = tmp_path / "w"
    killed = []

    def killer():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            found = list((work / "micro" / "train").glob("*/checkpoint.safetensors"))
            if found:
                subprocess.run(["scancel", "--name", "esolm-micro-train"], check=False)
                killed.append(found)
            time.sleep(0.2)

    t = threading.Thread(target=killer)
    t.start()
    first = pipeline.run_preset("micro", cluster="slurm", results_root=tmp_path / "res", work_root=work, poll_s=0.5)
    t.join()
    assert killed, "no checkpoint appeared to cancel at"
    assert first["failed"] > 0  # the cancelled training (and what depends on it) did not finish
    second = pipeline.run_preset("micro", cluster="slurm", results_root=tmp_path / "res", work_root=work, poll_s=0.5)
    assert second["failed"] == 0
    logs = "".join(p.read_text() for p in (work / "micro" / "logs" / "train").rglob("*_log.*"))
    assert "resuming" in logs
    assert rows(tmp_path / "res" / "micro") == rows(tmp_path / "ref" / "micro")


@needs_slurm
@pytest.mark.slurm
def test_asking_the_local_cluster_for_a_gpu_fails_at_submit_with_one_message(tmp_path):
    with pytest.raises(ConfigError, match="no GPUs"):
        pipeline.run_preset("micro", cluster="slurm", results_root=tmp_path / "r", work_root=tmp_path / "w",
                            slurm_overrides={"gpus_per_node": 1})


@needs_slurm
@pytest.mark.slurm
def test_an_unknown_partition_fails_at_submit_with_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="partition"):
        pipeline.run_preset("micro", cluster="slurm", results_root=tmp_path / "r", work_root=tmp_path / "w",
                            slurm_overrides={"partition": "gpu-h100"})


def test_code_version_ignores_docstrings_and_comments_but_not_code(tmp_path, monkeypatch):
    from experiments import versions

    lib = tmp_path / "esolm"
    lib.mkdir()
    (lib / "m.py").write_text('"""Doc."""\ndef f(x):\n    """Doc of f."""\n    return x + 1  # add one\n')
    monkeypatch.setattr(versions, "ROOT", tmp_path)
    versions.file_hash.cache_clear()
    before = versions.file_hash("esolm/m.py")
    (lib / "m.py").write_text('"""Other words."""\ndef f(x):\n    """Changed."""\n    # a new comment\n    return x + 1\n')
    versions.file_hash.cache_clear()
    assert versions.file_hash("esolm/m.py") == before
    (lib / "m.py").write_text('"""Doc."""\ndef f(x):\n    return x + 2\n')
    versions.file_hash.cache_clear()
    assert versions.file_hash("esolm/m.py") != before
    versions.file_hash.cache_clear()


def test_local_lanes_keep_at_most_n_jobs_on_the_cpu_and_balance_training_cost():
    from experiments.graph import Job
    from experiments.lanes import job_cost, lanes

    def job(name, model=None, steps=None, **over):
        if not steps:
            return Job("time", name, dict(train="k"), {}, model=model)
        return Job("train", name, dict(model=model, model_overrides={**runs.get("smoke").backbone_fields(), **over},
                                       train=dict(steps=steps)),
                   {}, model=model)

    # tiny's training wave: the evaluator (AR, 1.5 x the steps), Eso-LM (B) at alpha_0 = 0.25
    # (cost 1.5 per step: half its rows run the 2L sequential term), three models at cost 1
    groups = [[job("evaluator", "ar", 600)], [job("ar", "ar", 400)], [job("mdlm", "mdlm", 400)],
              [job("eso1", "esolm-b", 400, alpha_0=1.0)], [job("eso.25", "esolm-b", 400, alpha_0=0.25)]]
    assert [job_cost(g[0]) for g in groups] == [600, 400, 400, 400, 600]
    assert job_cost(job("bd3", "bd3lm", 400, block_size=4)) == 800
    packed = lanes(groups, 2)
    assert len(packed) == 2 and sorted(j.name for lane in packed for j in lane) == sorted(g[0].name for g in groups)
    # largest first alone gives 1400 / 1000; the best split is 1200 / 1200
    assert sorted(sum(job_cost(j) for j in lane) for lane in packed) == [1200, 1200]
    assert {frozenset(j.name for j in lane) for lane in packed} == {frozenset({"evaluator", "eso.25"}),
                                                                    frozenset({"ar", "mdlm", "eso1"})}
    many = lanes([[job(f"t{i}", "ar", 100 * (i % 5 + 1))] for i in range(13)], 2)  # 2^13: largest first
    loads = sorted(sum(job_cost(j) for j in lane) for lane in many)
    assert sum(loads) == 3600 and loads[1] - loads[0] <= 500
    timing = lanes([[job("a"), job("b")], [job("c")]], 1)
    assert [[j.name for j in lane] for lane in timing] == [["a", "b", "c"]]  # one lane: one job at a time


def test_a_stage_submits_one_group_per_model_where_it_shares_a_process_packed_into_lanes_locally():
    from experiments.graph import Job
    from experiments.lanes import GROUP_BY_MODEL, submitted_groups

    counts = dict(ar=1, mdlm=2, eso=3)  # sample jobs per model
    trains = [Job("train", f"train/{label}", {}, {}, label=label, key=f"train-{label}") for label in counts]
    samples = [Job("sample", f"sample/{label}/{i}", {}, {}, label=label, key=f"sample-{label}-{i}")
               for label, n in counts.items() for i in range(n)]
    by_model = [samples[0:1], samples[1:3], samples[3:6]]
    assert "sample" in GROUP_BY_MODEL and "train" not in GROUP_BY_MODEL
    # a training job runs alone; a model's sample jobs share one process, in the graph's order
    assert submitted_groups("train", trains) == [[j] for j in trains]
    assert submitted_groups("sample", samples) == by_model
    # the local cluster: at most n submitted jobs, each a lane of whole groups, the most loaded as
    # light as can be (3 jobs: eso's alone); n at or above the count packs nothing (the graph's order)
    packed = submitted_groups("sample", samples, 2)
    lanes = {tuple(j.key for j in lane) for lane in packed}
    ar, mdlm, eso = (tuple(j.key for j in g) for g in by_model)
    assert lanes in ({eso, mdlm + ar}, {eso, ar + mdlm})
    assert submitted_groups("sample", samples, 3) == by_model
    assert submitted_groups("train", trains, 1) == [trains]


def test_a_job_another_preset_already_ran_is_reused_with_its_checkpoint_never_overwriting(tmp_path):
    from experiments.graph import Job, record_path, reuse_records

    train = Job("train", "train/ar", dict(model="ar"), {}, key="k1")
    other_results, results = tmp_path / "results" / "tiny", tmp_path / "results" / "cpu"
    ckpt = tmp_path / "runs" / "tiny" / "train" / "k1" / "checkpoint.safetensors"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")
    record_path(other_results, train).parent.mkdir(parents=True)
    record_path(other_results, train).write_text(json.dumps(dict(key="k1", stage="train", name="train/ar", finished="1",
                                                                 code_version="c", checkpoint=str(ckpt), row={"a": 1})))
    work = tmp_path / "runs" / "cpu"
    assert reuse_records([train], results, work) == ["tiny"]
    rec = json.loads(record_path(results, train).read_text())
    assert rec["reused_from"] == "tiny" and rec["row"] == {"a": 1}
    assert (work / "train" / "k1" / "checkpoint.safetensors").read_bytes() == b"weights" == Path(rec["checkpoint"]).read_bytes()
    mine = dict(key="k1", stage="train", name="train/ar", finished="2", code_version="c", row={"mine": True})
    record_path(results, train).write_text(json.dumps(mine))  # a record of its own is kept
    assert reuse_records([train], results, work) == [] and json.loads(record_path(results, train).read_text()) == mine
    missing = Job("eval", "eval/x", {}, {}, key="k2")
    assert reuse_records([missing], results, work) == []


def test_longctx_times_every_method_of_a_length_side_by_side_interleaved(tmp_path, monkeypatch):
    """Table 11's ratios come from one job: each trial times every method once, the order
    rotated, so a slow spell of a shared machine lands on all methods alike; one row each."""
    import functools

    from esolm import registry
    from experiments import aggregate, jobs

    preset = micro()
    preset.run.long_context = R.LongContext(lengths=[16], trials=3, warmup=1)
    graph = G.build_graph(preset, tmp_path / "work", "code1")
    (lc,) = [j for j in graph if j.stage == "longctx"]
    names = [e["name"] for e in lc.config["entries"]]
    assert names == ["longctx/AR/L=16/cache", "longctx/AR/L=16/no-cache",
                     "longctx/Eso-LM (B)/L=16/cache", "longctx/Eso-LM (B)/L=16/no-cache"]
    calls, build = [], registry.build

    def logged_build(name, **kw):
        model = build(name, **kw)
        sample = model.sample

        @functools.wraps(sample)
        def logged(*a, **k):
            calls.append((name, k["kv_cache"], k["profile"]))
            return sample(*a, **k)

        model.sample = logged
        return model

    monkeypatch.setattr(registry, "build", logged_build)
    record = jobs.job_longctx(lc.payload("micro", tmp_path / "results", tmp_path / "work", 1))
    n = len(names)
    assert len(calls) == n * (1 + 3 + 3)  # warmup, whole calls, network passes only
    timed = calls[n:n + 3 * n]
    per_trial = [timed[i * n:(i + 1) * n] for i in range(3)]
    assert all(len(set(t)) == n for t in per_trial)  # every method once per trial
    assert per_trial[1] == per_trial[0][1:] + per_trial[0][:1]  # the order rotates
    assert [r["name"] for r in record["rows"]] == names
    assert all(len(record["metrics"]["methods"][m]["wall"]["trials"]) == 3 for m in names)
    assert {r["config"]["group"] for r in record["rows"]} == {"AR", "Eso-LM (B)"} and all(r["metrics"]["time_mean_s"] > 0 for r in record["rows"])
    df = aggregate.aggregate(preset, graph, tmp_path / "results", "code1")
    lcrows = df[df["config.stage"] == "longctx"]
    assert sorted(lcrows.name) == sorted(names) and set(lcrows.key) == {lc.key} and not lcrows.stale.any()


def test_a_preset_can_time_one_clock_only_halving_the_timing_stages(tmp_path, monkeypatch):
    """The CPU presets time the sweep's network passes only (the Pareto's clock) and Table 11's
    whole calls only: each timed call is made once, the other clock's columns stay empty."""
    import functools

    from esolm import registry
    from experiments import jobs

    preset = micro()
    preset.run.long_context = R.LongContext(lengths=[16], trials=2, warmup=1, profile=False)
    preset.run.timing = R.Timing(batch_size=2, trials=2, warmup=1, wall=False)
    graph = G.build_graph(preset, tmp_path / "work", "code1")
    (lc,) = [j for j in graph if j.stage == "longctx"]
    assert lc.identity["profile"] is False
    assert all(j.identity["wall"] is False for j in graph if j.stage == "time")
    calls, build = [], registry.build

    def logged(model, name):
        sample = model.sample

        @functools.wraps(sample)
        def inner(*a, **k):
            calls.append((name, k["profile"]))
            return sample(*a, **k)

        model.sample = inner
        return model

    monkeypatch.setattr(registry, "build", lambda name, **kw: logged(build(name, **kw), name))
    record = jobs.job_longctx(lc.payload("micro", tmp_path / "results", tmp_path / "work", 1))
    n = len(lc.config["entries"])
    assert len(calls) == n * (1 + 2) and not any(p for _, p in calls)  # warmup + 2 whole calls each
    assert all(r["metrics"]["time_mean_s"] > 0 and r["metrics"]["profile_mean_s"] is None for r in record["rows"])

    # the sweep's timing job: network passes only, once per trial
    model = build("ar", preset="smoke", **lc.config["fields"]).eval()  # lengths=[16] = the data's L
    calls.clear()
    import esolm.checkpoint as ck

    monkeypatch.setattr(ck, "load_model", lambda path: (logged(model, "ar"), {}))
    tj = next(j for j in graph if j.stage == "time" and j.model == "ar")
    rec = jobs.job_time(tj.payload("micro", tmp_path / "results", tmp_path / "work", 1))
    assert calls == [("ar", True)] * (1 + 2)
    assert rec["row"]["metrics"]["time_median_s"] > 0 and rec["row"]["metrics"]["wall_median_s"] is None


def test_a_model_entry_can_give_a_multi_pass_likelihood_every_k_on_all_exact_sequences(tmp_path):
    """By default a model whose exact likelihood takes L passes per order gets K = 1 on 1/8 of
    the exact sequences; its entry's own eval settings lift that (the cpu preset's Eso-LM (A))."""
    preset = micro()
    preset.run.eval = R.Eval(batch_size=4, max_batches=1, exact_orders=[1, 2], exact_max_sequences=16)
    preset.models.append(P.ModelEntry("esolm-a", "esolm-a", {"alpha_0": 0.5}, []))
    preset.models.append(P.ModelEntry("esolm-a own", "esolm-a", {"alpha_0": 0.5}, [],
                                      eval=dict(exact_orders=[1, 2], exact_max_sequences=16)))
    evals = {j.name: j.identity for j in G.build_graph(preset, tmp_path, "c") if j.stage == "eval"}
    assert [n for n in evals if n.startswith("eval/esolm-a/exact")] == ["eval/esolm-a/exact K=1"]
    assert evals["eval/esolm-a/exact K=1"]["max_batches"] == 1  # 16 // 8 = 2 sequences: one batch
    assert [n for n in evals if n.startswith("eval/esolm-a own/exact")] == ["eval/esolm-a own/exact K=1",
                                                                          "eval/esolm-a own/exact K=2"]
    assert evals["eval/esolm-a own/exact K=2"]["max_batches"] == 4  # all 16 sequences
    assert evals["eval/esolm-b a0=0.5/exact K=2"]["max_batches"] == 4


def test_pareto_says_why_a_record_is_stale(tmp_path, monkeypatch):
    from experiments import versions

    results = tmp_path / "results"
    graph = G.build_graph(micro(), tmp_path)
    job = next(j for j in graph if j.name == "train/ar")
    path = G.record_path(results, job)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(dict(name=job.name, key=job.key, stage="train", finished="2026-01-01", code_version="c",
                                    row={}, code_files=job.code_files)))
    assert G.stale_reasons([job], results) == {}
    real = versions.file_hash
    monkeypatch.setattr(versions, "file_hash", lambda f: real(f) + "x" if f == "baselines/ar.py" else real(f))
    new = next(j for j in G.build_graph(micro(), tmp_path) if j.name == "train/ar")
    assert G.stale_reasons([new], results) == {"code changed in baselines/ar.py": 1}


def test_a_new_model_is_one_file_and_one_registration(tmp_path, monkeypatch):
    """tests/toy_model.py and one registration: the smoke run trains it, evaluates it, samples and
    scores it, times it, puts it in the tables and draws it in the figures, with no other edit."""
    import dataclasses

    import pandas as pd

    from analysis.pareto import draw_pareto
    from analysis.tables import write_tables
    from esolm import registry

    monkeypatch.setattr(registry, "_REGISTERED", dict(registry._REGISTERED))
    registry.register("toy", "toy_model:ToyLM")  # the one registration (this process: the debug cluster)

    def preset():
        p = P.get("smoke")
        p.run = dataclasses.replace(p.run, name="smoke-toy", long_context=R.LongContext(lengths=[]))
        p.models = [P.ModelEntry("toy", "toy", {}, [dict(steps=1), dict(steps=1, temperature=0.8)])]
        return p

    monkeypatch.setitem(P.PRESETS, "smoke-toy", preset)
    out = pipeline.run_preset("smoke-toy", cluster="debug", results_root=tmp_path / "results", work_root=tmp_path / "w")
    assert out["failed"] == 0
    results = tmp_path / "results" / "smoke-toy"
    df = pd.read_csv(results / "results.csv")
    toy = df[df["config.model"].eq("toy")]
    assert set(toy["config.stage"]) == {"train", "eval", "sample", "time"}
    assert toy["display.family"].eq("Toy").all() and toy["display.colour"].eq("#949494").all()
    sample = toy[toy["config.stage"].eq("sample")]
    assert len(sample) == 2 and (sample["metrics.gen_ppl"] > 1).all() and list(sample["options.temperature"].dropna()) == [0.8]
    assert (toy[toy["config.stage"].eq("time")]["metrics.time_median_s"] > 0).all()
    tables = write_tables(results)
    assert any("Toy" in p.read_text() for p in tables if p.suffix == ".md")
    figures = draw_pareto(results)
    assert figures and all(p.stat().st_size > 0 for p in figures)


def test_one_clock_times_every_configuration_in_one_job_per_timing_run(tmp_path, monkeypatch):
    """Preset.clock: no time job per configuration, one clock job per timing run (and the NFE = L
    table again per run); every configuration timed in every round of it, interleaved; the
    analysis reads one run at a time (the first by default) and the record keeps paired rounds."""
    from analysis import store as S

    def clocked() -> P.Preset:
        return dataclasses.replace(micro(), clock=dict(runs=2, min_rounds=2, max_rounds=3, target=0.10))

    monkeypatch.setitem(P.PRESETS, "micro", clocked)
    graph = G.build_graph(clocked(), tmp_path / "work" / "micro")
    timed = [j for j in graph if j.stage in ("time", "longctx")]
    assert [j.name for j in timed] == ["time/clock/run=1", "longctx/L=16/run=1", "time/clock/run=2",
                                       "longctx/L=16/run=2"]
    assert len({j.key for j in timed}) == 4
    clock = timed[0]
    assert [p["name"] for p in clock.config["points"]] == ["time/ar/steps=15",
                                                           "time/esolm-b a0=0.5/steps=4,alpha_0_eval=0.5"]
    assert {d.name for d in clock.deps} == {"train/ar", "train/esolm-b a0=0.5"}
    out = pipeline.run_preset("micro", cluster="debug", results_root=tmp_path / "res", work_root=tmp_path / "work",
                              poll_s=0.5)
    assert out["failed"] == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "res" / "micro" / "records" / "time").glob("*.json")]
    assert len(records) == 2
    for rec in records:
        m = rec["metrics"]
        assert 2 <= m["rounds"] <= 3 and m["interleaved"] and m["order_rotated"]
        assert {len(p["trials"]) for p in m["points"].values()} == {m["rounds"]}  # every point in every round
        assert all(row["metrics"]["time_median_s_lo"] <= row["metrics"]["time_median_s"]
                   <= row["metrics"]["time_median_s_hi"] for row in rec["rows"])
    df = S.load_results(tmp_path / "res" / "micro")
    assert df.attrs["timing_runs"] == [1, 2] and df.attrs["timing_run"] == 1
    points = S.speed_quality(df)
    assert len(points) == 2 and points["time_median_s"].notna().all()  # one time row per point: run 1's
    second = S.speed_quality(S.load_results(tmp_path / "res" / "micro", timing_run=2))
    assert (second["time_median_s"] != points["time_median_s"]).any()  # another clock
    with pytest.raises(ConfigError, match="no timing run 3"):
        S.load_results(tmp_path / "res" / "micro", timing_run=3)
    from analysis.claims import write_claims

    _claims, paths = write_claims(tmp_path / "res" / "micro")
    report = json.loads(paths[1].read_text())["timing_runs"]
    assert set(report) == {"C5", "C6", "C6-dist"} and all(set(v) == {"1", "2"} for v in report.values())
    assert "The timed claims under each timing run" in paths[0].read_text()


def test_cpu_finetunes_bd3lm_from_its_trained_mdlm_and_tiny_is_unchanged(tmp_path):
    """`cpu`'s BD3-LMs from MDLM (the paper's LM1B protocol): each training job waits for MDLM's (a
    later round of the train stage), names its key in its identity (retrained when MDLM is) and reads
    its checkpoint; NELBO only. `tiny` has no finetune, and its model jobs are all jobs of `cpu`."""
    from experiments.aggregate import init_sources, mark_init_from
    from experiments.lanes import stage_rounds

    cpu = P.get("cpu")
    jobs = G.build_graph(cpu, tmp_path)
    by = {j.name: j for j in jobs}
    mdlm = by["train/mdlm"]
    rounds = stage_rounds([j for j in jobs if j.stage == "train"])
    assert len(rounds) == 2 and mdlm in rounds[0]
    for b in (4, 16):
        label = f"bd3lm L'={b} from mdlm"
        ft = by[f"train/{label}"]
        assert ft.deps == [mdlm] and ft in rounds[1] and ft.group == f"BD3-LM L'={b} (from MDLM)"
        assert ft.identity["init_from"] == dict(label="mdlm", train=mdlm.key)
        assert ft.config["init_checkpoint"] == str(tmp_path / "train" / mdlm.key / "checkpoint.safetensors")
        assert ft.identity["train"] == by[f"train/bd3lm L'={b}"].identity["train"]  # a scratch run's budget
        assert sorted(j.name for j in jobs if j.label == label) == [f"eval/{label}/nelbo", f"train/{label}"]
    changed = P.get("cpu")
    next(m for m in changed.models if m.label == "mdlm").train = dict(steps=7)
    again = {j.name: j for j in G.build_graph(changed, tmp_path)}
    assert again["train/bd3lm L'=4 from mdlm"].key != by["train/bd3lm L'=4 from mdlm"].key
    assert again["train/bd3lm L'=4"].key == by["train/bd3lm L'=4"].key
    # results.csv: config.init_from on the finetune's rows, its display label saying so, others untouched
    sources = init_sources(cpu)
    row = dict(config=dict(stage="eval", label="bd3lm L'=4 from mdlm"), options={}, metrics={},
               display=dict(family="BD3-LM", label="BD3-LM L'=4"))
    marked = mark_init_from(row, sources)
    assert marked["config"]["init_from"] == "mdlm" and marked["display"] == dict(family="BD3-LM",
                                                                                 label="BD3-LM L'=4 (from MDLM)")
    plain = dict(row, config=dict(stage="eval", label="bd3lm L'=4"))
    assert mark_init_from(plain, sources) == plain
    tiny = P.get("tiny")
    assert not any(m.init_from for m in tiny.models) and not init_sources(tiny)
    models = ("train", "eval", "sample")  # the timing jobs time each preset's own set side by side
    assert {j.key for j in G.build_graph(tiny, tmp_path) if j.stage in models} <= set(by[n].key for n in by)
    bad = P.get("cpu")
    bad.models[-1].init_from = "no such entry"
    with pytest.raises(ConfigError, match="not an entry trained before it"):
        G.build_graph(bad, tmp_path)


@pytest.mark.parametrize("name", ["smoke", "tiny", "cpu"])
def test_the_judges_share_no_training_run_seed_or_data_order_with_a_scored_model(name, tmp_path):
    """Issue 25 item 1: the first judge is fitted on the train split (an n-gram, no training run);
    the second is trained from a seed no scored model uses (seed = weights, batch order and noise)."""
    preset = P.get(name)
    assert preset.evaluator == "ngram" and isinstance(preset.second_evaluator, dict)
    graph = G.build_graph(preset, tmp_path)
    trains = [j for j in graph if j.stage == "train"]
    judges = [j for j in trains if j.group == "evaluator"]
    scored = [j for j in trains if j.group != "evaluator"]
    assert [j.label for j in judges] == ["evaluator-2"] and scored
    judge_seed = judges[0].identity["train"]["seed"]
    assert judge_seed == P.JUDGE_SEED
    assert all(j.identity["train"]["seed"] != judge_seed for j in scored)
    samples = [j for j in graph if j.stage == "sample"]
    assert samples and all(j.identity["evaluator"] == "ngram" and j.identity["evaluator2"] == judges[0].key
                           for j in samples)
