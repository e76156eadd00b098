"""The job functions of the experiment graph. Each takes one plain dict (picklable, so
submitit ships it to Slurm, a local subprocess or this process alike), does one unit of
work, writes one JSON record atomically and returns it.

    train    fit a model (resumes from its checkpoint when requeued or rerun)
    eval     test NLL: NELBO, and the exact likelihood where the model has one
    zeroshot test NELBO on another corpus (Table 5; released presets)
    sample   draw samples, then score them: gen PPL, entropy, self-BLEU, MAUVE
    time     the timing protocol of spec 8.5 on one sweep configuration
    longctx  NFE = L latency, batch 1, no nucleus (spec 8.6 / Table 11)
"""
from __future__ import annotations

import contextlib
import datetime
import math
import os
import socket
import subprocess
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("esolm", "baselines")


def code_version() -> str:
    """One hash of the whole library's code (summary.json); records are keyed per job by the
    code they run (experiments/versions.py)."""
    from experiments.versions import library_version

    return library_version()


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", *CODE_DIRS],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _setup(job: dict):
    """Per-job process setup: thread count, offline hub when asked, the job's seed."""
    import torch

    torch.set_num_threads(int(job.get("threads", 1)))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@contextlib.contextmanager
def job_lock(job: dict, log=None):
    """Hold the job's work folder for this process while the body runs: an exclusive ``flock``
    on <work>/.job.lock (``.job.lock.<rank>`` for the other tasks of a multi-task job), so two
    processes never run one job into one folder (a job of a killed driver still stopping while
    the next driver's starts). A second process waits, saying for whom, until the first ends;
    the lock goes with its process. ``log``: where the waiting line goes (default: stdout)."""
    import fcntl
    import json

    work = Path(job["work"])
    work.mkdir(parents=True, exist_ok=True)
    rank = _task_rank()
    fd = os.open(work / (".job.lock" if rank == 0 else f".job.lock.{rank}"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            message = f"[{job['stage']}] {job['name']}: {work} is in use by another process ({holder}); waiting for it"
            log(message) if log else print(message, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), started=_now())).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _task_rank() -> int:
    """This process's task of its submitit job (0 outside one)."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return 0
    try:
        import submitit

        return int(submitit.JobEnvironment().global_rank)
    except Exception:  # noqa: BLE001 - an environment submitit does not know: one task
        return 0


def recorded(fn):
    """Per-job process setup (threads, start time); the wrapped function returns
    (row, metrics, extra) and the record is written here."""
    import functools

    @functools.wraps(fn)
    def run(payload: dict) -> dict:
        _setup(payload)
        started = time.perf_counter()
        payload["_started_iso"] = _now()
        row, metrics, extra = fn(payload)
        record = _finish(payload, started, row, metrics, **extra)
        from esolm.distributed import teardown_distributed

        teardown_distributed()  # a DDP job: every rank waits for rank 0's record, then leaves
        return record

    return run


def _finish(job: dict, started: float, row: dict, metrics: dict, **extra) -> dict:
    """The job's record, sealed with its format and checksum (analysis/records.py); written by
    rank 0 only (every rank of a DDP job returns it)."""
    from analysis.records import seal
    from esolm.io import atomic_write_json
    from esolm.distributed import dist_info
    from esolm.metrics import environment_fingerprint

    # a job that measures several methods side by side (longctx) returns one row per method,
    # each naming its own label, group, model and display (and its name in results.csv)
    shaped = (dict(rows=[_schema_row(job, r, r) for r in row]) if isinstance(row, list) else
              dict(row=_schema_row(job, job, row)))
    record = dict(key=job["key"], stage=job["stage"], name=job["name"], preset=job["preset"],
                  label=job.get("label"), group=job.get("group"), model=job.get("model"),
                  config=job["config"], **shaped,
                  metrics=metrics, code_version=job["code_version"], code_files=job.get("code_files"), git_sha=git_sha(),
                  environment=environment_fingerprint(), host=socket.gethostname(),
                  slurm_job_id=os.environ.get("SLURM_JOB_ID"), started=job.get("_started_iso"),
                  finished=_now(), seconds=time.perf_counter() - started, **extra)
    record = seal(record)
    if dist_info()[0] == 0:
        atomic_write_json(job["record"], record)
    return record


def _schema_row(job: dict, who: dict, row: dict) -> dict:
    """A results row in the schema of analysis/schema.py: ``config`` (what the job was: stage,
    method, model overrides and the job's own settings), ``options`` (the sample options of the
    call), ``metrics`` (what it measured) and ``display`` (the model's own style)."""
    config = dict(stage=job["stage"], label=who.get("label"), group=who.get("group"), model=who.get("model"),
                  **who.get("model_overrides", job["config"].get("model_overrides", {})), **row.get("config", {}))
    out = dict(config=config, options=dict(row.get("options", {})), metrics=dict(row["metrics"]),
               display=row.get("display", {}))
    return dict(out, name=row["name"]) if "name" in row else out


def _display(model) -> dict:
    """The model's own Display (esolm/interface.py) as a dict: how tables and figures show it."""
    import dataclasses

    return dataclasses.asdict(type(model).display(model.config))


def _corpus(spec: dict):
    from esolm.data import corpus_from_spec

    return corpus_from_spec(spec)


# ------------------------------------------------------------------------------ train
@recorded
def job_train(job: dict) -> tuple:
    from esolm import registry
    from esolm.config import make_config
    from esolm.train import TrainConfig, fit, seed_everything

    from esolm.distributed import setup_distributed

    c = job["config"]
    if c.get("source"):
        return _import_release(job)
    rank, world, _ = setup_distributed()  # several tasks of one job: one process group (fit joins it)
    corpus = _corpus(c["corpus"])
    cfg = make_config(TrainConfig, c["train"])
    seed_everything(cfg.seed)
    model = registry.build(c["model"], **corpus.model_fields(), **c["model_overrides"])
    _inject_fault(model, rank)
    # a finetune (pipeline Graph.train, init_from): the source entry's checkpoint; resumes from its own
    result = fit(c["model"], model, corpus, cfg, job["work"], progress=False, init_from=c.get("init_checkpoint"))
    m = result["metrics"]
    valid = m.get("valid", {})
    row = dict(display=_display(model), metrics=dict(params=model.num_parameters(), steps_trained=m.get("step"), train_loss=m.get("train_loss"),
                            valid_nll=valid.get("nll_per_token"), valid_ppl=valid.get("ppl"),
                            tokens_per_s=m.get("tokens_per_s")))
    return row, m, dict(checkpoint=result["checkpoint"], world_size=world)


def _inject_fault(model, rank: int) -> None:
    """Test hook, off unless ESOLM_FAULT is set: "raise_at=S[,rank=R]" makes rank R (default: every
    rank) raise in its S-th training forward; "sleep=X[,rank=R]" sleeps X seconds in each one
    (so that a test can interrupt a run mid-way). Used by tests/test_pipeline_ddp.py."""
    spec = os.environ.get("ESOLM_FAULT")
    if not spec:
        return
    fault = {k.strip(): float(v) for k, v in (kv.split("=") for kv in spec.split(","))}
    if "rank" in fault and int(fault["rank"]) != rank:
        return
    loss, calls = model.loss, [0]

    def faulty_loss(*args, **kwargs):
        calls[0] += 1
        if "raise_at" in fault and calls[0] >= fault["raise_at"]:
            raise RuntimeError(f"injected fault on rank {rank} at training step {calls[0]} (ESOLM_FAULT={spec})")
        time.sleep(fault.get("sleep", 0.0))
        return loss(*args, **kwargs)

    model.loss = faulty_loss


def _import_release(job: dict) -> tuple:
    """A released preset's "train" job: import the authors' checkpoint (docs/checkpoints.md), check
    that it is the model the preset names, and run the load check on the preset's test data."""
    from esolm import registry
    from esolm.config import ConfigError
    from esolm.importers import import_checkpoint, load_check, save_imported

    c = job["config"]
    state, info = import_checkpoint(c["source"], model=c["model"], ema=c.get("ema"), corpus=c["corpus"])
    wrong = {k: (v, state["model_config"].get(k)) for k, v in c["model_overrides"].items()
             if state["model_config"].get(k) != v}
    if wrong:
        raise ConfigError(f"{c['source']}: the preset expects {wrong} (preset value, file value)")
    model = registry.build(state["model_name"], **state["model_config"])
    model.load_state_dict(state["model"])
    check = load_check(model, state["corpus"])
    state["corpus"] = check.pop("spec", state["corpus"])
    path = save_imported(state, dict(info, load_check=check), job["work"])
    row = dict(config=dict(imported_from=c["source"], weights=info["weights"]), display=_display(model),
               metrics=dict(params=model.num_parameters(), parity=info["parity"], load_check_ppl=check.get("ppl"),
                            load_check_warning=check.get("warning")))
    return row, dict(imported=info, load_check=check), dict(checkpoint=str(path))


# ------------------------------------------------------------------------------- eval
@recorded
def job_eval(job: dict) -> tuple:
    """Test PPL (and on exact rows the NELBO of the same sequences and seed), each with its 95 %
    bootstrap interval over sequences (ppl_lo/hi, nelbo_ppl_lo/hi); the record keeps the
    per-sequence NLL sums and token counts the intervals resample."""
    from esolm.checkpoint import load_model
    from esolm.evaluate import evaluate
    from esolm.metrics.bootstrap import interval_fields, ppl_interval

    c = job["config"]
    model, state = load_model(c["checkpoint"])
    corpus = _corpus(state["corpus"])
    r = evaluate(model, corpus, "test", batch_size=c["batch_size"], max_batches=c["max_batches"],
                 exact=c["exact"], num_orders=c["num_orders"], seed=c["seed"], progress=False)
    row = dict(config=dict(exact=c["exact"], num_orders=c["num_orders"] if c["exact"] else None), display=_display(model),
               metrics=dict(ppl=r["ppl"], **interval_fields("ppl", ppl_interval(r["per_sequence_nll"],
                                                                                r["per_sequence_tokens"])),
                            nll_per_token=r["nll_per_token"], num_sequences=r["num_sequences"],
                            true_ppl=r.get("true_ppl")))
    if c["exact"]:  # the NELBO on exactly these sequences with the same seed: like with like (Table 1)
        nb = evaluate(model, corpus, "test", batch_size=c["batch_size"], max_batches=c["max_batches"],
                      exact=False, seed=c["seed"], progress=False)
        assert nb["num_sequences"] == r["num_sequences"]
        row["metrics"].update(nelbo_ppl=nb["ppl"], nelbo_nll_per_token=nb["nll_per_token"],
                              **interval_fields("nelbo_ppl", ppl_interval(nb["per_sequence_nll"],
                                                                          nb["per_sequence_tokens"])))
        r = dict(r, nelbo=nb)
    return row, r, {}


@recorded
def job_zeroshot(job: dict) -> tuple:
    """Table 5: test NELBO of the model on another corpus, tokenized with its own tokenizer."""
    from esolm.checkpoint import load_model
    from esolm.evaluate import evaluate
    from esolm.metrics.bootstrap import interval_fields, ppl_interval

    c = job["config"]
    model, _ = load_model(c["checkpoint"])
    corpus = _corpus(dict(c["corpus"], length=model.config.length))
    r = evaluate(model, corpus, "test", batch_size=c["batch_size"], max_batches=c["max_batches"], seed=c["seed"],
                 progress=False)
    row = dict(config=dict(zero_shot=c["column"], corpus=corpus.name), display=_display(model),
               metrics=dict(ppl=r["ppl"], **interval_fields("ppl", ppl_interval(r["per_sequence_nll"],
                                                                                r["per_sequence_tokens"])),
                            nll_per_token=r["nll_per_token"], num_sequences=r["num_sequences"]))
    return row, r, {}


# ----------------------------------------------------------------------------- sample
@recorded
def job_sample(job: dict) -> tuple:
    """A model's samples (or, with ``null``, a calibration row's: real held-out text or a null
    sampler, issue 25 item 6) scored by the preset's judges: gen PPL under both, entropy, the
    byte k-gram similarity to real text, self-BLEU and MAUVE, each with its 95 % interval."""
    from esolm.metrics import score_samples
    from esolm.samples import write_jsonl

    c = job["config"]
    out = Path(job["work"]) / "samples.jsonl"
    corpus, records, options, display = (_null_samples if c.get("null") else _model_samples)(c)
    write_jsonl(out, records)
    scores = score_samples(out, evaluator=c["evaluator"], mauve=True, corpus=corpus, progress=False,
                           featurizer=c["mauve"]["featurizer"], max_text_length=c["mauve"]["max_text_length"],
                           overwrite=True, gen_ppl_ref_pad=bool(c.get("gen_ppl_ref_pad", False)),
                           second_evaluator=c.get("evaluator2"))
    row = dict(config=dict(top_p=c.get("top_p", 1.0), evaluator=scores["gen_ppl"]["evaluator"].get("name"),
                           evaluator2=(scores.get("gen_ppl_judge2") or {}).get("evaluator", {}).get("name")),
               options=options, display=display, metrics=_sample_metrics(scores, records))
    examples = [r["text"] for r in records[:3]]
    return row, scores, dict(samples=str(out), examples=examples)


def _model_samples(c: dict) -> tuple:
    from esolm.checkpoint import load_model
    from esolm.samples import draw_samples

    model, state = load_model(c["checkpoint"])
    corpus = _corpus(state["corpus"])
    records = draw_samples(model, corpus, num_samples=c["num_samples"], batch_size=c["batch_size"], seed=c["seed"],
                           options=dict(c["options"], top_p=c["top_p"]), model_name=state["model_name"],
                           model_config=state["model_config"], corpus_spec=state["corpus"],
                           checkpoint=c["checkpoint"])
    return corpus, records, c["options"], _display(model)


def _null_samples(c: dict) -> tuple:
    """Real held-out text or a null sampler's rows, as sample records (NFE 0, no checkpoint)."""
    from esolm.metrics.calibration import null_samples
    from esolm.samples import sample_meta

    corpus = _corpus(c["corpus"])
    rows = null_samples(c["null"], corpus, c["num_samples"], seed=c["seed"])
    meta = sample_meta(corpus, seed=c["seed"], options={}, model_name=f"calibration:{c['null']}", model_config={},
                       corpus_spec=corpus.spec(), checkpoint=None)
    texts = corpus.tokenizer.decode_batch(rows)
    records = [{"text": t, "tokens": r, "nfe": 0, "seconds": 0.0, "batch_size": len(rows), **meta}
               for r, t in zip(rows, texts)]
    return corpus, records, {}, dict(family="calibration", color="grey", marker="x")


def _sample_metrics(scores: dict, records: list[dict]) -> dict:
    """The row metrics of a scored sample set; every quality number with its 95 % interval over
    samples (metric_lo / metric_hi)."""
    import numpy as np

    from esolm.metrics.bootstrap import interval_fields, mean_interval, ppl_interval
    from esolm.metrics.entropy import unigram_entropy

    g, g2, dist = scores["gen_ppl"], scores.get("gen_ppl_judge2"), scores.get("distributional")
    h = unigram_entropy([r["tokens"] for r in records])
    h = h[~np.isnan(h)]

    def ppl(name: str, d: dict) -> dict:  # no interval where a sample scores infinite NLL ("source" judge)
        nll, count = np.asarray(d["per_sample"]["nll"], float), np.asarray(d["per_sample"]["count"], float)
        ok = d["gen_ppl"] is not None and np.isfinite(nll).all() and count.sum() > 0
        return {name: d["gen_ppl"], **interval_fields(name, ppl_interval(nll, count) if ok else None)}

    nfes = [r["nfe"] for r in records]
    return dict(nfe=sum(nfes) / len(nfes), **ppl("gen_ppl", g), **(ppl("gen_ppl_judge2", g2) if g2 else {}),
                gen_ppl_ref_pad=g.get("gen_ppl_ref_pad"), scored_fraction=g.get("scored_fraction"),
                entropy=scores["entropy"]["mean"], **interval_fields("entropy", mean_interval(h)),
                dist_sim=dist and dist["score"], dist_sim_lo=dist and dist["score_lo"],
                dist_sim_hi=dist and dist["score_hi"],
                self_bleu=(scores.get("self_bleu") or {}).get("self_bleu"),
                mauve=(scores.get("mauve") or {}).get("mauve"), num_samples=len(records),
                samples_digest=_digest([r["tokens"] for r in records]))


def _digest(token_rows: list) -> str:
    """A short hash of the sampled token ids, row by row: equal for two configurations that drew
    the very same samples (analysis.rules.IDENTICAL counts them once)."""
    import json

    from esolm.io import content_hash

    return content_hash(json.dumps([[int(t) for t in row] for row in token_rows], separators=(",", ":")))[:16]


# ------------------------------------------------------------------------------- time
def _time_model(model, job: dict, opts: dict) -> dict:
    """The timing protocol's results: ``profile`` (network passes), ``wall`` (whole call; None
    where the preset skips it), each time_sampler's dict with its per-trial seconds under
    ``trials``, and ``intervals``: the 95 % bootstrap intervals over the trials of the mean and
    median (time_*_s_lo/hi of the network passes, wall_*_s_lo/hi of the whole call)."""
    import torch

    from esolm.metrics import time_sampler
    from esolm.metrics.bootstrap import interval_fields, mean_interval, median_interval

    c = job["config"]
    gen = torch.Generator().manual_seed(c["seed"])
    call = lambda profile: model.sample(c["batch_size"], generator=gen, profile=profile, **opts)  # noqa: E731
    prof = time_sampler(lambda: call(True), warmup=c["warmup"], trials=c["trials"], profile=True,
                        what=f"{job['name']}: network passes only")
    intervals = {**interval_fields("time_mean_s", mean_interval(prof["trials"])),
                 **interval_fields("time_median_s", median_interval(prof["trials"]))}
    if not c.get("wall", True):  # the preset times network passes only (the Pareto's clock, 8.5)
        return dict(profile=prof, wall=None, intervals=intervals)
    wall = time_sampler(lambda: call(False), warmup=0, trials=c["trials"], profile=False,
                        what=f"{job['name']}: whole sampling call")
    intervals.update(**interval_fields("wall_mean_s", mean_interval(wall["trials"])),
                     **interval_fields("wall_median_s", median_interval(wall["trials"])))
    return dict(profile=prof, wall=wall, intervals=intervals)


@recorded
def job_time(job: dict) -> tuple:
    """Seconds of one sweep configuration (spec 8.5); with ``points`` in the config, one clock
    for every configuration of the preset instead (:func:`_clock`)."""
    from esolm.checkpoint import load_model

    c = job["config"]
    if "points" in c:
        return _clock(job)
    model, _ = load_model(c["checkpoint"])
    opts = dict(c["options"], top_p=c["top_p"], kv_cache=c.get("kv_cache", True))
    t = _time_model(model, job, opts)
    wall = t["wall"] or {}
    row = dict(config=dict(top_p=c["top_p"], kv_cache=opts["kv_cache"], batch_size=c["batch_size"]),
               options=c["options"], display=_display(model),
               metrics=dict(nfe=t["profile"]["nfe"], time_median_s=t["profile"]["median"],
                            time_mean_s=t["profile"]["mean"], time_std_s=t["profile"]["std"],
                            wall_median_s=wall.get("median"), wall_mean_s=wall.get("mean"), wall_std_s=wall.get("std"),
                            **t["intervals"]))
    return row, t, {}


def _rounds(runs: list, time_once, least: int, most: int, target: float | None) -> dict:
    """Interleaved rounds of a clock: each round times every entry of ``runs`` ([(name, thing)])
    once through ``time_once(name, thing) -> seconds``, the order rotated from round to round, so
    that a slow spell of a shared machine lands on every entry alike and round i of any two
    entries is a pair. With a ``target``, rounds go on from ``least`` until the 95 % bootstrap
    interval of every pair's ratio of means (rounds resampled as pairs) is at most +-``target``
    of the ratio, and at most ``most`` rounds; without one, ``least`` rounds. Returns the seconds
    per round of each entry, the rounds, the widest pair's half-width over its ratio and the pair."""
    from esolm.metrics.bootstrap import paired_ratio_widths

    secs = {name: [] for name, _ in runs}
    most = most if target is not None else least
    rounds, widest, pair = 0, math.inf, None

    def judge():
        widths = paired_ratio_widths(secs)
        return max(widths.items(), key=lambda kv: kv[1]) if widths else (None, 0.0)

    while rounds < most and not (rounds >= least and widest <= target):
        k = rounds % len(runs)
        for name, thing in runs[k:] + runs[:k]:
            secs[name].append(float(time_once(name, thing)))
        rounds += 1
        if target is not None and rounds >= max(least, 2):
            pair, widest = judge()
    if target is None and rounds >= 2:
        pair, widest = judge()
    return dict(secs=secs, rounds=rounds, widest=widest, pair=list(pair) if pair else None,
                met=None if target is None else widest <= target)


def _clock(job: dict) -> tuple:
    """One clock per comparison (issue 25 item 4): every sweep configuration of the preset timed
    in this one job, interleaved in rounds (:func:`_rounds`: each round times every configuration
    once, network passes only, the order rotated), so that a slow spell of a shared machine lands
    on every point of a Pareto figure alike and no comparison joins records of two runs.

    Rounds run until the 95 % interval of every ratio of two configurations (paired rounds) is at
    most ``target`` of the ratio, from ``min_rounds`` on and at most ``max_rounds``; the record
    says how many it took, the widest pair and whether the target was met. One row per
    configuration: its median and mean with their intervals, the NFE of the timed calls; the
    record keeps each configuration's seconds per round, entry i of every configuration from
    round i: paired, for ratio intervals."""
    import torch

    from esolm.checkpoint import load_model
    from esolm.metrics.bootstrap import interval_fields, mean_interval, median_interval
    from esolm.metrics.timing import summarize

    c = job["config"]
    runs = []
    for p in c["points"]:
        model, _ = load_model(p["checkpoint"])
        runs.append((p["name"], (p, model, dict(p["options"], top_p=c["top_p"], kv_cache=True))))
    gen = torch.Generator().manual_seed(c["seed"])
    nfes = {name: [] for name, _ in runs}

    def once(name, run):
        out = run[1].sample(c["batch_size"], generator=gen, profile=True, **run[2])
        nfes[name].append(out.nfe)
        return out.seconds

    for _ in range(c["warmup"]):
        for name, run in runs:
            run[1].sample(c["batch_size"], generator=gen, profile=True, **run[2])
    clock = _rounds(runs, once, c["min_rounds"], c["max_rounds"], c["target"])
    secs, rounds = clock["secs"], clock["rounds"]
    rows = []
    for name, (p, model, _opts) in runs:
        t = summarize(secs[name])
        rows.append(dict(name=name, label=p["label"], group=p["group"], model=p["model"],
                         config=dict(top_p=c["top_p"], kv_cache=True, batch_size=c["batch_size"],
                                     timing_run=c["timing_run"], rounds=rounds),
                         options=p["options"], display=_display(model),
                         metrics=dict(nfe=statistics.fmean(nfes[name]), time_median_s=t["median"],
                                      time_mean_s=t["mean"], time_std_s=t["std"],
                                      **interval_fields("time_mean_s", mean_interval(t["trials"])),
                                      **interval_fields("time_median_s", median_interval(t["trials"])))))
    metrics = dict(points={name: dict(trials=secs[name], nfe=nfes[name]) for name, _ in runs},
                   rounds=rounds, widest_half_width=clock["widest"], widest_pair=clock["pair"],
                   target_half_width=c["target"], met=clock["met"], stop_rule="paired ratio intervals",
                   interleaved=True, order_rotated=True, order=[name for name, _ in runs])
    return rows, metrics, {}


@recorded
def job_longctx(job: dict) -> tuple:
    """Latency at NFE = L (spec 8.6) of every method at one length, side by side: a model of the
    preset's backbone per method, built at length L (timing does not depend on the weights),
    batch 1, no nucleus. The calls are interleaved (:func:`_rounds`: each round times every
    method once, the order rotated), so that a slow spell of a shared machine lands on all
    methods alike and the ratios of Table 11 are measured in one run; with the preset's
    ``target``, rounds go on (from ``trials`` to ``max_trials``) until every ratio of two methods
    has a 95 % interval within +-target of it. The rounds time whole calls (Table 11's clock),
    then as many of network passes only, unless the preset sets long_context profile=False (the
    CPU presets: it halves the stage). Each row carries time_mean_s_lo/hi (95 % bootstrap over
    its rounds) and time_trials, its seconds per round (space-separated; entry i of every method
    from the same round i: paired, for the ratio intervals of claim C5); the record keeps them
    under metrics.methods[<row name>].wall.trials (.profile.trials)."""
    import torch

    from esolm import registry
    from esolm.interface import sync
    from esolm.metrics.bootstrap import interval_fields, mean_interval
    from esolm.metrics.timing import summarize

    c = job["config"]
    entries = c["entries"]
    runs = []
    for e in entries:
        model = registry.build(e["model"], **c["fields"], **e["model_overrides"]).eval()
        runs.append((e["name"], (e, model, dict(e["options"], top_p=c["top_p"], kv_cache=e["kv_cache"]))))
    gen = torch.Generator().manual_seed(c["seed"])
    nfe = {}

    def call(name, run, profile: bool):
        sync("cpu")
        t0 = time.perf_counter()
        out = run[1].sample(c["batch_size"], generator=gen, profile=profile, **run[2])
        sync("cpu")
        nfe[name] = out.nfe
        return float(out.seconds) if profile else time.perf_counter() - t0

    for _ in range(c["warmup"]):
        for name, run in runs:
            call(name, run, False)
    # whole calls first, to the target; then (unless the preset says not) as many rounds of network passes only
    wall = _rounds(runs, lambda n, r: call(n, r, False), c["trials"], c.get("max_trials") or c["trials"],
                   c.get("target"))
    prof = (_rounds(runs, lambda n, r: call(n, r, True), wall["rounds"], wall["rounds"], None)["secs"]
            if c.get("profile", True) else {})
    rows, metrics = [], {}
    for name, (e, model, _opts) in runs:
        w = summarize(wall["secs"][name])
        p = summarize(prof[name]) if name in prof else None  # None: the preset skips network passes
        metrics[name] = dict(wall=w, profile=p)
        rows.append(dict(e, config=dict(length=c["fields"]["length"], kv_cache=e["kv_cache"], batch_size=c["batch_size"],
                                        timing_run=c.get("timing_run"), rounds=wall["rounds"]),
                         options=e["options"], display=_display(model),
                         metrics=dict(nfe=nfe[name], time_mean_s=w["mean"], time_std_s=w["std"],
                                      **interval_fields("time_mean_s", mean_interval(w["trials"])),
                                      time_trials=" ".join(f"{v:.6g}" for v in w["trials"]),
                                      time_median_s=w["median"], profile_mean_s=p and p["mean"])))
    order = [e["name"] for e in entries]
    return rows, dict(methods=metrics, interleaved=True, order_rotated=True, trials=wall["rounds"],
                      rounds=wall["rounds"], widest_half_width=wall["widest"], widest_pair=wall["pair"],
                      target_half_width=c.get("target"), met=wall["met"]), dict(order=order)


JOB_FUNCTIONS = {"train": job_train, "eval": job_eval, "zeroshot": job_zeroshot, "sample": job_sample,
                 "time": job_time, "longctx": job_longctx}


# ------------------------------------------------------------------------ conditional
def _joins(stage: str):
    """Adds a stage's job function to JOB_FUNCTIONS as the function is defined (below the table):
    a stage added this way leaves the module's top-level statements, which every stage's code
    version hashes (experiments/versions.py part_hash), as they were."""
    def add(fn):
        JOB_FUNCTIONS[stage] = fn
        return fn

    return add


@_joins("conditional")
@recorded
def job_conditional(job: dict) -> tuple:
    """The conditional task on one form (issue 27 item 3, esolm/metrics/conditional.py): held-out
    test passages completed by the model's own conditional sampler (its entry's options), each
    sampling call timed, scored against the truth under the preset's judges (cond_nll, ref_nll,
    chrF, token match, distributional similarity), each number with its 95 % interval. A form
    the model does not sample under (``skipped`` in the config, experiments/graph.py) runs no
    model: its row carries the note that says why."""
    c = job["config"]
    if c.get("skipped"):
        return _conditional_skipped(job)
    from esolm.checkpoint import load_model
    from esolm.metrics.conditional import run_form
    from esolm.metrics.evaluators import load_evaluator

    model, state = load_model(c["checkpoint"])
    corpus = _corpus(state["corpus"])
    judges = {suffix: load_evaluator(c[key], corpus=corpus)
              for suffix, key in (("", "evaluator"), ("_judge2", "evaluator2")) if c.get(key) is not None}
    out = run_form(model, corpus, judges, form=c["form"], num_examples=c["num_examples"], batch_size=c["batch_size"],
                   options=dict(c["options"], top_p=c["top_p"]), seed=c["seed"], warmup=c["warmup"],
                   rounds=c["rounds"])
    m = out["metrics"]
    print(f"[conditional] {job['name']}: cond NLL {m['cond_nll']:.4f} (truth {m['ref_nll']:.4f}), chrF "
          f"{m['chrf']:.2f}, {m['sec_per_example']:.4g} s per example", flush=True)
    names = {f"evaluator{k.replace('_judge', '')}": j.name for k, j in judges.items()}
    row = dict(config=dict(form=c["form"], top_p=c["top_p"], batch_size=c["batch_size"], rounds=c["rounds"], **names),
               options=c["options"], display=_display(model), metrics=m)
    metrics = dict(per_example=out["per_example"], judges={k or "_judge1": j.describe() for k, j in judges.items()})
    return row, metrics, dict(examples=out["examples"])


def _conditional_skipped(job: dict) -> tuple:
    """The row of a form the model does not sample under: no metrics, the note, the model's display."""
    import dataclasses

    from esolm import registry

    c = job["config"]
    display = registry.model_class(job["model"]).display(registry.build_config(job["model"], **c["model_overrides"]))
    print(f"[conditional] {job['name']}: {c['skipped']}", flush=True)
    row = dict(config=dict(form=c["form"], skipped=c["skipped"]), display=dataclasses.asdict(display), metrics={})
    return row, dict(skipped=c["skipped"]), {}


# ------------------------------------------------------------------------ Table 16 (XSum)
@_joins("finetune")
@recorded
def job_finetune(job: dict) -> tuple:
    """Table 16's finetune (experiments/presets_xsum.py): the source entry's checkpoint (an imported
    release) trained for its own ``train.steps`` on the XSum rows (esolm/data/xsum.py: one example
    per row, the model's own objective over the whole row) from the source's weights with a fresh
    optimizer, schedule and EMA (esolm.train.fit ``init_from``); resumes from its own checkpoint."""
    from esolm.checkpoint import load_model
    from esolm.config import ConfigError, make_config
    from esolm.data.xsum import xsum_from_spec
    from esolm.distributed import setup_distributed
    from esolm.train import TrainConfig, fit, seed_everything

    c = job["config"]
    _, world, _ = setup_distributed()
    data = xsum_from_spec(c["data"])  # first: missing data fails before any weight is read
    model, state = load_model(c["init_checkpoint"])
    if state["model_name"] != c["model"]:
        raise ConfigError(f"{c['init_checkpoint']} holds {state['model_name']}, but {job['name']} finetunes "
                          f"{c['model']}")
    data.check_model(model.config, f"{c['model']} of {c['init_checkpoint']}")
    cfg = make_config(TrainConfig, c["train"])
    seed_everything(cfg.seed)
    result = fit(c["model"], model.train(), data.corpus(), cfg, job["work"], progress=False,
                 init_from=c["init_checkpoint"])
    m = result["metrics"]
    valid = m.get("valid", {})
    metrics = dict(params=model.num_parameters(), steps_trained=m.get("step"), train_loss=m.get("train_loss"),
                   tokens_per_s=m.get("tokens_per_s"), **{f"valid_{k}": valid.get(v) for k, v in
                                                          (("nll", "nll_per_token"), ("ppl", "ppl"))})
    row = dict(config=dict(finetuned_on=data.name, summary_budget=data.budget), display=_display(model),
               metrics=metrics)
    return row, m, dict(checkpoint=result["checkpoint"], world_size=world)


@_joins("summarize")
@recorded
def job_summarize(job: dict) -> tuple:
    """One sweep configuration of Table 16 (esolm/metrics/summarize.py): the finetuned model writes
    the summaries of the first XSum test documents with its sampler options (T steps over the
    summary slots), each sampling call timed whole on the job's device (a GPU where there is one),
    scored by rescaled BERTScore F1 against the references, each number with its 95 % interval."""
    from esolm.checkpoint import load_model
    from esolm.data.xsum import xsum_from_spec
    from esolm.metrics.summarize import summarize

    c = job["config"]
    data = xsum_from_spec(c["data"])
    model, _ = load_model(c["checkpoint"], device="auto")
    out = summarize(model, data, featurizer=c["featurizer"], options=dict(c["options"], top_p=c["top_p"]),
                    num_examples=c["num_examples"], batch_size=c["batch_size"], seed=c["seed"], warmup=c["warmup"],
                    rounds=c["rounds"])
    m = out["metrics"]
    print(f"[summarize] {job['name']}: BERTScore F1 {m['bertscore_f1']:.4f}, {m['sec_per_example']:.4g} s per "
          f"example, NFE {m['nfe']:.3g}", flush=True)
    row = dict(config=dict(top_p=c["top_p"], batch_size=c["batch_size"], featurizer=c["featurizer"],
                           summary_budget=data.budget, device=str(model.device)),
               options=c["options"], display=_display(model), metrics=m)
    extra = dict(per_example=out["per_example"], featurizer=out["featurizer"], bertscore_hash=out["bertscore_hash"])
    return row, extra, dict(examples=out["examples"])
