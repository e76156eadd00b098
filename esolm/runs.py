"""One typed configuration per run name: what a run trains on, with which backbone, for how
long, and how it is evaluated, sampled, timed and scheduled.

    from esolm import runs
    run = runs.get("tiny")                           # RunConfig
    run = runs.get("tiny", ["train.steps=100", "length=64"])   # with key=value overrides

Every field below has its meaning on its line; ``esolm.config.parse_keys`` reads these
dataclasses for ``key=value`` (dotted ``section.key``, or a bare key that one section owns)
and ``esolm.config.keys_help`` builds ``--help`` from the same fields. The experiments of a
run name (which models, which sweeps) are in experiments/presets.py.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from esolm.config import ConfigError, make_config
from esolm.train import TrainConfig


@dataclass
class Data:
    """The corpus and its geometry (spec 8.1)."""

    corpus: str = "shakespeare"  # synthetic | shakespeare | text:PATH | owt | lm1b
    length: int = 128  # L: tokens per training sequence and per sample
    vocab_size: int | None = None  # a byte-level BPE of this many ids trained on the corpus; none: its own tokenizer
    data_seed: int | None = None  # seed of the synthetic corpus; none: its default
    tokenizer: str | None = None  # a named tokenizer instead of the corpus's (gpt2, bert-base-uncased)

    def corpus_kwargs(self) -> dict:
        """Keyword arguments of esolm.data.load_corpus."""
        kwargs = {"name": self.corpus, "length": self.length}
        if self.vocab_size is not None:
            kwargs["vocab_size"] = self.vocab_size
        if self.data_seed is not None:
            kwargs["seed"] = self.data_seed
        if self.tokenizer:
            kwargs["tokenizer"] = self.tokenizer
        return kwargs


@dataclass
class Backbone:
    """The DiT backbone every model of a run shares (spec 2.1); data fields come from the corpus.
    The defaults are the spec's "tiny" row (d = 256, 8 layers, 8 heads, d_h = 32, cond 128, dropout 0.1)."""

    d_model: int = 256  # width
    n_layers: int = 8  # transformer blocks
    n_heads: int = 8  # attention heads (d_model / n_heads must be even, for RoPE)
    cond_dim: int = 128  # width of the AdaLN conditioning vector
    dropout: float = 0.1  # dropout rate of attention and MLP outputs


@dataclass
class Eval:
    """Test perplexity (spec 8.2): the NELBO of every model, the exact likelihood of those that have one."""

    batch_size: int = 32  # sequences per evaluation batch
    max_batches: int | None = None  # the first this many test batches; none: the whole split
    exact_orders: list[int] = field(default_factory=lambda: [1])  # K of the IW exact likelihood (one run per K)
    exact_max_sequences: int | None = 64  # sequences of the exact runs; none: the whole split


@dataclass
class Sampling:
    """Samples scored for quality (spec 8.3)."""

    num_samples: int = 64  # samples per sweep configuration
    batch_size: int = 32  # samples per sampling call
    top_p: float = 0.9  # nucleus mass of every sweep sample (spec 5.6)


@dataclass
class Timing:
    """Seconds per sweep configuration (spec 8.5: the Pareto's clock)."""

    batch_size: int = 32  # samples per timed call
    trials: int = 5  # timed calls per configuration
    warmup: int = 1  # untimed calls first
    wall: bool = True  # also time whole calls (not only network passes); doubles the stage


@dataclass
class LongContext:
    """Latency at NFE = L, batch 1, no nucleus (spec 8.6, Table 11)."""

    lengths: list[int] = field(default_factory=list)  # L of each latency job; empty: none
    trials: int = 3  # timed calls per method, interleaved across methods (the least, with a target)
    # with a target: rounds go on until every ratio of two methods has a 95 % interval within
    # +-target of it (paired rounds, experiments/jobs.py _rounds), at most max_trials
    target: float | None = None
    max_trials: int | None = None
    warmup: int = 1  # untimed calls per method first
    cached_only: bool = False  # time the models that have a KV cache only with it
    profile: bool = True  # also time network passes only (after whole calls); doubles the stage


@dataclass
class Mauve:
    """MAUVE of the samples against test text (spec 8.4)."""

    featurizer: str = "minilm"  # minilm (the offline MiniLM encoder) | a Hugging Face encoder name or folder
    max_text_length: int = 256  # tokens of each text the featurizer sees


@dataclass
class RunConfig:
    """Everything a run name fixes but its models and sweeps (experiments/presets.py)."""

    name: str  # the run name (--preset)
    description: str = ""  # one line for `status` and summary.json
    data: Data = field(default_factory=Data)
    backbone: Backbone = field(default_factory=Backbone)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: Eval = field(default_factory=Eval)
    sampling: Sampling = field(default_factory=Sampling)
    timing: Timing = field(default_factory=Timing)
    long_context: LongContext = field(default_factory=LongContext)
    mauve: Mauve = field(default_factory=Mauve)
    # stage -> Slurm resources (the fields of experiments.cluster.SlurmParams); "default" for every stage
    slurm: dict[str, dict] = field(default_factory=dict)
    threads: int = 1  # torch threads per job

    SECTIONS = ("data", "backbone", "train", "eval", "sampling", "timing", "long_context", "mauve")

    def sections(self) -> dict:
        """Section name -> its dataclass instance (what ``key=value`` can set)."""
        return {s: getattr(self, s) for s in self.SECTIONS}

    def with_overrides(self, pairs: dict) -> "RunConfig":
        """A copy with ``{"section.key" or "key": value}`` applied, each typed and checked."""
        from esolm.config import parse_keys

        routed = parse_keys(pairs, {s: type(v) for s, v in self.sections().items()})
        return dataclasses.replace(self, **{s: make_config(type(v), dataclasses.asdict(v), **routed[s])
                                            for s, v in self.sections().items() if routed.get(s)})

    def backbone_fields(self) -> dict:
        return dataclasses.asdict(self.backbone)


def _train(**values) -> TrainConfig:
    return make_config(TrainConfig, values)


# ------------------------------------------------------------------------------ the run names
def smoke() -> RunConfig:
    """Every stage end to end in minutes on 2 CPU cores (CI): numbers mean nothing."""
    return RunConfig(
        name="smoke", description="CI: every stage end to end in minutes; numbers mean nothing",
        data=Data("shakespeare", length=32, vocab_size=512),
        backbone=Backbone(d_model=64, n_layers=2, n_heads=4, cond_dim=32, dropout=0.0),
        train=_train(steps=30, batch_size=16, lr=1e-3, warmup=5, ema=0.0, eval_every=0, log_every=10,
                     checkpoint_every=10),
        eval=Eval(batch_size=16, max_batches=2, exact_orders=[1, 4], exact_max_sequences=8),
        sampling=Sampling(num_samples=8, batch_size=8),
        timing=Timing(batch_size=4, trials=2, warmup=1),
        long_context=LongContext(lengths=[32], trials=2, warmup=1),
        mauve=Mauve(featurizer="minilm", max_text_length=64),
        slurm={"default": dict(time_min=20, cpus_per_task=1, array_parallelism=2)},
    )


CPU_STEPS = 300  # training steps of every model of the CPU runs (their evaluator: 1.5 times as many)


def _cpu(name: str, description: str) -> RunConfig:
    """Byte-level Shakespeare (V = 258: the 256 bytes, EOT, mask), L = 128, a 4 x 128 backbone
    trained for minutes on 2 cores, so that the methods separate as in the paper
    (docs/cpu_presets.md has the learning curves and the ablation behind these numbers)."""
    steps = CPU_STEPS
    return RunConfig(
        name=name, description=description,
        data=Data("shakespeare", length=128, vocab_size=258),
        backbone=Backbone(d_model=128, n_layers=4, n_heads=4, cond_dim=128, dropout=0.0),
        # constant lr after warmup: at 500 steps a cosine decay to 0.1 lr ended AR at valid NLL 2.03
        # nats/token against 1.87 for constant lr (docs/cpu_presets.md); these models are far from converged
        train=_train(steps=steps, batch_size=32, lr=2e-3, warmup=50, decay="constant", ema=0.98,
                     eval_every=steps // 2, eval_batches=4, log_every=25, checkpoint_every=max(1, steps // 4)),
        # the NELBO on the first 1024 of the 2332 test sequences (32 batches); the exact rows on 64
        eval=Eval(batch_size=32, max_batches=32, exact_orders=[1, 10, 100], exact_max_sequences=64),
        sampling=Sampling(num_samples=64, batch_size=64, top_p=0.9),
        # one clock per table, each call made once: the sweep's network passes (the Pareto's
        # clock, spec 8.5) and Table 11's whole calls; the other clock would double each stage
        timing=Timing(batch_size=16, trials=3, warmup=1, wall=False),
        # MDLM at NFE = L = 1024 takes 62 s a call with this backbone (measured): 512 is the longest
        # length that fits the quickstart's budget. Rounds until every ratio is within +-5 % (95 %):
        # C5's BD3-LM / Eso-LM (B) ratio at L = 256 is about 1.1, which +-10 % would not decide
        long_context=LongContext(lengths=[256, 512], trials=8, max_trials=30, target=0.05, warmup=1, cached_only=True,
                                 profile=False),
        mauve=Mauve(featurizer="minilm", max_text_length=256),
        # eval and sample share a wave: two eval lanes and one sample lane balanced it best here
        slurm={"default": dict(time_min=120, cpus_per_task=1, array_parallelism=2),
               "eval": dict(array_parallelism=2), "sample": dict(array_parallelism=1),
               "time": dict(cpus_per_task=2, array_parallelism=1),
               "longctx": dict(cpus_per_task=2, array_parallelism=1),
               # the conditional task times each sampling call: one job at a time (experiments/lanes.py)
               "conditional": dict(cpus_per_task=2, array_parallelism=1)},
    )


def paper(corpus: str) -> RunConfig:
    """The paper's models, data, steps and evaluation (spec 9, 10) for a GPU cluster."""
    length, steps = {"owt": (1024, 250_000), "lm1b": (128, 1_000_000)}[corpus]
    return RunConfig(
        name=f"paper-{corpus}", description=f"the paper's {corpus.upper()} models, data, steps and sweeps (GPU cluster)",
        data=Data(corpus, length=length, vocab_size=None),
        backbone=Backbone(d_model=768, n_layers=12, n_heads=12, cond_dim=128, dropout=0.1),
        # spec 9: lr 3e-4, 2500 warmup, EMA 0.9999, global batch 512 in micro-batches of 64
        train=_train(steps=steps, batch_size=512, lr=3e-4, warmup=2500, ema=0.9999, eval_every=10_000,
                     log_every=100, micro_batch=64),
        eval=Eval(batch_size=32, max_batches=None, exact_orders=[1, 10, 100, 1000], exact_max_sequences=None),
        sampling=Sampling(num_samples=5120, batch_size=256, top_p=0.9),
        timing=Timing(batch_size=512, trials=10, warmup=1),
        long_context=LongContext(lengths=[2048, 8192], trials=5, max_trials=20, target=0.10, warmup=1),
        mauve=Mauve(featurizer="answerdotai/ModernBERT-large", max_text_length=512),
        slurm={"default": dict(time_min=24 * 60, gpus_per_node=1, cpus_per_task=8, mem_gb=64),
               "train": dict(gpus_per_node=8, tasks_per_node=8, nodes=1)},
        threads=8,
    )


def spec_tiny() -> RunConfig:
    """The default backbone, the spec's "tiny" (2.1), on the default corpus (Shakespeare,
    L = 128) with a BPE of 2048 ids, 300 steps x 16: the backbone of the benchmarks (tests/bench);
    evaluation, sampling and timing at their defaults."""
    train = _train(steps=300, batch_size=16, lr=2e-3, warmup=30, ema=0.98, eval_every=100, log_every=25,
                   checkpoint_every=100)
    return RunConfig(name="spec-tiny", description="the spec's tiny backbone, BPE-2048 shakespeare, L=128, 300 steps",
                     data=Data(vocab_size=2048), train=train)


RUNS = {
    "smoke": smoke,
    "spec-tiny": spec_tiny,
    "tiny": lambda: _cpu("tiny", f"byte-level shakespeare, L=128, 4x128 backbone, {CPU_STEPS} steps"),
    "cpu": lambda: _cpu("cpu", f"byte-level shakespeare, L=128, 4x128 backbone, {CPU_STEPS} steps"),
    "paper-owt": lambda: paper("owt"),
    "paper-lm1b": lambda: paper("lm1b"),
    "small": lambda: dataclasses.replace(paper("owt"), name="small"),  # the paper's backbone and budget (OWT)
}


def get(name: str, overrides: dict | None = None) -> RunConfig:
    """The run config of ``name`` with ``{key: value}`` overrides applied."""
    if name not in RUNS:
        raise ConfigError(f"unknown run name {name!r}; run names: {', '.join(RUNS)}")
    run = RUNS[name]()
    return run.with_overrides(overrides) if overrides else run
