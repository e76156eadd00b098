"""Faults of the results store (issue 26, items 2, 4, 8 and the store's cases of 9): records are
verified, not trusted; a deleted checkpoint is not "done"; a failed job fails the command;
`--no-run` takes the driver lock; `clean` and `status` say what they could not do.

Each store is made by hand: the committed results/tiny records renamed to the keys of the
current graph (so they are "done" now), checkpoints as stand-in files. Commands run through
experiments/run.py main() in this process and are judged by tests/faults.py (one clear line,
the exit status, no traceback, no finished result lost)."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from faults import Finished, one_error, one_warning
from faults import in_process as run

from analysis import records as R
from experiments import pipeline
from experiments import presets as P
from experiments.graph import build_graph, record_path, reuse_records
from experiments.store import DriverLock

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path):
    """results/tiny with every committed record under the current key of its job (done), and a
    stand-in checkpoint per training job."""
    results, work = tmp_path / "results" / "tiny", tmp_path / "runs" / "tiny"
    graph = build_graph(P.get("tiny"), work)
    by_name = {j.name: j for j in graph}
    for path in sorted((ROOT / "results" / "tiny" / "records").glob("*/*.json")):
        rec = json.loads(path.read_text())
        job = by_name.get(rec["name"])
        if job is None:  # a job the preset no longer has (the store is rerun after a graph change)
            continue
        rec["key"] = job.key
        if job.stage == "train":
            Path(job.outputs[0]).parent.mkdir(parents=True, exist_ok=True)
            Path(job.outputs[0]).write_bytes(b"weights")
            rec["checkpoint"] = job.outputs[0]
        record_path(results, job).parent.mkdir(parents=True, exist_ok=True)
        record_path(results, job).write_text(json.dumps(R.seal(rec) if "sha256" in rec else rec, indent=2))
    args = ["--preset", "tiny", "--results", tmp_path / "results", "--work", tmp_path / "runs"]
    return SimpleNamespace(tmp=tmp_path, results=results, work=work, graph=graph, args=args,
                           job=lambda name: by_name[name])


def first(graph, stage):
    return next(j for j in graph if j.stage == stage)


# ----------------------------------------------------------------------------- the record format
def test_a_record_is_sealed_with_its_format_and_checksum_and_a_changed_one_is_caught(tmp_path):
    path = tmp_path / "records" / "eval" / "abc.json"
    path.parent.mkdir(parents=True)
    rec = R.seal(dict(key="abc", stage="eval", name="eval/x", finished="2026", code_version="c",
                      row=dict(config={}, options={}, metrics=dict(ppl=1.5, nan=float("nan")), display={})))
    assert rec["record_format"] == R.FORMAT and len(rec["sha256"]) == 64
    path.write_bytes(__import__("esolm.io", fromlist=["json_bytes"]).json_bytes(rec))
    assert R.load(path)["row"]["metrics"]["ppl"] == 1.5
    path.write_text(path.read_text().replace("1.5", "1.25"))
    with pytest.raises(R.Corrupt, match="sha256 does not match"):
        R.load(path)


def test_the_job_functions_write_sealed_records(tmp_path, monkeypatch):
    from experiments import jobs as J

    payload = dict(key="k", stage="eval", name="eval/x", preset="p", config={}, code_version="c",
                   record=str(tmp_path / "records" / "eval" / "k.json"))
    J._finish(payload, 0.0, dict(metrics=dict(ppl=2.0)), {})
    rec = R.load(payload["record"])
    assert rec["record_format"] == R.FORMAT and rec["sha256"] == R.checksum(rec)


def test_the_committed_stores_verify_as_they_are():
    for preset in ("tiny", "cpu"):
        good, bad = R.scan(ROOT / "results" / preset)
        assert good and not bad, [(c.path, c.reason) for c in bad]


@pytest.mark.parametrize("damage, reason", [
    (lambda t: t[: len(t) // 2], "not valid JSON"),
    (lambda t: json.dumps(dict(json.loads(t), row=[1, 2])), "a row is not a JSON object"),
    (lambda t: json.dumps(dict(json.loads(t), row=dict(metrics="x"))), "metrics of a row are not JSON objects"),
    (lambda t: json.dumps(dict(json.loads(t), key="0000")), "is not its file name"),
    (lambda t: json.dumps(dict(json.loads(t), stage="time")), "is not its folder"),
    (lambda t: json.dumps({k: v for k, v in json.loads(t).items() if k != "finished"}), "lacks finished"),
    (lambda t: "[1, 2]", "not a JSON object"),
])
def test_a_corrupt_record_is_named_by_status_counted_and_treated_as_missing(store, capsys, damage, reason):
    job = first(store.graph, "sample")
    path = record_path(store.results, job)
    path.write_text(damage(path.read_text()))
    kept = Finished(store.results / "records" / "eval")
    proc = run(capsys, "status", *store.args)
    line = one_warning(proc, "corrupt record", str(path), reason, "--corrupt", kept=kept)
    assert "pareto reruns its job" in line
    assert "1 corrupt" in proc.stdout and f"corrupt  {job.name}" in proc.stdout, proc.stdout


def test_tables_no_run_names_a_corrupt_record_leaves_its_row_out_and_says_it_is_missing(store, capsys):
    job = first(store.graph, "sample")
    path = record_path(store.results, job)
    path.write_text(path.read_text()[:100])
    kept = Finished(store.results / "records" / "eval", store.results / "records" / "train")
    proc = run(capsys, "tables", *store.args, "--no-run")
    one_warning(proc, "corrupt record", str(path), kept=kept)
    summary = json.loads((store.results / "summary.json").read_text())
    assert summary["missing"] == [job.name]
    assert "incomplete store: 1 job(s) have no record" in proc.stderr and job.name in proc.stderr
    assert job.name not in (store.results / "results.csv").read_text()
    table = next((store.results / "tables").glob("*.md")).read_text()
    assert "Incomplete store: 1 job(s)" in table and job.name in table


def test_clean_corrupt_lists_then_removes_only_the_corrupt_records(store, capsys):
    job = first(store.graph, "time")
    path = record_path(store.results, job)
    path.write_text("{")
    kept = Finished(store.results / "records" / "eval", store.results / "records" / "sample")
    dry = run(capsys, "clean", *store.args, "--corrupt", "--dry-run")
    assert dry.returncode == 0 and f"would remove {path}" in dry.stderr and "would remove 1 path(s)" in dry.stderr
    assert path.exists()
    proc = run(capsys, "clean", *store.args, "--corrupt")
    assert proc.returncode == 0 and f"removed {path}" in proc.stderr and not path.exists(), proc.stderr
    assert not kept.lost()
    assert "--corrupt" in run(capsys, "clean", "--help").stdout


def test_a_corrupt_record_of_another_preset_is_not_reused_and_a_corrupt_own_one_is_replaced(store, tmp_path):
    job = first(store.graph, "eval")
    mine = tmp_path / "results" / "cpu"
    assert reuse_records([job], mine, tmp_path / "runs" / "cpu") == ["tiny"]
    assert R.load(record_path(mine, job))["reused_from"] == "tiny"  # sealed again after the change
    record_path(mine, job).write_text("{}")  # corrupt here: replaced
    assert reuse_records([job], mine, tmp_path / "runs" / "cpu") == ["tiny"]
    assert R.done(record_path(mine, job))
    record_path(store.results, job).write_text("{")  # corrupt there: not copied
    record_path(mine, job).unlink()
    assert reuse_records([job], mine, tmp_path / "runs" / "cpu") == []


# ----------------------------------------------------------------------------- missing artefacts
def test_a_deleted_checkpoint_is_not_train_done_and_is_retrained_when_a_job_reads_it(store, capsys):
    train = first(store.graph, "train")
    Path(train.outputs[0]).unlink()
    record = record_path(store.results, train)
    before = record.read_bytes()
    proc = run(capsys, "status", *store.args)
    assert proc.returncode == 0
    counts = next(ln for ln in proc.stdout.splitlines() if ln.startswith("[train]"))
    assert "1 no-output" in counts and f"{len([j for j in store.graph if j.stage == 'train']) - 1} done" in counts
    assert f"no-output {train.name}: its record is kept but {train.outputs[0]} is gone" in proc.stdout
    trains = [j for j in store.graph if j.stage == "train"]
    # every job that reads the checkpoint is done: the record stands, nothing is retrained
    session = pipeline.Session(P.get("tiny"), "debug", store.results, store.work, {}, [], graph=store.graph)
    assert pipeline._todo(session, "train", trains) == []
    assert "1 records kept without their checkpoint" in capsys.readouterr().err
    # a job that reads it has to run: the training reruns first
    evals = [j for j in store.graph if j.stage == "eval" and train in j.deps]
    record_path(store.results, evals[0]).unlink()
    assert pipeline._todo(session, "train", trains) == [train]
    assert "1 whose checkpoint is gone and a job to run reads it" in capsys.readouterr().err
    payload = train.payload("tiny", store.results, store.work, 1)
    assert not R.done(payload["record"], payload["outputs"])  # run_group does not skip it
    assert not pipeline._deps_done(session, evals[0])
    assert record.read_bytes() == before  # kept until the rerun replaces it


def test_a_sample_whose_samples_file_is_gone_names_it_in_the_excerpts(store):
    from analysis.excerpts import _text

    job = first(store.graph, "sample")
    path = record_path(store.results, job)
    rec = json.loads(path.read_text())
    rec.pop("examples")
    rec["samples"] = str(store.work / "sample" / job.key / "samples.jsonl")
    path.write_text(json.dumps(R.seal(rec)))
    text, why = _text(store.results, job.key)
    assert text is None and rec["samples"] in why and "is gone" in why and job.name in why
    path.write_text("{")
    text, why = _text(store.results, job.key)
    assert text is None and "corrupt" in why and str(path) in why


def test_learning_curves_skip_corrupt_records_and_cut_lines(store):
    from analysis.learning_curves import collect

    trains = [j for j in store.graph if j.stage == "train"]
    for j in trains:
        lines = [json.dumps(dict(step=s, nll_per_token=1.0)) for s in (1, 2)]
        Path(j.outputs[0]).with_name("train_log.jsonl").write_text("\n".join(lines) + '\n{"step": 3, "nll')
    record_path(store.results, trains[0]).write_text("{")
    frame = collect(store.results)
    assert len(frame) == len(trains) - 1 and set(frame["step"]) == {2}


# ----------------------------------------------------------------------------- exit codes
def nano(fail_env: bool = False) -> P.Preset:
    """Two small models, trained 4 steps and evaluated (no sweep, no latency): seconds."""
    from esolm import runs as Rn
    from esolm.runs import RunConfig
    from esolm.train import train_config

    return P.Preset(
        RunConfig(name="nano", description="tests", data=Rn.Data("synthetic", length=16),
                  backbone=Rn.get("smoke").backbone,
                  train=train_config("smoke", steps=4, batch_size=4, eval_every=0, checkpoint_every=4),
                  eval=Rn.Eval(batch_size=4, max_batches=1, exact_orders=[1], exact_max_sequences=4),
                  sampling=Rn.Sampling(num_samples=4, batch_size=4), timing=Rn.Timing(batch_size=2, trials=1, warmup=0),
                  long_context=Rn.LongContext(lengths=[], trials=1, warmup=0),
                  mauve=Rn.Mauve(featurizer="minilm", max_text_length=32), slurm={"default": dict(time_min=10)}),
        models=[P.ModelEntry("ar", "ar", {}, []), P.ModelEntry("mdlm", "mdlm", {}, [])],
        evaluator="source")


@pytest.mark.slow
def test_pareto_exits_non_zero_naming_each_failed_job_its_log_and_the_retry(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(P.PRESETS, "nano", nano)
    args = ["--preset", "nano", "--cluster", "local", "--results", tmp_path / "results", "--work", tmp_path / "runs"]
    monkeypatch.setenv("ESOLM_FAULT", "raise_at=1")  # every training step raises
    proc = run(capsys, "tables", *args)
    line = one_error(proc, "job(s) failed or were skipped", "rerun `python experiments/run.py tables --preset nano",
                     "--cluster local", code=1)
    assert "6 job(s)" in line, line  # 2 trainings failed, 4 evals skipped
    text = proc.stderr
    assert "  failed  train/ar: " in text and "injected fault" in text and "log: " in text
    assert "  skipped eval/ar/nelbo: it needs train/ar" in text
    assert "clean --preset nano" in text and "--job train/ar" in text
    monkeypatch.delenv("ESOLM_FAULT")
    again = run(capsys, "tables", *args)  # the retry it names completes the store
    assert again.returncode == 0 and "error:" not in again.stderr, again.stderr[-2000:]
    assert json.loads((tmp_path / "results" / "nano" / "summary.json").read_text())["missing"] == []
    # a deleted checkpoint: status says so, the next run retrains that job only, and it is done again
    graph = build_graph(nano(), tmp_path / "runs" / "nano")
    train = first(graph, "train")
    Path(train.outputs[0]).unlink()
    status = run(capsys, "status", "--preset", "nano", "--results", tmp_path / "results", "--work", tmp_path / "runs")
    assert f"no-output {train.name}" in status.stdout
    for job in graph:  # the jobs that read it must run again, so the training reruns first
        if train in job.deps:
            record_path(tmp_path / "results" / "nano", job).unlink()
    third = run(capsys, "tables", *args)
    assert third.returncode == 0 and "[train] rerun: 1 whose checkpoint is gone" in third.stderr, third.stderr[-2000:]
    assert Path(train.outputs[0]).exists() and R.done(record_path(tmp_path / "results" / "nano", train), train.outputs)


# ----------------------------------------------------------------------------- the driver lock
def test_no_run_is_refused_while_another_driver_holds_the_store(store, capsys):
    held, release = threading.Event(), threading.Event()

    def hold():
        with DriverLock(store.results):
            held.set()
            release.wait(60)

    t = threading.Thread(target=hold)
    t.start()
    try:
        held.wait(10)
        kept = Finished(store.results)
        proc = run(capsys, "tables", *store.args, "--no-run")
        one_error(proc, "another driver is already running on", str(store.results), kept=kept)
        assert not (store.results / "results.csv").exists() or not kept.lost()
    finally:
        release.set()
        t.join()


# ----------------------------------------------------------------------------- status and clean
def test_status_on_a_mistyped_results_folder_is_one_error(tmp_path, store, capsys):
    """(``store``: a results root that holds the tiny store only)"""
    one_error(run(capsys, "status", "--preset", "tiny", "--results", tmp_path / "resluts"),
              "no store for preset tiny at", "resluts", "does not exist", "--results")
    one_error(run(capsys, "status", "--preset", "smoke", "--results", tmp_path / "results"),
              "no store for preset smoke", "the stores under", "tiny")


def test_clean_job_that_matches_nothing_is_one_error_naming_the_jobs(store, capsys):
    kept = Finished(store.results)
    line = one_error(run(capsys, "clean", *store.args, "--job", "train/nosuch"), "--job 'train/nosuch' matches none",
                     "stages train, eval", "labels", "e.g. 'train/", "status --preset tiny -v", kept=kept)
    assert "ar" in line


def test_clean_on_a_store_it_cannot_write_says_what_it_did_not_remove(store, capsys, monkeypatch):
    import errno

    train = first(store.graph, "train")
    record = record_path(store.results, train)
    real = Path.unlink

    def read_only(self, *a, **k):
        if self == record:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "unlink", read_only)
    kept = Finished(record)
    proc = run(capsys, "clean", *store.args, "--job", train.name)
    one_error(proc, "could not remove 1 of", str(record), "Read-only file system", "rerun the same clean command",
              kept=kept)
    assert f"removed {record}" not in proc.stderr and f"removing {record}" not in proc.stderr
    assert f"removed {store.work / 'train' / train.key}" in proc.stderr  # what it did remove, it says
