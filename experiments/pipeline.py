"""`run.py pareto` and `run.py tables`: the driver that runs a preset's job graph through
submitit on Slurm, locally or in-process, cached and resumable.

The graph, its keys and records are experiments/graph.py; the order and packing of the jobs
(waves, rounds, lanes) experiments/lanes.py. A rerun submits only jobs without a record, and a
training job resumes from its checkpoint under the work folder. Stages run in waves (train ->
eval + sample -> time -> longctx -> conditional) so timings never share the CPU with other jobs of this graph.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from analysis import records as R
from esolm.log import printer
from esolm.config import ConfigError, parse_overrides
from experiments import jobs as J
from experiments import presets as P
from experiments import store
from experiments.graph import Job, build_graph, check_job, is_done, reuse_records, stale_reasons
from experiments.lanes import WAVES, stage_rounds, submitted_groups


say = printer()  # progress and outputs' paths on stderr (esolm/log.py)


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
    from experiments.cluster import make_executor, process_identity, resumable, submit_array

    job_groups = submitted_groups(stage, todo, params.array_parallelism if run.cluster == "local" else None)
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
