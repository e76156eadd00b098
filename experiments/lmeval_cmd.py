"""`run.py lm-eval`: a checkpoint through EleutherAI's lm-evaluation-harness (esolm/lmeval.py),
and the two local tasks it runs offline (docs/conditional.md).

    python experiments/run.py lm-eval --checkpoint runs/tiny/train/<key>/checkpoint.safetensors
    python experiments/run.py lm-eval --checkpoint PATH --tasks lambada_openai,hellaswag   (with the hub)

The local tasks are built from held-out Shakespeare (the test split of the `shakespeare`
corpus), so they run without the hub:

    esolm_shakespeare_mc       multiple choice: a passage's first half, its true next words among
                               four (three from other passages); acc, acc_norm
    esolm_shakespeare_rolling  whole passages scored by loglikelihood_rolling; word and byte
                               perplexity, bits per byte

lm-eval's results JSON goes beside the checkpoint (<checkpoint folder>/lm_eval/<tasks>.json,
written atomically), with an `esolm` section saying what the scores are (exact, exact under an
order, a bound) and with which draws and seed.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from esolm.config import ConfigError
from esolm.log import log

LOCAL_TASKS = ("esolm_shakespeare_mc", "esolm_shakespeare_rolling")
MC_ITEMS, ROLLING_DOCS = 64, 16

MC_YAML = """task: esolm_shakespeare_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
target_delimiter: ""
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

ROLLING_YAML = """task: esolm_shakespeare_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
metadata:
  version: 1.0
"""


def _cut(text: str, at: int) -> int:
    """The first word boundary (space or newline) at or after ``at``, else ``at``."""
    found = [i for i in (text.find(" ", at), text.find("\n", at)) if i > 0]
    return min(found) if found else at


def mc_items(texts: list[str], n: int, seed: int = 0) -> list[dict]:
    """Multiple-choice items from held-out passages, as the text is (its newlines and
    indentation kept, the distribution the models were trained on): the first half as the
    context, its next words (about 32 characters, from a word boundary, with their leading
    space or newline: the task's target delimiter is empty) as the true choice, the same span of
    three other passages as the distractors, the gold index drawn with ``seed``."""
    rng = random.Random(seed)
    spans = []
    for t in texts:
        a = _cut(t, len(t) // 2)
        b = _cut(t, a + 32)
        if 16 <= a and b - a >= 16 and t[:a].strip():
            spans.append((t[:a], t[a:b]))
    if len(spans) < 4:
        raise ConfigError(f"{len(spans)} usable passages for the multiple-choice task; it needs at least 4")
    items = []
    for i, (context, truth) in enumerate(spans[:n]):
        others = rng.sample([s[1] for j, s in enumerate(spans) if j != i and s[1] != truth], 3)
        gold = rng.randrange(4)
        choices = others[:gold] + [truth] + others[gold:]
        items.append(dict(context=context, choices=choices, gold=gold))
    return items


def write_local_tasks(folder: Path, *, length: int = 128) -> Path:
    """The two local tasks (YAML with absolute data paths, and their JSONL) under ``folder``,
    from the test split of the `shakespeare` corpus (byte-level rows of ``length`` bytes); returns the folder (lm-eval's include path)."""
    from esolm.data import load_corpus
    from esolm.io import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    texts = load_corpus("shakespeare", length=length, vocab_size=258).texts("test", n=MC_ITEMS * 2)  # byte-level rows
    # two consecutive test rows: one contiguous passage of the test text (rows are packed in order)
    rolling = [dict(text=texts[i] + texts[i + 1]) for i in range(0, 2 * ROLLING_DOCS, 2)]
    for name, rows, yaml in (("esolm_shakespeare_mc", mc_items(texts, MC_ITEMS), MC_YAML),
                             ("esolm_shakespeare_rolling", rolling, ROLLING_YAML)):
        data = folder / f"{name}.jsonl"
        atomic_write_text(data, "".join(json.dumps(r) + "\n" for r in rows))
        atomic_write_text(folder / f"{name}.yaml", yaml.format(data=json.dumps(str(data.resolve()))))
    return folder


def output_path(checkpoint: str, tasks: list[str]) -> Path:
    """<checkpoint folder>/lm_eval/<tasks joined by +>.json (an hf: source: ./lm_eval/...)."""
    base = Path(checkpoint)
    folder = (base if base.is_dir() else base.parent) if not str(checkpoint).startswith("hf:") else Path(".")
    return folder / "lm_eval" / ("+".join(tasks) + ".json")


def run_lm_eval(checkpoint: str, tasks: list[str], *, include_path: list[str] = (), limit: float | None = None,
                mc_draws: int = 128, num_orders: int = 1, seed: int = 0, device: str = "cpu",
                out: Path | None = None, overwrite: bool = False) -> tuple[dict, Path]:
    """Evaluate ``checkpoint`` on ``tasks`` with lm-eval; (lm-eval's results with an `esolm`
    section, the JSON it was written to)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from esolm.io import atomic_write_json
    from esolm.lmeval import EsolmLM

    out = Path(out) if out else output_path(checkpoint, tasks)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists (a finished lm-eval run); pass --overwrite to replace it or --out for another file")
    paths = [str(write_local_tasks(out.parent / "tasks"))] if any(t in LOCAL_TASKS for t in tasks) else []
    manager = TaskManager(include_path=paths + list(include_path) or None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"unknown lm-eval task(s) {', '.join(unknown)}; the local tasks are {', '.join(LOCAL_TASKS)}, "
                          f"others come from lm-eval's catalogue (`lm_eval --tasks list`) or --include-path")
    lm = EsolmLM(checkpoint=checkpoint, mc_draws=mc_draws, num_orders=num_orders, seed=seed, device=device)
    log(f"lm-eval: {checkpoint} on {', '.join(tasks)}; loglikelihood = {lm.kind}")
    try:
        results = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=False,
                                  bootstrap_iters=1000, random_seed=seed)
    except (ConnectionError, OSError) as e:
        raise ConfigError(f"lm-eval could not load a task's data ({e}); offline, run the local tasks "
                          f"({', '.join(LOCAL_TASKS)}) or fetch the task's dataset into the Hugging Face cache first") from e
    results = {k: v for k, v in results.items() if k in ("results", "versions", "n-shot", "configs", "n-samples")}
    results["esolm"] = dict(checkpoint=str(checkpoint), loglikelihood=lm.kind, mc_draws=mc_draws, num_orders=num_orders,
                            seed=seed, model=lm.model.name, length=lm.model.config.length,
                            sums="every loglikelihood is a sum over the continuation's tokens, in nats")
    atomic_write_json(out, results)
    return results, out


def cmd_lm_eval(args) -> int:
    tasks = [t for t in args.tasks.split(",") if t]
    results, out = run_lm_eval(args.checkpoint, tasks, include_path=args.include_path or [], limit=args.limit,
                               mc_draws=args.mc_draws, num_orders=args.num_orders, seed=args.seed, device=args.device,
                               out=args.out, overwrite=args.overwrite)
    for task, metrics in results["results"].items():
        shown = ", ".join(f"{k.split(',')[0]} {v:.4g}" for k, v in metrics.items()
                          if isinstance(v, float) and "stderr" not in k)
        log(f"{task}: {shown}")
    log(f"lm-eval results -> {out}")
    return 0


def add_lm_eval_command(sub) -> None:
    p = sub.add_parser("lm-eval", help="evaluate a checkpoint with lm-evaluation-harness (loglikelihood tasks)",
                       description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint.safetensors, its run folder, or an authors' release")
    p.add_argument("--tasks", default=",".join(LOCAL_TASKS),
                   help=f"comma-separated lm-eval task names (default: the local tasks {','.join(LOCAL_TASKS)})")
    p.add_argument("--include-path", action="append", help="a folder of extra lm-eval task YAMLs (repeatable)")
    p.add_argument("--limit", type=float, default=None, help="at most this many documents per task (or a fraction)")
    p.add_argument("--mc-draws", type=int, default=128, help="Monte Carlo draws of the NELBO (MDLM, BD3-LM)")
    p.add_argument("--num-orders", type=int, default=1,
                   help="Eso-LM: 1 = exact under (context first, continuation left to right); K > 1 = IW over K orders")
    p.add_argument("--seed", type=int, default=0, help="the seed of every random draw")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="results JSON (default: <checkpoint folder>/lm_eval/<tasks>.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing results JSON")
    p.set_defaults(handler=cmd_lm_eval)
