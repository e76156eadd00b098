"""Training (spec 9): AdamW, linear warmup, clipping, EMA, bf16 autocast on CUDA,
atomic resumable checkpoints, data-parallel over several processes.

    python experiments/run.py train --model mdlm --preset tiny            # one process
    torchrun --nproc_per_node 2 experiments/run.py train --model ar ...   # DDP (gloo on CPU)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from esolm.checkpoint import atomic_write_json, read_checkpoint, save_checkpoint
from esolm.config import ConfigError, make_config
from esolm.distributed import setup_distributed

# Training budgets per preset. The paper's numbers (small) are spec 9; the CPU presets are
# scaled so a run fits in seconds (smoke) or minutes (tiny) on 2 cores, with a shorter EMA
# horizon and a higher learning rate to match the short budget.
TRAIN_PRESETS: dict[str, dict] = {
    # 40 steps x 16 x L: seconds on a 2-core CPU
    "smoke": dict(steps=40, batch_size=16, lr=1e-3, warmup=5, ema=0.0, eval_every=0, log_every=10),
    # 300 steps x 16 x 128 = 0.6M tokens (~8 min on 2 cores for the 9M-parameter tiny backbone);
    # lr 2e-3 after 30 warmup steps; EMA 0.98 (a ~50-step horizon)
    "tiny": dict(steps=300, batch_size=16, lr=2e-3, warmup=30, ema=0.98, eval_every=100, log_every=25,
                 checkpoint_every=100),
    # spec 9 (OWT): 250K steps x 512 x 1024, lr 3e-4, 2500 warmup, EMA 0.9999
    "small": dict(steps=250_000, batch_size=512, lr=3e-4, warmup=2500, ema=0.9999, eval_every=10_000,
                  log_every=100, micro_batch=64),
}


@dataclass
class TrainConfig:
    """Optimization and bookkeeping (spec 9). batch_size is the global batch in sequences."""

    steps: int = 1000
    batch_size: int = 16
    micro_batch: int = 0  # at most this many sequences per forward pass and process (gradient accumulation); 0 = no cap
    lr: float = 1e-3
    warmup: int = 100  # linear warmup from 0, then the decay rule
    decay: str = "constant"  # after warmup: "constant", or "cosine" down to min_lr_ratio * lr at the last step
    min_lr_ratio: float = 0.1  # the cosine schedule's final lr as a fraction of lr
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.99  # target EMA decay; effective min(ema, (1+n)/(10+n)); 0 disables
    seed: int = 1
    eval_every: int = 250  # steps between validation passes; 0 = never
    eval_batches: int = 8
    log_every: int = 25
    checkpoint_every: int = 250
    precision: str = "auto"  # auto: bf16 autocast on CUDA, float32 on CPU; or "fp32" / "bf16"
    device: str = "auto"

    def __post_init__(self):
        for k in ("steps", "batch_size"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be >= 1; got {getattr(self, k)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0; got {self.lr}")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema must lie in [0, 1); got {self.ema}")
        if self.decay not in ("constant", "cosine"):
            raise ConfigError(f"decay must be constant or cosine; got {self.decay!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio must lie in [0, 1]; got {self.min_lr_ratio}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16; got {self.precision!r}")


def train_config(preset: str | None = None, **overrides) -> TrainConfig:
    if preset is not None and preset not in TRAIN_PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(TRAIN_PRESETS)}")
    return make_config(TrainConfig, TRAIN_PRESETS.get(preset, {}), **overrides)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The lr of (0-based) ``step``: linear warmup over ``warmup`` steps, then constant or a
    half-cosine from ``lr`` at the end of warmup to ``min_lr_ratio * lr`` at the last step."""
    if step + 1 < cfg.warmup or cfg.decay == "constant":
        return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
    progress = (step + 1 - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    low = cfg.min_lr_ratio
    return cfg.lr * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


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
    """sha256 of every parameter's bytes: equal iff the ranks hold identical weights."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


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
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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


# ---------------------------------------------------------------------- loop
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} asked for but CUDA is not available; use device=cpu")
    return torch.device(name)


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


def _identity(model_name: str, model, corpus, cfg: TrainConfig) -> dict:
    """What must match for a checkpoint to be resumed by this run."""
    skip = {"eval_every", "eval_batches", "log_every", "checkpoint_every", "device", "steps"}
    return {"model_name": model_name, "model_config": model.config.to_dict(),
            "corpus_fingerprint": corpus.fingerprint,
            "train_config": {k: v for k, v in asdict(cfg).items() if k not in skip}}


def fit(model_name: str, model, corpus, cfg: TrainConfig, out_dir: str | Path, *,
        progress: bool = True, stop_after: int | None = None, log=print) -> dict:
    """Train ``model`` on ``corpus``; checkpoints and logs go to ``out_dir``; resumes from its
    checkpoint when one exists for the same run. Returns the run's metrics dict.

    stop_after: return after that many steps of this call (to simulate an interruption).
    """
    from esolm.evaluate import evaluate

    out = Path(out_dir)
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
    identity = _identity(model_name, model, corpus, cfg)
    ckpt_path, log_path = out / "checkpoint.pt", out / "train_log.jsonl"
    step, history = 0, []
    if ckpt_path.exists():
        state = read_checkpoint(ckpt_path)
        if state.get("identity") != identity:
            raise ConfigError(f"{out} holds a checkpoint of a different run (model, data or optimizer settings "
                              f"differ); pass another --out, or delete {ckpt_path} to start over")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema_state"])
        step, stream.position = state["step"], state["data_position"]
        if len(state["rng"]) == world:
            set_rng_state(state["rng"][rank])
        else:  # resumed on another number of processes: the data order holds, the noise draws differ
            seed_everything(cfg.seed + rank + 7919 * step)
            if rank == 0:
                log(f"the checkpoint was written by {len(state['rng'])} processes, resumed on {world}: "
                    f"the run continues with fresh per-rank random streams (not bit-identical to an uninterrupted run)")
        history = [h for h in _read_log(log_path) if h["step"] <= step]
        if rank == 0:
            log(f"resuming {model_name} from {ckpt_path} at step {step}/{cfg.steps}")
    elif rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", {**identity, "corpus": corpus.spec(), "steps": cfg.steps})

    # DDP after the resume: every rank holds the same weights by now; DDP broadcasts rank 0's
    # anyway, and averages the gradients in buckets during backward
    ddp = torch.nn.parallel.DistributedDataParallel(_LossOf(model)) if world > 1 else None
    data_digest = hashlib.sha256()  # of the rows this rank trained on in this call (tests: shards differ)

    def save():
        if world > 1:
            rngs, sums, digests = [None] * world, [None] * world, [None] * world
            dist.all_gather_object(rngs, rng_state())
            dist.all_gather_object(sums, parameter_checksum(model))
            dist.all_gather_object(digests, data_digest.hexdigest()[:16])
            if len(set(sums)) != 1:
                raise RuntimeError(f"data-parallel ranks diverged at step {step}: parameter checksums {sums}")
        else:
            rngs, sums = [rng_state()], [parameter_checksum(model)]
        metrics.update(world_size=world, rank_parameter_checksums=sums)
        if world > 1:
            metrics["rank_data_digests"] = digests
        if rank == 0:
            save_checkpoint(ckpt_path, {
                "model_name": model_name, "model_config": model.config.to_dict(), "identity": identity,
                "model": model.state_dict(), "ema": ema.shadow if ema else None,
                "ema_state": ema.state_dict() if ema else None, "optimizer": opt.state_dict(),
                "step": step, "rng": rngs, "data_position": stream.position, "corpus": corpus.spec(),
                "train_config": asdict(cfg), "metrics": metrics})
            _write_log(log_path, history)

    metrics: dict = {}
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=f"train {model_name}", unit="step", dynamic_ncols=True)
    t_start, tokens_seen, steps_this_call = time.perf_counter(), 0, 0
    while step < cfg.steps and (stop_after is None or steps_this_call < stop_after):
        batch = stream.next()[rank * local:(rank + 1) * local]  # this rank's shard of the global batch
        if world > 1:
            data_digest.update(batch.numpy().tobytes())
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, step)
        loss_sum, nll_sum, n_tok = 0.0, 0.0, 0
        for i in range(accum):
            model.rank, model.world_size = rank * accum + i, world * accum  # this micro-batch's t-strata
            rows = batch[i * micro:(i + 1) * micro].to(device)
            if ddp is None:
                with autocast(device, cfg.precision):
                    out_ = model.loss(rows)
                (out_.loss / accum).backward()
            else:  # gradients are averaged over ranks on the last micro-batch only
                with contextlib.nullcontext() if i == accum - 1 else ddp.no_sync():
                    with autocast(device, cfg.precision):
                        out_ = ddp(rows)
                    (out_.loss / accum).backward()
            loss_sum += float(out_.loss.detach()) / accum
            nll_sum += float(out_.nll_sum)
            n_tok += int(out_.num_tokens)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model)
        step += 1
        steps_this_call += 1
        tokens_seen += batch.numel() * world
        tok_s = tokens_seen / (time.perf_counter() - t_start)
        history.append({"step": step, "loss": loss_sum, "nll_per_token": nll_sum / max(n_tok, 1),
                        "grad_norm": float(grad_norm), "lr": opt.param_groups[0]["lr"], "tokens_per_s": tok_s})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.3f}", tok_s=f"{tok_s:,.0f}")
        elif rank == 0 and cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps):
            log(f"step {step}/{cfg.steps}: loss {loss_sum:.4f}, {tok_s:,.0f} tokens/s, lr {opt.param_groups[0]['lr']:.2e}")
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            with ema_weights(model, ema), torch.random.fork_rng(devices=[]):
                model.eval()
                val = evaluate(model, corpus, "valid", batch_size=micro, max_batches=cfg.eval_batches,
                               seed=cfg.seed, progress=False)
                valid_rows = corpus.splits["valid"][: cfg.eval_batches * micro].to(device)
                changed = model.after_validation(list(torch.split(valid_rows, micro)))
                model.train()
            if changed:
                history[-1]["after_validation"] = str(changed.interval if hasattr(changed, "interval") else changed)
            history[-1]["valid_nll_per_token"] = val["nll_per_token"]
            metrics["valid"] = val
            if rank == 0:
                msg = f"step {step}: valid NLL {val['nll_per_token']:.4f} nats/token (PPL {val['ppl']:.2f})"
                if val.get("true_nll_per_token") is not None:
                    msg += f"; true NLL of the source {val['true_nll_per_token']:.4f}"
                (bar.write if bar is not None else log)(msg)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            metrics.update(step=step, train_loss=loss_sum, tokens_per_s=tok_s)
            save()
    if bar is not None:
        bar.close()
    metrics.update(step=step, train_loss=history[-1]["loss"] if history else None,
                   wall_seconds=time.perf_counter() - t_start)
    if step == cfg.steps and rank == 0:
        atomic_write_json(out / "train_metrics.json", metrics)
    if world > 1:
        dist.barrier()  # no rank leaves (and tears down) while rank 0 still writes
    return {"metrics": metrics, "history": history, "checkpoint": str(ckpt_path), "finished": step == cfg.steps}


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_log(path: Path, history: list[dict]) -> None:
    from esolm.checkpoint import atomic_write_bytes

    data = "".join(json.dumps(h) + "\n" for h in history).encode()
    atomic_write_bytes(path, lambda f: f.write(data))
