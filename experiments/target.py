"""The one way in of the commands that work on a trained model (``eval``, ``sample``, ``lm-eval``):
the command's ``key=value`` pairs are routed once, the checkpoint is found once (``--checkpoint``:
a file, a run folder, an authors' release or ``hf:ORG/NAME``; ``--model`` with the training run's
preset, corpus and overrides: that run's checkpoint), and the model is loaded once, by the same
``esolm.checkpoint.load_model`` that every job of the pipeline loads its checkpoint with (the graph
hands each job the resolved path). ``train`` enters through the same ``RunSpec`` that locates
``--model``'s run here.

    target = open_target(args, {"eval": EvalKeys})
    target.model, target.state, target.checkpoint, target.keys["eval"], target.corpus
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from esolm.config import ConfigError, coerce, parse_keys
from esolm.log import printer
from experiments.runspec import RunSpec

say = printer()


@dataclass
class Target:
    """A loaded model and what located it."""

    checkpoint: Path
    model: object  # the LanguageModel, on the command's device, EMA weights where the file has them
    state: dict  # the checkpoint's record (model_name, model_config, corpus, step, imported, ...)
    keys: dict = field(default_factory=dict)  # section -> {key: value}, routed by the one key parser

    @property
    def name(self) -> str:
        return self.state["model_name"]

    @functools.cached_property
    def corpus(self):
        """The corpus the checkpoint was trained (or imported) on."""
        from esolm.data import corpus_from_spec

        return corpus_from_spec(self.state["corpus"])


def open_target(args, own: dict) -> Target:
    """Route ``args.overrides`` (the command's ``own`` sections first), find the checkpoint, load it."""
    from esolm.checkpoint import load_model

    keys = route_keys(args, own)
    ckpt = resolve_checkpoint(args)
    model, state = load_model(ckpt, device=getattr(args, "device", "cpu"))
    check_model_matches(args, state, ckpt)
    return Target(ckpt, model, state, keys)


def route_keys(args, own: dict) -> dict:
    """Route the command's ``key=value`` pairs through the one parser: the command's ``own``
    sections first (name -> dataclass), then, with --model and no --checkpoint, the sections of
    the training run that locate the checkpoint (``args.run_spec``). Returns section -> {key: value}."""
    if getattr(args, "model", None) and not getattr(args, "checkpoint", None):
        args.run_spec, routed = RunSpec.from_pairs(args.model, args.preset, args.corpus, args.overrides, first=own)
        return routed
    args.run_spec = None
    return parse_keys(args.overrides, own)


def resolve_checkpoint(args) -> Path:
    """``--checkpoint`` (imported first where it is an authors' file or a hub name), or the
    checkpoint of the training run that --model with its preset, corpus and overrides names."""
    if getattr(args, "checkpoint", None):
        from esolm.importers import ensure_checkpoint

        return ensure_checkpoint(args.checkpoint, ema=False if getattr(args, "no_ema", False) else None, log=say)
    if not getattr(args, "model", None):
        raise ConfigError("pass --checkpoint PATH, or --model NAME (with the --preset/--corpus/overrides "
                          "used for training) to use that run's checkpoint")
    spec = args.run_spec
    path = spec.run_dir() / "checkpoint.safetensors"
    if not path.exists():
        runs = sorted(str(p) for p in spec.run_dir().parent.glob(f"{args.model}-*/checkpoint.safetensors"))
        raise ConfigError(f"no checkpoint at {path} (the run of --model {args.model} --preset {args.preset} --corpus "
                          f"{spec.corpus_name} with overrides {spec.overrides or 'none'}); train it first, or pass "
                          f"--checkpoint" + (f"; existing runs: {', '.join(runs)}" if runs else ""))
    return path


def check_model_matches(args, state: dict, ckpt: Path) -> None:
    """--model with --checkpoint must name the checkpoint's model (it is never silently ignored)."""
    if getattr(args, "model", None) and getattr(args, "checkpoint", None) and state["model_name"] != args.model:
        raise ConfigError(f"--model {args.model} but {ckpt} holds a {state['model_name']} model; drop --model "
                          f"or pass a checkpoint of {args.model}")


def positive(value, name: str) -> int:
    """An integer >= 1, or a ConfigError naming the option."""
    n = coerce(value, int, name)
    if n < 1:
        raise ConfigError(f"{name} must be a positive integer; got {value}")
    return n
