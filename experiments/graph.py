"""The job graph of a preset: every job `run.py pareto` and `run.py tables` run, each keyed by
its configuration and the code it runs, dependencies first; and what the store says of a job
(its record path, whether it is done, why an older record of it is stale, which identical
job another preset already ran).

Every job's record lives at results/<preset>/records/<stage>/<key>.json, where the key hashes
the job's identity and the code version of what it runs (experiments/versions.py). The graph
imports nothing of the driver (experiments/pipeline.py) or the store (experiments/store.py):
both read it.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from analysis import records as R
from esolm import registry
from esolm.config import ConfigError
from esolm.io import content_hash
from experiments import presets as P
from experiments import versions as V

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
    P.resolve_methods(preset)  # entries added after get() (tests) get their method too
    if getattr(preset, "summarize", None) is not None:  # Table 16 (experiments/presets_xsum.py)
        return _summarize_graph(preset, work)
    return _training_graph(preset, work)


def _training_graph(preset: P.Preset, work: Path) -> list[Job]:
    """The jobs of a training or released preset: train (or import), eval, zero-shot, sample, time,
    long context and the conditional task."""
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
    for m in preset.models:  # the last wave (experiments/lanes.py)
        _conditional_jobs(g, m, trains[m.label], judges)
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
    return P.ModelEntry(label, model, dict(ev.get("overrides", {})), [], group="evaluator",
                        train=dict(ev.get("train", {})))


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


def capabilities(g: Graph, m: P.ModelEntry, length: int | None = None):
    """What ``m``'s model can do with the run's backbone, its overrides and ``length`` (default:
    the run's): capabilities_for(config), since some depend on the config (the NFE = L options)."""
    fields = {**g.run.backbone_fields(), **m.overrides, "length": length or g.run.data.length}
    cls = registry.model_class(m.model)
    return cls.capabilities_for(registry.build_config(m.model, **{k: v for k, v in fields.items()
                                                                  if k in _config_fields(cls)}))


def _config_fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls.config_class)}


def _eval_jobs(g: Graph, m: P.ModelEntry, tr: Job) -> None:
    """Test NELBO, and the exact likelihood at each K where the model has one (one pass per
    order: every K of the run; K·L passes: K = 1 unless the model's entry says)."""
    caps = capabilities(g, m)
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


CONDITIONAL_KEYS = dict(forms=["prefix", "infill"], num_examples=32, batch_size=16, warmup=1, rounds=1)


def conditional_settings(preset: P.Preset) -> dict:
    """Preset.conditional over the defaults of CONDITIONAL_KEYS; one ConfigError naming an unknown
    key or form."""
    from esolm.conditioning import FORMS

    task = dict(preset.conditional or {})
    unknown = sorted(set(task) - set(CONDITIONAL_KEYS))
    if unknown:
        raise ConfigError(f"preset {preset.name}: unknown conditional setting(s) {unknown}; settings: "
                          f"{', '.join(CONDITIONAL_KEYS)}")
    task = {**CONDITIONAL_KEYS, **task}
    bad = [f for f in task["forms"] if f not in FORMS]
    if bad:
        raise ConfigError(f"preset {preset.name}: unknown conditional form(s) {bad}; forms: {', '.join(FORMS)}")
    return task


def _conditional_jobs(g: Graph, m: P.ModelEntry, tr: Job, judges: Judges) -> None:
    """The conditional task (Preset.conditional, esolm/metrics/conditional.py): a job per form of
    the task for an entry that joins it (ModelEntry.conditional), scored by the preset's judges;
    its sample options are the entry's, else its model's NFE = L options, else its first sweep
    point. A form the model does not sample under (capabilities_for(config).conditioning) gets a
    job that runs no model and records why, so that the table says so rather than lacking the row."""
    from esolm.metrics.conditional import skip_note

    if not g.preset.conditional or m.conditional is None:
        return
    task = conditional_settings(g.preset)
    config = registry.build_config(m.model, **{**g.run.backbone_fields(), **m.overrides},
                                   length=g.run.data.length, **_ids_for(g.preset))
    caps = registry.model_class(m.model).capabilities_for(config)
    opts = dict(m.conditional) or dict(caps.nfe_equals_l or (m.sweep[0] if m.sweep else {}))
    for form in task["forms"]:
        name, note = f"conditional/{m.label}/{form}", skip_note(m.group, caps.conditioning, form)
        if note is not None:
            identity = dict(label=m.label, model=m.model, form=form, skipped=note)
            g.add(Job("conditional", name, identity, dict(identity, model_overrides=m.overrides), m.label, m.group,
                      m.model))
            continue
        identity = dict(train=tr.key, form=form, options=opts, top_p=g.run.sampling.top_p, seed=0,
                        **{k: task[k] for k in ("num_examples", "batch_size", "warmup", "rounds")}, **judges.identity)
        g.add(Job("conditional", name, identity,
                  dict(identity, checkpoint=g.checkpoint(tr), model_overrides=m.overrides, **judges.config),
                  m.label, m.group, m.model, [tr] + judges.deps, uses=judges.models))


def _summarize_graph(preset: P.Preset, work: Path) -> list[Job]:
    """Table 16 (experiments/presets_xsum.py): each released entry's import (stage "train"), each
    finetune entry's "finetune" job from the entry it initialises from, and a "summarize" job per
    sweep point of a finetune entry; no other stage (the finetuned models' data is not a corpus of
    esolm.data, and the table needs none)."""
    from experiments.presets_xsum import summarize_settings

    settings = summarize_settings(preset)
    g = Graph(preset, work)
    for m in preset.models:
        if getattr(m, "finetune_on", None) is None:
            g.train(m)
    for m in preset.models:
        if getattr(m, "finetune_on", None) is not None:
            ft = _finetune_job(g, m)
            for opts in m.sweep:
                _summarize_job(g, m, ft, opts, settings)
    return g.jobs


def _finetune_job(g: Graph, m: P.ModelEntry) -> Job:
    """``m`` trained on its ``finetune_on`` data from the checkpoint of the entry it initialises from
    (``init_from``: that entry's job key in the identity, its checkpoint in the config); the run's
    training settings with the entry's own over them."""
    if m.init_from not in g.trains:
        raise ConfigError(f"preset {g.preset.name}: finetune entry {m.label!r} initialises from {m.init_from!r}, which "
                          f"is not an entry imported or trained before it (entries: {', '.join(g.trains) or 'none'})")
    src = g.trains[m.init_from]
    train = {**dataclasses.asdict(g.run.train), **m.train}
    identity = dict(model=m.model, model_overrides=dict(m.overrides), data=dict(m.finetune_on), train=train,
                    init_from=dict(label=m.init_from, train=src.key))
    job = g.add(Job("finetune", f"finetune/{m.label}", identity, dict(identity, init_checkpoint=g.checkpoint(src)),
                    m.label, m.group, m.model, [src]))
    job.outputs = (str(g.work / "finetune" / job.key / "checkpoint.safetensors"),)  # what summarize loads
    return job


def _summarize_job(g: Graph, m: P.ModelEntry, ft: Job, opts: dict, settings: dict) -> None:
    """One Table 16 configuration: the finetuned model summarises the test documents with ``opts``."""
    tag = ",".join(f"{k}={v}" for k, v in opts.items())
    identity = dict(finetune=ft.key, options=opts, top_p=g.run.sampling.top_p, data=dict(m.finetune_on), seed=0,
                    **settings)
    g.add(Job("summarize", f"summarize/{m.label}/{tag}", identity, dict(identity, checkpoint=ft.outputs[0]),
              m.label, m.group, m.model, [ft]))


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
        caps = capabilities(g, m, length)
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


# ------------------------------------------------------------------- reuse and staleness
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
