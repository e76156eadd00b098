"""How the driver schedules a preset's jobs: waves of stages (so that timings never share the
CPU with other jobs of the graph), rounds within a stage (a finetune after its source's
training), the groups that share one submitted process, and the lanes that pack those groups
onto the local cluster, which has no scheduler to honour ``array_parallelism``.
"""
from __future__ import annotations

from esolm import registry
from experiments.graph import Job

# a finetune after the training (or import) it starts from; the conditional task and Table 16's
# summaries time their sampling calls: waves of their own, like time and longctx
WAVES = [["train"], ["finetune"], ["eval", "zeroshot", "sample"], ["time"], ["longctx"], ["summarize"],
         ["conditional"]]
# jobs of one model share a process in these stages (one model load, sequential timings)
GROUP_BY_MODEL = {"sample", "time", "eval", "zeroshot", "conditional", "summarize"}


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


def submitted_groups(stage: str, jobs: list[Job], n_lanes: int | None = None) -> list[list[Job]]:
    """The groups of a stage's ``jobs`` that one submitted job each runs in order: one per model
    where the stage shares a process (GROUP_BY_MODEL), else one per job; packed into ``n_lanes``
    lanes (``lanes``) when that is given and there are more groups (the local cluster)."""
    groups: dict[str, list] = {}
    for j in jobs:
        groups.setdefault(j.label if stage in GROUP_BY_MODEL else j.key, []).append(j)
    job_groups = list(groups.values())
    if n_lanes is not None and len(job_groups) > n_lanes:
        job_groups = lanes(job_groups, n_lanes)
    return job_groups


def job_cost(job: Job) -> float:
    """A job's size for lane packing: a training (or finetune) job's steps x its model's
    train_step_cost (positions per token: 1 for AR and MDLM, 2 for BD3-LM, 1.5 for Eso-LM at
    kappa = 0.5); any other job 1."""
    train = job.identity.get("train")
    if job.stage not in ("train", "finetune") or not isinstance(train, dict):
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
