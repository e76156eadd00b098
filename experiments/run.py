"""esolm command line: one entry, one plain function per subcommand.

    python experiments/run.py models
    python experiments/run.py import SOURCE [--model NAME] [--no-ema] --out DIR   (an authors' .ckpt / HF folder / hf:ORG/NAME)
    python experiments/run.py train  --model mdlm --preset tiny [--corpus shakespeare] [key=value ...]
    python experiments/run.py train  --model bd3lm --preset tiny block_size=4 --init-from runs/mdlm-shakespeare-tiny   (a finetune)
    python experiments/run.py eval   --model mdlm --preset tiny [--exact num_orders=K]
    python experiments/run.py sample --model mdlm --preset tiny steps=64 top_p=0.9 [--score --evaluator ...]
    python experiments/run.py score  SAMPLES.jsonl --evaluator PATH|source|hub-name
    python experiments/run.py pareto --preset smoke --cluster local|slurm|debug
    python experiments/run.py tables --preset tiny
    python experiments/run.py lm-eval --checkpoint PATH [--tasks T1,T2]   (lm-evaluation-harness; local tasks by default)

Run any subcommand with --help for its options and its keys. key=value pairs go through one
parser (esolm.config.parse_keys): `section.key=value`, or a bare key that goes to the first
section owning it (the command's own: sample options, eval settings; then the model's config,
the run's data, backbone and training, esolm/runs.py); unknown keys are refused with the list
of valid ones.
"""
from __future__ import annotations

import os
import signal
import sys

STARTING = "error: interrupted while starting; nothing was run\n"


def _interrupted_while_starting(signum, frame):  # noqa: ARG001 - a signal handler's signature
    """Ctrl-C before a command runs (Python importing torch takes seconds): one line, exit 130."""
    sys.stderr.write(STARTING)
    os._exit(130)


if __name__ == "__main__":  # before the heavy imports; main() puts Python's own handler back
    signal.signal(signal.SIGINT, _interrupted_while_starting)

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from esolm.config import ConfigError, parse_overrides  # noqa: E402
from esolm.log import log  # noqa: E402


def _common_model_args(p: argparse.ArgumentParser, checkpoint: bool = False) -> None:
    p.add_argument("--model", help="registry name (see `run.py models`)")
    from esolm.runs import RUNS

    p.add_argument("--preset", default="tiny", help="the run name whose data, backbone and training to use: "
                                                    f"{' | '.join(RUNS)} (default: tiny)")
    p.add_argument("--corpus", default=None,
                   help="synthetic | shakespeare | text:PATH | owt | lm1b (default: the run name's, data.corpus)")
    if checkpoint:
        p.add_argument("--checkpoint", help="a checkpoint.safetensors, or an authors' release (.ckpt, Hugging Face folder, "
                                            "hf:ORG/NAME; imported first, see `run.py import`); default: the run "
                                            "of --model/--preset/--corpus")
        p.add_argument("--no-ema", action="store_true", help="with an authors' release: its live weights, not EMA")
    p.add_argument("--device", default="cpu" if not _cuda() else "cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value")


def _keys_epilog(command: str | None = None) -> str:
    """The key=value keys of a command, with their defaults for --preset tiny and their meanings,
    from the same dataclasses the parser reads."""
    from esolm import runs
    from esolm.config import keys_help

    run = runs.get("tiny")
    sections, defaults = {}, {}
    if command == "eval":
        from experiments.commands import EvalKeys

        sections["eval"] = EvalKeys
    if command == "sample":
        from experiments.commands import SampleKeys

        sections["call"] = SampleKeys
    run_sections = {s: type(getattr(run, s)) for s in ("data", "backbone", "train")}
    defaults.update({s: getattr(run, s) for s in run_sections})
    text = "keys (key=value; section.key=value where a key is in several sections):\n"
    if command == "sample":
        text += "  options: the model's sample options (`run.py models` lists them per model), e.g. steps=64 top_p=0.9\n"
    text += keys_help(sections) + "\n" if sections else ""
    text += "  model: the model's config fields (alpha_0=, block_size=, ...; see esolm/eso/model.py, baselines/)\n"
    if command in ("eval", "sample"):
        text += "  with --model (no --checkpoint), the run's keys below locate its checkpoint\n"
    return text + keys_help(run_sections, defaults) + "\n(defaults shown: --preset tiny)"


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-mauve", action="store_true", help="skip MAUVE")
    p.add_argument("--featurizer", default="minilm",
                   help="MAUVE features: minilm (offline MiniLM encoder) | evaluator | HF encoder name/folder")
    p.add_argument("--batch-size", type=int, default=8, help="evaluator batch size")
    p.add_argument("--max-length", type=int, default=None, help="truncate retokenized samples (default: model length)")
    p.add_argument("--metrics-out", default=None, help="metrics JSON path (default: beside the samples)")
    p.add_argument("--overwrite", action="store_true", help="replace a metrics JSON computed from other inputs")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list the registry and each model's capabilities")

    p = sub.add_parser("train", help="train a model; resumes its run directory when interrupted",
                       epilog=_keys_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_model_args(p)
    p.add_argument("--out", help="run directory (default: runs/<model>-<corpus>-<preset>[-<hash>], with "
                                 "-from-<weights> after it under --init-from)")
    p.add_argument("--init-from", metavar="CKPT",
                   help="start from the weights of this trained checkpoint (its EMA weights; a run folder, a "
                        "checkpoint.safetensors or an authors' release), not its optimizer or step: a finetune of "
                        "the preset's own steps (the paper's LM1B BD3-LMs start from MDLM); its parameters must "
                        "match the model's (same backbone). An interrupted finetune resumes from its own checkpoint")

    p = sub.add_parser("import", help="import an authors' checkpoint (Eso-LM, MDLM, BD3-LM) as a harness checkpoint")
    p.add_argument("source", help="a Lightning .ckpt, a Hugging Face folder (config.json + model.safetensors) or hf:ORG/NAME")
    p.add_argument("--model", help="the registry name the file must hold (default: inferred from the file)")
    ema = p.add_mutually_exclusive_group()
    ema.add_argument("--ema", dest="ema", action="store_true", default=None,
                     help="the EMA weights (the default when the file has them; an error when it has none)")
    ema.add_argument("--no-ema", dest="ema", action="store_false", help="the live (last training step) weights")
    p.add_argument("--out", help="output folder (default: runs/imported/<name>)")
    p.add_argument("--corpus", default=None, help="the data it is evaluated on (default: owt for the GPT-2 vocabulary, "
                                                  "lm1b for bert-base-uncased, else a synthetic stand-in)")
    p.add_argument("--check-batches", type=int, default=2, help="test batches of the load check (0: skip it)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="model fields the file lacks or that override it (length=, n_heads=, alpha_0= for an Eso-LM release)")

    p = sub.add_parser("eval", help="test perplexity: NELBO, or --exact likelihood",
                       epilog=_keys_epilog("eval"), formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_model_args(p, checkpoint=True)
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--exact", action="store_true", help="exact likelihood (IW bound; key num_orders=K)")

    p = sub.add_parser("sample", help="draw samples to JSONL (text, token ids, nfe, seconds, model, config)",
                       epilog=_keys_epilog("sample"), formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_model_args(p, checkpoint=True)
    p.add_argument("--num-samples", type=int, default=16, help="samples in all, or of each prompt / template")
    p.add_argument("--out", help="JSONL path (default: <run>/samples/samples-<options>-seed<S>-n<N>[-<condition "
                                 "digest>].jsonl); each batch is appended as it finishes, and the same command "
                                 "continues an interrupted file")
    from experiments.commands import add_condition_args

    add_condition_args(p)
    p.add_argument("--score", action="store_true", help="score the samples right away (see `score`)")
    p.add_argument("--evaluator", default=None, help="for --score: source | checkpoint | HF folder or hub name")
    _score_args(p)

    p = sub.add_parser("score", help="gen PPL, entropy, self-BLEU, MAUVE of a samples JSONL")
    p.add_argument("samples")
    p.add_argument("--evaluator", default=None,
                   help="source | ngram | ngram:N | path to checkpoint.safetensors | HF folder | hub name "
                        "(default: source on synthetic)")
    p.add_argument("--second-evaluator", default=None,
                   help="a second gen-PPL judge of the same kinds (e.g. ngram): its gen PPL goes to gen_ppl_judge2")
    p.add_argument("--device", default="cpu" if not _cuda() else "cuda")
    _score_args(p)

    from experiments.lmeval_cmd import add_lm_eval_command

    add_lm_eval_command(sub)
    try:
        from experiments.pipeline import add_pipeline_commands
    except ImportError:
        add_pipeline_commands = None
    if add_pipeline_commands is not None:
        add_pipeline_commands(sub)
        from experiments.store import add_store_commands

        add_store_commands(sub)
    return ap


def _parse(argv: list[str] | None):
    """(args, key=value pairs) of the command line; argparse's own usage error otherwise."""
    ap = parser()
    # key=value pairs may follow options too (`eval --exact num_orders=4`)
    args, extra = ap.parse_known_args(argv)
    pairs = [e for e in extra if "=" in e and not e.startswith("-")]
    rest = [e for e in extra if e not in pairs]
    if rest or (pairs and not hasattr(args, "overrides")):
        ap.error(f"unrecognized arguments: {' '.join(rest or pairs)}")
    return args, pairs


def main(argv: list[str] | None = None) -> int:
    try:
        args, pairs = _parse(argv)  # imports torch (the --device default)
    except KeyboardInterrupt:
        log(STARTING.rstrip())
        return 130
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from here Ctrl-C is a KeyboardInterrupt
    try:
        return _dispatch(args, pairs)
    except ConfigError as e:
        from experiments.store import Interrupted

        log(f"error: {e}")
        return 130 if isinstance(e, Interrupted) else 2
    except KeyboardInterrupt:
        log("error: interrupted; finished results are kept; rerun the same command to continue")
        return 130
    except OSError as e:
        from experiments.store import explain_os_error

        message = explain_os_error(e)
        if message is None:
            raise
        log(f"error: {message}")
        return 2


def _dispatch(args, pairs: list[str]) -> int:
    """Run the subcommand's handler with its key=value pairs parsed."""
    from experiments import commands

    if hasattr(args, "overrides"):
        args.overrides = parse_overrides(list(args.overrides) + pairs)
    handler = getattr(args, "handler", None) or getattr(commands, f"cmd_{args.command}")
    if args.command == "train" and not args.model:
        raise ConfigError("train needs --model NAME; see `run.py models`")
    return handler(args)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
