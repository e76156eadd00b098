"""`run.py pareto` and `run.py tables`: the preset's job graph, run through submitit on
Slurm, locally or in-process, cached and resumable.

Every job's record lives at results/<preset>/records/<stage>/<key>.json, where the key hashes
the job's configuration and the library's code version; a rerun submits only jobs without a
record, and a training job resumes from its checkpoint under the work folder. Stages run in
waves (train -> eval + sample -> time -> longctx) so timings never share the CPU with other
jobs of this graph.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from esolm import registry
from esolm.config import ConfigError, parse_overrides
from experiments import jobs as J
from experiments import presets as P

WAVES = [["train"], ["eval", "zeroshot", "sample"], ["time"], ["longctx"]]
# jobs of one model share a process in these stages (one model load, sequential timings)
GROUP_BY_MODEL = {"sample", "time", "eval", "zeroshot"}


def say(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


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

    def payload(self, preset: str, results: Path, work: Path, threads: int, code: str) -> dict:
        return dict(stage=self.stage, name=self.name, key=self.key, preset=preset, label=self.label, group=self.group,
                    model=self.model, config=self.config, threads=threads, code_version=code,
                    record=str(record_path(results, self)), work=str(work / self.stage / self.key))


def record_path(results: Path, job: Job) -> Path:
    return results / "records" / job.stage / f"{job.key}.json"


def _key(stage: str, identity: dict, code: str) -> str:
    blob = json.dumps({"stage": stage, "identity": identity, "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------ the graph
def build_graph(preset: P.Preset, work: Path, code: str) -> list[Job]:
    """All jobs of a preset, dependencies first."""
    data = preset.data
    corpus = {"name": preset.corpus, "length": data["length"]}
    if data.get("vocab_size"):
        corpus["vocab_size"] = data["vocab_size"]
    corpus = getattr(preset, "corpus_spec", None) or corpus  # released presets: the exact test data
    graph: list[Job] = []

    def add(job: Job) -> Job:
        job.key = _key(job.stage, job.identity, code)
        graph.append(job)
        return job

    def checkpoint(train: Job) -> str:
        return str(work / "train" / train.key / "checkpoint.pt")

    def train_job(label, group, model, overrides, extra_train, source=None, ema=None) -> Job:
        identity = dict(model=model, model_overrides={**preset.backbone_overrides, **overrides},
                        backbone=preset.backbone, corpus=corpus, train_preset=preset.train_preset,
                        train={**preset.train, **extra_train})
        if source:  # a released checkpoint: the job imports it instead of training (jobs.job_train)
            identity = dict(model=model, model_overrides=dict(overrides), corpus=corpus, source=source, ema=ema)
        return add(Job("train", f"train/{label}", identity, identity, label, group, model))

    evaluator = preset.evaluator
    ev_train = None
    if isinstance(evaluator, dict):
        ev_train = train_job("evaluator", "evaluator", "ar", evaluator.get("overrides", {}), evaluator.get("train", {}))
    trains = {m.label: train_job(m.label, m.group, m.model, m.overrides, m.train, getattr(m, "source", None),
                                 getattr(m, "ema", None)) for m in preset.models}

    for m in preset.models + ([P.ModelEntry("evaluator", "ar", "evaluator", evaluator["overrides"])]
                              if ev_train else []):
        tr = trains.get(m.label, ev_train)
        caps = registry.model_class(m.model).capabilities
        own = getattr(m, "eval", {})  # this model's own eval settings, where the preset gives some
        e = {**preset.eval, **own}
        runs = [(False, 1)]
        if caps.exact_likelihood:  # one pass per order: every K; K·L passes: K = 1 unless the model's entry says
            multi = caps.single_pass_likelihood or "exact_orders" in own
            runs += [(True, k) for k in (e["exact_orders"] if multi else [1])]
        for exact, k in runs:
            identity = dict(train=tr.key, exact=exact, num_orders=k, batch_size=e["batch_size"],
                            max_batches=_max_batches(e, exact, caps, "exact_max_sequences" in own), seed=1)
            name = f"eval/{m.label}/" + (f"exact K={k}" if exact else "nelbo")
            add(Job("eval", name, identity, dict(identity, checkpoint=checkpoint(tr), model_overrides=m.overrides),
                    m.label, m.group, m.model, [tr]))

    for m in preset.models:  # Table 5: test NELBO on other corpora (released presets)
        for column, spec in getattr(preset, "zero_shot", {}).items():
            tr = trains[m.label]
            identity = dict(train=tr.key, corpus=spec, batch_size=preset.eval["batch_size"],
                            max_batches=preset.eval.get("max_batches"), seed=1)
            add(Job("zeroshot", f"zeroshot/{m.label}/{column}", identity,
                    dict(identity, column=column, checkpoint=checkpoint(tr), model_overrides=m.overrides),
                    m.label, m.group, m.model, [tr]))

    ev_spec = (lambda: checkpoint(ev_train)) if ev_train else (lambda: evaluator)
    for m in preset.models:
        tr = trains[m.label]
        for opts in m.sweep:
            tag = ",".join(f"{k}={v}" for k, v in opts.items())
            identity = dict(train=tr.key, options=opts, top_p=preset.top_p, num_samples=preset.num_samples,
                            batch_size=preset.sample_batch, seed=0, mauve=preset.mauve,
                            evaluator=ev_train.key if ev_train else evaluator)
            add(Job("sample", f"sample/{m.label}/{tag}", identity,
                    dict(identity, checkpoint=checkpoint(tr), evaluator=ev_spec(), model_overrides=m.overrides),
                    m.label, m.group, m.model, [tr] + ([ev_train] if ev_train else [])))
            t = preset.timing
            identity = dict(train=tr.key, options=opts, top_p=preset.top_p, batch_size=t["batch_size"],
                            trials=t["trials"], warmup=t["warmup"], wall=bool(t.get("wall", True)), seed=0)
            add(Job("time", f"time/{m.label}/{tag}", identity,
                    dict(identity, checkpoint=checkpoint(tr), model_overrides=m.overrides),
                    m.label, m.group, m.model, [tr]))

    lc = preset.long_context
    ids = _ids_for(preset) if lc["lengths"] else {}
    for length in lc["lengths"]:  # one job per length: the methods are timed side by side, interleaved
        entries = []
        for m in preset.models + preset.timing_only:
            if m.nfe_equals_l is None:
                continue
            caps = registry.model_class(m.model).capabilities
            for cached in ([True] if lc.get("cached_only") else [True, False]) if caps.kv_cache else [False]:
                entries.append(dict(name=f"longctx/{m.group}/L={length}/{'cache' if cached else 'no-cache'}",
                                    label=m.label, group=m.group, model=m.model,
                                    model_overrides={**preset.backbone_overrides, **m.overrides},
                                    options=m.nfe_equals_l, kv_cache=cached))
        if entries:
            identity = dict(entries=entries, backbone=preset.backbone, fields=dict(length=length, **ids),
                            batch_size=1, trials=lc["trials"], warmup=lc["warmup"],
                            profile=bool(lc.get("profile", True)), seed=0, top_p=1.0)
            add(Job("longctx", f"longctx/L={length}", identity, dict(identity)))
    return graph


def reuse_records(jobs: list[Job], results: Path, work: Path) -> list[str]:
    """Copy into this preset the records of identical jobs that another preset under the same
    results root already ran (same key: same configuration and code version), with the
    checkpoint of a training job into this preset's work folder, so nothing is computed twice
    (the `cpu` preset contains every job of `tiny`). Returns the source preset of each copy;
    a record is never overwritten, and a training record whose checkpoint is gone is skipped."""
    import shutil

    from esolm.checkpoint import atomic_write_json

    sources = []
    others = sorted(p for p in results.parent.iterdir() if p.is_dir() and p != results) if results.parent.is_dir() else []
    for job in jobs:
        target = record_path(results, job)
        if target.exists():
            continue
        for other in others:
            found = record_path(other, job)
            if not found.exists():
                continue
            rec = json.loads(found.read_text())
            if job.stage == "train":
                src = Path(rec.get("checkpoint", "")).parent
                dst = work / "train" / job.key
                if not (src / "checkpoint.pt").exists():
                    continue
                if not (dst / "checkpoint.pt").exists():
                    shutil.copytree(src, dst, dirs_exist_ok=True)
                rec["checkpoint"] = str(dst / "checkpoint.pt")
            rec["reused_from"] = other.name
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(target, rec)
            sources.append(other.name)
            break
    return sources


def job_cost(job: Job) -> float:
    """A job's size for lane packing: a training job's steps x its model's train_step_cost
    (positions per token: 1 for AR and MDLM, 2 for BD3-LM, 1.5 for Eso-LM at kappa = 0.5);
    any other job 1."""
    train = job.identity.get("train")
    if job.stage != "train" or not isinstance(train, dict):
        return 1.0
    cls = registry.model_class(job.model)
    config = registry.build_config(job.model, job.identity.get("backbone"), **job.identity.get("model_overrides", {}))
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


def _ids_for(preset: P.Preset) -> dict:
    """The token ids of the preset's corpus (vocabulary with the mask, mask, BOS, EOS), so that
    a latency model is built as the trained ones are."""
    from experiments.runspec import RunSpec

    spec = RunSpec("ar", preset.train_preset, preset.corpus, data_overrides=dict(preset.data))
    fields = spec.load_corpus().model_fields()
    return {k: fields[k] for k in ("vocab_size", "mask_id", "bos_id", "eos_id")}


# ----------------------------------------------------------------------------- the driver
def run_group(payloads: list[dict]) -> list[str]:
    """One submitted job: run the payloads in order (one process, shared imports); a failure
    of one does not stop the others, and the job fails at the end naming them."""
    failed = []
    for p in payloads:
        if Path(p["record"]).exists():
            continue
        try:
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


def _run_preset(preset_name: str, *, cluster: str, results_root: Path, work_root: Path,
                slurm_overrides: dict | None, poll_s: float, stages: set[str] | None, submitted: list) -> dict:
    from experiments import store
    from experiments.cluster import job_status, make_executor, resumable, slurm_params, submit_array

    preset = P.get(preset_name)
    results, work = results_root / preset.name, work_root / preset.name
    code = J.code_version()
    graph = build_graph(preset, work, code)
    say(f"preset {preset.name}: {len(graph)} jobs; results -> {results}; checkpoints and logs -> {work}; "
        f"cluster {cluster}; code version {code}")
    failed_keys: set[str] = set()
    submitted_total = 0
    for wave in WAVES:
        batches = []  # (stage, [payload lists])
        for stage in wave:
            if stages is not None and stage not in stages:
                continue
            jobs = [j for j in graph if j.stage == stage]
            reused = reuse_records(jobs, results, work)
            if reused:
                say(f"[{stage}] {len(reused)} jobs reused from identical jobs of other presets: "
                    + ", ".join(f"{n} from {p}" for p, n in sorted(Counter(reused).items())))
            done = [j for j in jobs if record_path(results, j).exists()]
            blocked = [j for j in jobs if j not in done and any(d.key in failed_keys or
                                                               not record_path(results, d).exists() for d in j.deps)]
            todo = [j for j in jobs if j not in done and j not in blocked]
            say(f"[{stage}] {len(jobs)} jobs: {len(done)} already done, {len(todo)} to run"
                + (f", {len(blocked)} skipped (a dependency failed)" if blocked else ""))
            for j in blocked:
                failed_keys.add(j.key)
            if not todo:
                continue
            params = slurm_params({**preset.slurm.get("default", {}), **preset.slurm.get(stage, {})},
                                  slurm_overrides or {})
            groups: dict[str, list] = {}
            for j in todo:
                gkey = j.label if stage in GROUP_BY_MODEL else j.key
                groups.setdefault(gkey, []).append(j)
            job_groups = list(groups.values())
            if cluster == "local" and len(job_groups) > params.array_parallelism:
                job_groups = lanes(job_groups, params.array_parallelism)
            payloads = [[j.payload(preset.name, results, work, preset.threads, code) for j in g] for g in job_groups]
            executor = make_executor(cluster, work / "logs" / stage, params)
            if hasattr(executor, "update_parameters") and cluster == "slurm":
                executor.update_parameters(job_name=f"esolm-{preset.name}-{stage}")
            fn = resumable(run_group) if stage == "train" else run_group
            with store.children_ignore_sigint(cluster == "local"):
                handles = submit_array(executor, fn, payloads)
            submitted.extend(handles)
            store.note_submitted(results, cluster, job_groups, handles)  # one group per handle, lanes included
            submitted_total += len(handles)
            batches.append((stage, job_groups, handles))
        _follow(batches, results, failed_keys, poll_s, job_status)
    from experiments.aggregate import aggregate

    table = aggregate(preset, graph, results, code)
    say(f"submitted {submitted_total} jobs; {len(failed_keys)} jobs failed or were skipped")
    return dict(preset=preset.name, submitted=submitted_total, failed=len(failed_keys), results=str(results),
                rows=len(table))


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
                if not record_path(results, j).exists():
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
        p.add_argument("--no-run", action="store_true", help="only aggregate and draw from the records there")
        p.add_argument("--stages", default=None, help="run only these stages, comma-separated (e.g. train)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="Slurm parameters (partition=..., ...)")
        p.set_defaults(handler=cmd_pareto if name == "pareto" else cmd_tables)


def _run(args) -> tuple[P.Preset, Path]:
    from experiments.cluster import SlurmParams
    from esolm.config import field_names

    preset = P.get(args.preset)
    overrides = args.overrides if isinstance(args.overrides, dict) else parse_overrides(args.overrides)
    valid = set(field_names(SlurmParams))
    bad = [k for k in overrides if k not in valid and not k.startswith("additional.")]
    if bad:
        raise ConfigError(f"unknown key(s) {bad} for {args.command}; these take Slurm parameters: {', '.join(sorted(valid))}")
    results = Path(args.results) / preset.name
    if not args.no_run and hasattr(preset, "preflight"):
        preset.preflight()  # fail at once naming what this machine lacks (released presets)
    if not args.no_run:
        stages = set(args.stages.split(",")) if args.stages else None
        unknown = sorted(stages - {s for w in WAVES for s in w}) if stages else []
        if unknown:
            raise ConfigError(f"unknown stage(s) {unknown}; stages: {', '.join(s for w in WAVES for s in w)}")
        run_preset(preset.name, cluster=args.cluster, results_root=Path(args.results), work_root=Path(args.work),
                   slurm_overrides=overrides, stages=stages)
    else:
        from experiments.aggregate import aggregate

        aggregate(preset, build_graph(preset, Path(args.work) / preset.name, J.code_version()), results,
                  J.code_version())
    return preset, results


def cmd_tables(args) -> int:
    preset, results = _run(args)
    from analysis.tables import write_tables

    for path in write_tables(results):
        say(f"wrote {path}")
    from analysis.claims import report

    report(results, log=say)
    return 0


def cmd_pareto(args) -> int:
    preset, results = _run(args)
    from analysis.learning_curves import draw_learning_curves
    from analysis.nfe import draw_nfe
    from analysis.pareto import draw_pareto
    from analysis.tables import write_tables

    for path in [*write_tables(results), *draw_pareto(results), *draw_nfe(results), *draw_learning_curves(results)]:
        say(f"wrote {path}")
    from analysis.claims import report

    report(results, log=say)
    return 0
