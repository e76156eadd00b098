"""`run.py pareto` and `run.py tables`: the preset's job graph, run through submitit on
Slurm, locally or in-process, cached and resumable.

Every job's record lives at results/<preset>/records/<stage>/<key>.json, where the key hashes
the job's configuration and the library's code version; a rerun submits only jobs without a
record, and a training job resumes from its checkpoint under the work folder. Stages run in
waves (train -> eval + sample -> time -> longctx) so timings never share the CPU with other
jobs of this graph.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from analysis import records as R
from esolm import registry
from esolm.log import printer
from esolm.config import ConfigError, parse_overrides
from esolm.io import content_hash
from experiments import jobs as J
from experiments import presets as P
from experiments import versions as V

WAVES = [["train"], ["eval", "zeroshot", "sample"], ["time"], ["longctx"]]
# jobs of one model share a process in these stages (one model load, sequential timings)
GROUP_BY_MODEL = {"sample", "time", "eval", "zeroshot"}


say = printer()  # progress and outputs' paths on stderr (esolm/log.py)


@dataclass
class Job:
    stage: str
    name: str
    identity: dict  # what defines the job (hashed with the code version into its key)
    config: dict  # what the job function reads: identity plus paths
    label: str | None = None
    group: str | None = None
    model: str | None = None
    deps: list["Job"] = field(default_factory=list)
    key: str = ""
    code_version: str = ""  # the hash of the code this job runs (experiments/versions.py)
    code_files: dict = field(default_factory=dict)  # that code, file by file
    uses: tuple = ()  # models it builds or loads besides its own (the evaluator, longctx's methods)
    outputs: tuple = ()  # files later stages read (a training job's checkpoint): without them it reruns


    def payload(self, preset: str, results: Path, work: Path, threads: int) -> dict:
        return dict(stage=self.stage, name=self.name, key=self.key, preset=preset, label=self.label, group=self.group,
                    model=self.model, config=self.config, threads=threads, code_version=self.code_version,
                    code_files=self.code_files, outputs=list(self.outputs),
                    record=str(record_path(results, self)), work=str(work / self.stage / self.key))


def record_path(results: Path, job: Job) -> Path:
    return results / "records" / job.stage / f"{job.key}.json"


def check_job(results: Path, job: Job) -> R.Check:
    """The state of a job's record (analysis/records.py): done only when it verifies and the
    job's outputs are there."""
    return R.check(record_path(results, job), job.outputs)


def is_done(results: Path, job: Job) -> bool:
    return check_job(results, job).state == "done"


def _key(stage: str, identity: dict, code: str) -> str:
    blob = json.dumps({"stage": stage, "identity": identity, "code": code}, sort_keys=True, default=str)
    return content_hash(blob)[:16]


# ------------------------------------------------------------------------------ the graph
class Graph:
    """The jobs of one preset as they are added, each keyed by its identity and its code."""

    def __init__(self, preset: P.Preset, work: Path):
        self.preset, self.run, self.work = preset, preset.run, work
        # released presets name their exact test data; the others, the run's corpus
        self.corpus = getattr(preset, "corpus_spec", None) or self.run.data.corpus_kwargs()
        self.jobs: list[Job] = []
        self.trains: dict[str, Job] = {}  # the training job of each entry added, by label

    def add(self, job: Job) -> Job:
        models = [m for m in (job.model, *job.uses) if m]
        job.code_version, job.code_files = V.job_version(job.stage, models)
        job.key = _key(job.stage, job.identity, job.code_version)
        self.jobs.append(job)
        return job

    def checkpoint(self, train: Job) -> str:
        return str(self.work / "train" / train.key / "checkpoint.safetensors")

    def train(self, m: P.ModelEntry) -> Job:
        """Train ``m`` on the run's data, backbone and budget (a released entry: import its file); an
        entry with ``init_from`` starts from the trained weights of that earlier entry (a finetune of
        its own budget): it waits for that entry's training job, whose key is in its identity (so it
        retrains when the source does) and whose checkpoint is in its config."""
        source = getattr(m, "source", None)
        deps, extra = [], {}
        if source:  # a released checkpoint: the job imports it instead of training (jobs.job_train)
            identity = dict(model=m.model, model_overrides=dict(m.overrides), corpus=self.corpus, source=source,
                            ema=getattr(m, "ema", None))
        else:
            train = dataclasses.asdict(self.run.train)
            train.update(m.train)
            identity = dict(model=m.model, model_overrides={**self.run.backbone_fields(), **m.overrides},
                            corpus=self.corpus, train=train)
            init = getattr(m, "init_from", None)
            if init:
                if init not in self.trains:
                    raise ConfigError(f"preset {self.preset.name}: entry {m.label!r} initialises from {init!r}, which "
                                      f"is not an entry trained before it; list {init!r} earlier in the preset's "
                                      f"models, or fix the label (entries: {', '.join(self.trains) or 'none'})")
                src = self.trains[init]
                identity["init_from"] = dict(label=init, train=src.key)
                deps, extra = [src], dict(init_checkpoint=self.checkpoint(src))
        job = self.add(Job("train", f"train/{m.label}", identity, dict(identity, **extra), m.label, m.group, m.model,
                           deps))
        job.outputs = (self.checkpoint(job),)  # what eval, sample and time load
        self.trains[m.label] = job
        return job


def build_graph(preset: P.Preset, work: Path, code: str | None = None) -> list[Job]:
    """All jobs of a preset, dependencies first (``code`` is not used: each job's key hashes
    the code it runs, experiments/versions.py)."""
    g = Graph(preset, work)
    judge_entries = [e for e in (_evaluator_entry(preset, preset.evaluator, "evaluator"),
                                 _evaluator_entry(preset, preset.second_evaluator, "evaluator-2")) if e]
    judge_trains = {e.label: g.train(e) for e in judge_entries}
    judges = Judges(g, preset, judge_trains)
    trains = {m.label: g.train(m) for m in preset.models}
    for m in preset.models + judge_entries:
        _eval_jobs(g, m, trains.get(m.label) or judge_trains[m.label])
    for m in preset.models:
        _zeroshot_jobs(g, m, trains[m.label])
    for m in preset.models:
        _sweep_jobs(g, m, trains[m.label], judges)
    for name in preset.calibration:
        _calibration_job(g, name, judges)
    runs = range(1, preset.clock["runs"] + 1) if preset.clock else [None]
    for run in runs:
        if run is not None:
            _clock_job(g, trains, run)
        for length in preset.run.long_context.lengths:
            _longctx_job(g, length, run)
    return g.jobs


def _evaluator_entry(preset: P.Preset, ev, label: str) -> P.ModelEntry | None:
    """A gen-PPL judge this preset trains (None: an n-gram, "source" or a Hugging Face model,
    nothing to train); its model must score text left to right (capabilities.next_token_scoring).
    Its group is the evaluator's, so no table or figure counts it among the methods."""
    if not isinstance(ev, dict):
        return None
    model = ev.get("model", "ar")
    if not registry.model_class(model).capabilities.next_token_scoring:
        raise ConfigError(f"the evaluator of preset {preset.name} is {model!r}, which cannot score text left to right "
                          f"(capabilities.next_token_scoring); use a model that can, e.g. ar")
    return P.ModelEntry(label, model, "evaluator", dict(ev.get("overrides", {})), [], train=dict(ev.get("train", {})))


class Judges:
    """The preset's gen-PPL judges as a sample job names them: in its identity (a trained judge by
    its training job's key), in its config (by checkpoint path), and the jobs it waits for."""

    def __init__(self, g: Graph, preset: P.Preset, trains: dict):
        self.deps, self.identity, self.config = [], {}, {}
        for field_name, spec, label in (("evaluator", preset.evaluator, "evaluator"),
                                        ("evaluator2", preset.second_evaluator, "evaluator-2")):
            if spec is None:
                continue
            tr = trains.get(label)
            self.identity[field_name] = tr.key if tr else spec
            self.config[field_name] = g.checkpoint(tr) if tr else spec
            self.deps += [tr] if tr else []

    @property
    def models(self) -> tuple:
        return tuple(j.model for j in self.deps)


def _eval_jobs(g: Graph, m: P.ModelEntry, tr: Job) -> None:
    """Test NELBO, and the exact likelihood at each K where the model has one (one pass per
    order: every K of the run; K·L passes: K = 1 unless the model's entry says)."""
    caps = registry.model_class(m.model).capabilities
    own = m.eval
    e = {**dataclasses.asdict(g.run.eval), **own}
    runs = [(False, 1)]
    if caps.exact_likelihood:
        multi = caps.single_pass_likelihood or "exact_orders" in own
        runs += [(True, k) for k in (e["exact_orders"] if multi else [1])]
    for exact, k in runs:
        identity = dict(train=tr.key, exact=exact, num_orders=k, batch_size=e["batch_size"],
                        max_batches=_max_batches(e, exact, caps, "exact_max_sequences" in own), seed=1)
        name = f"eval/{m.label}/" + (f"exact K={k}" if exact else "nelbo")
        g.add(Job("eval", name, identity, dict(identity, checkpoint=g.checkpoint(tr), model_overrides=m.overrides),
                  m.label, m.group, m.model, [tr]))


def _zeroshot_jobs(g: Graph, m: P.ModelEntry, tr: Job) -> None:
    """Table 5: test NELBO on other corpora (released presets)."""
    for column, spec in getattr(g.preset, "zero_shot", {}).items():
        identity = dict(train=tr.key, corpus=spec, batch_size=g.run.eval.batch_size,
                        max_batches=g.run.eval.max_batches, seed=1)
        g.add(Job("zeroshot", f"zeroshot/{m.label}/{column}", identity,
                  dict(identity, column=column, checkpoint=g.checkpoint(tr), model_overrides=m.overrides),
                  m.label, m.group, m.model, [tr]))


def _sweep_jobs(g: Graph, m: P.ModelEntry, tr: Job, judges: Judges) -> None:
    """A sample job (quality) and a time job (speed) per sweep configuration."""
    run = g.run
    for opts in m.sweep:
        tag = ",".join(f"{k}={v}" for k, v in opts.items())
        identity = dict(train=tr.key, options=opts, top_p=run.sampling.top_p, num_samples=run.sampling.num_samples,
                        batch_size=run.sampling.batch_size, seed=0, mauve=dataclasses.asdict(run.mauve),
                        **judges.identity)
        g.add(Job("sample", f"sample/{m.label}/{tag}", identity,
                  dict(identity, checkpoint=g.checkpoint(tr), model_overrides=m.overrides, **judges.config),
                  m.label, m.group, m.model, [tr] + judges.deps, uses=judges.models))
        if g.preset.clock:  # timed with every other configuration in the clock job (_clock_job)
            continue
        t = run.timing
        identity = dict(train=tr.key, options=opts, top_p=run.sampling.top_p, batch_size=t.batch_size,
                        trials=t.trials, warmup=t.warmup, wall=t.wall, seed=0)
        g.add(Job("time", f"time/{m.label}/{tag}", identity,
                  dict(identity, checkpoint=g.checkpoint(tr), model_overrides=m.overrides),
                  m.label, m.group, m.model, [tr]))


CALIBRATION_GROUP = "calibration"  # config.group of the null samplers' rows (not a method)


def _calibration_job(g: Graph, name: str, judges: Judges) -> None:
    """A null sampler's samples (esolm/metrics/calibration.py), scored exactly as a model's: a
    `sample` row of the calibration group, with no time row (it runs no network)."""
    run = g.run
    identity = dict(null=name, corpus=g.corpus, num_samples=run.sampling.num_samples, seed=0,
                    mauve=dataclasses.asdict(run.mauve), **judges.identity)
    g.add(Job("sample", f"sample/calibration/{name}", identity, dict(identity, **judges.config),
              name, CALIBRATION_GROUP, None, list(judges.deps), uses=judges.models))


def _clock_job(g: Graph, trains: dict, run: int) -> None:
    """Every sweep configuration of the preset timed in one job, interleaved (jobs._clock): the
    one clock of the Pareto figures and of C6; ``run`` numbers the independent timing runs."""
    t, points, models = g.run.timing, [], []
    for m in g.preset.models:
        for opts in m.sweep:
            tag = ",".join(f"{k}={v}" for k, v in opts.items())
            points.append(dict(name=f"time/{m.label}/{tag}", label=m.label, group=m.group, model=m.model,
                               train=trains[m.label].key, options=opts))
            models.append(m.model)
    if not points:
        return
    identity = dict(points=points, top_p=g.run.sampling.top_p, batch_size=t.batch_size, warmup=t.warmup,
                    **{k: v for k, v in g.preset.clock.items() if k != "runs"}, seed=0, timing_run=run)
    config = dict(identity, points=[dict(p, checkpoint=g.checkpoint(trains[p["label"]])) for p in points])
    deps = list({p["label"]: trains[p["label"]] for p in points}.values())
    g.add(Job("time", f"time/clock/run={run}", identity, config, deps=deps, uses=tuple(dict.fromkeys(models))))


def _longctx_job(g: Graph, length: int, run: int | None = None) -> None:
    """One job per length: every method with NFE = L options, timed side by side, interleaved."""
    lc = g.run.long_context
    entries = []
    for m in g.preset.models + g.preset.timing_only:
        caps = registry.model_class(m.model).capabilities
        if not m.nfe_equals_l or caps.nfe_equals_l is None:
            continue
        for cached in ([True] if lc.cached_only else [True, False]) if caps.kv_cache else [False]:
            entries.append(dict(name=f"longctx/{m.group}/L={length}/{'cache' if cached else 'no-cache'}",
                                label=m.label, group=m.group, model=m.model,
                                model_overrides={**g.run.backbone_fields(), **m.overrides},
                                options=dict(caps.nfe_equals_l), kv_cache=cached))
    if entries:
        identity = dict(entries=entries, fields=dict(length=length, **_ids_for(g.preset)),
                        batch_size=1, trials=lc.trials, max_trials=lc.max_trials, target=lc.target, warmup=lc.warmup, profile=lc.profile, seed=0, top_p=1.0)
        if run is not None:  # one of the preset's timing runs (Preset.clock)
            identity["timing_run"] = run
            for e in entries:
                e["name"] += f"/run={run}"
        name = f"longctx/L={length}" + (f"/run={run}" if run is not None else "")
        g.add(Job("longctx", name, identity, dict(identity), uses=tuple(e["model"] for e in entries)))


def reuse_records(jobs: list[Job], results: Path, work: Path) -> list[str]:
    """Copy into this preset the records of identical jobs that another preset under the same
    results root already ran (same key: same configuration and code version), with the
    checkpoint of a training job into this preset's work folder, so nothing is computed twice
    (the `cpu` preset contains every job of `tiny`). Returns the source preset of each copy.
    Only records that verify are copied (a training record only with its checkpoint); a record
    here that verifies is never overwritten (a training one whose checkpoint is gone gets the
    other preset's checkpoint back), a corrupt one is replaced."""
    sources = []
    others = sorted(p for p in results.parent.iterdir() if p.is_dir() and p != results) if results.parent.is_dir() else []
    for job in jobs:
        here = check_job(results, job)
        if here.state == "done":
            continue
        for other in others:
            found = R.check(record_path(other, job))
            if found.state == "done" and _reuse(job, dict(found.record, reused_from=other.name), here, work):
                sources.append(other.name)
                break
    return sources


def _reuse(job: Job, rec: dict, here: R.Check, work: Path) -> bool:
    """Copy one verified record of another preset (and a training job's checkpoint); False
    when a training record's checkpoint is gone there too."""
    import shutil

    from esolm.io import atomic_write_json

    if job.stage == "train":
        src, dst = Path(rec.get("checkpoint", "")).parent, work / "train" / job.key
        if not (src / "checkpoint.safetensors").exists():
            return False
        if not (dst / "checkpoint.safetensors").exists():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        rec["checkpoint"] = str(dst / "checkpoint.safetensors")
    if here.state != "no-output":  # a record of its own that verifies is kept
        atomic_write_json(here.path, R.seal(rec))
    return True


def stale_reasons(jobs: list[Job], results: Path) -> Counter:
    """Why each job without a record at its key has only older records of the same name:
    the files whose code changed since (from the record's ``code_files``), else its
    configuration. Counted by reason; records that do not verify are left out."""
    good, _ = R.scan(results, {j.stage for j in jobs})
    by_name = R.latest_by_name(rec for _, rec in good)
    reasons: Counter = Counter()
    for job in jobs:
        rec = by_name.get(job.name)
        if rec is None or rec.get("key") == job.key:
            continue
        changed = V.changed_files(rec.get("code_files"), job.code_files)
        if changed:
            reasons["code changed in " + ", ".join(changed[:3]) + (f" (+{len(changed) - 3} more)" if len(changed) > 3 else "")] += 1
        elif rec.get("code_files") is None:
            reasons["a record of the old whole-library code version"] += 1
        else:
            reasons["its configuration changed"] += 1
    return reasons


def job_cost(job: Job) -> float:
    """A job's size for lane packing: a training job's steps x its model's train_step_cost
    (positions per token: 1 for AR and MDLM, 2 for BD3-LM, 1.5 for Eso-LM at kappa = 0.5);
    any other job 1."""
    train = job.identity.get("train")
    if job.stage != "train" or not isinstance(train, dict):
        return 1.0
    cls = registry.model_class(job.model)
    config = registry.build_config(job.model, **job.identity.get("model_overrides", {}))
    return float(train.get("steps", 1)) * cls.train_step_cost(config)


def lanes(groups: list[list[Job]], n: int) -> list[list[Job]]:
    """``groups`` packed into ``n`` sequential lanes so that the most loaded lane carries as
    little as possible (sizes: ``job_cost``): an exhaustive search over the assignments when
    there are few (up to 4096), else largest first onto the least loaded lane. The local
    cluster has no scheduler to honour ``array_parallelism``; one submitted job per lane does
    it, so that no more than ``n`` jobs share the CPU (oversubscribing 2 cores with 5
    trainings cost ~40 % of the throughput here) and timing jobs never overlap when ``n`` is 1.
    Largest first alone left the two training lanes of `tiny` 3.3 minutes apart (its sizes
    1.5 x 400 twice and 400 three times: 1400 against 1000; the best split is 1200 each)."""
    import itertools

    n = max(1, min(n, len(groups)))
    sizes = [sum(job_cost(j) for j in g) for g in groups]
    order = sorted(range(len(groups)), key=lambda i: -sizes[i])  # largest first, stable

    def peak(assign) -> float:  # the most loaded lane of an assignment (lane per group of `order`)
        load = [0.0] * n
        for i, lane in zip(order, assign):
            load[lane] += sizes[i]
        return max(load)

    def largest_first() -> tuple:  # each group onto the least loaded lane
        load, chosen = [0.0] * n, []
        for i in order:
            chosen.append(load.index(min(load)))
            load[chosen[-1]] += sizes[i]
        return tuple(chosen)

    if n > 1 and n ** len(groups) <= 4096:  # the largest group on lane 0: lanes are interchangeable
        best = min(((0, *a) for a in itertools.product(range(n), repeat=len(groups) - 1)), key=peak)
    else:
        best = largest_first()
    out: list[list[Job]] = [[] for _ in range(n)]
    for i, lane in zip(order, best):
        out[lane] += groups[i]
    return [lane for lane in out if lane]


def _max_batches(e: dict, exact: bool, caps, own_count: bool = False) -> int | None:
    """Batches of an eval job: the exact likelihood of a model that needs L passes per order
    runs on 1/8 of the preset's exact sequences, unless the model's entry sets its own count."""
    if not exact or e.get("exact_max_sequences") is None:
        return e.get("max_batches")
    n = e["exact_max_sequences"] if caps.single_pass_likelihood or own_count else max(1, e["exact_max_sequences"] // 8)
    return max(1, n // e["batch_size"]) if n >= e["batch_size"] else 1


@functools.lru_cache(maxsize=None)
def _corpus_ids(spec: str) -> dict:
    from esolm.data import corpus_from_spec

    fields = corpus_from_spec(json.loads(spec)).model_fields()
    return {k: fields[k] for k in ("vocab_size", "mask_id", "bos_id", "eos_id")}


def _ids_for(preset: P.Preset) -> dict:
    """The token ids of the preset's corpus (vocabulary with the mask, mask, BOS, EOS), so that
    a latency model is built as the trained ones are."""
    return _corpus_ids(json.dumps(preset.run.data.corpus_kwargs(), sort_keys=True))


# ----------------------------------------------------------------------------- the driver
def run_group(payloads: list[dict]) -> list[str]:
    """One submitted job: run the payloads in order (one process, shared imports); a failure
    of one does not stop the others, and the job fails at the end naming them. A local job
    stops by itself when the driver that submitted it is gone (``driver`` in its payloads,
    experiments/cluster.py ``watch_driver``); each job holds its work folder while it runs
    (jobs.job_lock), so a job that another process finished meanwhile is skipped, not rerun."""
    from experiments.cluster import watch_driver

    watch_driver(payloads[0].get("driver") if payloads else None)
    failed = []
    for p in payloads:
        if R.done(p["record"], p.get("outputs", ())):  # a record that verifies, its checkpoint there
            continue
        try:
            with J.job_lock(p):
                if R.done(p["record"], p.get("outputs", ())):  # written by the process this one waited for
                    continue
                J.JOB_FUNCTIONS[p["stage"]](p)
            print(f"[{p['stage']}] done: {p['name']} -> {p['record']}", flush=True)
        except Exception as e:  # noqa: BLE001 - reported below, the group carries on
            import traceback

            traceback.print_exc()
            failed.append(f"{p['name']}: {type(e).__name__}: {e}")
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(payloads)} jobs failed: " + "; ".join(failed))
    return [p["record"] for p in payloads]


def run_preset(preset_name: str, *, cluster: str, results_root: Path, work_root: Path,
               slurm_overrides: dict | None = None, poll_s: float = 2.0, stages: set[str] | None = None) -> dict:
    """Submit what is missing, wave by wave; report progress and failures; aggregate.
    stages: run only these stages (the others are left as they are). The results folder is
    checked first (writable, free space) and held by this driver alone (experiments/store.py);
    Ctrl-C stops the local jobs it started and ends with one message."""
    from experiments import store
    from experiments.cluster import cancel_job

    name = P.get(preset_name).name
    store.check_writable(results_root / name, work_root / name)
    submitted: list = []
    with store.DriverLock(results_root / name):
        try:
            return _run_preset(preset_name, cluster=cluster, results_root=results_root, work_root=work_root,
                               slurm_overrides=slurm_overrides, poll_s=poll_s, stages=stages, submitted=submitted)
        except KeyboardInterrupt:
            if cluster == "slurm":
                alive = [str(h.job_id) for h in submitted if not h.done()]
                raise store.Interrupted(f"interrupted; {len(alive)} Slurm job(s) keep running ({' '.join(alive)}): "
                                        f"`scancel {' '.join(alive) or '<ids>'}` stops them, `run.py status` "
                                        f"follows them; finished results are kept") from None
            stopped = sum(cancel_job(h) for h in submitted)
            raise store.Interrupted(f"interrupted; stopped {stopped} running job(s); finished results are kept; "
                                    f"rerun the same command to continue (training resumes from its last "
                                    f"checkpoint)") from None


@dataclass
class Session:
    """One `pareto` / `tables` run: the preset's graph, where it writes, what it submitted."""

    preset: P.Preset
    cluster: str
    results: Path
    work: Path
    slurm_overrides: dict
    submitted: list  # every handle, for the interrupt handler
    failed_keys: set = field(default_factory=set)
    total: int = 0
    adopted: int = 0  # Slurm jobs of an earlier driver waited for instead of submitted again
    graph: list = field(default_factory=list)  # every job of the preset (who needs a checkpoint)


def _run_preset(preset_name: str, *, cluster: str, results_root: Path, work_root: Path,
                slurm_overrides: dict | None, poll_s: float, stages: set[str] | None, submitted: list) -> dict:
    from experiments.cluster import job_status

    preset = P.get(preset_name)
    results, work = results_root / preset.name, work_root / preset.name
    code = J.code_version()
    graph = build_graph(preset, work)
    say(f"preset {preset.name}: {len(graph)} jobs; results -> {results}; checkpoints and logs -> {work}; "
        f"cluster {cluster}; code version {code} (each job is keyed by the code it runs)")
    run = Session(preset, cluster, results, work, slurm_overrides or {}, submitted, graph=graph)
    for wave in WAVES:
        staged = {stage: stage_rounds([j for j in graph if j.stage == stage]) for stage in wave
                  if stages is None or stage in stages}
        for i in range(max((len(r) for r in staged.values()), default=0)):
            batches = [b for stage, rounds in staged.items() if i < len(rounds)
                       if (b := _submit_stage(run, stage, rounds[i]))]
            _follow(batches, results, run.failed_keys, poll_s, job_status)
    from experiments.aggregate import aggregate

    table = aggregate(preset, graph, results, code)
    say(f"submitted {run.total} jobs; {len(run.failed_keys)} jobs failed or were skipped")
    return dict(preset=preset.name, submitted=run.total, adopted=run.adopted, failed=len(run.failed_keys),
                failed_jobs=[j.name for j in graph if j.key in run.failed_keys],
                results=str(results), rows=len(table))


def stage_rounds(jobs: list[Job]) -> list[list[Job]]:
    """A stage's jobs (dependencies first, as build_graph adds them) in rounds run one after the
    other: a job that depends on a job of the same stage (a finetune on its source's training)
    runs in a round after it; without such jobs, one round (also when there are no jobs)."""
    depth: dict[str, int] = {}
    for j in jobs:
        depth[j.key] = max((depth[d.key] + 1 for d in j.deps if d.key in depth), default=0)
    rounds: list[list[Job]] = [[] for _ in range(max(depth.values(), default=0) + 1)]
    for j in jobs:
        rounds[depth[j.key]].append(j)
    return rounds


def _todo(run: Session, stage: str, jobs: list[Job]) -> list[Job]:
    """The stage's jobs that are not done (records of identical jobs of other presets copied in
    first; a corrupt record or a training record whose checkpoint is gone counts as missing),
    minus those whose dependency is not done; says what it reuses, reruns and why a record is stale."""
    results = run.results
    reused = reuse_records(jobs, results, run.work)
    if reused:
        say(f"[{stage}] {len(reused)} jobs reused from identical jobs of other presets: "
            + ", ".join(f"{n} from {p}" for p, n in sorted(Counter(reused).items())))
    states = _states(run, stage, jobs)
    done = [j for j in jobs if states[j.key] == "done"]
    missing = [j for j in jobs if j not in done]
    _say_reuse(stage, len(done), stale_reasons(missing, results))
    _say_redo(stage, Counter(states[j.key] for j in missing))
    blocked = [j for j in missing if not _deps_done(run, j)]
    todo = [j for j in missing if j not in blocked]
    say(f"[{stage}] {len(jobs)} jobs: {len(done)} already done, {len(todo)} to run"
        + (f", {len(blocked)} skipped (a dependency failed or is not done)" if blocked else ""))
    run.failed_keys.update(j.key for j in blocked)
    return todo


def _states(run: Session, stage: str, jobs: list[Job]) -> dict[str, str]:
    """Each job's record state (analysis/records.py ``check``), a training record without its
    checkpoint counted done while no job to run reads that checkpoint (and said so)."""
    states = {j.key: check_job(run.results, j).state for j in jobs}
    lacking = [j for j in jobs if states[j.key] == "no-output"]
    kept = [j for j in lacking if j.key not in _needed(run)] if lacking else []
    states.update({j.key: "done" for j in kept})
    if kept:
        say(f"[{stage}] {len(kept)} records kept without their checkpoint (no job to run reads it; "
            f"`run.py status` lists them)")
    return states


REDO = {"corrupt": "with a corrupt record (named above)",
        "no-output": "whose checkpoint is gone and a job to run reads it (record kept until the rerun replaces it)"}


def _needed(run: Session) -> set[str]:
    """Keys of the jobs whose outputs a job of the graph that is not done reads: a training
    record whose checkpoint is gone reruns only then (a fresh clone's committed records keep
    their place without the checkpoints that are never committed)."""
    return {d.key for j in run.graph if check_job(run.results, j).state != "done" for d in j.deps}


def _say_redo(stage: str, states: Counter) -> None:
    """How many of the stage's jobs rerun although they have a record (REDO says why)."""
    redo = [f"{states[k]} {why}" for k, why in REDO.items() if states[k]]
    if redo:
        say(f"[{stage}] rerun: " + ", ".join(redo))


def _deps_done(run: Session, job: Job) -> bool:
    """Every dependency ran in this session without failing and is done (its record verifies,
    its checkpoint is there)."""
    return all(d.key not in run.failed_keys and is_done(run.results, d) for d in job.deps)


def _say_reuse(stage: str, done: int, stale: Counter) -> None:
    if done or stale:
        say(f"[{stage}] {done} records reused (same configuration, same code)"
            + "".join(f"; {n} stale: {why}" for why, n in stale.most_common()))


def _submit_stage(run: Session, stage: str, jobs: list[Job]) -> tuple | None:
    """Submit a stage's jobs that need running (one group per model where the stage shares a
    process, packed into lanes on the local cluster); on Slurm, the jobs that an earlier driver
    submitted and Slurm still runs are adopted (waited for), not submitted again.
    (stage, groups, handles), None when there is nothing to run or wait for."""
    from experiments.cluster import slurm_params

    todo = _todo(run, stage, jobs)
    if not todo:
        return None
    slurm = run.preset.run.slurm
    params = slurm_params({**slurm.get("default", {}), **slurm.get(stage, {})}, run.slurm_overrides)
    adopted_groups, adopted = _adopt(run, stage, todo, params) if run.cluster == "slurm" else ([], [])
    taken = {j.key for g in adopted_groups for j in g}
    todo = [j for j in todo if j.key not in taken]
    job_groups, handles = _submit(run, stage, todo, params) if todo else ([], [])
    return stage, adopted_groups + job_groups, adopted + handles


def _submit(run: Session, stage: str, todo: list[Job], params) -> tuple[list[list[Job]], list]:
    """Submit ``todo`` as one job array; its groups and handles. A local job's payload names
    this driver (cluster.process_identity), so that the job stops when the driver is gone."""
    from experiments import store
    from experiments.cluster import make_executor, process_identity, resumable, submit_array

    groups: dict[str, list] = {}
    for j in todo:
        groups.setdefault(j.label if stage in GROUP_BY_MODEL else j.key, []).append(j)
    job_groups = list(groups.values())
    if run.cluster == "local" and len(job_groups) > params.array_parallelism:
        job_groups = lanes(job_groups, params.array_parallelism)
    driver = dict(driver=process_identity()) if run.cluster == "local" else {}
    payloads = [[dict(j.payload(run.preset.name, run.results, run.work, run.preset.run.threads), **driver)
                 for j in g] for g in job_groups]
    executor = make_executor(run.cluster, run.work / "logs" / stage, params)
    if hasattr(executor, "update_parameters") and run.cluster == "slurm":
        executor.update_parameters(job_name=f"esolm-{run.preset.name}-{stage}")
    fn = resumable(run_group) if stage == "train" else run_group
    with store.children_ignore_sigint(run.cluster == "local"):
        handles = submit_array(executor, fn, payloads)
    run.submitted.extend(handles)
    store.note_submitted(run.results, run.cluster, job_groups, handles)  # one group per handle, lanes included
    run.total += len(handles)
    return job_groups, handles


def _adopt(run: Session, stage: str, todo: list[Job], params) -> tuple[list[list[Job]], list]:
    """The Slurm jobs that an earlier driver submitted for jobs of ``todo`` (their submission
    notes) and that are still pending or running: their groups and handles, to wait for."""
    from experiments import store
    from experiments.cluster import adopt_slurm_job

    by_id: dict[str, list[Job]] = {}
    for j in todo:
        try:
            note = json.loads(store.submitted_path(run.results, j.key).read_text())
        except (OSError, ValueError):
            continue  # no note (never submitted) or an unreadable one: submit it again
        if isinstance(note, dict) and note.get("cluster") == "slurm" and note.get("job_id"):
            by_id.setdefault(str(note["job_id"]), []).append(j)
    groups, handles = [], []
    for job_id, group in by_id.items():
        handle = adopt_slurm_job(run.work / "logs" / stage, job_id, params.num_tasks)
        if handle is not None:
            groups.append(group)
            handles.append(handle)
    if handles:
        say(f"[{stage}] {len(handles)} Slurm job(s) of an earlier driver still run {sum(map(len, groups))} of these "
            f"jobs ({' '.join(str(h.job_id) for h in handles)}): waiting for them instead of submitting again")
    run.submitted.extend(handles)
    run.adopted += len(handles)
    return groups, handles


def _follow(batches, results: Path, failed_keys: set, poll_s: float, job_status) -> None:
    """Poll until every submitted job ends; print per-stage progress when it changes and each
    failure once (job id, error, log path)."""
    last, reported = {}, set()
    while batches:
        running_any = False
        for stage, groups, handles in batches:
            st = job_status(handles)
            line = f"[{stage}] {st.done} done, {st.running} running, {st.failed} failed of {len(handles)} submitted"
            if last.get(stage) != line:
                say(line)
                last[stage] = line
            for f in st.failures:
                if f.job_id not in reported:
                    reported.add(f.job_id)
                    say(f"[{stage}] FAILED job {f.job_id}: {f.reason}\n    log: {f.stderr}")
            running_any |= st.running > 0
        if not running_any:
            break
        time.sleep(poll_s)
    for stage, groups, _ in batches:
        for g in groups:
            for j in g:
                if not is_done(results, j):
                    failed_keys.add(j.key)


# ----------------------------------------------------------------------------- commands
def add_pipeline_commands(sub) -> None:
    for name, helptext in (("pareto", "train, sample, score and time a preset's models; aggregate; draw the frontiers"),
                           ("tables", "the paper's tables from a preset's runs (runs what is missing)")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--preset", default="tiny", help=f"one of: {', '.join(P.PRESETS)} (default: tiny)")
        p.add_argument("--cluster", default="local", choices=["slurm", "local", "debug"])
        p.add_argument("--results", default="results", help="results root (default: results/)")
        p.add_argument("--work", default="runs", help="checkpoints, samples and job logs (default: runs/)")
        p.add_argument("--no-run", action="store_true", help="only aggregate and draw from the records there (it "
                                                            "takes the driver lock too: refused while a driver runs)")
        p.add_argument("--stages", default=None, help="run only these stages, comma-separated (e.g. train)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="Slurm parameters (partition=..., ...)")
        p.set_defaults(handler=cmd_pareto if name == "pareto" else cmd_tables)


def _slurm_keys(pairs: dict, command: str) -> dict:
    """The Slurm parameters of ``pareto`` / ``tables`` key=value (SlurmParams fields, through the one
    parser; ``additional.<flag>=value`` adds an sbatch flag)."""
    from esolm.config import parse_keys
    from experiments.cluster import SlurmParams

    extra = {k: v for k, v in pairs.items() if k.startswith("additional.")}
    try:
        routed = parse_keys({k: v for k, v in pairs.items() if k not in extra}, {"slurm": SlurmParams})
    except ConfigError as e:
        raise ConfigError(f"{command} takes Slurm parameters only: {e}") from None
    return {**routed["slurm"], **extra}


def _stages(text: str | None) -> set[str] | None:
    stages = set(text.split(",")) if text else None
    known = [s for w in WAVES for s in w]
    unknown = sorted(stages - set(known)) if stages else []
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages: {', '.join(known)}")
    return stages


def _run(args, draw) -> int:
    """`pareto` / `tables`: run what is missing (with --no-run, only aggregate the records there),
    then ``draw(results)`` and the claims, all under the driver lock of the results folder (a
    second driver, --no-run included, is refused). Names each corrupt record (one warning line)
    and the jobs the tables lack; exit status 1 when a job failed, naming each with its log."""
    from experiments import store

    preset = P.get(args.preset)
    overrides = _slurm_keys(args.overrides if isinstance(args.overrides, dict) else parse_overrides(args.overrides),
                            args.command)
    results, work = Path(args.results) / preset.name, Path(args.work) / preset.name
    if args.no_run:
        store.require_store(results, preset.name)
    else:
        if hasattr(preset, "preflight"):
            preset.preflight()  # fail at once naming what this machine lacks (released presets), creating nothing
        store.check_writable(results, work)
    with store.DriverLock(results):
        store.warn_corrupt(results, store.run_command("clean", preset.name, results, None, "--corrupt"))
        failed = _run_or_aggregate(args, preset, results, overrides)
        if _summary(results).get("rows"):
            for path in draw(results):
                say(f"wrote {path}")
            from analysis.claims import report

            report(results, log=say)
        else:
            say(f"no record in {results} yet: no tables, figures or claims drawn")
    _say_missing(results)
    return _report_failures(args, preset.name, results, work, failed)


def _run_or_aggregate(args, preset: P.Preset, results: Path, overrides: dict) -> list[str]:
    """The names of the jobs that failed (or were skipped: a dependency failed)."""
    if args.no_run:
        from experiments.aggregate import aggregate

        aggregate(preset, build_graph(preset, Path(args.work) / preset.name), results, J.code_version())
        return []
    out = run_preset(preset.name, cluster=args.cluster, results_root=Path(args.results), work_root=Path(args.work),
                     slurm_overrides=overrides, stages=_stages(args.stages))
    return out["failed_jobs"]


def _summary(results: Path) -> dict:
    """summary.json as aggregate wrote it ({} before it has)."""
    path = results / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _say_missing(results: Path) -> None:
    """Which jobs the tables, figures and claims lack (summary.json ``missing``)."""
    summary_path = results / "summary.json"
    missing = _summary(results).get("missing", [])
    if missing:
        say(f"incomplete store: {len(missing)} job(s) have no record, so the tables, figures and claims lack their "
            f"rows: {', '.join(missing[:8])}" + (f" (+{len(missing) - 8} more, in {summary_path})" if len(missing) > 8
                                                 else ""))


def _report_failures(args, preset: str, results: Path, work: Path, failed: list[str]) -> int:
    """0, or 1 with one ``error:`` line, a line per failed job (its reason and log) and the
    commands that retry them."""
    from experiments import store

    if not failed:
        return 0
    pairs = args.overrides if isinstance(args.overrides, dict) else {}
    extra = ["--cluster", args.cluster, *(["--stages", args.stages] if args.stages else []),
             *(f"{k}={v}" for k, v in pairs.items())]
    rerun = store.run_command(args.command, preset, results, work, *extra)
    say(f"error: {len(failed)} job(s) failed or were skipped (their rows are missing); rerun `{rerun}` to retry "
        f"them (finished jobs are kept)")
    graph = {j.name: j for j in build_graph(P.get(preset), work)}
    for job in (graph[n] for n in failed):
        detail = store.failure_detail(results, job)
        if detail:
            say(f"  failed  {job.name}: {detail}")
        else:
            deps = [d.name for d in job.deps if not is_done(results, d)]
            say(f"  skipped {job.name}: it needs {', '.join(deps) or 'a job that failed'}")
    say(f"  if a job fails the same way again, remove its partial work first: "
        f"`{store.run_command('clean', preset, results, work, '--job', failed[0])}` (one --job per name), then rerun")
    return 1


def cmd_tables(args) -> int:
    from analysis.tables import write_tables

    return _run(args, write_tables)


def cmd_pareto(args) -> int:
    return _run(args, _draw_all)


def _draw_all(results: Path) -> list[Path]:
    """pareto's outputs: the tables, the Pareto and NFE figures, the learning curves."""
    from analysis.learning_curves import draw_learning_curves
    from analysis.nfe import draw_nfe
    from analysis.pareto import draw_pareto
    from analysis.tables import write_tables

    return [*write_tables(results), *draw_pareto(results), *draw_nfe(results), *draw_learning_curves(results)]
