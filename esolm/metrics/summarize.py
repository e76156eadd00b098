"""Table 16's conditional summarisation (spec 10.10, 15.6; docs/conditional.md "Table 16 (XSum)"):
a model finetuned on XSum writes the summary of each test document, and the summaries are scored
against the references with rescaled BERTScore (esolm/metrics/bertscore.py) and timed.

Each example is its XSum row (esolm/data/xsum.py) with the document given (BOS, the document, its
EOS) and the EOS padding after the S summary slots given too; the model samples the S slots
(``model.sample(n, given=Given(...), **options)``: T steps over them for Eso-LM (B), T steps of its
time grid for MDLM) and the summary is the slots up to their first EOS. Every row has S free
slots, so a batch of Eso-LM (B) shares its given count (spec 15.4.4) and samples in one call.

Per configuration (each with its 95 % bootstrap interval over examples, esolm/metrics/bootstrap.py):
``bertscore_f1`` (rescaled F1, the table's number), ``bertscore_precision``, ``bertscore_recall``,
``sec_per_example`` (seconds of a whole sampling call, device synchronized around it, an untimed
warm-up call first, divided by the examples it summarised; mean over the timed calls: the
conventions of esolm/metrics/conditional.py), ``nfe``, ``summary_tokens`` and ``empty_fraction``.

    out = summarize(model, data, featurizer="minilm", options=dict(steps=8), num_examples=16, batch_size=4)
    out["metrics"]["bertscore_f1"], out["metrics"]["sec_per_example"]
"""
from __future__ import annotations

import numpy as np
import torch

from esolm.config import ConfigError
from esolm.interface import Clock
from esolm.metrics.conditional import WARMUP_SEED, mean_fields


def sample_summaries(model, given, *, options: dict, batch_size: int, seed: int = 0, warmup: int = 1,
                     rounds: int = 1) -> dict:
    """The model's samples under ``given`` (a Given of n rows), ``batch_size`` rows per call, one
    generator seeded ``seed`` carried from call to call: ``warmup`` untimed calls first, each
    scored call timed whole (Clock), then ``rounds`` - 1 more timed passes (another generator,
    samples not kept). Returns ``tokens`` [n, L], ``seconds`` (per example, of each timed call)
    and ``nfe`` (of each scored call)."""
    if batch_size < 1 or rounds < 1 or warmup < 0:
        raise ConfigError(f"summarisation needs batch_size >= 1, rounds >= 1, warmup >= 0; got "
                          f"batch_size={batch_size}, rounds={rounds}, warmup={warmup}")
    n, device = given.mask.shape[0], model.device
    spare = torch.Generator(device=device).manual_seed(seed + WARMUP_SEED)
    for _ in range(warmup):
        first = given.rows(slice(0, batch_size))
        model.sample(first.mask.shape[0], generator=spare, given=first, **options)
    clock, generator = Clock(device), torch.Generator(device=device).manual_seed(seed)
    kept, seconds, nfe = [], [], []
    for r in range(rounds):
        for start in range(0, n, batch_size):
            rows = given.rows(slice(start, start + batch_size))
            size, before = rows.mask.shape[0], clock.seconds
            with clock.region():
                out = model.sample(size, generator=generator if r == 0 else spare, given=rows, **options)
            seconds.append((clock.seconds - before) / size)
            if r == 0:
                kept.append(out.tokens.cpu())
                nfe.append(out.nfe)
    return dict(tokens=torch.cat(kept), seconds=seconds, nfe=nfe)


def summarize(model, data, *, featurizer: str, options: dict, num_examples: int, batch_size: int, seed: int = 0,
              warmup: int = 1, rounds: int = 1, split: str = "test", bertscore_device=None) -> dict:
    """One sweep configuration of Table 16 for one model on the first ``num_examples`` examples of
    ``split``: ``metrics`` (module docstring), ``per_example`` (what the intervals resample) and
    ``examples`` (a few documents with the summary and the reference)."""
    from esolm.metrics.bertscore import bertscore

    data.check_model(model.config, getattr(model, "name", "the model"))
    available = len(data.rows[split])
    if not 1 <= num_examples <= available:
        raise ConfigError(f"summarisation needs 1 <= num_examples <= the {available} XSum {split} examples; got "
                          f"{num_examples}")
    index = list(range(num_examples))
    drawn = sample_summaries(model, data.given(split, index, model.config.mask_id), options=options,
                             batch_size=batch_size, seed=seed, warmup=warmup, rounds=rounds)
    summaries, references = data.summaries(drawn["tokens"], split, index), data.references[split][:num_examples]
    scores = bertscore(summaries, references, featurizer, device=bertscore_device)
    lengths = np.array([_summary_tokens(row, free, data.tokenizer.eos_id)
                        for row, free in zip(drawn["tokens"], data.free(split, index))], dtype=np.float64)
    metrics = dict(**mean_fields("bertscore_f1", scores["f1"]),
                   **mean_fields("bertscore_precision", scores["precision"]),
                   **mean_fields("bertscore_recall", scores["recall"]),
                   **mean_fields("sec_per_example", drawn["seconds"]),
                   nfe=float(np.mean(drawn["nfe"])), num_examples=num_examples, summary_budget=data.budget,
                   summary_tokens=float(lengths.mean()), empty_fraction=scores["empty"] / num_examples,
                   timed_calls=len(drawn["seconds"]))
    documents = data.documents(split, index[:3])
    examples = [dict(document=d[:400], summary=s, reference=r) for d, s, r in zip(documents, summaries, references)]
    per = dict(bertscore_f1=scores["f1"].tolist(), bertscore_raw_f1=scores["raw_f1"].tolist(),
               seconds=drawn["seconds"], summary_tokens=lengths.tolist())
    return dict(metrics=metrics, per_example=per, examples=examples, featurizer=scores["featurizer"],
                bertscore_hash=scores["hash"])


def _summary_tokens(row: torch.Tensor, free: torch.Tensor, eos_id: int) -> int:
    """Tokens of a row's summary: its free slots before the first EOS."""
    ids = row[free].tolist()
    return ids.index(eos_id) if eos_id in ids else len(ids)
