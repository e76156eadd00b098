"""Training (spec 9): AdamW, linear warmup, clipping, EMA, bf16 autocast on CUDA,
atomic resumable checkpoints, data-parallel over several processes.

    python experiments/run.py train --model mdlm --preset tiny            # one process
    torchrun --nproc_per_node 2 experiments/run.py train --model ar ...   # DDP (gloo on CPU)
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.lr_scheduler import LambdaLR

from esolm.checkpoint import NAME as CHECKPOINT
from esolm.checkpoint import checkpoint_in, read_checkpoint, save_checkpoint, source_summary
from esolm.io import atomic_write_json, content_hash, hasher, json_default
from esolm.config import ConfigError, make_config
from esolm.distributed import setup_distributed

@dataclass
class TrainConfig:
    """Optimization and bookkeeping (spec 9). batch_size is the global batch in sequences."""

    steps: int = 1000  # optimizer steps
    batch_size: int = 16  # global batch in sequences (over every process)
    micro_batch: int = 0  # at most this many sequences per forward pass and process (gradient accumulation); 0 = no cap
    lr: float = 1e-3  # peak learning rate (AdamW)
    warmup: int = 100  # linear warmup from 0, then the decay rule
    decay: str = "constant"  # after warmup: "constant", or "cosine" down to min_lr_ratio * lr at the last step
    min_lr_ratio: float = 0.1  # the cosine schedule's final lr as a fraction of lr
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.999  # AdamW beta2
    adam_eps: float = 1e-8  # AdamW epsilon
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    grad_clip: float = 1.0  # clip the global gradient norm to this
    ema: float = 0.99  # target EMA decay; effective min(ema, (1+n)/(10+n)); 0 disables
    seed: int = 1  # seed of the initial weights, the batches and the diffusion noise
    eval_every: int = 250  # steps between validation passes; 0 = never
    eval_batches: int = 8  # validation batches per validation pass
    log_every: int = 25  # steps between lines of train_log.jsonl
    checkpoint_every: int = 250  # steps between checkpoints (the last step always writes one)
    precision: str = "auto"  # auto: bf16 autocast on CUDA, float32 on CPU; or "fp32" / "bf16"
    device: str = "auto"  # auto: CUDA when there is one, else CPU; or a torch device

    # every float field: its range, as the error states it, and the test (NaN fails each)
    FLOAT_RANGES = {
        "lr": ("> 0", lambda v: v > 0),
        "min_lr_ratio": ("in [0, 1]", lambda v: 0 <= v <= 1),
        "beta1": ("in [0, 1)", lambda v: 0 <= v < 1),
        "beta2": ("in [0, 1)", lambda v: 0 <= v < 1),
        "adam_eps": ("> 0", lambda v: v > 0),
        "weight_decay": (">= 0", lambda v: v >= 0),
        "grad_clip": ("> 0", lambda v: v > 0),
        "ema": ("in [0, 1) (0 disables it)", lambda v: 0 <= v < 1),
    }

    def __post_init__(self):
        for k in ("steps", "batch_size"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be >= 1; got {getattr(self, k)}")
        for k, (text, ok) in self.FLOAT_RANGES.items():
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
                raise ConfigError(f"{k} must be a finite number {text}; got {v}")
        if self.decay not in ("constant", "cosine"):
            raise ConfigError(f"decay must be constant or cosine; got {self.decay!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16; got {self.precision!r}")
        if self.device != "auto":
            parse_device(self.device)
        check_train_config(self)


def train_config(preset: str | None = None, **overrides) -> TrainConfig:
    """The training config of run name ``preset`` (esolm/runs.py; none: the defaults below) with
    ``overrides`` (field values, typed and checked)."""
    from esolm import runs

    base = asdict(runs.get(preset).train) if preset is not None else {}
    return make_config(TrainConfig, base, **overrides)


# ---------------------------------------------------------------- lr schedule
def lr_factor(cfg: TrainConfig, step: int) -> float:
    """The lr of (0-based) ``step`` as a fraction of ``lr``: linear warmup over ``warmup`` steps,
    then constant or a half-cosine from 1 at the end of warmup to ``min_lr_ratio`` at the last step."""
    if step + 1 < cfg.warmup or cfg.decay == "constant":
        return min(1.0, (step + 1) / max(1, cfg.warmup))
    progress = (step + 1 - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    low = cfg.min_lr_ratio
    return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The lr of (0-based) ``step``: ``lr * lr_factor(cfg, step)``."""
    return cfg.lr * lr_factor(cfg, step)


def lr_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, step: int = 0) -> LambdaLR:
    """The schedule as a ``LambdaLR`` on ``opt``: its lr at (0-based) step s is ``learning_rate(cfg, s)``;
    ``step``: the steps already taken (a resumed run), so the next one gets ``learning_rate(cfg, step)``."""
    for group in opt.param_groups:
        group.setdefault("initial_lr", cfg.lr)
    return LambdaLR(opt, lambda s: lr_factor(cfg, s), last_epoch=step - 1)


def check_train_config(cfg: TrainConfig) -> None:
    """The bookkeeping counts are >= 0 (0: eval_every never, checkpoint_every only the last step,
    log_every no progress lines, micro_batch no cap)."""
    for k in ("warmup", "micro_batch", "eval_every", "eval_batches", "log_every", "checkpoint_every"):
        if getattr(cfg, k) < 0:
            raise ConfigError(f"{k} must be >= 0; got {getattr(cfg, k)}")
    if cfg.eval_every and cfg.eval_batches < 1:
        raise ConfigError(f"eval_batches must be >= 1 when eval_every={cfg.eval_every}; got {cfg.eval_batches}")


def due(every: int, step: int, last: int) -> bool:
    """Is ``step`` a multiple of ``every`` (0: none) or the last step?"""
    return step == last or (every > 0 and step % every == 0)


# ------------------------------------------------------------------ distributed
class _LossOf(torch.nn.Module):
    """``model.loss`` as a forward, so DistributedDataParallel sees (and syncs) it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor):
        return self.model.loss(tokens)


def batch_split(batch_size: int, world: int, micro_batch: int = 0) -> tuple[int, int, int]:
    """(per-process batch, per-process micro-batch, accumulation steps) for a global batch of
    ``batch_size`` sequences over ``world`` processes; an impossible split is a ConfigError."""
    if batch_size % world:
        raise ConfigError(f"batch_size={batch_size} (the global batch) is not divisible by the {world} "
                          f"processes; use a multiple of {world}, e.g. batch_size={max(world, batch_size // world * world)}")
    local = batch_size // world
    micro = min(micro_batch or local, local)  # micro_batch caps the sequences per forward pass
    if local % micro:
        raise ConfigError(f"micro_batch={micro} does not divide the per-process batch {local} "
                          f"(batch_size={batch_size} / {world} processes); use a divisor of {local} or micro_batch=0")
    return local, micro, local // micro


def parameter_checksum(model: torch.nn.Module) -> str:
    """Content hash of every parameter's bytes: equal iff the ranks hold identical weights."""
    return content_hash(p.detach().cpu().contiguous().numpy().tobytes() for p in model.parameters())[:16]


# ------------------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of parameters (spec 2.6): decay min(d, (1+n)/(10+n))."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


# ----------------------------------------------------------------- RNG state
def rng_state() -> dict:
    """Every RNG's state as plain tensors, tuples and numbers (``torch.load(weights_only=True)`` reads it)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    if isinstance(keys, torch.Tensor):
        keys = keys.numpy().astype(np.uint32)
    np.random.set_state((name, keys, *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------- data
class BatchStream:
    """Deterministic global batches over the training rows: epoch e visits a permutation
    seeded by (seed, e). ``position`` counts sequences consumed, so it resumes exactly."""

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int, position: int = 0):
        if data.shape[0] < batch_size:
            raise ConfigError(f"the training split has {data.shape[0]} sequences, fewer than batch_size="
                              f"{batch_size}; lower batch_size or use a larger corpus / shorter length")
        self.data, self.batch_size, self.seed, self.position = data, batch_size, seed, position
        self.per_epoch = data.shape[0] // batch_size * batch_size

    def next(self) -> torch.Tensor:
        epoch, offset = divmod(self.position, self.per_epoch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.data.shape[0], generator=g)[:self.per_epoch]
        self.position += self.batch_size
        return self.data[order[offset:offset + self.batch_size]]


# ---------------------------------------------------------------------- device
def parse_device(name: str) -> torch.device:
    """``name`` (not "auto", which resolve_device reads) as a torch device; a malformed name is a
    ConfigError. Checks the spelling only, so a config meant for another machine (a GPU node) is kept."""
    try:
        return torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None


def resolve_device(name: str) -> torch.device:
    """The device ``name`` (auto: CUDA when there is one, else the CPU), checked usable on this
    machine: an unknown name, or CUDA (or an index) that is not here, is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = parse_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} asked for but CUDA is not available on this machine; use device=cpu "
                          f"(or --device cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device={name}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                          f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if device.type not in ("cpu", "cuda") and not _allocates(device):
        raise ConfigError(f"device={name} is not usable on this machine (torch cannot hold tensors there); "
                          f"use cpu or cuda")
    return device


def _allocates(device: torch.device) -> bool:
    """Can torch hold data on ``device`` (mps, xpu, ...: built in and present)? The meta device holds none."""
    try:
        return device.type != "meta" and torch.empty(1, device=device) is not None
    except (RuntimeError, AssertionError):
        return False


def autocast(device: torch.device, precision: str):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)


class ema_weights:
    """Context: evaluate with the EMA weights, then put the training weights back."""

    def __init__(self, model, ema: EMA | None):
        self.model, self.ema = model, ema

    def __enter__(self):
        if self.ema is not None:
            self.backup = {k: v.clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(self.ema.shadow)
        return self.model

    def __exit__(self, *exc):
        if self.ema is not None:
            self.model.load_state_dict(self.backup)


# ------------------------------------------------------------------ the run
def _identity(model_name: str, model, corpus, cfg: TrainConfig, source: dict | None = None) -> dict:
    """What must match for a checkpoint to be resumed by this run (as JSON stores it); a run started
    from another checkpoint's weights (``source``: checkpoint.source_summary) names them by their
    model, step and sha256, not by their path (a moved run folder still resumes)."""
    skip = {"eval_every", "eval_batches", "log_every", "checkpoint_every", "device", "steps"}
    identity = {"model_name": model_name, "model_config": model.config.to_dict(),
                "corpus_fingerprint": corpus.fingerprint,
                "train_config": {k: v for k, v in asdict(cfg).items() if k not in skip}}
    if source is not None:
        identity["init_from"] = {k: source[k] for k in ("model_name", "step", "weights_sha256")}
    return json.loads(json.dumps(identity, default=json_default))


@dataclass
class _Run:
    """What one call of ``fit`` holds: the model and its optimizer, schedule, EMA and data
    stream, this process's place, the step reached, the log and the metrics so far."""

    name: str
    model: torch.nn.Module
    corpus: object
    cfg: TrainConfig
    out: Path
    log: object  # the progress printer
    rank: int
    world: int
    device: torch.device
    local: int  # sequences per step and process
    micro: int  # sequences per forward pass
    accum: int  # forward passes per step
    opt: torch.optim.Optimizer
    ema: EMA | None
    stream: BatchStream
    identity: dict
    init_from: dict | None = None  # the checkpoint a fresh run starts from (checkpoint.source_summary)
    sched: LambdaLR | None = None
    ddp: torch.nn.Module | None = None
    step: int = 0
    history: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    log_file: object = None  # train_log.jsonl, open for appending (rank 0)
    bar: object = None
    data_digest: object = field(default_factory=hasher)  # of the rows this rank trained on in this call
    t_start: float = field(default_factory=time.perf_counter)
    tokens_seen: int = 0
    saved_step: int | None = None  # the step of the last checkpoint written or resumed from
    trained: int = 0  # optimizer steps taken by this call

    @property
    def ckpt_path(self) -> Path:
        return self.out / CHECKPOINT

    @property
    def log_path(self) -> Path:
        return self.out / "train_log.jsonl"


def _setup(model_name: str, model, corpus, cfg: TrainConfig, out: Path, log, init_from=None) -> _Run:
    """This process's place, per-rank seeds (spec 9), the model on its device, AdamW, the EMA
    and the data stream of a fresh run (``init_from``: the checkpoint whose weights it starts from,
    named in its identity; they are loaded by ``_resume`` when the run has no checkpoint of its own)."""
    source = source_summary(init_from) if init_from is not None else None
    rank, world, _ = setup_distributed()
    device = resolve_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU (setup_distributed chose it)
    local, micro, accum = batch_split(cfg.batch_size, world, cfg.micro_batch)
    seed_everything(cfg.seed + rank)  # per-rank seeds, spec 9
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
                            weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    stream = BatchStream(corpus.splits["train"], cfg.batch_size, cfg.seed)
    return _Run(model_name, model, corpus, cfg, out, log, rank, world, device, local, micro, accum, opt, ema,
                stream, _identity(model_name, model, corpus, cfg, source), source)


def _resume(run: _Run) -> None:
    """Continue from the checkpoint in ``run.out`` when there is one (the same run's, else a
    ConfigError; the previous complete one when the newest was torn by an interrupted save), else
    start the folder; either way the log keeps only the lines up to the step reached (cut once) and
    is opened for appending."""
    found = checkpoint_in(run.out)
    if found is None:
        if run.init_from is not None:
            _start_from(run)
        if run.rank == 0:
            run.out.mkdir(parents=True, exist_ok=True)
            extra = {"init_from": run.init_from} if run.init_from else {}
            atomic_write_json(run.out / "config.json",
                              {**run.identity, "corpus": run.corpus.spec(), "steps": run.cfg.steps, **extra})
        run.sched = lr_scheduler(run.opt, run.cfg)
    else:
        quiet = run.rank != 0  # every rank reads the checkpoint; rank 0 alone says that it fell back
        _restore(run, found, read_checkpoint(found, training_state=True, log=(lambda *_: None) if quiet else run.log))
    run.history = _kept_log(run.log_path, run.step, cut=run.rank == 0)
    if run.rank == 0:
        run.log_file = open(run.log_path, "a")


def _start_from(run: _Run) -> None:
    """A fresh run's initial weights: those another checkpoint is evaluated with (its EMA weights where
    it has them, as checkpoint.load_model), every parameter name and shape matching this model's
    (else a ConfigError); the EMA starts from them, the optimizer, schedule and step counter afresh.
    MDLM, BD3-LM and Eso-LM share one backbone and parameter names (BD3-LM's block mask is a buffer
    outside the state_dict), so each starts from another; AR's lacks the time conditioning."""
    src = run.init_from
    quiet = (lambda *_: None) if run.rank != 0 else run.log
    state = read_checkpoint(src["path"], log=quiet)
    if (state.get("files") or {}).get("weights", {}).get("sha256") != src["weights_sha256"]:
        raise ConfigError(f"the checkpoint {src['path']} changed while this run started from it (another process "
                          f"saving it, or a torn save); rerun once its training has finished")
    use_ema = bool(state.get("ema"))
    weights = state["ema"] if use_ema else state["model"]
    _check_fits(weights, run.model.state_dict(), src["path"], state["model_name"], run.name)
    run.model.load_state_dict(weights)
    if run.ema is not None:
        run.ema = EMA(run.model, run.cfg.ema)
    run.metrics["init_from"] = dict(src, weights="ema" if use_ema else "model")
    if run.rank == 0:
        run.log(f"initialised {run.name} from the {'EMA' if use_ema else 'live'} weights of the {state['model_name']} "
                f"checkpoint {src['path']} (step {state.get('step')}, {len(weights)} tensors); the optimizer, lr "
                f"schedule, EMA and step counter start afresh: {run.cfg.steps} steps of its own")


def _check_fits(weights: dict, mine: dict, path, source_model: str, name: str) -> None:
    """One ConfigError naming the parameters of ``weights`` that are missing from, extra to or of
    another shape than this model's (``mine``)."""
    missing, extra = sorted(set(mine) - set(weights)), sorted(set(weights) - set(mine))
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(mine[k].shape)}" for k in sorted(set(mine) & set(weights))
              if tuple(weights[k].shape) != tuple(mine[k].shape)]
    if missing or extra or shapes:
        what = "; ".join(f"{n} {len(v)} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                         for n, v in (("missing from it", missing), ("not in this model", extra),
                                      ("of other shapes (its vs this model's)", shapes)) if v)
        raise ConfigError(f"--init-from {path}: its {source_model} weights do not fit this "
                          f"{name} model, parameters {what}; initialise from a checkpoint of the same "
                          f"backbone (d_model, n_layers, n_heads, vocabulary; MDLM, BD3-LM and Eso-LM share one, "
                          f"AR's lacks the time conditioning), or drop --init-from to train from scratch")


def _restore(run: _Run, path: Path, state: dict) -> None:
    """Weights, optimizer, schedule, EMA, data position, RNG streams and metrics from a checkpoint."""
    if json.loads(json.dumps(state.get("identity"), default=json_default)) != run.identity:
        raise ConfigError(f"{run.out} holds a checkpoint of a different run (model, data or optimizer settings, "
                          f"or the checkpoint it started from, differ); pass another --out, or delete {path} (and the files beside it of the "
                          f"same name) to start over")
    if state["step"] > run.cfg.steps:
        raise ConfigError(f"{path} is a checkpoint at step {state['step']}, past steps={run.cfg.steps}: it cannot "
                          f"be the {run.cfg.steps}-step model; pass steps={state['step']} or more to continue this "
                          f"run, or another --out for a run of {run.cfg.steps} steps")
    run.model.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    run.step, run.stream.position = state["step"], state["data_position"]
    run.saved_step, run.metrics = run.step, dict(state.get("metrics") or {})
    run.sched = lr_scheduler(run.opt, run.cfg, run.step)
    if state.get("scheduler"):  # a checkpoint of an earlier version has none: the step fixes it
        run.sched.load_state_dict(state["scheduler"])
    if run.ema is not None:
        run.ema.load_state_dict(state["ema_state"])
    rngs = state.get("rng") or []
    if len(rngs) == run.world:
        set_rng_state(rngs[run.rank])
    else:  # resumed on another number of processes: the data order holds, the noise draws differ
        seed_everything(run.cfg.seed + run.rank + 7919 * run.step)
        if run.rank == 0:
            run.log(f"the checkpoint holds the RNG states of {len(rngs)} processes, resumed on {run.world}: "
                    f"the run continues with fresh per-rank random streams (not bit-identical to an uninterrupted run)")
    if run.rank == 0:
        run.log(f"resuming {run.name} from {path} at step {run.step}/{run.cfg.steps}")


def _kept_log(path: Path, step: int, *, cut: bool) -> list[dict]:
    """The lines of the training log up to ``step`` (a line cut by an interruption ends them);
    with ``cut`` the file is truncated after them."""
    kept, end = [], 0
    if path.exists():
        with open(path, "rb") as f:
            for line in f:
                row = _parsed(line)
                if row is None or row["step"] > step:
                    break
                kept.append(row)
                end += len(line)
        if cut:
            os.truncate(path, end)
    return kept


def _parsed(line: bytes) -> dict | None:
    if not line.endswith(b"\n"):
        return None
    try:
        return json.loads(line)
    except ValueError:
        return None


def _micro_step(run: _Run, batch: torch.Tensor, i: int):
    """Forward and backward of the ``i``-th micro-batch (its loss scaled by 1 / accum)."""
    model, accum = run.model, run.accum
    model.rank, model.world_size = run.rank * accum + i, run.world * accum  # this micro-batch's t-strata
    rows = batch[i * run.micro:(i + 1) * run.micro].to(run.device)
    if run.ddp is None:
        with autocast(run.device, run.cfg.precision):
            out = model.loss(rows)
        (out.loss / accum).backward()
        return out
    with contextlib.nullcontext() if i == accum - 1 else run.ddp.no_sync():  # average gradients on the last only
        with autocast(run.device, run.cfg.precision):
            out = run.ddp(rows)
        (out.loss / accum).backward()
    return out


def _train_step(run: _Run) -> dict:
    """One optimizer step on this rank's shard of the next global batch; its log line."""
    batch = run.stream.next()[run.rank * run.local:(run.rank + 1) * run.local]
    if run.world > 1:
        run.data_digest.update(batch.numpy().tobytes())
    loss_sum, nll_sum, n_tok = 0.0, 0.0, 0
    for i in range(run.accum):
        out = _micro_step(run, batch, i)
        loss_sum += float(out.loss.detach()) / run.accum
        nll_sum += float(out.nll_sum)
        n_tok += int(out.num_tokens)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.grad_clip)
    _check_finite(run, loss_sum, float(grad_norm))  # before the step: no NaN reaches the weights
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    lr = run.opt.param_groups[0]["lr"]
    run.sched.step()
    if run.ema is not None:
        run.ema.update(run.model)
    run.step += 1
    run.tokens_seen += batch.numel() * run.world
    tok_s = run.tokens_seen / (time.perf_counter() - run.t_start)
    return {"step": run.step, "loss": loss_sum, "nll_per_token": nll_sum / max(n_tok, 1),
            "grad_norm": float(grad_norm), "lr": lr, "tokens_per_s": tok_s}


class NonFiniteLoss(ConfigError):
    """Training diverged: the loss or the gradient norm of a step is NaN or infinite."""


def _check_finite(run: _Run, loss: float, grad_norm: float) -> None:
    """A NonFiniteLoss, on every rank, when this step's loss or gradient norm (on any rank) is not finite."""
    bad = not (math.isfinite(loss) and math.isfinite(grad_norm))
    if run.world > 1:
        flag = torch.tensor([float(bad)], device=run.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        bad = bool(flag.item())
    if not bad:
        return
    what, value = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", grad_norm)
    if math.isfinite(value):  # another rank's
        what, value = f"{what} on another process", "nan or inf"
    kept = (f"the last good checkpoint (step {run.saved_step}) is kept in {run.ckpt_path}" if run.saved_step is not None
            else "no checkpoint was written yet")
    raise NonFiniteLoss(f"training {what} became non-finite ({value}) at step {run.step + 1}; the step was not "
                        f"applied and {kept}; lower lr (now {run.cfg.lr:g}) or grad_clip, raise warmup, or train "
                        f"with precision=fp32")


def _report(run: _Run, row: dict) -> None:
    """The progress bar, or a progress line every ``log_every`` steps (rank 0)."""
    cfg = run.cfg
    if run.bar is not None:
        run.bar.update(1)
        run.bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:,.0f}")
    elif run.rank == 0 and cfg.log_every and due(cfg.log_every, run.step, cfg.steps):
        run.log(f"step {run.step}/{cfg.steps}: loss {row['loss']:.4f}, {row['tokens_per_s']:,.0f} tokens/s, "
                f"lr {row['lr']:.2e}")


def _validate(run: _Run, row: dict) -> None:
    """Validation NLL with the EMA weights (the caller's RNG untouched), the model's
    ``after_validation`` hook; both recorded in ``row`` and the metrics."""
    from esolm.evaluate import evaluate

    model, cfg, micro = run.model, run.cfg, run.micro
    with ema_weights(model, run.ema), torch.random.fork_rng(devices=[]):
        model.eval()
        val = evaluate(model, run.corpus, "valid", batch_size=micro, max_batches=cfg.eval_batches,
                       seed=cfg.seed, progress=False)
        valid_rows = run.corpus.splits["valid"][: cfg.eval_batches * micro].to(run.device)
        changed = model.after_validation(list(torch.split(valid_rows, micro)))
        model.train()
    if changed:
        row["after_validation"] = str(changed.interval if hasattr(changed, "interval") else changed)
    row["valid_nll_per_token"] = val["nll_per_token"]
    run.metrics["valid"] = val
    if run.rank == 0:
        msg = f"step {run.step}: valid NLL {val['nll_per_token']:.4f} nats/token (PPL {val['ppl']:.2f})"
        if val.get("true_nll_per_token") is not None:
            msg += f"; true NLL of the source {val['true_nll_per_token']:.4f}"
        (run.bar.write if run.bar is not None else run.log)(msg)


def _gather(run: _Run) -> tuple[list, list, list]:
    """(RNG states, parameter checksums, data digests) of every rank; ranks whose weights
    differ are a RuntimeError."""
    mine = (rng_state(), parameter_checksum(run.model), run.data_digest.hexdigest()[:16])
    if run.world == 1:
        return [mine[0]], [mine[1]], [mine[2]]
    every = tuple([None] * run.world for _ in mine)
    for gathered, value in zip(every, mine):
        dist.all_gather_object(gathered, value)
    if len(set(every[1])) != 1:
        raise RuntimeError(f"data-parallel ranks diverged at step {run.step}: parameter checksums {every[1]}")
    return every


def _checkpoint(run: _Run, row: dict) -> None:
    """Record the step's metrics and write the checkpoint (rank 0, after every rank's RNG
    state and checksum are gathered); the log is flushed to disk with it."""
    run.metrics.update(step=run.step, train_loss=row["loss"], tokens_per_s=row["tokens_per_s"])
    rngs, sums, digests = _gather(run)
    run.metrics.update(world_size=run.world, rank_parameter_checksums=sums)
    if run.world > 1:
        run.metrics["rank_data_digests"] = digests
    run.saved_step = run.step
    if run.rank != 0:
        return
    run.log_file.flush()
    os.fsync(run.log_file.fileno())
    ema = run.ema
    save_checkpoint(run.ckpt_path, {
        "model_name": run.name, "model_config": run.model.config.to_dict(), "identity": run.identity,
        "model": run.model.state_dict(), "ema": ema.shadow if ema else None,
        "ema_state": ema.state_dict() if ema else None, "optimizer": run.opt.state_dict(),
        "scheduler": run.sched.state_dict(), "step": run.step, "rng": rngs, "data_position": run.stream.position,
        "corpus": run.corpus.spec(), "train_config": asdict(run.cfg), "metrics": run.metrics})


def _append(run: _Run, row: dict) -> None:
    """One line of train_log.jsonl, appended once (rank 0)."""
    run.history.append(row)
    if run.log_file is not None:
        run.log_file.write(json.dumps(row) + "\n")
        run.log_file.flush()


def _finish(run: _Run) -> dict:
    """The run's metrics (train_metrics.json once the last step is done) and fit's result."""
    run.metrics.update(step=run.step, train_loss=run.history[-1]["loss"] if run.history else None,
                       wall_seconds=time.perf_counter() - run.t_start)
    finished = run.step == run.cfg.steps
    metrics_file = run.out / "train_metrics.json"
    if finished and run.rank == 0 and (run.trained or not metrics_file.exists()):  # a rerun keeps the file
        atomic_write_json(metrics_file, run.metrics)
    if run.world > 1:
        dist.barrier()  # no rank leaves (and tears down) while rank 0 still writes
    return {"metrics": run.metrics, "history": run.history, "checkpoint": str(run.ckpt_path), "finished": finished}


def fit(model_name: str, model, corpus, cfg: TrainConfig, out_dir: str | Path, *,
        progress: bool = True, stop_after: int | None = None, log=print, init_from: str | Path | None = None) -> dict:
    """Train ``model`` on ``corpus``; checkpoints and logs go to ``out_dir``; resumes from its
    checkpoint when one exists for the same run (a checkpoint past ``cfg.steps`` is a ConfigError).
    ``init_from``: a fresh run starts from the weights of that checkpoint (its EMA weights where it has
    them), not its optimizer or step, and trains ``cfg.steps`` steps of its own (a finetune, spec 10:
    the paper's LM1B BD3-LMs start from MDLM); a resumed one continues from its own checkpoint.
    A step whose loss or gradient norm is NaN or infinite raises NonFiniteLoss (a ConfigError) before
    the optimizer applies it, so no checkpoint holds non-finite weights. Returns the run's metrics dict.

    stop_after: return after that many steps of this call (to simulate an interruption).
    """
    run = _setup(model_name, model, corpus, cfg, Path(out_dir), log, init_from)
    _resume(run)
    try:
        # DDP after the resume: every rank holds the same weights by now; DDP broadcasts rank 0's
        # anyway, and averages the gradients in buckets during backward
        run.ddp = torch.nn.parallel.DistributedDataParallel(_LossOf(model)) if run.world > 1 else None
        if progress and run.rank == 0:
            from tqdm import tqdm

            run.bar = tqdm(total=cfg.steps, initial=run.step, desc=f"train {model_name}", unit="step",
                           dynamic_ncols=True)
        run.t_start = time.perf_counter()
        while run.step < cfg.steps and (stop_after is None or run.trained < stop_after):
            row = _train_step(run)
            run.trained += 1
            _report(run, row)
            if cfg.eval_every and due(cfg.eval_every, run.step, cfg.steps):
                _validate(run, row)
            _append(run, row)
            if due(cfg.checkpoint_every, run.step, cfg.steps):
                _checkpoint(run, row)
    finally:
        for handle in (run.bar, run.log_file):
            if handle is not None:
                handle.close()
    return _finish(run)
