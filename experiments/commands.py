"""The single-model commands of ``run.py``: models, train, eval, sample, score.

Each is a plain function of parsed arguments; each says what it does and where its
outputs went. Bad input raises ConfigError, which ``run.py`` turns into one message and
exit status 2.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from esolm import registry
from esolm.log import printer
from esolm.io import atomic_write_json
from esolm.samples import head_texts, make_conditions, stream_samples
from esolm.config import ConfigError, coerce, field_names
from esolm.interface import sample_options
from experiments.runspec import RunSpec
from experiments.target import open_target, positive


say = printer()  # progress and outputs' paths on stderr (esolm/log.py)


# ------------------------------------------------------------------------ models
def cmd_models(args) -> int:
    """The registry: each model's capabilities (yes / no), its NFE = L options and its sample options."""
    names = registry.available()
    classes = [registry.model_class(n) for n in names]
    # each model with its default config (length included: the NFE = L options depend on it)
    caps = [cls.capabilities_for(registry.build_config(n)).as_dict() for n, cls in zip(names, classes)]
    flags = [k for k, v in caps[0].items() if isinstance(v, bool)]
    print("model".ljust(10) + "".join(c.ljust(24) for c in flags) + "conditioning".ljust(18) + "NFE = L options")
    for n, c in zip(names, caps):
        print(n.ljust(10) + "".join(("yes" if c[k] else "no").ljust(24) for k in flags)
              + (", ".join(c.get("conditioning") or ()) or "-").ljust(18) + str(c["nfe_equals_l"]))
    print("\nsample options (key=value):")
    for n, cls in zip(names, classes):
        print(f"  {n.ljust(8)} " + ", ".join(field_names(cls.sample_options_class)))
    return 0


# ------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from esolm.train import fit, seed_everything

    spec, _ = RunSpec.from_pairs(args.model, args.preset, args.corpus, args.overrides)
    cfg = train_device(spec.train_config(), spec.overrides.get("train", {}).get("device"), args.device)
    out = Path(args.out) if args.out else spec.run_dir()
    init = None
    if getattr(args, "init_from", None):
        from esolm.checkpoint import source_summary
        from esolm.importers import ensure_checkpoint

        init = ensure_checkpoint(args.init_from, log=say)
        source = source_summary(init)
        if not args.out:  # a finetune is not the run trained from scratch: a folder of its own
            out = out.with_name(f"{out.name}-from-{source['weights_sha256'][:8]}")
    say(f"loading corpus {spec.corpus_name} ...")
    corpus = spec.load_corpus()
    seed_everything(cfg.seed)  # the initial weights are a function of the seed
    model = spec.build_model(corpus)
    say(f"training {args.model} ({model.num_parameters() / 1e6:.2f}M parameters, preset {args.preset}) on "
        f"{corpus.name}: {corpus.splits['train'].shape[0]} sequences of {corpus.length} tokens, "
        f"{cfg.steps} steps x {cfg.batch_size} sequences; outputs -> {out}")
    result = fit(args.model, model, corpus, cfg, out, progress=not args.no_progress, log=say, init_from=init)
    from esolm.distributed import dist_info, teardown_distributed

    rank = dist_info()[0]
    teardown_distributed()  # torchrun: every rank waits for rank 0's last write, then all leave
    if rank != 0:  # rank 0 alone reports
        return 0
    m = result["metrics"]
    if "valid" in m:
        v = m["valid"]
        say(f"final valid NLL {v['nll_per_token']:.4f} nats/token (PPL {v['ppl']:.2f})"
            + (f"; source entropy {v['true_nll_per_token']:.4f}" if v.get("true_nll_per_token") else ""))
    say(f"checkpoint: {result['checkpoint']}\nlog: {out / 'train_log.jsonl'}")
    return 0


def train_device(cfg, key: str | None, flag: str):
    """``cfg`` training on ``--device`` (``flag``), or on the ``device=`` key when one is given (the two
    may not disagree unless the flag is its default, the machine's own device), checked usable here
    before anything is loaded."""
    import dataclasses

    from esolm.train import resolve_device

    default = str(resolve_device("auto"))  # what run.py's --device defaults to
    if key is None:
        cfg = dataclasses.replace(cfg, device=flag)
    elif flag != default and flag != key:
        raise ConfigError(f"--device {flag} and device={key} disagree; pass one of them")
    resolve_device(cfg.device)
    return cfg


@dataclass
class EvalKeys:
    """The ``key=value`` settings of ``run.py eval``."""

    num_orders: int = 1  # K of the IW exact likelihood (with --exact)
    batch_size: int = 32  # sequences per batch
    max_batches: int | None = None  # the first this many batches; none: the whole split
    seed: int = 1  # seed of the diffusion times and orders
    pass_batch: int | None = None  # rows per network call of a likelihood that takes a pass per token (Eso-LM (A))


@dataclass
class SampleKeys:
    """The ``key=value`` settings of ``run.py sample`` besides the model's sample options."""

    seed: int = 0  # seed of the sampling generator
    num_samples: int | None = None  # as --num-samples
    batch_size: int | None = None  # samples per call; none: min(num_samples, 64)


# -------------------------------------------------------------------------- eval
def cmd_eval(args) -> int:
    from esolm.evaluate import evaluate, format_result

    target = open_target(args, {"eval": EvalKeys})
    given = target.keys["eval"]
    typed = {k: positive(v, k) for k, v in given.items() if k != "seed"}
    if "seed" in given:
        typed["seed"] = coerce(given["seed"], int, "seed")
    ckpt, model, state, corpus = target.checkpoint, target.model, target.state, target.corpus
    extra = {"pass_batch": typed.pop("pass_batch")} if "pass_batch" in typed else {}
    result = evaluate(model, corpus, args.split, exact=args.exact, progress=not args.no_progress,
                      batch_size=typed.get("batch_size", 32), max_batches=typed.get("max_batches"),
                      num_orders=typed.get("num_orders", 1), seed=typed.get("seed", 1), **extra)
    result.update(model=state["model_name"], checkpoint=str(ckpt), step=state["step"])
    if state.get("imported"):
        result.update(weights=state["imported"]["weights"], imported_from=state["imported"]["source"])
        say(f"weights: {result['weights']} from {result['imported_from']}")
    print(format_result(state["model_name"], result))
    name = (f"eval_{args.split}" + (f"_first{result['num_sequences']}" if typed.get("max_batches") else "")
            + (f"_exact_K{result['num_orders']}" if args.exact else "") + ".json")
    path = atomic_write_json(ckpt.parent / name, result)
    say(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------ import
def cmd_import(args) -> int:
    from esolm import registry
    from esolm.importers import default_corpus, import_checkpoint, load_check, save_imported

    say(f"reading {args.source} ...")
    state, info = import_checkpoint(args.source, model=args.model, ema=args.ema, overrides=args.overrides)
    if args.corpus:  # the default spec when it names that corpus (it carries the stand-in's options)
        cfg = state["model_config"]
        spec = default_corpus(cfg["vocab_size"], cfg["length"])
        state["corpus"] = spec if spec["name"] == args.corpus else dict(name=args.corpus, length=cfg["length"])
    a = info["architecture"]
    default = Path(args.source.removeprefix("hf:")).name.removesuffix(".ckpt")
    out = Path(args.out) if args.out else Path("runs/imported") / default
    check = None
    if args.check_batches:  # before saving: a corpus that loads gives its full spec to the checkpoint
        model = registry.build(state["model_name"], **state["model_config"])
        model.load_state_dict(state["model"])
        check = load_check(model, state["corpus"], batches=args.check_batches)
        state["corpus"] = check.pop("spec", state["corpus"])
        info["load_check"] = check
    path = save_imported(state, info, out)
    say(f"{info['format']} checkpoint of {info['family']}: {a['n_layers']} layers x {a['d_model']} wide, "
        f"{a['n_heads']} heads, cond {a['cond_dim']}, V={a['vocab_size']}, L={state['model_config']['length']}"
        + "".join(f", {k}={state['model_config'][k]}" for k in ("alpha_0", "block_size") if k in state['model_config']))
    say(f"weights: {info['weights']}; parity with the authors' outputs: {info['parity']}")
    say(f"wrote {path} (and {path.parent / 'import.json'}); evaluated on corpus {state['corpus']['name']}")
    if check is not None:
        if "skipped" in check:
            say(f"load check skipped: {check['skipped']}")
        else:
            say(f"load check: NELBO PPL {check['ppl']:.2f} ({check['nll_per_token']:.4f} nats/token) on "
                f"{check['sequences']} {check['corpus']} test sequences; uniform: PPL {check['uniform_ppl']:.0f} "
                f"(ln V = {check['uniform_nll']:.4f})")
            if "warning" in check:
                say(f"WARNING: {check['warning']}")
    print(path)
    return 0


# ------------------------------------------------------------------------ sample


def cmd_sample(args) -> int:
    # the model's sample options (its SampleOptions) and the command's keys first; with --model,
    # the rest locate the training run
    options = registry.model_class(args.model).sample_options_class if args.model else None
    if options is None or args.checkpoint:
        options = _sample_option_names()
    target = open_target(args, {"options": options, "call": SampleKeys})
    routed, call = target.keys, target.keys["call"]
    num_samples = positive(call.get("num_samples", args.num_samples), "--num-samples")
    ckpt, model, state, corpus = target.checkpoint, target.model, target.state, target.corpus
    seed = coerce(call.get("seed", 0), int, "seed")
    sample_opts = sample_options(model, routed["options"])
    sample_opts.setdefault("steps", model.config.length)
    model.options(sample_opts)  # every value checked before a file is written (e.g. steps=0, eta=3)
    conditions = sample_conditions(args, model, corpus.tokenizer, sample_opts, num_samples)
    total = num_samples if conditions is None else conditions.total
    batch_size = positive(call.get("batch_size", min(total, 64)), "batch_size")
    out = Path(args.out) if args.out else ckpt.parent / "samples" / sample_file_name(sample_opts, seed, num_samples,
                                                                                     conditions)
    say(f"sampling {total} sequences from {state['model_name']} ({ckpt}) with {sample_opts}"
        + ("" if conditions is None else f", {num_samples} for each of {len(conditions.texts)} {conditions.kind}s"))
    result = stream_samples(out, model, corpus, num_samples=total, batch_size=batch_size, seed=seed,
                            options=sample_opts, model_name=state["model_name"], model_config=state["model_config"],
                            corpus_spec=state["corpus"], checkpoint=str(ckpt), log=say, conditions=conditions)
    say(f"wrote {result['drawn']} samples to {out} ({result['seconds']:.1f} s); it holds {result['done']}")
    for text in head_texts(out):
        say("---\n" + text[:400])
    if args.score:
        return _score(out, args, corpus)
    return 0


def add_condition_args(p) -> None:
    """The conditioning flags of ``run.py sample`` (spec 15.4; docs/conditional.md)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt", help="condition every sample on this prompt (a prefix, BOS first)")
    g.add_argument("--prompt-file", help="a file of prompts, one per line: --num-samples samples of each")
    g.add_argument("--infill", help="an infill template: its text is kept, [MASK] marks one free token and "
                                    "[MASK:n] n of them; positions after its end are free too")
    g.add_argument("--infill-file", help="a file of infill templates, one per line: --num-samples samples of each")


def condition_texts(args) -> tuple[str | None, list[str]]:
    """(kind, texts) of the conditioning flags: ("prompt" | "infill", their texts), or (None, [])."""
    for kind in ("prompt", "infill"):
        text, path = getattr(args, kind, None), getattr(args, f"{kind}_file", None)
        if text is not None:
            return kind, [text]
        if path is not None:
            try:
                lines = Path(path).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"cannot read --{kind}-file {path}: {e}") from None
            texts = [line for line in lines if line.strip()]
            if not texts:
                raise ConfigError(f"--{kind}-file {path} holds no {kind} (one per line, blank lines skipped)")
            return kind, texts
    return None, []


def sample_conditions(args, model, tokenizer, sample_opts: dict, per: int):
    """The Conditions of the flags (None without them), each checked against the model now: an
    unsupported form (an infill for AR) fails before any file is written."""
    kind, texts = condition_texts(args)
    if kind is None:
        return None
    length = int(sample_opts.get("length") or model.config.length)
    conditions = make_conditions(kind, texts, tokenizer, length, per)
    for given in conditions.givens:
        given.checked(model, 1, length)
    return conditions


def sample_file_name(sample_opts: dict, seed: int, num_samples: int, conditions=None) -> str:
    """The default samples file: the options, seed and count, and a digest of the conditions (so
    conditioned samples never overwrite unconditional ones, nor those of other conditions)."""
    # the default name holds the count too: another count is another file, not a refusal
    name = "samples-" + "-".join(f"{k}{v}" for k, v in sorted(sample_opts.items())) + f"-seed{seed}-n{num_samples}"
    if conditions is not None:
        name += f"-{conditions.kind}{conditions.digest}"
    return name + ".jsonl"


def _sample_option_names() -> set[str]:
    """Every sample option of every registered model (with --checkpoint the model is known only
    once the file is read; sample_options then checks the pairs against that model's own)."""
    return {n for name in registry.available() for n in field_names(registry.model_class(name).sample_options_class)}


# ------------------------------------------------------------------------- score
def _score(path: Path, args, corpus=None) -> int:
    from esolm.metrics import score_samples

    result = score_samples(path, evaluator=args.evaluator, mauve=not args.no_mauve, device=args.device,
                           corpus=corpus, featurizer=args.featurizer, batch_size=args.batch_size,
                           max_length=args.max_length, out=args.metrics_out, overwrite=args.overwrite,
                           progress=not getattr(args, "no_progress", False),
                           second_evaluator=getattr(args, "second_evaluator", None))
    summary = {k: result[k] for k in ("gen_ppl", "gen_ppl_judge2", "entropy", "distributional", "self_bleu", "mauve",
                                      "nfe") if k in result}
    for k in ("gen_ppl", "gen_ppl_judge2"):  # the per-sample sums stay in the metrics JSON
        if isinstance(summary.get(k), dict):
            summary[k] = {n: v for n, v in summary[k].items() if n != "per_sample"}
    print(json.dumps(summary, indent=2, default=str))
    say(f"wrote {result.get('path', path)}")
    return 0


def cmd_score(args) -> int:
    return _score(Path(args.samples), args)
